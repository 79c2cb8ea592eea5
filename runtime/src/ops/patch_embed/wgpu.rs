//! wgpu launcher of `patch_embed`: `im2col.wgsl`, the matmul kernel, `assemble.wgsl`.

use crate::backend::wgpu::{GpuBuffer, Kernel, WgpuDevice, linear_groups};
use crate::error::Result;
use crate::ops::Dims;
use crate::ops::matmul::Epilogue;
use crate::ops::matmul::wgpu::{GpuLinear, matmul_forward};

pub const IM2COL: Kernel = Kernel {
    name: "im2col",
    source: include_str!("im2col.wgsl"),
    f16: false,
    prelude: &[],
    defines: &[],
};
pub const ASSEMBLE: Kernel = Kernel {
    name: "assemble",
    source: include_str!("assemble.wgsl"),
    f16: false,
    prelude: &[],
    defines: &[],
};

pub fn patch_embed_forward(
    be: &WgpuDevice,
    x: &GpuBuffer,
    cols: &GpuBuffer,
    emb: &GpuBuffer,
    pixels: &GpuBuffer,
    w: &GpuLinear,
    cls: &GpuBuffer,
    registers: Option<&GpuBuffer>,
    pos: Option<&GpuBuffer>,
    d: &Dims,
) -> Result<()> {
    let params = [
        d.batch as u32,
        d.channels as u32,
        d.height as u32,
        d.width as u32,
        d.patch as u32,
        d.grid_h as u32,
        d.grid_w as u32,
        d.prefix as u32,
        d.dim as u32,
        pos.is_some() as u32,
        0,
        0,
    ];
    let (dummy, n_patches) = (be.dummy(), d.batch * d.patches());
    be.dispatch(
        &IM2COL,
        "main",
        &[pixels, cols],
        &params,
        linear_groups(n_patches * d.patch_len(), 64),
    )?;
    matmul_forward(be, emb, cols, w, n_patches, Epilogue::Store)?;
    let regs = registers.unwrap_or(dummy);
    be.dispatch(
        &ASSEMBLE,
        "main",
        &[emb, x, cls, regs, pos.unwrap_or(dummy)],
        &params,
        linear_groups(d.rows() * d.dim, 64),
    )
}
