//! CPU reference of `layer_norm`: two passes per row (mean, then centred variance). The
//! training forward is the same function keeping each row's mean and rstd.

use rayon::prelude::*;

/// One row; returns its mean and 1/sqrt(var + eps).
#[inline]
pub fn layer_norm_row(
    out: &mut [f32],
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum8(x.iter().copied()) / n;
    let var = sum8(x.iter().map(|&v| (v - mean) * (v - mean))) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for i in 0..x.len() {
        out[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
    }
    (mean, rstd)
}

/// Sum with 8 independent partial sums (vectorisable, and more accurate than a serial sum).
#[inline]
fn sum8(it: impl Iterator<Item = f32>) -> f32 {
    let mut acc = [0.0f32; 8];
    for (i, v) in it.enumerate() {
        acc[i & 7] += v;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// out (R, C) = layer_norm(inp (R, C)); `cache` (training) receives each row's mean and rstd.
pub fn layer_norm_forward(
    out: &mut [f32],
    cache: Option<LayerNormCache<'_>>,
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    cols: usize,
    eps: f32,
) {
    debug_assert_eq!(out.len(), inp.len());
    debug_assert_eq!(weight.len(), cols);
    let rows = out
        .par_chunks_mut(cols)
        .zip(inp.par_chunks(cols))
        .with_min_len(8);
    match cache {
        None => rows.for_each(|(o, x)| {
            layer_norm_row(o, x, weight, bias, eps);
        }),
        Some(c) => {
            assert!(
                c.mean.len() == inp.len() / cols && c.rstd.len() == c.mean.len(),
                "layer_norm cache: one mean and rstd per row"
            );
            rows.zip(c.mean.par_iter_mut().zip(c.rstd.par_iter_mut()))
                .for_each(|((o, x), (m, r))| (*m, *r) = layer_norm_row(o, x, weight, bias, eps));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_rows() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
        let w = [1.0f32, 2.0, 1.0, 1.0];
        let b = [0.0f32, 0.0, 0.0, 0.5];
        let mut out = [0.0f32; 8];
        layer_norm_forward(&mut out, None, &x, &w, &b, 4, 1e-5);
        // row 0: mean 2.5, var 1.25
        let r = 1.0 / (1.25f32 + 1e-5).sqrt();
        let want = [-1.5 * r, -0.5 * r * 2.0, 0.5 * r, 1.5 * r + 0.5];
        for i in 0..4 {
            assert!((out[i] - want[i]).abs() < 1e-6);
        }
        // constant row: only the bias survives
        assert_eq!(&out[4..], &[0.0, 0.0, 0.0, 0.5]);
    }
}

/// Per-row statistics saved by the training forward: mean and 1/sqrt(var + eps), one per
/// row, in memory the caller owns (the trainer keeps them in its arena).
#[derive(Debug)]
pub struct LayerNormCache<'a> {
    pub mean: &'a mut [f32],
    pub rstd: &'a mut [f32],
}

/// Backward of `layer_norm` (llm.c's derivation). `dinp` is written (`=`); `dweight` and
/// `dbias` are accumulated (`+=`), summing rows in a fixed order so results are bitwise
/// reproducible.
///
/// With xhat = (x - mean) * rstd and dnorm = dout * weight:
///   dbias += dout, dweight += dout * xhat,
///   dinp = rstd * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat)).
pub fn layer_norm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    cache: &LayerNormCache<'_>,
    cols: usize,
) {
    const CHUNK: usize = 32;
    let rows = inp.len() / cols;
    // Parameter gradients: per-chunk partial sums, then added in chunk order.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = (0..rows.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let (mut dw, mut db) = (vec![0.0f32; cols], vec![0.0f32; cols]);
            for r in c * CHUNK..((c + 1) * CHUNK).min(rows) {
                let (x, dy) = (
                    &inp[r * cols..(r + 1) * cols],
                    &dout[r * cols..(r + 1) * cols],
                );
                let (m, rs) = (cache.mean[r], cache.rstd[r]);
                for i in 0..cols {
                    db[i] += dy[i];
                    dw[i] += dy[i] * (x[i] - m) * rs;
                }
            }
            (dw, db)
        })
        .collect();
    for (dw, db) in &partials {
        dweight.iter_mut().zip(dw).for_each(|(a, b)| *a += b);
        dbias.iter_mut().zip(db).for_each(|(a, b)| *a += b);
    }
    dinp.par_chunks_mut(cols)
        .enumerate()
        .with_min_len(8)
        .for_each(|(r, dx)| {
            let (x, dy) = (
                &inp[r * cols..(r + 1) * cols],
                &dout[r * cols..(r + 1) * cols],
            );
            let (m, rs) = (cache.mean[r], cache.rstd[r]);
            let (mut mean_dn, mut mean_dnx) = (0.0f32, 0.0f32);
            for i in 0..cols {
                let dn = dy[i] * weight[i];
                mean_dn += dn;
                mean_dnx += dn * (x[i] - m) * rs;
            }
            mean_dn /= cols as f32;
            mean_dnx /= cols as f32;
            for i in 0..cols {
                let xhat = (x[i] - m) * rs;
                dx[i] = rs * (dy[i] * weight[i] - mean_dn - xhat * mean_dnx);
            }
        });
}
