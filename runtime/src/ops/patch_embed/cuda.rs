//! CUDA form of `patch_embed` (`patch_embed.cu`): im2col and token assembly (the conv between
//! them is a `matmul`), and the backward of the assembly (training).

use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg};
use crate::error::Result;
use crate::ops::Dims;

pub const SOURCE: (&str, &str) = ("patch_embed.cu", include_str!("patch_embed.cu"));
pub const KERNELS: &[&str] = &[
    "patch_embed_forward_im2col",
    "patch_embed_backward_im2col_nhwc",
    "patch_embed_forward_assemble",
    "patch_embed_backward",
];

/// cols (B*HW, C*P*P) (=) the patches of pixels (B, C, H, W).
pub fn patch_embed_forward_im2col(
    dev: &dyn Device,
    cols: DevPtr,
    pixels: DevPtr,
    d: &Dims,
) -> Result<()> {
    im2col(dev, cols, pixels, d, false)
}

/// cols (B*HW, P*P*C) (=) the patches of a channels-last map x (B, H, W, C).
pub fn patch_embed_forward_im2col_nhwc(
    dev: &dyn Device,
    cols: DevPtr,
    x: DevPtr,
    d: &Dims,
) -> Result<()> {
    im2col(dev, cols, x, d, true)
}

/// Backward of the channels-last im2col: dx (B, H, W, C) (=) from dcols (B*HW, P*P*C).
pub fn patch_embed_backward_im2col_nhwc(
    dev: &dyn Device,
    dx: DevPtr,
    dcols: DevPtr,
    d: &Dims,
) -> Result<()> {
    let mut args = vec![Arg::Ptr(dx), Arg::Ptr(dcols)];
    args.extend(
        [
            d.batch, d.channels, d.height, d.width, d.patch, d.grid_h, d.grid_w,
        ]
        .map(|v| Arg::I32(v as i32)),
    );
    dev.launch(
        "patch_embed_backward_im2col_nhwc",
        LaunchCfg::elements(d.batch * d.height * d.width * d.channels),
        &args,
    )
}

/// The one im2col kernel, on planar pixels or a channels-last map.
fn im2col(
    dev: &dyn Device,
    cols: DevPtr,
    src: DevPtr,
    d: &Dims,
    channels_last: bool,
) -> Result<()> {
    let mut args = vec![Arg::Ptr(cols), Arg::Ptr(src)];
    args.extend(
        [
            d.batch,
            d.channels,
            d.height,
            d.width,
            d.patch,
            d.grid_h,
            d.grid_w,
            channels_last as usize,
        ]
        .map(|v| Arg::I32(v as i32)),
    );
    dev.launch(
        "patch_embed_forward_im2col",
        LaunchCfg::elements(d.batch * d.patches() * d.patch_len()),
        &args,
    )
}

/// x (B, N, D) (=) [cls (+pos[0]), registers, emb (+pos[1 + p])].
#[allow(clippy::too_many_arguments)]
pub fn patch_embed_forward_assemble(
    dev: &dyn Device,
    x: DevPtr,
    emb: DevPtr,
    cls: DevPtr,
    registers: Option<DevPtr>,
    pos: Option<DevPtr>,
    d: &Dims,
) -> Result<()> {
    dev.launch(
        "patch_embed_forward_assemble",
        LaunchCfg::elements(d.rows() * d.dim),
        &[
            Arg::Ptr(x),
            Arg::Ptr(emb),
            Arg::Ptr(cls),
            Arg::opt(registers),
            Arg::opt(pos),
            Arg::I32(d.batch as i32),
            Arg::I32(d.prefix as i32),
            Arg::I32(d.patches() as i32),
            Arg::I32(d.dim as i32),
        ],
    )
}

/// demb (B*HW, D) (=) the patch rows of dx; dcls, dregs (+=) summed over the images.
pub fn patch_embed_backward(
    dev: &dyn Device,
    demb: DevPtr,
    dcls: DevPtr,
    dregs: DevPtr,
    dx: DevPtr,
    d: &Dims,
) -> Result<()> {
    let n = (d.batch * d.patches() + d.prefix) * d.dim;
    dev.launch(
        "patch_embed_backward",
        LaunchCfg::elements(n),
        &[
            Arg::Ptr(demb),
            Arg::Ptr(dcls),
            Arg::Ptr(dregs),
            Arg::Ptr(dx),
            Arg::I32(d.batch as i32),
            Arg::I32(d.prefix as i32),
            Arg::I32(d.patches() as i32),
            Arg::I32(d.dim as i32),
        ],
    )
}
