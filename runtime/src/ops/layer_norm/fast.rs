//! Fast CPU form of `layer_norm`: the same two-pass math as the reference, with 16-lane
//! partial sums and the row loop compiled for the CPU's SIMD family.

use crate::backend::cpu::isa::{Isa, multiversion};
use crate::backend::cpu::pool::{Pool, RowsMut};

#[inline(always)]
fn sum16(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let body = x.len() / 16 * 16;
    for c in x[..body].chunks_exact(16) {
        for l in 0..16 {
            acc[l] += f(c[l]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &v in &x[body..] {
        s += f(v);
    }
    s
}

multiversion! {
    fn rows(out: &mut [f32], inp: &[f32], weight: &[f32], bias: &[f32], cols: usize, eps: f32) {
        let n = cols as f32;
        for (o, x) in out.chunks_exact_mut(cols).zip(inp.chunks_exact(cols)) {
            let mean = sum16(x, |v| v) / n;
            let var = sum16(x, |v| (v - mean) * (v - mean)) / n;
            let rstd = 1.0 / (var + eps).sqrt();
            for i in 0..cols {
                o[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
            }
        }
    }
}

/// out (R, C) = layer_norm(inp (R, C)).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_fast(
    pool: &Pool,
    isa: Isa,
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows_n: usize,
    cols: usize,
    eps: f32,
) {
    let out = RowsMut::new(&mut out[..rows_n * cols], cols);
    pool.run_rows(rows_n, 8, |r0, r1| {
        // SAFETY: run_rows hands out disjoint row ranges.
        rows(
            isa,
            unsafe { out.rows(r0, r1) },
            &inp[r0 * cols..r1 * cols],
            weight,
            bias,
            cols,
            eps,
        )
    });
}
