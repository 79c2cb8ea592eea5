//! wgpu launchers of `patch_embed`: `im2col.wgsl` and `assemble.wgsl` (the conv between them
//! is the matmul kernel).

use crate::backend::wgpu::{GpuBuffer, Kernel, WgpuDevice, linear_groups};
use crate::error::Result;
use crate::ops::Dims;

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

/// The uniform parameters both kernels read: has_pos for the assembly, channels_last for
/// im2col.
fn params(d: &Dims, has_pos: bool, channels_last: bool) -> [u32; 12] {
    [
        d.batch as u32,
        d.channels as u32,
        d.height as u32,
        d.width as u32,
        d.patch as u32,
        d.grid_h as u32,
        d.grid_w as u32,
        d.prefix as u32,
        d.dim as u32,
        has_pos as u32,
        channels_last as u32,
        0,
    ]
}

/// cols (B*HW, C*P*P) = the patches of pixels (B, C, H, W).
pub fn patch_embed_forward_im2col(
    be: &WgpuDevice,
    cols: &GpuBuffer,
    pixels: &GpuBuffer,
    d: &Dims,
) -> Result<()> {
    be.dispatch(
        &IM2COL,
        "main",
        &[pixels, cols],
        &params(d, false, false),
        linear_groups(d.batch * d.patches() * d.patch_len(), 64),
    )
}

/// cols (B*HW, P*P*C) = the patches of a channels-last map x (B, H, W, C).
pub fn patch_embed_forward_im2col_nhwc(
    be: &WgpuDevice,
    cols: &GpuBuffer,
    x: &GpuBuffer,
    d: &Dims,
) -> Result<()> {
    be.dispatch(
        &IM2COL,
        "main",
        &[x, cols],
        &params(d, false, true),
        linear_groups(d.batch * d.patches() * d.patch_len(), 64),
    )
}

/// x (B, N, D) = [cls (+pos[0]), registers, emb (+pos[1 + p])].
pub fn patch_embed_forward_assemble(
    be: &WgpuDevice,
    x: &GpuBuffer,
    emb: &GpuBuffer,
    cls: &GpuBuffer,
    registers: Option<&GpuBuffer>,
    pos: Option<&GpuBuffer>,
    d: &Dims,
) -> Result<()> {
    let dummy = be.dummy();
    be.dispatch(
        &ASSEMBLE,
        "main",
        &[
            emb,
            x,
            cls,
            registers.unwrap_or(dummy),
            pos.unwrap_or(dummy),
        ],
        &params(d, pos.is_some(), false),
        linear_groups(d.rows() * d.dim, 64),
    )
}
