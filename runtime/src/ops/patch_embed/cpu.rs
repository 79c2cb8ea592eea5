//! CPU reference of `patch_embed`: im2col and token assembly (the convolution between them is
//! the `matmul` reference).
//! The row helpers (`im2col_rows`, `assemble_rows`) are shared with the fast form.

use rayon::prelude::*;

use crate::ops::Dims;

/// The image, grid row and grid column of patch row `row`.
fn patch_at(row: usize, d: &Dims) -> (usize, usize, usize) {
    let (b, pi) = (row / d.patches(), row % d.patches());
    (b, pi / d.grid_w, pi % d.grid_w)
}

/// Patch rows `row0..` of cols (B*HW, C*P*P) <- pixels (B, C, H, W).
pub fn im2col_rows(cols: &mut [f32], row0: usize, pixels: &[f32], d: &Dims) {
    let (c, h, w, p) = (d.channels, d.height, d.width, d.patch);
    for (i, col) in cols.chunks_exact_mut(d.patch_len()).enumerate() {
        let (b, gy, gx) = patch_at(row0 + i, d);
        for ch in 0..c {
            for ky in 0..p {
                let src = ((b * c + ch) * h + gy * p + ky) * w + gx * p;
                let dst = (ch * p + ky) * p;
                col[dst..dst + p].copy_from_slice(&pixels[src..src + p]);
            }
        }
    }
}

/// Patch rows `row0..` of cols (B*HW, P*P*C) <- a channels-last map x (B, H, W, C), each
/// patch in (ky, kx, c) order (the conv weight permuted to (D, P, P, C) to match): a
/// ConvNeXt's downsampling conv. Each (patch row, ky) is one contiguous run of P*C values.
pub fn im2col_nhwc_rows(cols: &mut [f32], row0: usize, x: &[f32], d: &Dims) {
    let (c, h, w, p) = (d.channels, d.height, d.width, d.patch);
    for (i, col) in cols.chunks_exact_mut(d.patch_len()).enumerate() {
        let (b, gy, gx) = patch_at(row0 + i, d);
        for ky in 0..p {
            let src = ((b * h + gy * p + ky) * w + gx * p) * c;
            col[ky * p * c..(ky + 1) * p * c].copy_from_slice(&x[src..src + p * c]);
        }
    }
}

/// cols (B*HW, P*P*C) <- x (B, H, W, C): see [`im2col_nhwc_rows`].
pub fn patch_embed_forward_im2col_nhwc(cols: &mut [f32], x: &[f32], d: &Dims) {
    let pl = d.patch_len();
    cols[..d.batch * d.patches() * pl]
        .par_chunks_mut(pl * 16)
        .enumerate()
        .for_each(|(i, c)| im2col_nhwc_rows(c, i * 16, x, d));
}

/// Backward of [`patch_embed_forward_im2col_nhwc`]: dx (B, H, W, C) (=) each patch value's
/// gradient put back where it was read; pixels past the last full patch get zero.
pub fn patch_embed_backward_im2col_nhwc(dx: &mut [f32], dcols: &[f32], d: &Dims) {
    let (c, h, w, p) = (d.channels, d.height, d.width, d.patch);
    dx[..d.batch * h * w * c]
        .par_chunks_mut(w * c)
        .enumerate()
        .for_each(|(r, row)| {
            let (b, y) = (r / h, r % h);
            let (gy, ky) = (y / p, y % p);
            for (x, px) in row.chunks_exact_mut(c).enumerate() {
                let (gx, kx) = (x / p, x % p);
                if gy >= d.grid_h || gx >= d.grid_w {
                    px.fill(0.0);
                    continue;
                }
                let col = ((b * d.grid_h + gy) * d.grid_w + gx) * d.patch_len();
                let at = col + (ky * p + kx) * c;
                px.copy_from_slice(&dcols[at..at + c]);
            }
        });
}

/// Token rows `row0..` of x (B*N, D) <- [cls (+pos[0]), registers, emb (+pos[1..])].
#[allow(clippy::too_many_arguments)]
pub fn assemble_rows(
    x: &mut [f32],
    row0: usize,
    emb: &[f32],
    cls: &[f32],
    registers: &[f32],
    pos: Option<&[f32]>,
    d: &Dims,
) {
    let dim = d.dim;
    let (n, hw) = (d.tokens(), d.patches());
    for (i, xr) in x.chunks_exact_mut(dim).enumerate() {
        let (b, t) = ((row0 + i) / n, (row0 + i) % n);
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
                xr.iter_mut()
                    .zip(&pos[(1 + p) * dim..(2 + p) * dim])
                    .for_each(|(v, q)| *v += q);
            }
        }
    }
}

/// Step 1 (step 2 is the `matmul` reference): cols (B*HW, C*P*P) <- pixels (B, C, H, W).
pub fn patch_embed_forward_im2col(cols: &mut [f32], pixels: &[f32], d: &Dims) {
    let pl = d.patch_len();
    cols[..d.batch * d.patches() * pl]
        .par_chunks_mut(pl * 16)
        .enumerate()
        .for_each(|(i, c)| im2col_rows(c, i * 16, pixels, d));
}

/// Step 3: x (B*N, D) <- [cls, registers, emb] (+ pos).
pub fn patch_embed_forward_assemble(
    x: &mut [f32],
    emb: &[f32],
    cls: &[f32],
    registers: &[f32],
    pos: Option<&[f32]>,
    d: &Dims,
) {
    let dim = d.dim;
    x[..d.rows() * dim]
        .par_chunks_mut(dim * 16)
        .enumerate()
        .for_each(|(i, xr)| assemble_rows(xr, i * 16, emb, cls, registers, pos, d));
}

/// Backward of the token assembly: gradients of the CLS token, the registers and the patch
/// embeddings (rows of `demb`, (B*HW, D), written `=`) from dx (B, N, D). dcls and
/// dregisters are accumulated (`+=`). The conv weight and bias gradients are then a matmul
/// backward over `demb` and the im2col columns. (No gradient flows to the pixels.)
pub fn patch_embed_backward(
    demb: &mut [f32],
    dcls: &mut [f32],
    dregisters: &mut [f32],
    dx: &[f32],
    d: &Dims,
) {
    let (dim, n, hw) = (d.dim, d.tokens(), d.patches());
    for b in 0..d.batch {
        let xb = &dx[b * n * dim..(b + 1) * n * dim];
        dcls.iter_mut().zip(&xb[..dim]).for_each(|(a, g)| *a += g);
        dregisters
            .iter_mut()
            .zip(&xb[dim..d.prefix * dim])
            .for_each(|(a, g)| *a += g);
        demb[b * hw * dim..(b + 1) * hw * dim].copy_from_slice(&xb[d.prefix * dim..]);
    }
}
