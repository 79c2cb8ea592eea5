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
pub fn swiglu_forward(
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

multiversion! {
    fn rows_backward(dgate_up: &mut [f32], dout: &[f32], gate_up: &[f32], hidden: usize, a: Activation) {
        for ((dgu, dy), gu) in dgate_up.chunks_exact_mut(2 * hidden).zip(dout.chunks_exact(hidden)).zip(gate_up.chunks_exact(2 * hidden)) {
            let (g, u) = gu.split_at(hidden);
            let (dg, du) = dgu.split_at_mut(hidden);
            for i in 0..hidden {
                dg[i] = dy[i] * u[i] * act::derivative(a, g[i]);
                du[i] = dy[i] * act::apply(a, g[i]);
            }
        }
    }
}

/// Backward, as [`super::cpu::swiglu_backward`]: d gate_up (R, 2I) written (`=`).
#[allow(clippy::too_many_arguments)]
pub fn swiglu_backward(
    pool: &Pool,
    isa: Isa,
    dgate_up: &mut [f32],
    dout: &[f32],
    gate_up: &[f32],
    rows_n: usize,
    hidden: usize,
    a: Activation,
) {
    let d = RowsMut::new(&mut dgate_up[..rows_n * 2 * hidden], 2 * hidden);
    pool.run_rows(rows_n, 8, |r0, r1| {
        // SAFETY: disjoint row ranges.
        rows_backward(
            isa,
            unsafe { d.rows(r0, r1) },
            &dout[r0 * hidden..r1 * hidden],
            &gate_up[r0 * 2 * hidden..r1 * 2 * hidden],
            hidden,
            a,
        )
    });
}
