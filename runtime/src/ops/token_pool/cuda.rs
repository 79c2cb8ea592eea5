//! CUDA form of `token_pool` (`token_pool.cu`).

use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg};
use crate::error::Result;

pub const SOURCE: (&str, &str) = ("token_pool.cu", include_str!("token_pool.cu"));
pub const KERNELS: &[&str] = &["token_pool_forward", "token_pool_backward"];

/// out (B, 1 + N, C) (=) [mean of inp's N cells, the cells].
pub fn token_pool_forward(
    dev: &dyn Device,
    out: DevPtr,
    inp: DevPtr,
    batch: usize,
    cells: usize,
    channels: usize,
) -> Result<()> {
    dev.launch(
        "token_pool_forward",
        LaunchCfg::elements(batch * (1 + cells) * channels),
        &[
            Arg::Ptr(out),
            Arg::Ptr(inp),
            Arg::I32(batch as i32),
            Arg::I32(cells as i32),
            Arg::I32(channels as i32),
        ],
    )
}

/// Backward: dinp (B, N, C) (=) from dout (B, 1 + N, C).
pub fn token_pool_backward(
    dev: &dyn Device,
    dinp: DevPtr,
    dout: DevPtr,
    batch: usize,
    cells: usize,
    channels: usize,
) -> Result<()> {
    dev.launch(
        "token_pool_backward",
        LaunchCfg::elements(batch * cells * channels),
        &[
            Arg::Ptr(dinp),
            Arg::Ptr(dout),
            Arg::I32(batch as i32),
            Arg::I32(cells as i32),
            Arg::I32(channels as i32),
        ],
    )
}
