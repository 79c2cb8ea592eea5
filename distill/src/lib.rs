//! dinoedge-distill: trains small DINOv3-style students (ViTs and ConvNeXts) to reproduce a
//! teacher's CLS and patch features. Forward and backward for every op of the student (checked against
//! PyTorch autograd), AdamW with an EMA copy, augmented image data decoded in worker
//! threads, online or cached teacher features, and checkpoints that resume bit-for-bit.
//!
//! | module | job |
//! |---|---|
//! | [`student`] | named student sizes and configs |
//! | [`parallel`] | data-parallel ranks: rendezvous, gradient sums (NCCL or TCP) |
//! | [`params`] | all trainable values in one flat vector, with names |
//! | [`trainer`] | one trainer over the runtime's training seam: graph, objective, step |
//! | [`loss`] | the objective's weights, targets and logged parts (kernels: runtime `ops/loss`) |
//! | [`optim`] | AdamW, schedule, clipping, EMA |
//! | [`data`] | image folder scan, held-out split, augmentation, sample order |
//! | [`loader`] | worker threads and the prefetch queue |
//! | [`teacher`] | grid alignment and the online teacher |
//! | [`cache`] | teacher features cached to sharded f16 safetensors |
//! | [`checkpoint`] | atomic checkpoints and resume |
//! | [`cuda`] | the CUDA device the trainer opens (a GPU, or emulated for tests) |
//! | [`eval`] | held-out agreement with the teacher through the heads |
//! | [`bench`] | the time of one training step (vs a PyTorch step of the same model) |
//! | [`train`] | the run: steps, logs, checkpoints, export |

pub mod bench;
pub mod cache;
pub mod checkpoint;
pub mod cuda;
pub mod data;
pub mod error;
pub mod eval;
pub mod loader;
pub mod loss;
pub mod optim;
pub mod parallel;
pub mod params;
pub mod rendezvous;
pub mod rng;
pub mod student;
pub mod teacher;
pub mod train;
pub mod trainer;

pub use error::{DistillError, Result};
