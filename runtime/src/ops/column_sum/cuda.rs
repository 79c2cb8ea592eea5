//! CUDA form of `column_sum` (`column_sum.cu`): partial sums over fixed row chunks, then the
//! chunks added in order, so a sum never depends on scheduling.

use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg};
use crate::error::Result;

pub const SOURCE: (&str, &str) = ("column_sum.cu", include_str!("column_sum.cu"));
pub const KERNELS: &[&str] = &["column_sum_forward", "column_sum_forward_reduce"];

/// Rows per chunk of the partial sums, at least (more for tall matrices, so at most
/// [`MAX_CHUNKS`] partials per column).
pub const CHUNK: usize = 64;
pub const MAX_CHUNKS: usize = 256;

/// Floats of the `partial` scratch for sums over `cols` columns.
pub fn partial_len(cols: usize) -> usize {
    MAX_CHUNKS * cols
}

/// What is summed per column.
#[derive(Clone, Copy, Debug)]
pub enum Summand {
    /// a[r, j]
    A,
    /// a[r, j] * b[r, j]
    Product(DevPtr),
    /// a[r, j] * (b[r, j] - mean[r]) * rstd[r] (a LayerNorm weight gradient)
    Normalised {
        b: DevPtr,
        mean: DevPtr,
        rstd: DevPtr,
    },
}

/// acc (cols) += column sums of `summand` over a (rows, cols; ld). `partial` holds
/// [`partial_len`]`(cols)` floats.
#[allow(clippy::too_many_arguments)]
pub fn column_sum_forward(
    dev: &dyn Device,
    acc: DevPtr,
    partial: DevPtr,
    a: DevPtr,
    summand: Summand,
    ld: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let chunk = rows.div_ceil(MAX_CHUNKS).max(CHUNK);
    let chunks = rows.div_ceil(chunk).max(1);
    let (b, mean, rstd, mode) = match summand {
        Summand::A => (0, 0, 0, 0),
        Summand::Product(b) => (b, 0, 0, 1),
        Summand::Normalised { b, mean, rstd } => (b, mean, rstd, 2),
    };
    dev.launch(
        "column_sum_forward",
        LaunchCfg {
            grid: (cols.div_ceil(256) as u32, chunks as u32),
            block: 256,
            shared: 0,
        },
        &[
            Arg::Ptr(partial),
            Arg::Ptr(a),
            Arg::Ptr(b),
            Arg::Ptr(mean),
            Arg::Ptr(rstd),
            Arg::I32(ld as i32),
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
            Arg::I32(chunk as i32),
            Arg::I32(mode),
        ],
    )?;
    dev.launch(
        "column_sum_forward_reduce",
        LaunchCfg::elements(cols),
        &[
            Arg::Ptr(acc),
            Arg::Ptr(partial),
            Arg::I32(chunks as i32),
            Arg::I32(cols as i32),
        ],
    )
}
