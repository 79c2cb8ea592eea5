//! wgpu launcher of `swiglu` (`swiglu.wgsl`).

use crate::backend::wgpu::{GpuBuffer, Kernel, WgpuBackend, act_code, linear_groups};
use crate::config::Activation;
use crate::error::Result;

pub const SWIGLU: Kernel = Kernel {
    name: "swiglu",
    source: include_str!("swiglu.wgsl"),
    f16: false,
    defines: &[],
};

pub fn swiglu_forward(
    be: &WgpuBackend,
    out: &GpuBuffer,
    gate_up: &GpuBuffer,
    rows: usize,
    hidden: usize,
    act: Activation,
) -> Result<()> {
    let params = [rows as u32, hidden as u32, act_code(Some(act)), 0];
    be.dispatch(
        &SWIGLU,
        "main",
        &[gate_up, out],
        &params,
        linear_groups(rows * hidden, 64),
    )
}
