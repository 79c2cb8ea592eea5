//! Fast CPU form of `swiglu`: vectorisable activation, rows spread over the pool.

use crate::backend::cpu::isa::{Isa, multiversion};
use crate::backend::cpu::pool::{Pool, RowsMut};
use crate::config::Activation;
use crate::ops::activation::fast as act;

multiversion! {
    fn rows(out: &mut [f32], gate_up: &[f32], hidden: usize, a: Activation) {
        for (o, gu) in out.chunks_exact_mut(hidden).zip(gate_up.chunks_exact(2 * hidden)) {
            let (g, u) = gu.split_at(hidden);
            match a {
                Activation::Silu => (0..hidden).for_each(|i| o[i] = act::silu(g[i]) * u[i]),
                Activation::Gelu => (0..hidden).for_each(|i| o[i] = act::gelu(g[i]) * u[i]),
                Activation::GeluTanh => (0..hidden).for_each(|i| o[i] = act::gelu_tanh(g[i]) * u[i]),
            }
        }
    }
}

/// out (R, I) = act(gate_up[:, :I]) * gate_up[:, I:].
pub fn swiglu_fast(
    pool: &Pool,
    isa: Isa,
    out: &mut [f32],
    gate_up: &[f32],
    rows_n: usize,
    hidden: usize,
    a: Activation,
) {
    let out = RowsMut::new(&mut out[..rows_n * hidden], hidden);
    pool.run_rows(rows_n, 8, |r0, r1| {
        // SAFETY: disjoint row ranges.
        rows(
            isa,
            unsafe { out.rows(r0, r1) },
            &gate_up[r0 * 2 * hidden..r1 * 2 * hidden],
            hidden,
            a,
        )
    });
}
