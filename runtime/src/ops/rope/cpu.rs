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

/// Rotates q and k of every patch token of qkv (B, N, 3D) in place.
pub fn rope_forward(qkv: &mut [f32], cos: &[f32], sin: &[f32], d: &Dims) {
    let dim = d.dim;
    let hd = d.head_dim();
    let n = d.tokens();
    qkv.par_chunks_mut(3 * dim).enumerate().with_min_len(16).for_each(|(row, t)| {
        let tok = row % n;
        if tok < d.prefix {
            return;
        }
        let p = tok - d.prefix;
        let (c, s) = (&cos[p * hd..(p + 1) * hd], &sin[p * hd..(p + 1) * hd]);
        // q and k are the first 2D values of the row; each is `heads` vectors of hd.
        for head in t[..2 * dim].chunks_exact_mut(hd) {
            rope_head(head, c, s);
        }
    });
}
