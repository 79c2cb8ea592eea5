//! wgpu launcher of `token_pool` (`token_pool.wgsl`).

use crate::backend::wgpu::{GpuBuffer, Kernel, WgpuDevice, linear_groups};
use crate::error::Result;

pub const TOKEN_POOL: Kernel = Kernel {
    name: "token_pool",
    source: include_str!("token_pool.wgsl"),
    f16: false,
    prelude: &[],
    defines: &[],
};

/// out (B, 1 + N, C) = [mean of inp's N cells, the cells].
pub fn token_pool_forward(
    be: &WgpuDevice,
    out: &GpuBuffer,
    inp: &GpuBuffer,
    batch: usize,
    cells: usize,
    channels: usize,
) -> Result<()> {
    be.dispatch(
        &TOKEN_POOL,
        "main",
        &[inp, out],
        &[batch as u32, cells as u32, channels as u32, 0],
        linear_groups(batch * (1 + cells) * channels, 64),
    )
}
