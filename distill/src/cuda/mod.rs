//! The trainer's CUDA device: the runtime's device layer ([`Device`]) with the training
//! program loaded, on a GPU (feature `cuda`) or the emulator, which runs the same kernels on
//! the CPU, so they are checked against the CPU trainer on machines without a GPU. The
//! training ops on it are the runtime's `dispatch::train::cuda::Cuda`.

use std::sync::Arc;

pub use dinoedge_runtime::backend::cuda::device::{DevPtr, Device, Elem, bytes, bytes_mut};

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
