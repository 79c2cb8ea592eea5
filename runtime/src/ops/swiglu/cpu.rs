//! CPU reference of `swiglu`.

use rayon::prelude::*;

use crate::config::Activation;
use crate::ops::activation::cpu::apply;

/// out (R, I) = act(gate_up[:, :I]) * gate_up[:, I:].
pub fn swiglu_forward(out: &mut [f32], gate_up: &[f32], hidden: usize, act: Activation) {
    out.par_chunks_mut(hidden).zip(gate_up.par_chunks(2 * hidden)).with_min_len(8).for_each(|(o, gu)| {
        let (g, u) = gu.split_at(hidden);
        for i in 0..hidden {
            o[i] = apply(act, g[i]) * u[i];
        }
    });
}
