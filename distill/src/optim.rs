//! AdamW with decoupled weight decay (as `torch.optim.AdamW`), a linear-warmup + cosine
//! learning-rate schedule, global-norm gradient clipping and an EMA copy of the weights.
//! Every loop is elementwise or a fixed-order reduction, so a step is bitwise reproducible.

use serde::{Deserialize, Serialize};

use crate::params::ParamLayout;

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

/// L2 norm of `g`, summed in fixed chunks (reproducible).
pub fn global_norm(g: &[f32]) -> f64 {
    g.chunks(4096)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// Adam moments.
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

    /// One update of `params` with gradients `g` at 1-based step `t`; parameters whose
    /// layout entry has `decay` are shrunk by `lr * weight_decay` first.
    pub fn step(
        &mut self,
        c: &OptimConfig,
        layout: &ParamLayout,
        params: &mut [f32],
        g: &[f32],
        lr: f32,
        t: usize,
    ) {
        let bc1 = 1.0 - (c.beta1 as f64).powi(t as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(t as i32);
        let step = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for e in &layout.entries {
            let shrink = if e.decay {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            let r = e.range.clone();
            let (p, m, v, g) = (
                &mut params[r.clone()],
                &mut self.m[r.clone()],
                &mut self.v[r.clone()],
                &g[r],
            );
            for i in 0..p.len() {
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
                p[i] = p[i] * shrink - step * m[i] / (v[i].sqrt() / bc2_sqrt + c.eps);
            }
        }
    }
}

/// `ema = d ema + (1 - d) params`, with `d = min(decay, (1 + t) / (10 + t))` at 1-based step t.
pub fn ema_update(ema: &mut [f32], params: &[f32], decay: f32, t: usize) {
    let d = decay.min((1.0 + t as f32) / (10.0 + t as f32));
    ema.iter_mut()
        .zip(params)
        .for_each(|(e, p)| *e = d * *e + (1.0 - d) * p);
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let cfg = dinoedge_runtime::config::ModelConfig::from_json_str(
            r#"{"model_type":"dinov3_vit","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":8,"patch_size":2,"num_register_tokens":0}"#,
            std::path::Path::new("test"),
        )
        .unwrap();
        let layout = ParamLayout::new(&cfg, &[]);
        let n = layout.total;
        let c = OptimConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut p = vec![1.0f32; n];
        let mut opt = AdamW::new(n);
        let g1 = vec![0.5f32; n];
        let g2 = vec![-0.25f32; n];
        opt.step(&c, &layout, &mut p, &g1, 0.1, 1);
        opt.step(&c, &layout, &mut p, &g2, 0.1, 2);
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
