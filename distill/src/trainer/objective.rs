//! The distillation objective on the graph's outputs, written once for every backend (the
//! terms are described in [`crate::loss`]): gathers the rows a head sees, projects them,
//! compares with the teacher, and backpropagates into the head and the outputs.

use super::graph::{ParamBufs, StudentGraph};
use super::plan::Plan;
use crate::error::{DistillError, Result};
use crate::loss::{LossParts, LossWeights, Targets};
use crate::params::ParamId;
use dinoedge_runtime::dispatch::train::{Buf, Mat, Rows, TrainBackend};

/// The objective's buffers, sized for its widest term (patch rows × teacher width).
pub struct Objective {
    teacher_dim: usize,
    s: Buf,
    p: Buf,
    dp: Buf,
    ds: Buf,
    parts: Buf,
    /// Gram, one image at a time: normalised rows, norms, both Gram matrices, dU.
    u: Buf,
    ut: Buf,
    norms: Buf,
    norms_t: Buf,
    gs: Buf,
    gt: Buf,
    du: Buf,
    /// Targets: CLS, patches, then each intermediate.
    t_cls: Buf,
    t_patches: Buf,
    t_inter: Vec<Buf>,
    /// Gradients of the graph's outputs (written by [`Objective::compute`]).
    pub dout: Buf,
    pub dinter: Vec<Buf>,
}

impl Objective {
    pub fn new(plan: &mut Plan, g: &dyn StudentGraph, teacher_dim: usize) -> Objective {
        let d = *g.dims();
        let (dim, r, dt) = (d.dim, d.rows(), teacher_dim);
        let (rows, per) = (d.batch * d.patches(), d.patches());
        let mut t = |n| plan.take("objective", n);
        Objective {
            teacher_dim,
            s: t(rows * dim),
            p: t(rows * dt),
            dp: t(rows * dt),
            ds: t(rows * dim),
            parts: t(2 * rows),
            u: t(per * dt),
            ut: t(per * dt),
            norms: t(per),
            norms_t: t(per),
            gs: t(per * per),
            gt: t(per * per),
            du: t(per * dt),
            t_cls: t(d.batch * dt),
            t_patches: t(rows * dt),
            t_inter: g.inter().iter().map(|_| t(rows * dt)).collect(),
            dout: t(r * dim),
            dinter: g.inter().iter().map(|_| t(r * dim)).collect(),
        }
    }

    /// Copies one batch's teacher features to the backend, checking their sizes.
    pub fn upload_targets(&self, be: &dyn TrainBackend, t: &Targets) -> Result<()> {
        let check = |what: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(DistillError::Config(format!(
                    "teacher targets ({what}): {got} values, expected {want} (batch x grid x teacher width)"
                )))
            }
        };
        check("CLS", t.cls.len(), self.t_cls.len)?;
        check("patches", t.patches.len(), self.t_patches.len)?;
        check("intermediate outputs", t.inter.len(), self.t_inter.len())?;
        be.upload(self.t_cls, &t.cls)?;
        be.upload(self.t_patches, &t.patches)?;
        for (b, h) in self.t_inter.iter().zip(&t.inter) {
            check("an intermediate output", h.len(), b.len)?;
            be.upload(*b, h)?;
        }
        Ok(())
    }

    /// The loss of the batch whose outputs `graph` holds: writes (`=`) [`Objective::dout`]
    /// and [`Objective::dinter`], and accumulates (`+=`) head gradients into `g`.
    pub fn compute(
        &self,
        be: &dyn TrainBackend,
        graph: &dyn StudentGraph,
        p: ParamBufs,
        g: ParamBufs,
        w: &LossWeights,
    ) -> Result<LossParts> {
        let d = *graph.dims();
        let (n, hw) = (d.tokens(), d.patches());
        let cls = Rows {
            n,
            prefix: 0,
            per: 1,
            images: d.batch,
        };
        let patches = Rows {
            n,
            prefix: d.prefix,
            per: hw,
            images: d.batch,
        };
        be.zero(self.dout)?;
        let mut parts = LossParts::default();
        let heads = Heads {
            be,
            p,
            g,
            dim: d.dim,
        };
        if w.cls != 0.0 {
            let (src, dsrc) = (graph.out(), self.dout);
            parts.cls = self
                .term(&heads, 0, (src, dsrc), cls, self.t_cls, w.cls, None)?
                .0;
        }
        if w.patch != 0.0 || w.gram != 0.0 {
            let (src, dsrc, t) = (graph.out(), self.dout, self.t_patches);
            let (l, gram) = self.term(&heads, 1, (src, dsrc), patches, t, w.patch, Some(w.gram))?;
            parts.patch = l;
            parts.gram = gram;
        }
        for (k, (&src, &dsrc)) in graph.inter().iter().zip(&self.dinter).enumerate() {
            be.zero(dsrc)?;
            if w.inter != 0.0 {
                let t = self.t_inter[k];
                parts.inter += self
                    .term(&heads, 2 + k, (src, dsrc), patches, t, w.inter, None)?
                    .0;
            }
        }
        parts.total = parts.cls + parts.patch + parts.gram + parts.inter;
        Ok(parts)
    }

    /// One head on the selected rows of `src` against targets `t`; backpropagates into the
    /// head and into `dsrc` (`+=`). Returns (cos + smooth-L1, Gram).
    #[allow(clippy::too_many_arguments)]
    fn term(
        &self,
        h: &Heads,
        head: usize,
        (src, dsrc): (Buf, Buf),
        sel: Rows,
        t: Buf,
        weight: f32,
        gram: Option<f32>,
    ) -> Result<(f64, f64)> {
        let (be, dim, dt) = (h.be, h.dim, self.teacher_dim);
        let nr = sel.count();
        let (s, ds) = (self.s.part(0, nr * dim), self.ds.part(0, nr * dim));
        let (p, dp) = (self.p.part(0, nr * dt), self.dp.part(0, nr * dt));
        let t = t.part(0, nr * dt);
        be.gather_rows(s, src, sel, dim)?;
        let (hw, hb) = (ParamId::HeadWeight(head), ParamId::HeadBias(head));
        let (w, b) = (h.p.id(hw), Some(h.p.id(hb)));
        be.matmul_forward_train(p, dt, s, w, b, (nr, dim, dt))?;
        let main = if weight != 0.0 {
            be.cos_smooth_l1(dp, self.parts.part(0, 2 * nr), p, t, dt, weight)?
        } else {
            be.zero(dp)?;
            0.0
        };
        let gram_loss = match gram {
            Some(wg) if wg != 0.0 => self.gram(be, t, sel, wg)?,
            _ => 0.0,
        };
        let (gw, gb) = (h.g.id(hw), Some(h.g.id(hb)));
        be.matmul_backward(Some((ds, false)), gw, gb, dp, dt, s, w, (nr, dim, dt))?;
        be.scatter_add_rows(dsrc, ds, sel, dim)?;
        Ok((main, gram_loss))
    }

    /// DINOv3's Gram term on the projected patches against `t`, per image; adds to dp.
    fn gram(&self, be: &dyn TrainBackend, t: Buf, sel: Rows, weight: f32) -> Result<f64> {
        let (per, images, dt) = (sel.per, sel.images, self.teacher_dim);
        let scale = weight / (images * per * per) as f32;
        let (gs, gt, du) = (self.gs, self.gt, self.du);
        let mut loss = 0.0f64;
        // One image at a time: the normalised rows, norms and Gram matrices are per image.
        let (u, ut, norms) = (self.u, self.ut, self.norms);
        for b in 0..images {
            let rows = |x: Buf| x.part(b * per * dt, per * dt);
            let (p, dp) = (rows(self.p), rows(self.dp));
            be.normalize_rows(u, norms, p, dt)?;
            be.normalize_rows(ut, self.norms_t, rows(t), dt)?;
            // dG = 2 w (Gs - Gt) / (B G^2), symmetric; dU = 2 dG U.
            for (mat, x) in [(gs, u), (gt, ut)] {
                be.product(
                    (per, per, dt),
                    Mat::rows(x, dt),
                    Mat::transposed(x, dt),
                    mat,
                    per,
                )?;
            }
            loss += be.gram_difference(gs, gt, 4.0 * scale)?;
            be.product((per, dt, per), Mat::rows(gs, per), Mat::rows(u, dt), du, dt)?;
            be.normalize_rows_backward(dp, u, du, norms, dt)?;
        }
        Ok(loss * weight as f64 / (images * per * per) as f64)
    }
}

/// What every head term reads: the backend, parameters, gradients and the student's width.
struct Heads<'a> {
    be: &'a dyn TrainBackend,
    p: ParamBufs<'a>,
    g: ParamBufs<'a>,
    dim: usize,
}
