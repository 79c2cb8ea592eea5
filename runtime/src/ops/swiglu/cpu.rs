//! CPU reference of `swiglu`.

use rayon::prelude::*;

use crate::config::Activation;
use crate::ops::activation::cpu::apply;

/// out (R, I) = act(gate_up[:, :I]) * gate_up[:, I:].
pub fn swiglu_forward(out: &mut [f32], gate_up: &[f32], hidden: usize, act: Activation) {
    out.par_chunks_mut(hidden)
        .zip(gate_up.par_chunks(2 * hidden))
        .with_min_len(8)
        .for_each(|(o, gu)| {
            let (g, u) = gu.split_at(hidden);
            for i in 0..hidden {
                o[i] = apply(act, g[i]) * u[i];
            }
        });
}

/// Backward of `swiglu`: with out = act(g) * u, d gate_up (R, 2I) is written (`=`):
/// dg = dout * u * act'(g), du = dout * act(g).
pub fn swiglu_backward(
    dgate_up: &mut [f32],
    dout: &[f32],
    gate_up: &[f32],
    hidden: usize,
    act: Activation,
) {
    use crate::ops::activation::cpu::derivative;
    dgate_up
        .par_chunks_mut(2 * hidden)
        .zip(dout.par_chunks(hidden))
        .zip(gate_up.par_chunks(2 * hidden))
        .with_min_len(8)
        .for_each(|((dgu, dy), gu)| {
            let (g, u) = gu.split_at(hidden);
            let (dg, du) = dgu.split_at_mut(hidden);
            for i in 0..hidden {
                dg[i] = dy[i] * u[i] * derivative(act, g[i]);
                du[i] = dy[i] * apply(act, g[i]);
            }
        });
}
