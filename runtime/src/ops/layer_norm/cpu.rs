//! CPU reference of `layer_norm`: two passes per row (mean, then centred variance).

use rayon::prelude::*;

/// One row.
#[inline]
pub fn layer_norm_row(out: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum8(x.iter().copied()) / n;
    let var = sum8(x.iter().map(|&v| (v - mean) * (v - mean))) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for i in 0..x.len() {
        out[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
    }
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

/// out (R, C) = layer_norm(inp (R, C)).
pub fn layer_norm_forward(out: &mut [f32], inp: &[f32], weight: &[f32], bias: &[f32], cols: usize, eps: f32) {
    debug_assert_eq!(out.len(), inp.len());
    debug_assert_eq!(weight.len(), cols);
    out.par_chunks_mut(cols)
        .zip(inp.par_chunks(cols))
        .with_min_len(8)
        .for_each(|(o, x)| layer_norm_row(o, x, weight, bias, eps));
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
        layer_norm_forward(&mut out, &x, &w, &b, 4, 1e-5);
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
