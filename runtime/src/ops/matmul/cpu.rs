//! CPU reference of `matmul`: cache-tiled dot products, parallel over tiles of rows.
//!
//! Each output is one dot product of a row of `inp` with a row of `weight`, summed in 8
//! independent lanes. Tiles keep a block of weight rows hot in cache while a block of
//! input rows streams past it.

use rayon::prelude::*;

use crate::ops::activation::cpu::apply;
use crate::ops::matmul::Epi;

/// Rows of `inp` per parallel task.
const ROW_BLOCK: usize = 16;
/// Weight rows kept in cache while a row block is processed.
const COL_BLOCK: usize = 64;

/// 8-lane dot products of one input row with four weight rows.
#[inline(always)]
fn dot4(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    let k = x.len();
    let mut acc = [[0.0f32; 8]; 4];
    let body = k / 8 * 8;
    for c in (0..body).step_by(8) {
        let xs: &[f32; 8] = x[c..c + 8].try_into().unwrap();
        for (j, wj) in w.iter().enumerate() {
            let ws: &[f32; 8] = wj[c..c + 8].try_into().unwrap();
            for l in 0..8 {
                acc[j][l] += xs[l] * ws[l];
            }
        }
    }
    let mut out = [0.0f32; 4];
    for j in 0..4 {
        let a = &acc[j];
        let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for c in body..k {
            s += x[c] * w[j][c];
        }
        out[j] = s;
    }
    out
}

#[inline(always)]
fn dot1(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let body = x.len() / 8 * 8;
    for (xs, ws) in x[..body].chunks_exact(8).zip(w[..body].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += xs[l] * ws[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for c in body..x.len() {
        s += x[c] * w[c];
    }
    s
}

/// Writes one output through the epilogue.
#[inline(always)]
fn store(y: &mut f32, acc: f32, bias: f32, col: usize, epi: Epi) {
    match epi {
        Epi::Store => *y = acc + bias,
        Epi::Act(a) => *y = apply(a, acc + bias),
        Epi::Residual(gamma) => *y += gamma[col] * (acc + bias),
    }
}

/// out (R, O) = epilogue(inp (R, K) · weight (O, K)ᵀ + bias (O)).
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    k: usize,
    o: usize,
    epi: Epi,
) {
    debug_assert_eq!(weight.len(), o * k);
    debug_assert_eq!(inp.len() / k, out.len() / o);
    let b = |c: usize| bias.map_or(0.0, |b| b[c]);
    out.par_chunks_mut(ROW_BLOCK * o)
        .zip(inp.par_chunks(ROW_BLOCK * k))
        .for_each(|(out_blk, in_blk)| {
            let rows = in_blk.len() / k;
            for c0 in (0..o).step_by(COL_BLOCK) {
                let c1 = (c0 + COL_BLOCK).min(o);
                for r in 0..rows {
                    let x = &in_blk[r * k..(r + 1) * k];
                    let y = &mut out_blk[r * o..(r + 1) * o];
                    let mut c = c0;
                    while c + 4 <= c1 {
                        let w = [0, 1, 2, 3].map(|j| &weight[(c + j) * k..(c + j + 1) * k]);
                        let s = dot4(x, w);
                        for j in 0..4 {
                            store(&mut y[c + j], s[j], b(c + j), c + j, epi);
                        }
                        c += 4;
                    }
                    for cc in c..c1 {
                        store(
                            &mut y[cc],
                            dot1(x, &weight[cc * k..(cc + 1) * k]),
                            b(cc),
                            cc,
                            epi,
                        );
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(inp: &[f32], w: &[f32], b: &[f32], k: usize, o: usize) -> Vec<f32> {
        let r = inp.len() / k;
        let mut out = vec![0.0; r * o];
        for i in 0..r {
            for j in 0..o {
                let mut s = b[j] as f64;
                for t in 0..k {
                    s += inp[i * k + t] as f64 * w[j * k + t] as f64;
                }
                out[i * o + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_on_odd_shapes() {
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for (r, k, o) in [(1, 1, 1), (3, 7, 5), (17, 33, 67), (33, 64, 130), (2, 9, 4)] {
            let inp: Vec<f32> = (0..r * k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..o * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..o).map(|_| rnd()).collect();
            let mut out = vec![f32::NAN; r * o];
            matmul_forward(&mut out, &inp, &w, Some(&b), k, o, Epi::Store);
            let want = naive(&inp, &w, &b, k, o);
            for (a, e) in out.iter().zip(&want) {
                assert!((a - e).abs() < 1e-5, "({r},{k},{o}): {a} vs {e}");
            }
        }
    }
}
