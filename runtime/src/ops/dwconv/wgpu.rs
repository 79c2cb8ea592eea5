//! wgpu launcher of `dwconv` (`dwconv.wgsl`).

use super::DwDims;
use crate::backend::wgpu::{GpuBuffer, Kernel, WgpuDevice, linear_groups};
use crate::error::Result;

pub const DWCONV: Kernel = Kernel {
    name: "dwconv",
    source: include_str!("dwconv.wgsl"),
    f16: false,
    prelude: &[],
    defines: &[],
};

/// out (B, H, W, C) = dwconv(inp) with weight (49, C) and bias (C).
pub fn dwconv_forward(
    be: &WgpuDevice,
    out: &GpuBuffer,
    inp: &GpuBuffer,
    weight: &GpuBuffer,
    bias: &GpuBuffer,
    d: &DwDims,
) -> Result<()> {
    let params = [d.batch, d.height, d.width, d.channels].map(|v| v as u32);
    be.dispatch(
        &DWCONV,
        "main",
        &[inp, weight, bias, out],
        &params,
        linear_groups(d.len(), 64),
    )
}
