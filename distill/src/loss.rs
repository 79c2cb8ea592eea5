//! The distillation objective. Learned linear heads project the student's normed features
//! (width D) to the teacher's width; each head's output is matched to the teacher with
//! `cosine + smooth-L1`:
//!
//! - head 0: CLS token, weight `cls`;
//! - head 1: patch tokens, weight `patch`, plus optionally a Gram term (weight `gram`):
//!   the mean squared difference of the patch-similarity matrices `Û Ûᵀ` of the
//!   L2-normalised projected student patches and of the teacher patches, per image
//!   (DINOv3's Gram anchoring);
//! - heads 2..: intermediate blocks (final norm applied), patch tokens, weight `inter`.
//!
//! Per term with n rows of width Dt: `w * (mean_rows(1 - cos(p, t)) + mean_elems(smooth_l1(p - t)))`,
//! smooth-L1 with beta 1, exactly as `F.cosine_similarity` and `F.smooth_l1_loss` compute.

use serde::{Deserialize, Serialize};

use crate::trainer::backend::Rows;

/// Weights of the loss terms.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossWeights {
    pub cls: f32,
    pub patch: f32,
    pub gram: f32,
    pub inter: f32,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            cls: 1.0,
            patch: 1.0,
            gram: 0.0,
            inter: 0.0,
        }
    }
}

/// Teacher features for one batch, on the student's patch grid.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    /// (B, Dt)
    pub cls: Vec<f32>,
    /// (B * G, Dt), G = grid_h * grid_w, row-major grid per image.
    pub patches: Vec<f32>,
    /// One (B * G, Dt) per intermediate pair.
    pub inter: Vec<Vec<f32>>,
}

/// Loss values of one step (already weighted; `total` is their sum).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossParts {
    pub total: f64,
    pub cls: f64,
    pub patch: f64,
    pub gram: f64,
    pub inter: f64,
}

const EPS_COS: f32 = 1e-8;
const EPS_NORM: f32 = 1e-12;

fn norm(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum::<f32>().sqrt()
}

/// The CPU forms of the objective's kernels (`cuda/loss.cu`), named as they are.
///
/// dst row k = src row `(k / per) * n + prefix + k % per`.
pub fn gather_rows(dst: &mut [f32], src: &[f32], sel: Rows, dim: usize) {
    for (k, d) in dst.chunks_exact_mut(dim).take(sel.count()).enumerate() {
        let r = (k / sel.per) * sel.n + sel.prefix + k % sel.per;
        d.copy_from_slice(&src[r * dim..(r + 1) * dim]);
    }
}

/// The adjoint of [`gather_rows`]: dst (+=) on the selected rows.
pub fn scatter_add_rows(dst: &mut [f32], src: &[f32], sel: Rows, dim: usize) {
    for (k, s) in src.chunks_exact(dim).take(sel.count()).enumerate() {
        let r = (k / sel.per) * sel.n + sel.prefix + k % sel.per;
        dst[r * dim..(r + 1) * dim]
            .iter_mut()
            .zip(s)
            .for_each(|(a, b)| *a += b);
    }
}

/// u = rows of `x` divided by their L2 norm (at least 1e-12), as `F.normalize`; `norms` (=)
/// those norms.
pub fn normalize_rows(u: &mut [f32], norms: &mut [f32], x: &[f32], dim: usize) {
    for ((o, r), n) in u.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(norms) {
        *n = norm(r).max(EPS_NORM);
        o.iter_mut().zip(r).for_each(|(a, b)| *a = b / *n);
    }
}

/// gs (=) coef * (gs - gt); returns the sum of (gs - gt)² (in f64).
pub fn gram_difference(gs: &mut [f32], gt: &[f32], coef: f32) -> f64 {
    let mut loss = 0.0f64;
    for (s, t) in gs.iter_mut().zip(gt) {
        let diff = *s - t;
        loss += (diff as f64) * (diff as f64);
        *s = coef * diff;
    }
    loss
}

/// Through the normalisation, row by row: dp (+=) (du - u (u . du)) / norm.
pub fn normalize_rows_backward(dp: &mut [f32], u: &[f32], du: &[f32], norms: &[f32], dim: usize) {
    let rows = dp.chunks_exact_mut(dim).zip(u.chunks_exact(dim));
    for (((dpr, u), du), &n) in rows.zip(du.chunks_exact(dim)).zip(norms) {
        let ud: f32 = u.iter().zip(du).map(|(a, b)| a * b).sum();
        for j in 0..dim {
            dpr[j] += (du[j] - u[j] * ud) / n;
        }
    }
}

/// `w * (mean(1 - cos) + mean(smooth_l1))` over rows of `p` against `t`; dp (=) its
/// gradient.
pub fn cos_smooth_l1(dp: &mut [f32], p: &[f32], t: &[f32], dim: usize, w: f32) -> f64 {
    let rows = p.len() / dim;
    let (wc, wl) = (w / rows as f32, w / p.len() as f32);
    let (mut cos_sum, mut l1_sum) = (0.0f64, 0.0f64);
    for ((pr, tr), dr) in p
        .chunks_exact(dim)
        .zip(t.chunks_exact(dim))
        .zip(dp.chunks_exact_mut(dim))
    {
        let (pn, tn) = (norm(pr).max(EPS_COS), norm(tr).max(EPS_COS));
        let dot: f32 = pr.iter().zip(tr).map(|(a, b)| a * b).sum();
        let c = dot / (pn * tn);
        cos_sum += (1.0 - c) as f64;
        for j in 0..dim {
            // d(1 - c)/dp = -(t / (|p||t|) - c p / |p|^2)
            let mut g = -wc * (tr[j] / (pn * tn) - c * pr[j] / (pn * pn));
            let e = pr[j] - tr[j];
            if e.abs() < 1.0 {
                l1_sum += 0.5 * (e as f64) * (e as f64);
                g += wl * e;
            } else {
                l1_sum += (e.abs() - 0.5) as f64;
                g += wl * e.signum();
            }
            dr[j] = g;
        }
    }
    w as f64 * (cos_sum / rows as f64 + l1_sum / p.len() as f64)
}
