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

use crate::graph::{Params, grad_pair};
use crate::ops::{Ctx, matmul_backward, matmul_forward_train};
use crate::params::ParamId;
use dinoedge_runtime::ops::Dims;
use dinoedge_runtime::ops::matmul::fast::gemm::Strided;

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

/// Scratch for the objective, kept between steps.
#[derive(Default)]
pub struct Objective {
    s: Vec<f32>,
    p: Vec<f32>,
    dp: Vec<f32>,
    ds: Vec<f32>,
    u: Vec<f32>,
    ut: Vec<f32>,
    gs: Vec<f32>,
    gt: Vec<f32>,
    du: Vec<f32>,
}

impl Objective {
    /// The loss of one batch. Writes (`=`) the gradients of the student outputs into `dout`
    /// and `dinter`, and accumulates (`+=`) head gradients into `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        &mut self,
        ctx: &Ctx,
        p: Params,
        g: &mut [f32],
        d: &Dims,
        out: &[f32],
        inter: &[Vec<f32>],
        t: &Targets,
        w: &LossWeights,
        dout: &mut [f32],
        dinter: &mut [Vec<f32>],
    ) -> LossParts {
        let (n, hw) = (d.tokens(), d.patches());
        let cls_rows: Vec<usize> = (0..d.batch).map(|b| b * n).collect();
        let patch_rows: Vec<usize> = (0..d.batch)
            .flat_map(|b| (0..hw).map(move |j| b * n + d.prefix + j))
            .collect();
        dout.fill(0.0);
        let mut parts = LossParts::default();
        if w.cls != 0.0 {
            parts.cls = self
                .term(
                    ctx, p, g, 0, out, d.dim, &cls_rows, &t.cls, w.cls, None, dout,
                )
                .0;
        }
        if w.patch != 0.0 || w.gram != 0.0 {
            let (l, gr) = self.term(
                ctx,
                p,
                g,
                1,
                out,
                d.dim,
                &patch_rows,
                &t.patches,
                w.patch,
                Some((w.gram, hw)),
                dout,
            );
            parts.patch = l;
            parts.gram = gr;
        }
        for (k, (src, dsrc)) in inter.iter().zip(dinter.iter_mut()).enumerate() {
            dsrc.fill(0.0);
            if w.inter != 0.0 {
                parts.inter += self
                    .term(
                        ctx,
                        p,
                        g,
                        2 + k,
                        src,
                        d.dim,
                        &patch_rows,
                        &t.inter[k],
                        w.inter,
                        None,
                        dsrc,
                    )
                    .0;
            }
        }
        parts.total = parts.cls + parts.patch + parts.gram + parts.inter;
        parts
    }

    /// One head: project the selected rows of `src`, compare with `t`, backpropagate into
    /// the head and into `dsrc` (`+=` on the selected rows). Returns (cos + smooth-L1, Gram).
    #[allow(clippy::too_many_arguments)]
    fn term(
        &mut self,
        ctx: &Ctx,
        p: Params,
        g: &mut [f32],
        head: usize,
        src: &[f32],
        dim: usize,
        rows: &[usize],
        t: &[f32],
        weight: f32,
        gram: Option<(f32, usize)>,
        dsrc: &mut [f32],
    ) -> (f64, f64) {
        let (hw, hb) = (ParamId::HeadWeight(head), ParamId::HeadBias(head));
        let h = p.layout.get(p.v, hw);
        let dt = h.len() / dim;
        let nr = rows.len();
        assert_eq!(
            t.len(),
            nr * dt,
            "teacher targets for head {head}: {} values, expected {nr} x {dt}",
            t.len()
        );
        self.s.resize(nr * dim, 0.0);
        for (k, &r) in rows.iter().enumerate() {
            self.s[k * dim..(k + 1) * dim].copy_from_slice(&src[r * dim..(r + 1) * dim]);
        }
        self.p.resize(nr * dt, 0.0);
        matmul_forward_train(
            ctx,
            &mut self.p,
            dt,
            &self.s,
            h,
            Some(p.layout.get(p.v, hb)),
            nr,
            dim,
        );
        self.dp.clear();
        self.dp.resize(nr * dt, 0.0);
        let main = if weight != 0.0 {
            cos_smooth_l1(&self.p, t, dt, weight, &mut self.dp)
        } else {
            0.0
        };
        let gram_loss = match gram {
            Some((wg, per_image)) if wg != 0.0 => self.gram(ctx, t, dt, per_image, wg),
            _ => 0.0,
        };
        self.ds.resize(nr * dim, 0.0);
        let (gw, gb) = grad_pair(p.layout, g, hw, Some(hb));
        matmul_backward(
            ctx,
            Some((&mut self.ds, false)),
            gw,
            gb,
            &self.dp,
            dt,
            &self.s,
            h,
            nr,
            dim,
        );
        for (k, &r) in rows.iter().enumerate() {
            dsrc[r * dim..(r + 1) * dim]
                .iter_mut()
                .zip(&self.ds[k * dim..(k + 1) * dim])
                .for_each(|(a, b)| *a += b);
        }
        (main, gram_loss)
    }

    /// Gram term on `self.p` against `t`, images of `per` rows; adds to `self.dp`.
    fn gram(&mut self, ctx: &Ctx, t: &[f32], dt: usize, per: usize, weight: f32) -> f64 {
        let images = self.p.len() / (per * dt);
        let scale = weight / (images * per * per) as f32;
        let mut loss = 0.0f64;
        for b in 0..images {
            let range = b * per * dt..(b + 1) * per * dt;
            normalize_rows(&self.p[range.clone()], dt, &mut self.u);
            normalize_rows(&t[range.clone()], dt, &mut self.ut);
            for (mat, src) in [(&mut self.gs, &self.u), (&mut self.gt, &self.ut)] {
                mat.resize(per * per, 0.0);
                ctx.gemm(
                    per,
                    per,
                    dt,
                    Strided::rows(src, dt),
                    Strided::transposed(src, dt),
                    mat,
                    per,
                    false,
                );
            }
            // dG = 2 w (Gs - Gt) / (B G^2), symmetric; dU = 2 dG U.
            for (gs, gt) in self.gs.iter_mut().zip(&self.gt) {
                let diff = *gs - gt;
                loss += (diff as f64) * (diff as f64);
                *gs = 4.0 * scale * diff;
            }
            self.du.resize(per * dt, 0.0);
            ctx.gemm(
                per,
                dt,
                per,
                Strided::rows(&self.gs, per),
                Strided::rows(&self.u, dt),
                &mut self.du,
                dt,
                false,
            );
            // Through the normalisation: dp = (dU - u (u . dU)) / |p|.
            let (pb, dpb) = (&self.p[range.clone()], &mut self.dp[range]);
            for k in 0..per {
                let (pr, u, du) = (
                    &pb[k * dt..(k + 1) * dt],
                    &self.u[k * dt..(k + 1) * dt],
                    &self.du[k * dt..(k + 1) * dt],
                );
                let norm = norm(pr).max(EPS_NORM);
                let ud: f32 = u.iter().zip(du).map(|(a, b)| a * b).sum();
                for j in 0..dt {
                    dpb[k * dt + j] += (du[j] - u[j] * ud) / norm;
                }
            }
        }
        loss * (weight as f64) / (images * per * per) as f64
    }
}

fn norm(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum::<f32>().sqrt()
}

/// Rows of `x` divided by their L2 norm (at least 1e-12), as `F.normalize`.
fn normalize_rows(x: &[f32], dim: usize, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    for (o, r) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        let n = norm(r).max(EPS_NORM);
        o.iter_mut().zip(r).for_each(|(a, b)| *a = b / n);
    }
}

/// `w * (mean(1 - cos) + mean(smooth_l1))` over rows of `p` against `t`; adds its gradient
/// to `dp`.
pub fn cos_smooth_l1(p: &[f32], t: &[f32], dim: usize, w: f32, dp: &mut [f32]) -> f64 {
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
            dr[j] += -wc * (tr[j] / (pn * tn) - c * pr[j] / (pn * pn));
            let e = pr[j] - tr[j];
            if e.abs() < 1.0 {
                l1_sum += 0.5 * (e as f64) * (e as f64);
                dr[j] += wl * e;
            } else {
                l1_sum += (e.abs() - 0.5) as f64;
                dr[j] += wl * e.signum();
            }
        }
    }
    w as f64 * (cos_sum / rows as f64 + l1_sum / p.len() as f64)
}
