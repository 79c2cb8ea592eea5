//! wgpu launcher of `matmul` (`matmul.wgsl`): f32 weights, or f16 weights (SHADER_F16) with
//! f32 arithmetic.

use crate::backend::wgpu::{GpuBuffer, Kernel, WgpuDevice};
use crate::config::Activation;
use crate::error::Result;
use crate::ops::matmul::Epilogue;

/// A Linear layer on the device: the weight transposed to (K, N), f32 or f16, and its bias.
pub struct GpuLinear {
    pub w: GpuBuffer,
    pub bias: GpuBuffer,
    pub k: usize,
    pub n: usize,
    pub f16: bool,
}

pub const MATMUL_F32: Kernel = Kernel {
    name: "matmul_f32",
    source: include_str!("matmul.wgsl"),
    f16: false,
    prelude: &[crate::ops::activation::wgpu::ACTIVATE],
    defines: &[("WTYPE", "f32")],
};
pub const MATMUL_F16: Kernel = Kernel {
    name: "matmul_f16",
    source: include_str!("matmul.wgsl"),
    f16: true,
    prelude: &[crate::ops::activation::wgpu::ACTIVATE],
    defines: &[("WTYPE", "f16")],
};

/// out (rows, N) = epilogue(inp (rows, K) · Wᵀ + b).
pub fn matmul_forward(
    be: &WgpuDevice,
    out: &GpuBuffer,
    inp: &GpuBuffer,
    w: &GpuLinear,
    rows: usize,
    epi: Epilogue<'_, GpuBuffer>,
) -> Result<()> {
    let (code, act, gamma) = match epi {
        Epilogue::Store => (0, 0, be.dummy()),
        Epilogue::Act(a) => (1, Activation::code(Some(a)) as u32, be.dummy()),
        Epilogue::Residual(g) => (2, 0, g),
    };
    let kernel = if w.f16 { &MATMUL_F16 } else { &MATMUL_F32 };
    let params = [rows as u32, w.k as u32, w.n as u32, code, act, 0, 0, 0];
    let groups = (w.n.div_ceil(64) as u32, rows.div_ceil(64) as u32, 1);
    be.dispatch(
        kernel,
        "main",
        &[inp, &w.w, &w.bias, out, gamma],
        &params,
        groups,
    )
}
