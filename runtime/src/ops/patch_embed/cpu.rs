//! CPU reference of `patch_embed`: im2col, then the `matmul` reference, then token assembly.

use rayon::prelude::*;

use crate::ops::Dims;
use crate::ops::matmul::cpu::matmul_forward;

/// cols (B*HW, C*P*P) <- pixels (B, C, H, W).
pub fn im2col(cols: &mut [f32], pixels: &[f32], d: &Dims) {
    let (c, h, w, p) = (d.channels, d.height, d.width, d.patch);
    let hw = d.patches();
    cols.par_chunks_mut(d.patch_len()).enumerate().for_each(|(row, col)| {
        let (b, pi) = (row / hw, row % hw);
        let (gy, gx) = (pi / d.grid_w, pi % d.grid_w);
        for ch in 0..c {
            for ky in 0..p {
                let src = ((b * c + ch) * h + gy * p + ky) * w + gx * p;
                let dst = (ch * p + ky) * p;
                col[dst..dst + p].copy_from_slice(&pixels[src..src + p]);
            }
        }
    });
}

/// x (B, N, D) <- [cls, registers, conv(pixels)] (+ pos).
#[allow(clippy::too_many_arguments)]
pub fn patch_embed_forward(
    x: &mut [f32],
    scratch: &mut [f32],
    pixels: &[f32],
    weight: &[f32],
    bias: &[f32],
    cls: &[f32],
    registers: &[f32],
    pos: Option<&[f32]>,
    d: &Dims,
) {
    let dim = d.dim;
    let hw = d.patches();
    let (cols, emb) = scratch.split_at_mut(d.batch * hw * d.patch_len());
    let emb = &mut emb[..d.batch * hw * dim];
    im2col(cols, pixels, d);
    matmul_forward(emb, cols, weight, Some(bias), d.patch_len(), dim, None);
    let n = d.tokens();
    x.par_chunks_mut(dim).enumerate().with_min_len(16).for_each(|(row, xr)| {
        let (b, t) = (row / n, row % n);
        if t == 0 {
            xr.copy_from_slice(cls);
            if let Some(pos) = pos {
                xr.iter_mut().zip(&pos[..dim]).for_each(|(v, p)| *v += p);
            }
        } else if t < d.prefix {
            xr.copy_from_slice(&registers[(t - 1) * dim..t * dim]);
        } else {
            let p = t - d.prefix;
            xr.copy_from_slice(&emb[(b * hw + p) * dim..(b * hw + p + 1) * dim]);
            if let Some(pos) = pos {
                xr.iter_mut().zip(&pos[(1 + p) * dim..(2 + p) * dim]).for_each(|(v, q)| *v += q);
            }
        }
    });
}
