//! Fast CPU form of `dwconv`: each output pixel's 16-channel blocks accumulate all 49 taps in
//! registers (one load and store of the output instead of 49), compiled for the CPU's SIMD
//! family. The sums run in the reference's order (bias, then ky-major taps, unfused), so
//! its results equal the reference's bit for bit.

use super::{DwDims, KERNEL};
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

#[cfg(test)]
mod tests {
    use super::*;

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
