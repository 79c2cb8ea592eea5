//! CUDA form of `rope` (`rope.cu`): one thread per rotated pair.

use cudarc::driver::PushKernelArg;

use crate::backend::cuda::{CudaBackend, CudaBuffer, err};
use crate::error::Result;
use crate::ops::Dims;

pub fn rope(
    be: &CudaBackend,
    qkv: &mut CudaBuffer,
    cos: &CudaBuffer,
    sin: &CudaBuffer,
    d: &Dims,
) -> Result<()> {
    let n = d.rows() * 2 * d.heads * (d.head_dim() / 2);
    let cfg = be.grid(n);
    let (rows, tokens, prefix, dim, hd) = (
        d.rows() as i32,
        d.tokens() as i32,
        d.prefix as i32,
        d.dim as i32,
        d.head_dim() as i32,
    );
    let mut b = be.stream.launch_builder(be.function("rope"));
    b.arg(qkv)
        .arg(cos)
        .arg(sin)
        .arg(&rows)
        .arg(&tokens)
        .arg(&prefix)
        .arg(&dim)
        .arg(&hd);
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(cfg) }
        .map_err(|e| err("rope", e))
        .map(|_| ())
}
