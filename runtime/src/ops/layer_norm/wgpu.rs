//! wgpu launcher of `layer_norm` (`layer_norm.wgsl`): one workgroup per row.

use crate::backend::wgpu::{GpuBuffer, Kernel, WgpuDevice, linear_groups};
use crate::error::Result;

pub const LAYER_NORM: Kernel = Kernel {
    name: "layer_norm",
    source: include_str!("layer_norm.wgsl"),
    f16: false,
    prelude: &[],
    defines: &[],
};

pub fn layer_norm_forward(
    be: &WgpuDevice,
    out: &GpuBuffer,
    inp: &GpuBuffer,
    weight: &GpuBuffer,
    bias: &GpuBuffer,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<()> {
    let params = [rows as u32, cols as u32, eps.to_bits(), 0];
    be.dispatch(
        &LAYER_NORM,
        "main",
        &[inp, weight, bias, out],
        &params,
        linear_groups(rows, 1),
    )
}
