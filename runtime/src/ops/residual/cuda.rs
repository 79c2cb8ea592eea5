//! CUDA form of `residual` (`residual.cu`).

use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg};
use crate::error::Result;
use crate::ops::column_sum::cuda::{Summand, column_sum_forward};

pub const SOURCE: (&str, &str) = ("residual.cu", include_str!("residual.cu"));
pub const KERNELS: &[&str] = &["residual_forward", "residual_backward"];

/// x (n) += gamma * y per column of `dim` (gamma `None`: x += y).
pub fn residual_forward(
    dev: &dyn Device,
    x: DevPtr,
    y: DevPtr,
    gamma: Option<DevPtr>,
    n: usize,
    dim: usize,
) -> Result<()> {
    dev.launch(
        "residual_forward",
        LaunchCfg::elements(n),
        &[
            Arg::Ptr(x),
            Arg::Ptr(y),
            Arg::opt(gamma),
            Arg::I64(n as i64),
            Arg::I32(dim as i32),
        ],
    )
}

/// Backward of `x_out = x_in + gamma * y` for dx (rows, dim): dgamma += sum_rows(dx * y),
/// dy (=) dx * gamma; `partial` is the column sums' scratch.
#[allow(clippy::too_many_arguments)]
pub fn residual_backward(
    dev: &dyn Device,
    partial: DevPtr,
    dy: DevPtr,
    dgamma: DevPtr,
    dx: DevPtr,
    y: DevPtr,
    gamma: DevPtr,
    rows: usize,
    dim: usize,
) -> Result<()> {
    column_sum_forward(
        dev,
        dgamma,
        partial,
        dx,
        Summand::Product(y),
        dim,
        rows,
        dim,
    )?;
    let n = rows * dim;
    dev.launch(
        "residual_backward",
        LaunchCfg::elements(n),
        &[
            Arg::Ptr(dy),
            Arg::Ptr(dx),
            Arg::Ptr(gamma),
            Arg::I64(n as i64),
            Arg::I32(dim as i32),
        ],
    )
}
