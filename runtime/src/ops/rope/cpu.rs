//! CPU reference of `rope`.

use rayon::prelude::*;

use crate::ops::Dims;

/// Rotates one head vector in place.
#[inline]
pub fn rope_head(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for j in 0..half {
        let (a, b) = (x[j], x[j + half]);
        x[j] = a * cos[j] - b * sin[j];
        x[j + half] = b * cos[j + half] + a * sin[j + half];
    }
}

/// Rotates q and k of the patch tokens among qkv rows `row0..` (each row 3D wide).
pub fn rope_rows(qkv: &mut [f32], row0: usize, cos: &[f32], sin: &[f32], d: &Dims) {
    let dim = d.dim;
    let hd = d.head_dim();
    let n = d.tokens();
    for (i, t) in qkv.chunks_exact_mut(3 * dim).enumerate() {
        let tok = (row0 + i) % n;
        if tok < d.prefix {
            continue;
        }
        let p = tok - d.prefix;
        let (c, s) = (&cos[p * hd..(p + 1) * hd], &sin[p * hd..(p + 1) * hd]);
        // q and k are the first 2D values of the row; each is `heads` vectors of hd.
        for head in t[..2 * dim].chunks_exact_mut(hd) {
            rope_head(head, c, s);
        }
    }
}

/// Rotates q and k of every patch token of qkv (B, N, 3D) in place.
pub fn rope_forward(qkv: &mut [f32], cos: &[f32], sin: &[f32], d: &Dims) {
    let row = 3 * d.dim;
    qkv.par_chunks_mut(16 * row)
        .enumerate()
        .for_each(|(i, rows)| rope_rows(rows, i * 16, cos, sin, d));
}

/// Backward of `rope` (a rotation, so its transpose): rotates the q and k gradients of the
/// patch tokens of dqkv (B, N, 3D) in place by the opposite angle.
pub fn rope_backward(dqkv: &mut [f32], cos: &[f32], sin: &[f32], d: &Dims) {
    let dim = d.dim;
    let hd = d.head_dim();
    let n = d.tokens();
    let half = hd / 2;
    dqkv.par_chunks_mut(3 * dim)
        .enumerate()
        .with_min_len(16)
        .for_each(|(row, t)| {
            let tok = row % n;
            if tok < d.prefix {
                return;
            }
            let p = tok - d.prefix;
            let (c, s) = (&cos[p * hd..(p + 1) * hd], &sin[p * hd..(p + 1) * hd]);
            for head in t[..2 * dim].chunks_exact_mut(hd) {
                for j in 0..half {
                    let (ga, gb) = (head[j], head[j + half]);
                    // y_a = a c_j - b s_j ; y_b = b c_{j+h} + a s_{j+h}
                    head[j] = ga * c[j] + gb * s[j + half];
                    head[j + half] = -ga * s[j] + gb * c[j + half];
                }
            }
        });
}
