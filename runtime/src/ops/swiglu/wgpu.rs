//! wgpu launcher of `swiglu` (`swiglu.wgsl`).

use crate::backend::wgpu::{GpuBuffer, Kernel, WgpuDevice, linear_groups};
use crate::config::Activation;
use crate::error::Result;

pub const SWIGLU: Kernel = Kernel {
    name: "swiglu",
    source: include_str!("swiglu.wgsl"),
    f16: false,
    prelude: &[crate::ops::activation::wgpu::ACTIVATE],
    defines: &[],
};

pub fn swiglu_forward(
    be: &WgpuDevice,
    out: &GpuBuffer,
    gate_up: &GpuBuffer,
    rows: usize,
    hidden: usize,
    act: Activation,
) -> Result<()> {
    let params = [
        rows as u32,
        hidden as u32,
        Activation::code(Some(act)) as u32,
        0,
    ];
    be.dispatch(
        &SWIGLU,
        "main",
        &[gate_up, out],
        &params,
        linear_groups(rows * hidden, 64),
    )
}
