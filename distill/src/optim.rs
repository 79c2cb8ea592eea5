//! AdamW with decoupled weight decay (as `torch.optim.AdamW`), a linear-warmup + cosine
//! learning-rate schedule, global-norm gradient clipping and an EMA copy of the weights.
//! Every loop is elementwise or a fixed-order reduction, so a step is bitwise reproducible.

use serde::{Deserialize, Serialize};

use dinoedge_runtime::ops::adamw::AdamwEma;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub lr: f32,
    /// Learning rate at the end of the cosine.
    pub min_lr: f32,
    pub warmup: usize,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global gradient-norm limit (0 = no clipping).
    pub clip: f32,
    /// EMA decay (ramped up as `min(decay, (1 + t) / (10 + t))`).
    pub ema: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 5e-4,
            min_lr: 1e-6,
            warmup: 100,
            weight_decay: 0.04,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip: 3.0,
            ema: 0.999,
        }
    }
}

/// Learning rate at `step` (0-based) of `total`: linear warmup to `lr`, then cosine to `min_lr`.
pub fn lr_at(c: &OptimConfig, step: usize, total: usize) -> f32 {
    if step < c.warmup {
        return c.lr * (step + 1) as f32 / c.warmup as f32;
    }
    let span = total.saturating_sub(c.warmup).max(1) as f64;
    let progress = ((step - c.warmup) as f64 / span).min(1.0);
    (c.min_lr as f64
        + 0.5 * (c.lr - c.min_lr) as f64 * (1.0 + (std::f64::consts::PI * progress).cos()))
        as f32
}

/// Adam moments (of a checkpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl AdamW {
    pub fn new(n: usize) -> Self {
        AdamW {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
}

/// The arguments of one update at 1-based step `t` with learning rate `lr`: gradients
/// scaled by `gscale` first; values before `frozen` keep their weights.
pub fn adamw_ema_args(c: &OptimConfig, lr: f32, t: usize, gscale: f32, frozen: usize) -> AdamwEma {
    let bc1 = 1.0 - (c.beta1 as f64).powi(t as i32);
    let bc2 = 1.0 - (c.beta2 as f64).powi(t as i32);
    AdamwEma {
        frozen,
        gscale,
        beta1: c.beta1,
        beta2: c.beta2,
        eps: c.eps,
        shrink: 1.0 - lr * c.weight_decay,
        step: (lr as f64 / bc1) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
        ema_decay: c.ema.min((1.0 + t as f32) / (10.0 + t as f32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamLayout;
    use dinoedge_runtime::ops::adamw::cpu::adamw_ema;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let c = OptimConfig {
            lr: 1.0,
            min_lr: 0.1,
            warmup: 10,
            ..Default::default()
        };
        assert!((lr_at(&c, 0, 100) - 0.1).abs() < 1e-6);
        assert!((lr_at(&c, 9, 100) - 1.0).abs() < 1e-6);
        assert!((lr_at(&c, 10, 100) - 1.0).abs() < 1e-6);
        assert!((lr_at(&c, 55, 100) - 0.55).abs() < 1e-6);
        assert!((lr_at(&c, 100, 100) - 0.1).abs() < 1e-6);
        assert!(lr_at(&c, 30, 100) > lr_at(&c, 31, 100));
    }

    #[test]
    fn adamw_matches_the_torch_formula() {
        // One parameter, two steps, against torch.optim.AdamW's update written out in f64.
        let cfg = dinoedge_runtime::config::VitConfig::from_json_str(
            r#"{"model_type":"dinov3_vit","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":8,"patch_size":2,"num_register_tokens":0}"#,
            std::path::Path::new("test"),
        )
        .unwrap();
        let layout = ParamLayout::new(&cfg.into(), &[]);
        let n = layout.total;
        let c = OptimConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut p = vec![1.0f32; n];
        let (mut m, mut v, mut ema) = (vec![0.0f32; n], vec![0.0f32; n], vec![1.0f32; n]);
        let decay = layout.decay_flags();
        for (t, g) in [(1, 0.5f32), (2, -0.25)] {
            let a = adamw_ema_args(&c, 0.1, t, 1.0, 0);
            let g = vec![g; n];
            assert!(adamw_ema(&mut p, &mut m, &mut v, &mut ema, &g, &decay, &a));
        }
        for e in &layout.entries {
            let wd = if e.decay { 0.5 } else { 0.0 };
            let (mut x, mut m, mut v) = (1.0f64, 0.0f64, 0.0f64);
            for (t, g) in [(1, 0.5f64), (2, -0.25)] {
                x *= 1.0 - 0.1 * wd;
                m = 0.9 * m + 0.1 * g;
                v = 0.999 * v + 0.001 * g * g;
                let (mh, vh) = (m / (1.0 - 0.9f64.powi(t)), v / (1.0 - 0.999f64.powi(t)));
                x -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
            let got = p[e.range.start] as f64;
            assert!((got - x).abs() < 1e-6, "{}: {got} vs {x}", e.name);
        }
    }
}
