//! dinoedge-runtime: the DINOv3 / DINOv2 ViT model core.
//!
//! - [`config::ModelConfig`]: architecture from an HF `config.json`.
//! - [`model::Model`]: memory-mapped safetensors weights, validated against the config.
//! - [`preprocess`]: HF-exact image preprocessing and an aspect-preserving dense mode;
//!   [`frame_preprocess`]: the same, fused and with reused buffers, for video frames.
//! - [`ops`]: the op set, one folder per op holding every form of it (CPU reference, SIMD,
//!   WGSL, CUDA; forward and backward).
//! - [`backend`]: device plumbing only (CPU pool and ISA, wgpu device, CUDA device layer and
//!   its emulator); it knows no op.
//! - [`dispatch`]: the backend seam ([`Backend`]) and one dispatcher per device;
//!   [`forward`]: the model definition written once over it.
//! - [`session`]: a model prepared on a backend, with per-shape buffer plans.
//!
//! ```no_run
//! use std::sync::Arc;
//! use dinoedge_runtime::{Model, Preprocessor, RgbImage, RunOptions, SessionOptions, create_session};
//! let model = Arc::new(Model::load("model_dir")?);
//! let pre = Preprocessor::for_model(model.config(), Some(model.dir()), 224)?;
//! let img = RgbImage::new(2, 2, vec![0; 12])?;
//! let mut session = create_session(model, &SessionOptions::default())?;
//! let features = session.run(&pre.run(&img)?, &RunOptions::default())?;
//! println!("patch grid {:?}", features.grid);
//! # Ok::<(), dinoedge_runtime::RuntimeError>(())
//! ```

pub mod backend;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod features;
pub mod frame_preprocess;
pub mod fsutil;
#[cfg(feature = "onnx")]
pub mod import;
pub mod limits;
pub mod model;
pub mod models;
pub mod ops;
pub mod preprocess;
pub mod quant;
pub mod resample;
pub mod session;
pub mod tensor;
#[cfg(feature = "testing")]
pub mod testing;
pub mod weights;

pub use backend::{BackendInfo, BackendKind, Precision};
pub use config::{
    Activation, ActivationScheme, Family, MlpKind, ModelConfig, Positions, QuantConfig, VitConfig,
};
pub use dispatch::Backend;
pub use error::{Result, RuntimeError};
pub use features::{Features, LayerFeatures};
pub use frame_preprocess::FramePreprocessor;
pub use limits::InputLimits;
pub use model::Model;
pub use preprocess::{Preprocessor, RgbImage};
pub use session::{InferenceSession, RunOptions, Session, SessionOptions, create_session};
pub use tensor::Tensor;
