//! Fast CPU form of `layer_norm`: the same two-pass math as the reference, with 16-lane
//! partial sums and the row loop compiled for the CPU's SIMD family.

use crate::backend::cpu::isa::{Isa, multiversion};
use crate::backend::cpu::pool::{Pool, RowsMut};
use crate::ops::layer_norm::cpu::LayerNormCache;

#[inline(always)]
fn sum16(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let body = x.len() / 16 * 16;
    for c in x[..body].chunks_exact(16) {
        for l in 0..16 {
            acc[l] += f(c[l]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &v in &x[body..] {
        s += f(v);
    }
    s
}

multiversion! {
    fn rows(out: &mut [f32], stats: Option<(&mut [f32], &mut [f32])>, inp: &[f32], weight: &[f32], bias: &[f32], cols: usize, eps: f32) {
        let n = cols as f32;
        let mut stats = stats;
        for (r, (o, x)) in out.chunks_exact_mut(cols).zip(inp.chunks_exact(cols)).enumerate() {
            let mean = sum16(x, |v| v) / n;
            let var = sum16(x, |v| (v - mean) * (v - mean)) / n;
            let rstd = 1.0 / (var + eps).sqrt();
            for i in 0..cols {
                o[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
            }
            if let Some((m, s)) = stats.as_mut() {
                m[r] = mean;
                s[r] = rstd;
            }
        }
    }
}

/// out (R, C) = layer_norm(inp (R, C)), as [`super::cpu::layer_norm_forward`]; `cache`
/// (training) receives each row's mean and rstd.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward(
    pool: &Pool,
    isa: Isa,
    out: &mut [f32],
    cache: Option<LayerNormCache<'_>>,
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows_n: usize,
    cols: usize,
    eps: f32,
) {
    let out = RowsMut::new(&mut out[..rows_n * cols], cols);
    let stats = cache.map(|c| {
        let (mean, rstd) = (c.mean.split_at_mut(rows_n).0, c.rstd.split_at_mut(rows_n).0);
        (RowsMut::new(mean, 1), RowsMut::new(rstd, 1))
    });
    pool.run_rows(rows_n, 8, |r0, r1| {
        // SAFETY: run_rows hands out disjoint row ranges.
        unsafe {
            let s = stats
                .as_ref()
                .map(|(m, r)| (m.rows(r0, r1), r.rows(r0, r1)));
            rows(
                isa,
                out.rows(r0, r1),
                s,
                &inp[r0 * cols..r1 * cols],
                weight,
                bias,
                cols,
                eps,
            )
        }
    });
}

/// Rows per partial sum of the parameter gradients: fixed, so results do not depend on the
/// thread count.
const BACKWARD_CHUNK: usize = 32;

multiversion! {
    fn rows_backward(dinp: &mut [f32], part: &mut [f32], dout: &[f32], inp: &[f32], weight: &[f32], mean: &[f32], rstd: &[f32], cols: usize) {
        let (dw, db) = part.split_at_mut(cols);
        let n = cols as f32;
        for r in 0..mean.len() {
            let (x, dy, dx) = (&inp[r * cols..(r + 1) * cols], &dout[r * cols..(r + 1) * cols], &mut dinp[r * cols..(r + 1) * cols]);
            let (m, rs) = (mean[r], rstd[r]);
            let mut acc = [0.0f32; 32];
            for i in 0..cols {
                let xhat = (x[i] - m) * rs;
                db[i] += dy[i];
                dw[i] += dy[i] * xhat;
                let dn = dy[i] * weight[i];
                acc[i % 16] += dn;
                acc[16 + i % 16] += dn * xhat;
            }
            let mean_dn = acc[..16].iter().sum::<f32>() / n;
            let mean_dnx = acc[16..].iter().sum::<f32>() / n;
            for i in 0..cols {
                let xhat = (x[i] - m) * rs;
                dx[i] = rs * (dy[i] * weight[i] - mean_dn - xhat * mean_dnx);
            }
        }
    }
}

/// Backward, as [`super::cpu::layer_norm_backward`]: `dinp` written (`=`), `dweight` and
/// `dbias` accumulated (`+=`) from per-chunk partial sums (`partials` is scratch) added in
/// chunk order.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    pool: &Pool,
    isa: Isa,
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    cache: &LayerNormCache<'_>,
    cols: usize,
    partials: &mut Vec<f32>,
) {
    let rows_n = inp.len() / cols;
    let chunks = rows_n.div_ceil(BACKWARD_CHUNK);
    partials.clear();
    partials.resize(chunks * 2 * cols, 0.0);
    let (dx, parts) = (
        RowsMut::new(&mut dinp[..rows_n * cols], cols),
        RowsMut::new(partials, 2 * cols),
    );
    pool.run(chunks, |c| {
        let (r0, r1) = (c * BACKWARD_CHUNK, ((c + 1) * BACKWARD_CHUNK).min(rows_n));
        // SAFETY: chunk c owns rows r0..r1 of dinp and partial row c.
        unsafe {
            rows_backward(
                isa,
                dx.rows(r0, r1),
                parts.rows(c, c + 1),
                &dout[r0 * cols..r1 * cols],
                &inp[r0 * cols..r1 * cols],
                weight,
                &cache.mean[r0..r1],
                &cache.rstd[r0..r1],
                cols,
            )
        }
    });
    for p in partials.chunks_exact(2 * cols) {
        dweight
            .iter_mut()
            .zip(&p[..cols])
            .for_each(|(a, b)| *a += b);
        dbias.iter_mut().zip(&p[cols..]).for_each(|(a, b)| *a += b);
    }
}
