//! Fast CPU form of `dwconv`: each output pixel's 16-channel blocks accumulate all 49 taps in
//! registers (one load and store of the output instead of 49), compiled for the CPU's SIMD
//! family. The sums run in the reference's order (bias, then ky-major taps, unfused), so
//! its results equal the reference's bit for bit.

use super::{DwDims, KERNEL, TAPS};
use crate::backend::cpu::isa::{Isa, multiversion};
use crate::backend::cpu::pool::{Pool, RowsMut};

const LANES: usize = 16;

/// `G` 16-channel blocks of one output pixel from `c0`: bias, then every tap in order.
#[inline(always)]
fn pixel_blocks<const G: usize>(
    o: &mut [f32],
    c0: usize,
    bias: &[f32],
    inp: &[f32],
    weight: &[f32],
    taps: impl Iterator<Item = (usize, usize)>,
) {
    let mut acc = [[0.0f32; LANES]; G];
    for (g, a) in acc.iter_mut().enumerate() {
        a.copy_from_slice(&bias[c0 + g * LANES..c0 + (g + 1) * LANES]);
    }
    for (src, t) in taps {
        let (v, wt) = (
            &inp[src + c0..src + c0 + G * LANES],
            &weight[t + c0..t + c0 + G * LANES],
        );
        for (g, a) in acc.iter_mut().enumerate() {
            for l in 0..LANES {
                a[l] += wt[g * LANES + l] * v[g * LANES + l];
            }
        }
    }
    for (g, a) in acc.iter().enumerate() {
        o[c0 + g * LANES..c0 + (g + 1) * LANES].copy_from_slice(a);
    }
}

multiversion! {
    fn rows(out: &mut [f32], row0: usize, inp: &[f32], weight: &[f32], bias: &[f32], d: &DwDims) {
        let (h, w, c) = (d.height, d.width, d.channels);
        let pad = KERNEL / 2;
        let blocks = c / LANES * LANES;
        for (i, orow) in out.chunks_exact_mut(w * c).enumerate() {
            let (b, y) = ((row0 + i) / h, (row0 + i) % h);
            let ky0 = pad.saturating_sub(y);
            let ky1 = (h + pad - y).min(KERNEL);
            for x in 0..w {
                let kx0 = pad.saturating_sub(x);
                let kx1 = (w + pad - x).min(KERNEL);
                let o = &mut orow[x * c..(x + 1) * c];
                // Every tap of the pixel, in order: (input offset, weight offset) of channel 0.
                let taps = (ky0..ky1).flat_map(|ky| {
                    let irow = (b * h + y + ky - pad) * w;
                    (kx0..kx1).map(move |kx| ((irow + x + kx - pad) * c, (ky * KERNEL + kx) * c))
                });
                // Four 16-channel blocks at a time: four independent add chains (one chain
                // waits on each add's latency), then single blocks, then the tail.
                let quads = blocks / (4 * LANES) * (4 * LANES);
                for c0 in (0..quads).step_by(4 * LANES) {
                    pixel_blocks::<4>(o, c0, bias, inp, weight, taps.clone());
                }
                for c0 in (quads..blocks).step_by(LANES) {
                    pixel_blocks::<1>(o, c0, bias, inp, weight, taps.clone());
                }
                for ch in blocks..c {
                    let mut acc = bias[ch];
                    for (src, t) in taps.clone() {
                        acc += weight[t + ch] * inp[src + ch];
                    }
                    o[ch] = acc;
                }
            }
        }
    }
}

/// out (B, H, W, C) = dwconv(inp) on the pool, rows of pixels split between its threads.
pub fn dwconv_forward(
    pool: &Pool,
    isa: Isa,
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    d: &DwDims,
) {
    let row = d.width * d.channels;
    let out = RowsMut::new(&mut out[..d.len()], row);
    pool.run_rows(d.rows(), 1, |r0, r1| {
        // SAFETY: run_rows hands out disjoint row ranges.
        rows(isa, unsafe { out.rows(r0, r1) }, r0, inp, weight, bias, d)
    });
}

multiversion! {
    /// `out` (=) row `t` of the weight gradient's sums (see `cpu::weight_grad_sums`), as f32.
    fn weight_grad_row(out: &mut [f32], t: usize, dout: &[f32], inp: &[f32], d: &DwDims) {
        let s = super::cpu::weight_grad_sums(t, dout, inp, d);
        out.iter_mut().zip(&s).for_each(|(o, &v)| *o = v as f32);
    }
}

/// Backward of `dwconv` on the pool, bit for bit the reference's (`cpu::dwconv_backward`):
/// din (=) is the fast forward with the taps flipped; dweight (49, C) and dbias (C) (+=) are
/// one task per tap and one for the bias, each summing in the reference's order.
#[allow(clippy::too_many_arguments)]
pub fn dwconv_backward(
    pool: &Pool,
    isa: Isa,
    din: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    d: &DwDims,
) {
    let c = d.channels;
    let flipped = super::cpu::flipped_taps(weight, c);
    dwconv_forward(pool, isa, din, dout, &flipped, &vec![0.0; c], d);
    let mut sums = vec![0.0f32; (TAPS + 1) * c];
    let rows = RowsMut::new(&mut sums, c);
    pool.run(TAPS + 1, |t| {
        // SAFETY: each task writes only its own row.
        weight_grad_row(isa, unsafe { rows.rows(t, t + 1) }, t, dout, inp, d);
    });
    let (w, b) = sums.split_at(TAPS * c);
    dweight[..TAPS * c]
        .iter_mut()
        .zip(w)
        .for_each(|(o, &v)| *o += v);
    dbias[..c].iter_mut().zip(b).for_each(|(o, &v)| *o += v);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's backward equals the reference's bit for bit on every family.
    #[test]
    fn backward_equals_the_reference_on_every_family() {
        let pool = Pool::new(3).unwrap();
        for (batch, height, width, channels) in [(2, 5, 9, 3), (1, 9, 2, 40), (2, 8, 11, 24)] {
            let d = DwDims {
                batch,
                height,
                width,
                channels,
            };
            let (inp, w, _) = crate::ops::dwconv::test_case(&d);
            let dout: Vec<f32> = inp.iter().rev().map(|v| v * 0.7 + 0.1).collect();
            let (n, c) = (d.len(), d.channels);
            let mut want = (vec![0.0; n], vec![0.5; TAPS * c], vec![0.5; c]);
            crate::ops::dwconv::cpu::dwconv_backward(
                &mut want.0,
                &mut want.1,
                &mut want.2,
                &dout,
                &inp,
                &w,
                &d,
            );
            for isa in Isa::all_supported() {
                let mut got = (vec![f32::NAN; n], vec![0.5; TAPS * c], vec![0.5; c]);
                dwconv_backward(
                    &pool, isa, &mut got.0, &mut got.1, &mut got.2, &dout, &inp, &w, &d,
                );
                assert!(got == want, "{isa} {d:?}");
            }
        }
    }

    /// Every SIMD family equals the reference bit for bit, on maps narrower than the kernel,
    /// channel counts with and without a tail past the 16-lane blocks, and batch 2.
    #[test]
    fn equals_the_reference_on_every_family() {
        let pool = Pool::new(2).unwrap();
        for (batch, height, width, channels) in [
            (1, 5, 9, 3),
            (2, 1, 4, 40),
            (1, 9, 2, 16),
            (2, 8, 11, 24),
            (1, 14, 14, 96),
        ] {
            let d = DwDims {
                batch,
                height,
                width,
                channels,
            };
            let (inp, w, bias) = crate::ops::dwconv::test_case(&d);
            let mut want = vec![0.0; d.len()];
            crate::ops::dwconv::cpu::dwconv_forward(&mut want, &inp, &w, &bias, &d);
            for isa in Isa::all_supported() {
                let mut got = vec![f32::NAN; d.len()];
                dwconv_forward(&pool, isa, &mut got, &inp, &w, &bias, &d);
                assert!(got == want, "{isa} {d:?}");
            }
        }
    }
}
