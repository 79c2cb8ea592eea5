//! The trainer's CUDA backend ([`backend::Cuda`], one [`crate::trainer::backend::TrainBackend`]):
//! the runtime's op kernels (`runtime/src/ops/<op>/cuda.rs`), every product a GEMM in bf16
//! with f32 accumulation against f32 master weights (or in f32, for parity checks), and the
//! objective's and optimizer's kernels, which live here.
//!
//! It runs on the runtime's CUDA device layer ([`Device`]): a GPU (feature `cuda`) or the
//! emulator, which runs the same kernels on the CPU, so the kernels are checked against the
//! CPU trainer on machines without a GPU.
//!
//! | file | job |
//! |---|---|
//! | `loss.cu`, `optim.cu` | objective and optimizer kernels, named as their CPU forms |
//! | [`backend`] | the training op set over one device allocation |

pub mod backend;

use std::sync::Arc;

pub use dinoedge_runtime::backend::cuda::device::{
    Arg, DevPtr, Device, Elem, LaunchCfg, Operand, Program, bytes, bytes_mut, device_error,
};

use crate::error::Result;

/// The objective's kernels.
pub const LOSS: (&str, &str) = ("loss.cu", include_str!("loss.cu"));
pub const LOSS_KERNELS: &[&str] = &[
    "gather_rows",
    "scatter_add_rows",
    "cos_smooth_l1",
    "normalize_rows",
    "gram_difference",
    "normalize_rows_backward",
];

/// The optimizer's kernels.
pub const OPTIM: (&str, &str) = ("optim.cu", include_str!("optim.cu"));
pub const OPTIM_KERNELS: &[&str] = &["sum_squares", "adamw_ema"];

/// What the trainer loads: the runtime's op kernels, then the objective and the optimizer.
pub fn program() -> Program {
    dinoedge_runtime::ops::cuda_program().with(&Program {
        sources: vec![LOSS, OPTIM],
        kernels: [LOSS_KERNELS, OPTIM_KERNELS].concat(),
    })
}

/// Opens the device to train on with [`program`] loaded: GPU `ordinal` (default 0), or the
/// emulator.
pub fn open(emulated: bool, ordinal: Option<usize>) -> Result<Arc<dyn Device>> {
    Ok(dinoedge_runtime::backend::cuda::open(
        &program(),
        emulated,
        ordinal,
    )?)
}

/// Blocks of 256 threads for the reductions that write one partial per block: at most
/// [`PARTIALS`], so the host reads back a bounded number.
pub fn reduce_cfg(n: usize) -> LaunchCfg {
    LaunchCfg {
        grid: (n.div_ceil(256).clamp(1, PARTIALS) as u32, 1),
        block: 256,
        shared: 0,
    }
}

/// The most partial sums a reduction writes.
pub const PARTIALS: usize = 4096;

/// One block of 256 threads per row.
pub fn rows_cfg(rows: usize) -> LaunchCfg {
    LaunchCfg {
        grid: (rows as u32, 1),
        block: 256,
        shared: 0,
    }
}
