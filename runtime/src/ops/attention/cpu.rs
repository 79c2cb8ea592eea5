//! CPU reference of `attention`: one query at a time, online softmax over the keys
//! (running max m, running sum l, rescaled accumulator), so memory stays O(hd).

use rayon::prelude::*;

use super::MAX_HEAD_DIM;
use crate::ops::Dims;

/// Attention of one query vector against the keys and values of one head.
/// `kv` is the batch's qkv block (N rows of 3D); `k_off`, `v_off` locate the head in a row.
#[inline]
fn attend_one(out: &mut [f32], q: &[f32], kv: &[f32], row: usize, k_off: usize, v_off: usize, scale: f32) {
    let hd = q.len();
    let mut acc = [0.0f32; MAX_HEAD_DIM];
    let acc = &mut acc[..hd];
    let mut m = f32::NEG_INFINITY;
    let mut l = 0.0f32;
    for r in kv.chunks_exact(row) {
        let k = &r[k_off..k_off + hd];
        let mut s8 = [0.0f32; 8];
        for (i, (a, b)) in q.iter().zip(k).enumerate() {
            s8[i & 7] += a * b;
        }
        let s = (((s8[0] + s8[4]) + (s8[1] + s8[5])) + ((s8[2] + s8[6]) + (s8[3] + s8[7]))) * scale;
        let v = &r[v_off..v_off + hd];
        if s > m {
            // New maximum: rescale what was accumulated so far.
            let c = (m - s).exp();
            l *= c;
            for a in acc.iter_mut() {
                *a *= c;
            }
            m = s;
        }
        let p = (s - m).exp();
        l += p;
        for (a, vv) in acc.iter_mut().zip(v) {
            *a += p * vv;
        }
    }
    let inv = 1.0 / l;
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

/// out (B, N, D) = attention(qkv (B, N, 3D)).
pub fn attention_forward(out: &mut [f32], qkv: &[f32], d: &Dims) {
    let dim = d.dim;
    let hd = d.head_dim();
    assert!(hd <= MAX_HEAD_DIM, "head dim {hd} > {MAX_HEAD_DIM}");
    let n = d.tokens();
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(dim).enumerate().with_min_len(4).for_each(|(row, o)| {
        let b = row / n;
        let batch_qkv = &qkv[b * n * 3 * dim..(b + 1) * n * 3 * dim];
        let q_row = &qkv[row * 3 * dim..row * 3 * dim + dim];
        for h in 0..d.heads {
            attend_one(&mut o[h * hd..(h + 1) * hd], &q_row[h * hd..(h + 1) * hd], batch_qkv, 3 * dim, dim + h * hd, 2 * dim + h * hd, scale);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_explicit_softmax() {
        let d = Dims { batch: 2, channels: 3, height: 0, width: 0, patch: 1, grid_h: 1, grid_w: 5, prefix: 2, dim: 8, heads: 2, hidden: 8 };
        let n = d.tokens();
        let mut seed = 7u32;
        let qkv: Vec<f32> = (0..d.batch * n * 3 * d.dim)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                ((seed >> 8) as f32 / (1 << 24) as f32 - 0.5) * 6.0
            })
            .collect();
        let mut out = vec![0.0; d.batch * n * d.dim];
        attention_forward(&mut out, &qkv, &d);
        let hd = d.head_dim();
        for b in 0..d.batch {
            for h in 0..d.heads {
                for i in 0..n {
                    let at = |t: usize, part: usize, j: usize| qkv[((b * n + t) * 3 + part) * d.dim + h * hd + j] as f64;
                    let s: Vec<f64> = (0..n).map(|t| (0..hd).map(|j| at(i, 0, j) * at(t, 1, j)).sum::<f64>() / (hd as f64).sqrt()).collect();
                    let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                    for j in 0..hd {
                        let want: f64 = (0..n).map(|t| (s[t] - mx).exp() / z * at(t, 2, j)).sum();
                        let got = out[(b * n + i) * d.dim + h * hd + j] as f64;
                        assert!((got - want).abs() < 1e-5, "b{b} h{h} i{i} j{j}: {got} vs {want}");
                    }
                }
            }
        }
    }
}
