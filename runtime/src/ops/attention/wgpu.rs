//! wgpu launcher of `attention` (`attention.wgsl`): 64 queries of one head per workgroup,
//! keys and values through workgroup memory in tiles of up to 64 keys (2048 / hd).

use crate::backend::wgpu::{GpuBuffer, Kernel, WgpuDevice};
use crate::error::{Result, RuntimeError};
use crate::ops::Dims;

/// Head dims the WGSL kernel's workgroup arrays hold.
pub const MAX_HEAD_DIM: usize = 128;

pub const ATTENTION: Kernel = Kernel {
    name: "attention",
    source: include_str!("attention.wgsl"),
    f16: false,
    prelude: &[],
    defines: &[],
};

pub fn attention_forward(
    be: &WgpuDevice,
    out: &GpuBuffer,
    qkv: &GpuBuffer,
    d: &Dims,
) -> Result<()> {
    let hd = d.head_dim();
    if hd > MAX_HEAD_DIM {
        return Err(RuntimeError::Device {
            backend: "wgpu".into(),
            reason: format!(
                "head dim {hd} > {MAX_HEAD_DIM} is not supported by the attention kernel"
            ),
        });
    }
    let tile = (2048 / hd).min(64);
    let scale = 1.0 / (hd as f32).sqrt();
    let params = [
        d.batch as u32,
        d.tokens() as u32,
        d.dim as u32,
        d.heads as u32,
        hd as u32,
        tile as u32,
        scale.to_bits(),
        0,
    ];
    be.dispatch(
        &ATTENTION,
        "main",
        &[qkv, out],
        &params,
        (
            d.tokens().div_ceil(64) as u32,
            (d.batch * d.heads) as u32,
            1,
        ),
    )
}
