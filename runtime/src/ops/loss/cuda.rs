//! CUDA launchers of the objective's kernels (`loss.cu`). The losses come back to the host as
//! per-row or per-block partial sums, added there in f64 in order.

use super::Rows;
use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg, bytes_mut, sum_partials};
use crate::error::Result;

pub const SOURCE: (&str, &str) = ("loss.cu", include_str!("loss.cu"));
pub const KERNELS: &[&str] = &[
    "gather_rows",
    "scatter_add_rows",
    "cos_smooth_l1",
    "normalize_rows",
    "gram_difference",
    "normalize_rows_backward",
];

fn rows_args(dst: DevPtr, src: DevPtr, sel: Rows, dim: usize) -> [Arg; 7] {
    [
        Arg::Ptr(dst),
        Arg::Ptr(src),
        Arg::I32(sel.count() as i32),
        Arg::I32(dim as i32),
        Arg::I32(sel.n as i32),
        Arg::I32(sel.prefix as i32),
        Arg::I32(sel.per as i32),
    ]
}

/// dst (=) the rows of src that `sel` selects.
pub fn gather_rows(
    dev: &dyn Device,
    dst: DevPtr,
    src: DevPtr,
    sel: Rows,
    dim: usize,
) -> Result<()> {
    let cfg = LaunchCfg::elements(sel.count() * dim);
    dev.launch("gather_rows", cfg, &rows_args(dst, src, sel, dim))
}

/// dst (+=) src on the rows `sel` selects.
pub fn scatter_add_rows(
    dev: &dyn Device,
    dst: DevPtr,
    src: DevPtr,
    sel: Rows,
    dim: usize,
) -> Result<()> {
    let cfg = LaunchCfg::elements(sel.count() * dim);
    dev.launch("scatter_add_rows", cfg, &rows_args(dst, src, sel, dim))
}

/// dp (=) the gradient of `weight * (mean_rows(1 - cos) + mean(smooth_l1))` of `rows` rows
/// of p against t; returns that loss. `parts` (2 per row) receives the rows' sums.
#[allow(clippy::too_many_arguments)]
pub fn cos_smooth_l1(
    dev: &dyn Device,
    dp: DevPtr,
    parts: DevPtr,
    p: DevPtr,
    t: DevPtr,
    rows: usize,
    dim: usize,
    weight: f32,
) -> Result<f64> {
    let (wc, wl) = (weight / rows as f32, weight / (rows * dim) as f32);
    let args = [
        Arg::Ptr(dp),
        Arg::Ptr(parts),
        Arg::Ptr(p),
        Arg::Ptr(t),
        Arg::I32(dim as i32),
        Arg::F32(wc),
        Arg::F32(wl),
    ];
    dev.launch("cos_smooth_l1", LaunchCfg::per_row(rows), &args)?;
    let mut host = vec![0.0f32; 2 * rows];
    dev.download(parts, bytes_mut(&mut host))?;
    let (cos, l1) = host.chunks_exact(2).fold((0.0f64, 0.0f64), |(c, l), x| {
        (c + x[0] as f64, l + x[1] as f64)
    });
    Ok(weight as f64 * (cos / rows as f64 + l1 / (rows * dim) as f64))
}

/// u (=) rows of x over their norms; norms (=) those norms.
pub fn normalize_rows(
    dev: &dyn Device,
    u: DevPtr,
    norms: DevPtr,
    x: DevPtr,
    rows: usize,
    dim: usize,
) -> Result<()> {
    let args = [
        Arg::Ptr(u),
        Arg::Ptr(norms),
        Arg::Ptr(x),
        Arg::I32(dim as i32),
    ];
    dev.launch("normalize_rows", LaunchCfg::per_row(rows), &args)
}

/// gs (=) coef * (gs - gt) over `n` values; returns the sum of (gs - gt)², through the
/// block partial sums in `partials`.
pub fn gram_difference(
    dev: &dyn Device,
    gs: DevPtr,
    gt: DevPtr,
    n: usize,
    coef: f32,
    partials: DevPtr,
) -> Result<f64> {
    let cfg = LaunchCfg::partial_sums(n);
    let args = [
        Arg::Ptr(gs),
        Arg::Ptr(gt),
        Arg::I64(n as i64),
        Arg::F32(coef),
        Arg::Ptr(partials),
    ];
    dev.launch("gram_difference", cfg, &args)?;
    sum_partials(dev, partials, cfg.grid.0 as usize)
}

/// dp (+=) (du - u (u · du)) / norm, row by row.
#[allow(clippy::too_many_arguments)]
pub fn normalize_rows_backward(
    dev: &dyn Device,
    dp: DevPtr,
    u: DevPtr,
    du: DevPtr,
    norms: DevPtr,
    rows: usize,
    dim: usize,
) -> Result<()> {
    let args = [
        Arg::Ptr(dp),
        Arg::Ptr(u),
        Arg::Ptr(du),
        Arg::Ptr(norms),
        Arg::I32(dim as i32),
    ];
    dev.launch("normalize_rows_backward", LaunchCfg::per_row(rows), &args)
}
