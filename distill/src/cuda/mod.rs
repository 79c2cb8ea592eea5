//! The trainer's CUDA backend ([`backend::Cuda`], one [`crate::trainer::backend::TrainBackend`]):
//! the runtime's op kernels (`runtime/src/ops/<op>/cuda.rs`, the objective's and optimizer's
//! in `ops/loss` and `ops/adamw`), every product a GEMM in bf16 with f32 accumulation against
//! f32 master weights (or in f32, for parity checks).
//!
//! It runs on the runtime's CUDA device layer ([`Device`]): a GPU (feature `cuda`) or the
//! emulator, which runs the same kernels on the CPU, so the kernels are checked against the
//! CPU trainer on machines without a GPU.
//!
//! [`backend`]: the training op set over one device allocation.

pub mod backend;

use std::sync::Arc;

pub use dinoedge_runtime::backend::cuda::device::{
    Arg, DevPtr, Device, Elem, LaunchCfg, Operand, Program, bytes, bytes_mut, device_error,
};

use crate::error::Result;

/// Opens the device to train on with the training program
/// (`dinoedge_runtime::ops::cuda_training_program`) loaded: GPU `ordinal` (default 0), or the
/// emulator.
pub fn open(emulated: bool, ordinal: Option<usize>) -> Result<Arc<dyn Device>> {
    Ok(dinoedge_runtime::backend::cuda::open(
        &dinoedge_runtime::ops::cuda_training_program(),
        emulated,
        ordinal,
    )?)
}
