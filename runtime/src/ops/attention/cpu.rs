//! CPU reference of `attention`: one query at a time, online softmax over the keys
//! (running max m, running sum l, rescaled accumulator), so memory stays O(hd).

use rayon::prelude::*;

use super::MAX_HEAD_DIM;
use crate::ops::Dims;

/// Attention of one query vector against the keys and values of one head; returns the log
/// of its softmax normaliser (max + ln sum exp), which the backward needs.
/// `kv` is the batch's qkv block (N rows of 3D); `k_off`, `v_off` locate the head in a row.
#[inline]
fn attend_one(
    out: &mut [f32],
    q: &[f32],
    kv: &[f32],
    row: usize,
    k_off: usize,
    v_off: usize,
    scale: f32,
) -> f32 {
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
    m + l.ln()
}

/// Every head of token `row`: out row (D) and, when given, `lse(h)` per head.
fn attend_row(o: &mut [f32], row: usize, qkv: &[f32], d: &Dims, mut lse: impl FnMut(usize, f32)) {
    let (dim, hd, n) = (d.dim, d.head_dim(), d.tokens());
    let scale = 1.0 / (hd as f32).sqrt();
    let b = row / n;
    let batch_qkv = &qkv[b * n * 3 * dim..(b + 1) * n * 3 * dim];
    let q_row = &qkv[row * 3 * dim..row * 3 * dim + dim];
    for h in 0..d.heads {
        let l = attend_one(
            &mut o[h * hd..(h + 1) * hd],
            &q_row[h * hd..(h + 1) * hd],
            batch_qkv,
            3 * dim,
            dim + h * hd,
            2 * dim + h * hd,
            scale,
        );
        lse(h, l);
    }
}

/// out (B, N, D) = attention(qkv (B, N, 3D)).
pub fn attention_forward(out: &mut [f32], qkv: &[f32], d: &Dims) {
    let hd = d.head_dim();
    assert!(hd <= MAX_HEAD_DIM, "head dim {hd} > {MAX_HEAD_DIM}");
    out.par_chunks_mut(d.dim)
        .enumerate()
        .with_min_len(4)
        .for_each(|(row, o)| attend_row(o, row, qkv, d, |_, _| {}));
}

/// Training forward: [`attention_forward`], also saving `lse[(b*heads + h)*N + i]`, the log
/// of the softmax normaliser of query i, for the backward.
pub fn attention_forward_lse(out: &mut [f32], lse: &mut [f32], qkv: &[f32], d: &Dims) {
    let hd = d.head_dim();
    assert!(hd <= MAX_HEAD_DIM, "head dim {hd} > {MAX_HEAD_DIM}");
    let (n, heads) = (d.tokens(), d.heads);
    // Rows are computed in parallel; their lse values are scattered afterwards (per row,
    // heads apart in `lse`).
    let per_row: Vec<Vec<f32>> = out
        .par_chunks_mut(d.dim)
        .enumerate()
        .with_min_len(4)
        .map(|(row, o)| {
            let mut l = vec![0.0f32; heads];
            attend_row(o, row, qkv, d, |h, v| l[h] = v);
            l
        })
        .collect();
    for (row, l) in per_row.iter().enumerate() {
        let (b, i) = (row / n, row % n);
        for (h, &v) in l.iter().enumerate() {
            lse[(b * heads + h) * n + i] = v;
        }
    }
}

/// Backward of `attention`: dqkv (B, N, 3D) is written (`=`) from dout (B, N, D), the
/// post-RoPE qkv, the output and the saved `lse`.
///
/// Per head, with P = exp(q kᵀ * s - lse) and D_i = dout_i · out_i:
///   dv_j = sum_i P_ij dout_i,  dS_ij = P_ij (dout_i · v_j - D_i),
///   dq_i = s sum_j dS_ij k_j,  dk_j = s sum_i dS_ij q_i.
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    d: &Dims,
) {
    let (dim, hd, n, heads) = (d.dim, d.head_dim(), d.tokens(), d.heads);
    let scale = 1.0 / (hd as f32).sqrt();
    // One task per (batch, head); each returns its (dq, dk, dv) rows.
    let grads: Vec<(usize, Vec<f32>)> = (0..d.batch * heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / heads, bh % heads);
            let at =
                |t: usize, part: usize| &qkv[(b * n + t) * 3 * dim + part * dim + h * hd..][..hd];
            let row = |buf: &'_ [f32], t: usize| -> Vec<f32> {
                buf[(b * n + t) * dim + h * hd..][..hd].to_vec()
            };
            let mut g = vec![0.0f32; 3 * n * hd]; // [dq | dk | dv], each n x hd
            for i in 0..n {
                let (q, dy, o) = (at(i, 0), row(dout, i), row(out, i));
                let di: f32 = dy.iter().zip(&o).map(|(a, b)| a * b).sum();
                for j in 0..n {
                    let (k, v) = (at(j, 1), at(j, 2));
                    let s: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                    let p = (s - lse[bh * n + i]).exp();
                    let dp: f32 = dy.iter().zip(v).map(|(a, b)| a * b).sum();
                    let ds = p * (dp - di);
                    for t in 0..hd {
                        g[i * hd + t] += scale * ds * k[t];
                        g[(n + j) * hd + t] += scale * ds * q[t];
                        g[(2 * n + j) * hd + t] += p * dy[t];
                    }
                }
            }
            (bh, g)
        })
        .collect();
    for (bh, g) in grads {
        let (b, h) = (bh / heads, bh % heads);
        for part in 0..3 {
            for t in 0..n {
                dqkv[(b * n + t) * 3 * dim + part * dim + h * hd..][..hd]
                    .copy_from_slice(&g[(part * n + t) * hd..][..hd]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_explicit_softmax() {
        let d = Dims {
            batch: 2,
            channels: 3,
            height: 0,
            width: 0,
            patch: 1,
            grid_h: 1,
            grid_w: 5,
            prefix: 2,
            dim: 8,
            heads: 2,
            hidden: 8,
        };
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
                    let at = |t: usize, part: usize, j: usize| {
                        qkv[((b * n + t) * 3 + part) * d.dim + h * hd + j] as f64
                    };
                    let s: Vec<f64> = (0..n)
                        .map(|t| {
                            (0..hd).map(|j| at(i, 0, j) * at(t, 1, j)).sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                    for j in 0..hd {
                        let want: f64 = (0..n).map(|t| (s[t] - mx).exp() / z * at(t, 2, j)).sum();
                        let got = out[(b * n + i) * d.dim + h * hd + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "b{b} h{h} i{i} j{j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
