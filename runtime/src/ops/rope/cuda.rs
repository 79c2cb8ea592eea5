//! CUDA form of `rope` (`rope.cu`): one thread per rotated pair.

use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg};
use crate::error::Result;
use crate::ops::Dims;

pub const SOURCE: (&str, &str) = ("rope.cu", include_str!("rope.cu"));
pub const KERNELS: &[&str] = &["rope_forward", "rope_backward"];

fn launch(
    dev: &dyn Device,
    kernel: &str,
    qkv: DevPtr,
    cos: DevPtr,
    sin: DevPtr,
    d: &Dims,
) -> Result<()> {
    let n = d.batch * d.patches() * 2 * d.heads * (d.head_dim() / 2);
    dev.launch(
        kernel,
        LaunchCfg::elements(n),
        &[
            Arg::Ptr(qkv),
            Arg::Ptr(cos),
            Arg::Ptr(sin),
            Arg::I32(d.batch as i32),
            Arg::I32(d.tokens() as i32),
            Arg::I32(d.prefix as i32),
            Arg::I32(d.dim as i32),
            Arg::I32(d.head_dim() as i32),
        ],
    )
}

/// Rotates q and k of the patch tokens of qkv (B, N, 3D) in place.
pub fn rope_forward(
    dev: &dyn Device,
    qkv: DevPtr,
    cos: DevPtr,
    sin: DevPtr,
    d: &Dims,
) -> Result<()> {
    launch(dev, "rope_forward", qkv, cos, sin, d)
}

/// Rotates the gradients of q and k back, in place.
pub fn rope_backward(
    dev: &dyn Device,
    dqkv: DevPtr,
    cos: DevPtr,
    sin: DevPtr,
    d: &Dims,
) -> Result<()> {
    launch(dev, "rope_backward", dqkv, cos, sin, d)
}
