//! CUDA form of `patch_embed` (`patch_embed.cu`): im2col, the conv as a `matmul` product
//! with its bias, then token assembly.

use cudarc::driver::PushKernelArg;

use crate::backend::cuda::{CudaBackend, CudaBuffer, CudaLinear, err};
use crate::error::Result;
use crate::ops::Dims;
use crate::ops::matmul::cuda::{Fused, epilogue, product, remaining_bias};

#[allow(clippy::too_many_arguments)]
pub fn patch_embed(
    be: &CudaBackend,
    x: &mut CudaBuffer,
    scratch: &mut CudaBuffer,
    pixels: &CudaBuffer,
    w: &CudaLinear,
    cls: &CudaBuffer,
    registers: Option<&CudaBuffer>,
    pos: Option<&CudaBuffer>,
    d: &Dims,
) -> Result<()> {
    let (hw, pl) = (d.patches(), d.patch_len());
    let rows = d.batch * hw;
    // scratch = [cols (rows, pl) | emb (rows, D)]
    let cols = be.ptr_mut(scratch) as u64;
    // Embedding rows on a 256-byte boundary (cuBLASLt's fastest kernels want it).
    let emb = cols + ((rows * pl * 4) as u64).next_multiple_of(256);
    let cfg = be.grid(rows * pl);
    let a = [
        d.batch, d.channels, d.height, d.width, d.patch, d.grid_h, d.grid_w,
    ]
    .map(|v| v as i32);
    let px = be.ptr(pixels) as u64;
    let mut b = be.stream.launch_builder(be.function("im2col"));
    b.arg(&cols).arg(&px);
    for v in &a {
        b.arg(v);
    }
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(cfg) }.map_err(|e| err("im2col", e))?;
    let fused = product(be, emb, cols, w, rows, Fused::Bias)?;
    let bias = remaining_bias(be, w, fused);
    if bias != 0 {
        epilogue(be, emb, emb, bias, 0, rows, d.dim, 0, 0)?;
    }
    let regs = registers.map_or(0u64, |r| be.ptr(r) as u64);
    let posp = pos.map_or(0u64, |p| be.ptr(p) as u64);
    let (xp, clsp) = (be.ptr_mut(x) as u64, be.ptr(cls) as u64);
    let (batch, prefix, patches, dim) = (d.batch as i32, d.prefix as i32, hw as i32, d.dim as i32);
    let cfg = be.grid(d.rows() * d.dim);
    let mut b = be.stream.launch_builder(be.function("assemble"));
    b.arg(&xp)
        .arg(&emb)
        .arg(&clsp)
        .arg(&regs)
        .arg(&posp)
        .arg(&batch)
        .arg(&prefix)
        .arg(&patches)
        .arg(&dim);
    // SAFETY: arguments match the kernel's signature; a null `pos` (0) is checked in the kernel.
    unsafe { b.launch(cfg) }
        .map_err(|e| err("assemble", e))
        .map(|_| ())
}
