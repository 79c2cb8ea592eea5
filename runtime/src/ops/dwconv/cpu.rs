//! CPU reference of `dwconv`: one output row of pixels at a time, each tap a contiguous run
//! of channels added to the whole row (the readable form; `fast.rs` keeps each pixel's sums
//! in registers).

use rayon::prelude::*;

use super::{DwDims, KERNEL, TAPS};

/// Output rows `row0..` (each W*C values, row = b*H + y) of out <- dwconv(inp).
pub fn dwconv_rows(
    out: &mut [f32],
    row0: usize,
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    d: &DwDims,
) {
    let (h, w, c) = (d.height, d.width, d.channels);
    let pad = KERNEL / 2;
    for (i, orow) in out.chunks_exact_mut(w * c).enumerate() {
        let (b, y) = ((row0 + i) / h, (row0 + i) % h);
        for px in orow.chunks_exact_mut(c) {
            px.copy_from_slice(bias);
        }
        for ky in 0..KERNEL {
            let Some(iy) = (y + ky).checked_sub(pad).filter(|&iy| iy < h) else {
                continue;
            };
            let irow = &inp[(b * h + iy) * w * c..(b * h + iy + 1) * w * c];
            for kx in 0..KERNEL {
                let tap = &weight[(ky * KERNEL + kx) * c..(ky * KERNEL + kx + 1) * c];
                // Output columns whose input column x + kx - pad lies inside the row.
                let x0 = pad.saturating_sub(kx);
                let x1 = (w + pad).saturating_sub(kx).min(w);
                for x in x0..x1 {
                    let ix = x + kx - pad;
                    let o = &mut orow[x * c..(x + 1) * c];
                    let v = &irow[ix * c..(ix + 1) * c];
                    for ((o, &v), &t) in o.iter_mut().zip(v).zip(tap) {
                        *o += t * v;
                    }
                }
            }
        }
    }
}

/// out (B, H, W, C) = dwconv(inp), rows in parallel on the current rayon pool.
pub fn dwconv_forward(out: &mut [f32], inp: &[f32], weight: &[f32], bias: &[f32], d: &DwDims) {
    let row = d.width * d.channels;
    out[..d.len()]
        .par_chunks_mut(row)
        .enumerate()
        .for_each(|(r, o)| dwconv_rows(o, r, inp, weight, bias, d));
}

/// The taps flipped (the transposed convolution's weight, for din).
pub fn flipped_taps(weight: &[f32], c: usize) -> Vec<f32> {
    (0..TAPS)
        .flat_map(|t| weight[(TAPS - 1 - t) * c..(TAPS - t) * c].iter().copied())
        .collect()
}

/// Row `t` of dweight's sums (`t == TAPS`: dbias's): each output row of pixels summed in f32
/// (channels are independent lanes), the rows summed in f64 in order. The fast form runs
/// this body compiled for the CPU's SIMD family, with the same bits.
#[inline(always)]
pub fn weight_grad_sums(t: usize, dout: &[f32], inp: &[f32], d: &DwDims) -> Vec<f64> {
    let (h, w, c) = (d.height, d.width, d.channels);
    let pad = KERNEL / 2;
    let (ky, kx) = (t / KERNEL, t % KERNEL);
    // Output columns whose input column x + kx - pad lies inside the row.
    let (x0, x1) = (pad.saturating_sub(kx), (w + pad).saturating_sub(kx).min(w));
    let mut acc = vec![0.0f64; c];
    let mut row = vec![0.0f32; c];
    for b in 0..d.batch {
        for y in 0..h {
            let g = &dout[(b * h + y) * w * c..(b * h + y + 1) * w * c];
            row.fill(0.0);
            if t == TAPS {
                for gp in g.chunks_exact(c) {
                    row.iter_mut().zip(gp).for_each(|(r, &g)| *r += g);
                }
            } else {
                let Some(iy) = (y + ky).checked_sub(pad).filter(|&iy| iy < h) else {
                    continue;
                };
                let v = &inp[(b * h + iy) * w * c..(b * h + iy + 1) * w * c];
                for x in x0..x1 {
                    let (gp, vp) = (&g[x * c..(x + 1) * c], &v[(x + kx - pad) * c..][..c]);
                    for ((r, &g), &v) in row.iter_mut().zip(gp).zip(vp) {
                        *r += g * v;
                    }
                }
            }
            acc.iter_mut().zip(&row).for_each(|(a, &r)| *a += r as f64);
        }
    }
    acc
}

/// Backward of `dwconv` for dout (B, H, W, C): din (=) the transposed convolution of dout
/// (the forward with the taps flipped and no bias); dweight (49, C) and dbias (C) (+=), each
/// summed in a fixed order ([`weight_grad_sums`]), so any thread count gives the same bits.
pub fn dwconv_backward(
    din: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    d: &DwDims,
) {
    let c = d.channels;
    dwconv_forward(din, dout, &flipped_taps(weight, c), &vec![0.0; c], d);
    // One task per tap (its row of dweight) and one for the bias.
    let sums: Vec<Vec<f64>> = (0..=TAPS)
        .into_par_iter()
        .map(|t| weight_grad_sums(t, dout, inp, d))
        .collect();
    for (t, s) in sums.iter().enumerate() {
        let dst = if t == TAPS {
            &mut dbias[..c]
        } else {
            &mut dweight[t * c..(t + 1) * c]
        };
        dst.iter_mut().zip(s).for_each(|(o, &v)| *o += v as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::dwconv::{TAPS, weight_taps_major};

    /// The definition, straight: every output value summed over its taps.
    fn naive(inp: &[f32], hf_w: &[f32], bias: &[f32], d: &DwDims) -> Vec<f32> {
        let (h, w, c) = (d.height as i64, d.width as i64, d.channels);
        let mut out = vec![0.0f32; d.len()];
        for b in 0..d.batch as i64 {
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..c {
                        let mut acc = bias[ch];
                        for ky in 0..7i64 {
                            for kx in 0..7i64 {
                                let (iy, ix) = (y + ky - 3, x + kx - 3);
                                if iy < 0 || iy >= h || ix < 0 || ix >= w {
                                    continue;
                                }
                                let v = inp[(((b * h + iy) * w + ix) as usize) * c + ch];
                                acc += hf_w[ch * TAPS + (ky * 7 + kx) as usize] * v;
                            }
                        }
                        out[(((b * h + y) * w + x) as usize) * c + ch] = acc;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_on_small_and_edge_sizes() {
        // Maps narrower than the kernel, one row, and batch 2.
        for (batch, height, width, channels) in
            [(1, 5, 9, 3), (2, 1, 4, 5), (1, 9, 2, 8), (2, 8, 8, 16)]
        {
            let d = DwDims {
                batch,
                height,
                width,
                channels,
            };
            let (inp, hf_w, bias) = crate::ops::dwconv::test_case(&d);
            let mut out = vec![f32::NAN; d.len()];
            dwconv_forward(
                &mut out,
                &inp,
                &weight_taps_major(&hf_w, channels),
                &bias,
                &d,
            );
            let want = naive(&inp, &hf_w, &bias, &d);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{d:?} at {i}: {a} vs {b}"
                );
            }
        }
    }
}
