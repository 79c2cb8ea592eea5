//! wgpu launcher of `rope` (`rope.wgsl`): one thread per rotated pair.

use crate::backend::wgpu::{GpuBuffer, Kernel, WgpuDevice, linear_groups};
use crate::error::Result;
use crate::ops::Dims;

pub const ROPE: Kernel = Kernel {
    name: "rope",
    source: include_str!("rope.wgsl"),
    f16: false,
    prelude: &[],
    defines: &[],
};

pub fn rope_forward(
    be: &WgpuDevice,
    qkv: &GpuBuffer,
    cos: &GpuBuffer,
    sin: &GpuBuffer,
    d: &Dims,
) -> Result<()> {
    let hd = d.head_dim();
    let params = [
        d.rows() as u32,
        d.tokens() as u32,
        d.prefix as u32,
        d.dim as u32,
        hd as u32,
        d.heads as u32,
        0,
        0,
    ];
    be.dispatch(
        &ROPE,
        "main",
        &[qkv, cos, sin],
        &params,
        linear_groups(d.rows() * d.heads * hd, 64),
    )
}
