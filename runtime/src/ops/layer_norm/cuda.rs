//! CUDA form of `layer_norm` (`layer_norm.cu`): one warp per row, 8 rows per block.

use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg};
use crate::error::Result;
use crate::ops::column_sum::cuda::{Summand, column_sum_forward};

pub const SOURCE: (&str, &str) = ("layer_norm.cu", include_str!("layer_norm.cu"));
pub const KERNELS: &[&str] = &["layer_norm_forward", "layer_norm_backward"];

fn rows_cfg(rows: usize) -> LaunchCfg {
    LaunchCfg {
        grid: (rows.div_ceil(8).max(1) as u32, 1),
        block: 256,
        shared: 0,
    }
}

/// Mean and 1 / sqrt(var + eps) per row, kept by the training forward for the backward.
#[derive(Clone, Copy, Debug)]
pub struct LayerNormCache {
    pub mean: DevPtr,
    pub rstd: DevPtr,
}

/// out (R, C) (=) layer_norm(inp (R, C)) with weight, bias (C); `cache` receives the row
/// statistics (training).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward(
    dev: &dyn Device,
    out: DevPtr,
    cache: Option<LayerNormCache>,
    inp: DevPtr,
    weight: DevPtr,
    bias: DevPtr,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<()> {
    dev.launch(
        "layer_norm_forward",
        rows_cfg(rows),
        &[
            Arg::Ptr(out),
            Arg::opt(cache.map(|c| c.mean)),
            Arg::opt(cache.map(|c| c.rstd)),
            Arg::Ptr(inp),
            Arg::Ptr(weight),
            Arg::Ptr(bias),
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
            Arg::F32(eps),
        ],
    )
}

/// dinp (=), dweight and dbias (+=) from dout, the forward's input and its cache; `partial`
/// is the column sums' scratch (`column_sum::cuda::partial_len(cols)` floats).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    dev: &dyn Device,
    partial: DevPtr,
    dinp: DevPtr,
    dweight: DevPtr,
    dbias: DevPtr,
    dout: DevPtr,
    inp: DevPtr,
    weight: DevPtr,
    cache: LayerNormCache,
    rows: usize,
    cols: usize,
) -> Result<()> {
    column_sum_forward(dev, dbias, partial, dout, Summand::A, cols, rows, cols)?;
    let xhat = Summand::Normalised {
        b: inp,
        mean: cache.mean,
        rstd: cache.rstd,
    };
    column_sum_forward(dev, dweight, partial, dout, xhat, cols, rows, cols)?;
    dev.launch(
        "layer_norm_backward",
        rows_cfg(rows),
        &[
            Arg::Ptr(dinp),
            Arg::Ptr(dout),
            Arg::Ptr(inp),
            Arg::Ptr(weight),
            Arg::Ptr(cache.mean),
            Arg::Ptr(cache.rstd),
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
        ],
    )
}
