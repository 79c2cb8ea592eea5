//! CPU forms of the optimizer's kernels (`adamw.cu`), named as they are.

use super::AdamwEma;

/// The sum of squares of `g` in f64, over fixed chunks in order (reproducible).
pub fn sum_squares(g: &[f32]) -> f64 {
    g.chunks(4096)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .sum()
}

/// Clip + AdamW with decoupled weight decay (as `torch.optim.AdamW`) + EMA, elementwise.
/// Values with `decay[i]` are shrunk by
/// `1 - lr * weight_decay` first; `ema = d ema + (1 - d) params`. Returns false when a
/// weight became non-finite.
pub fn adamw_ema(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    ema: &mut [f32],
    g: &[f32],
    decay: &[bool],
    a: &AdamwEma,
) -> bool {
    let mut finite = true;
    for i in 0..p.len() {
        let gi = if i < a.frozen { 0.0 } else { g[i] * a.gscale };
        m[i] = a.beta1 * m[i] + (1.0 - a.beta1) * gi;
        v[i] = a.beta2 * v[i] + (1.0 - a.beta2) * gi * gi;
        if i >= a.frozen {
            let shrink = if decay[i] { a.shrink } else { 1.0 };
            p[i] = p[i] * shrink - a.step * m[i] / (v[i].sqrt() / a.bc2_sqrt + a.eps);
        }
        ema[i] = a.ema_decay * ema[i] + (1.0 - a.ema_decay) * p[i];
        finite &= p[i].is_finite();
    }
    finite
}
