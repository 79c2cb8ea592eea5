//! CUDA form of `dwconv` (`dwconv.cu`).

use super::{DwDims, TAPS};
use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg};
use crate::error::Result;

pub const SOURCE: (&str, &str) = ("dwconv.cu", include_str!("dwconv.cu"));
pub const KERNELS: &[&str] = &[
    "dwconv_forward",
    "dwconv_backward_input",
    "dwconv_backward_weight",
];

/// out (B, H, W, C) (=) dwconv(inp) with weight (49, C) and bias (C).
pub fn dwconv_forward(
    dev: &dyn Device,
    out: DevPtr,
    inp: DevPtr,
    weight: DevPtr,
    bias: DevPtr,
    d: &DwDims,
) -> Result<()> {
    let mut args = vec![
        Arg::Ptr(out),
        Arg::Ptr(inp),
        Arg::Ptr(weight),
        Arg::Ptr(bias),
    ];
    args.extend([d.batch, d.height, d.width, d.channels].map(|v| Arg::I32(v as i32)));
    dev.launch("dwconv_forward", LaunchCfg::elements(d.len()), &args)
}

/// Backward for dout (B, H, W, C): din (=), dweight (49, C) and dbias (C) (+=).
#[allow(clippy::too_many_arguments)]
pub fn dwconv_backward(
    dev: &dyn Device,
    din: DevPtr,
    dweight: DevPtr,
    dbias: DevPtr,
    dout: DevPtr,
    inp: DevPtr,
    weight: DevPtr,
    d: &DwDims,
) -> Result<()> {
    let sizes = [d.batch, d.height, d.width, d.channels].map(|v| Arg::I32(v as i32));
    let mut args = vec![Arg::Ptr(din), Arg::Ptr(dout), Arg::Ptr(weight)];
    args.extend(sizes);
    dev.launch("dwconv_backward_input", LaunchCfg::elements(d.len()), &args)?;
    let mut args = vec![
        Arg::Ptr(dweight),
        Arg::Ptr(dbias),
        Arg::Ptr(dout),
        Arg::Ptr(inp),
    ];
    args.extend(sizes);
    // A block of 8 rows x 32 channels per (tap, 32 channels): see the kernel.
    let cfg = LaunchCfg {
        grid: ((TAPS + 1) as u32, d.channels.div_ceil(32) as u32),
        block: 256,
        shared: 0,
    };
    dev.launch("dwconv_backward_weight", cfg, &args)
}
