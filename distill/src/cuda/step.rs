//! One training step on a [`Device`]: the objective ([`crate::loss`] on device buffers), the
//! backward, the gradient norm, and the fused clip + AdamW + EMA update ([`crate::optim`]),
//! with the training state kept on the device and copied to the host for checkpoints.

use std::sync::Arc;

use dinoedge_runtime::config::ModelConfig;

use super::graph::{Buffers, DevGrads, DevGraph, DevParams};
use super::{
    Arg, DevPtr, Device, Elem, LaunchCfg, Operand, PARTIALS, bytes, bytes_mut, reduce_cfg, rows_cfg,
};
use crate::checkpoint::TrainState;
use crate::error::Result;
use crate::loss::{LossParts, LossWeights, Targets};
use crate::optim::OptimConfig;
use crate::params::{ParamId, ParamLayout};

/// Scratch of the objective for the widest term (patch rows × teacher width).
struct LossBufs {
    s: DevPtr,
    p: DevPtr,
    dp: DevPtr,
    ds: DevPtr,
    parts: DevPtr,
    /// Gram: normalised rows, norms, both Gram matrices, dU.
    u: DevPtr,
    ut: DevPtr,
    norms: DevPtr,
    norms_t: DevPtr,
    gs: DevPtr,
    gt: DevPtr,
    du: DevPtr,
    /// Per image, the Gram term's block sums (read back once per step).
    gram_partials: DevPtr,
    /// Targets: CLS, patches, then each intermediate.
    t_cls: DevPtr,
    t_patches: DevPtr,
    t_inter: Vec<DevPtr>,
    dout: DevPtr,
    dinter: Vec<DevPtr>,
}

/// A student's state, graph and objective on a device.
pub struct DeviceStudent {
    dev: Arc<dyn Device>,
    pub graph: DevGraph,
    layout: ParamLayout,
    total: usize,
    p: DevPtr,
    half: Option<DevPtr>,
    g: DevPtr,
    m: DevPtr,
    v: DevPtr,
    ema: DevPtr,
    decay: DevPtr,
    bad: DevPtr,
    partials: DevPtr,
    loss: LossBufs,
    teacher_dim: usize,
    _bufs: Buffers,
}

impl DeviceStudent {
    /// Uploads `state` and allocates everything a step at this shape needs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: Arc<dyn Device>,
        ty: Elem,
        cfg: &ModelConfig,
        layout: &ParamLayout,
        state: &TrainState,
        batch: usize,
        hw: (usize, usize),
        inter_layers: &[usize],
        recompute: bool,
        teacher_dim: usize,
    ) -> Result<DeviceStudent> {
        let graph = DevGraph::new(
            dev.clone(),
            ty,
            cfg,
            batch,
            hw,
            inter_layers,
            recompute,
            teacher_dim,
        )?;
        let mut b = Buffers::new(dev.clone());
        let total = layout.total;
        let what = "parameters, gradients and AdamW state";
        let p = b.f32(total, what)?;
        let half = match ty {
            Elem::F32 => None,
            Elem::BF16 => Some(b.bytes(2 * total, "bf16 weights")?),
            // optim.cu writes the 16-bit copy as bf16.
            Elem::F16 => {
                return Err(crate::error::DistillError::Config(
                    "the CUDA trainer's GEMMs are f32 or bf16 (f16 has too little range for gradients)".into(),
                ));
            }
        };
        let (g, m, v, ema) = (
            b.f32(total, what)?,
            b.f32(total, what)?,
            b.f32(total, what)?,
            b.f32(total, what)?,
        );
        let decay = b.bytes(total, what)?;
        let mut mask = vec![0u8; total];
        for e in &layout.entries {
            mask[e.range.clone()].fill(e.decay as u8);
        }
        dev.upload(decay, &mask)?;
        let d = graph.dims;
        let (dim, r) = (d.dim, d.rows());
        let rows = d.batch * d.patches();
        let wide = rows * teacher_dim.max(dim);
        let per = d.patches();
        let mut lb = |n: usize| b.f32(n, "loss scratch");
        let loss = LossBufs {
            s: lb(rows * dim)?,
            p: lb(rows * teacher_dim)?,
            dp: lb(rows * teacher_dim)?,
            ds: lb(rows * dim)?,
            parts: lb(2 * rows)?,
            u: lb(wide)?,
            ut: lb(wide)?,
            norms: lb(rows)?,
            norms_t: lb(rows)?,
            gs: lb(per * per)?,
            gt: lb(per * per)?,
            du: lb(per * teacher_dim)?,
            gram_partials: lb(d.batch * reduce_cfg(per * per).grid.0 as usize)?,
            t_cls: lb(d.batch * teacher_dim)?,
            t_patches: lb(rows * teacher_dim)?,
            t_inter: (0..inter_layers.len())
                .map(|_| lb(rows * teacher_dim))
                .collect::<Result<_>>()?,
            dout: lb(r * dim)?,
            dinter: (0..inter_layers.len())
                .map(|_| lb(r * dim))
                .collect::<Result<_>>()?,
        };
        let mut s = DeviceStudent {
            bad: b.f32(1, "flags")?,
            partials: b.f32(PARTIALS, "reduction scratch")?,
            dev,
            graph,
            layout: layout.clone(),
            total,
            p,
            half,
            g,
            m,
            v,
            ema,
            decay,
            loss,
            teacher_dim,
            _bufs: b,
        };
        s.upload(state)?;
        Ok(s)
    }

    /// Copies parameters, EMA and AdamW moments to the device (and the bf16 weights).
    pub fn upload(&mut self, st: &TrainState) -> Result<()> {
        let d = &self.dev;
        d.upload(self.p, bytes(&st.params))?;
        d.upload(self.ema, bytes(&st.ema))?;
        d.upload(self.m, bytes(&st.adam.m))?;
        d.upload(self.v, bytes(&st.adam.v))?;
        if let Some(h) = self.half {
            let bits: Vec<u8> = st
                .params
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
                .collect();
            d.upload(h, &bits)?;
        }
        Ok(())
    }

    /// Copies parameters, EMA and AdamW moments back into `st` (for checkpoints and export).
    pub fn download(&self, st: &mut TrainState) -> Result<()> {
        let d = &self.dev;
        d.download(self.p, bytes_mut(&mut st.params))?;
        d.download(self.ema, bytes_mut(&mut st.ema))?;
        d.download(self.m, bytes_mut(&mut st.adam.m))?;
        Ok(d.download(self.v, bytes_mut(&mut st.adam.v))?)
    }

    fn params(&self) -> DevParams<'_> {
        DevParams {
            layout: &self.layout,
            v: self.p,
            bf16: self.half,
        }
    }

    /// The gradients of the last [`DeviceStudent::step`] (clipping not applied), for checks.
    pub fn gradients(&self) -> Result<Vec<f32>> {
        let mut g = vec![0.0f32; self.total];
        self.dev.download(self.g, bytes_mut(&mut g))?;
        Ok(g)
    }

    /// The forward with the EMA weights (f32 products converted as the GEMM type says) on
    /// `pixels`; returns the normed outputs (B*N, D).
    pub fn forward_ema(&self, pixels: &[f32]) -> Result<Vec<f32>> {
        self.dev.upload(self.graph.pixels, bytes(pixels))?;
        self.graph.forward(DevParams {
            layout: &self.layout,
            v: self.ema,
            bf16: None,
        })?;
        let d = self.graph.dims;
        let mut out = vec![0.0f32; d.rows() * d.dim];
        self.dev.download(self.graph.out, bytes_mut(&mut out))?;
        Ok(out)
    }

    /// Forward, objective and backward: gradients in the device buffer; returns the loss.
    pub fn gradients_of(
        &mut self,
        pixels: &[f32],
        t: &Targets,
        w: &LossWeights,
        heads_only: bool,
    ) -> Result<LossParts> {
        let dev = self.dev.clone();
        dev.upload(self.graph.pixels, bytes(pixels))?;
        dev.upload(self.loss.t_cls, bytes(&t.cls))?;
        dev.upload(self.loss.t_patches, bytes(&t.patches))?;
        for (d, h) in self.loss.t_inter.iter().zip(&t.inter) {
            dev.upload(*d, bytes(h))?;
        }
        self.graph.forward(self.params())?;
        dev.zero(self.g, 4 * self.total)?;
        let parts = self.objective(w)?;
        if parts.total.is_finite() && !heads_only {
            let g = DevGrads {
                layout: &self.layout,
                g: self.g,
            };
            self.graph
                .backward(self.params(), g, self.loss.dout, &self.loss.dinter)?;
        }
        Ok(parts)
    }

    /// The distillation objective on the graph's outputs: writes dout / dinter (`=`), adds
    /// head gradients. As [`crate::loss::Objective::compute`].
    fn objective(&self, w: &LossWeights) -> Result<LossParts> {
        let d = self.graph.dims;
        let (n, hw, dim) = (d.tokens(), d.patches(), d.dim);
        let r = d.rows();
        self.dev.zero(self.loss.dout, 4 * r * dim)?;
        let mut parts = LossParts::default();
        let out = self.graph.out;
        if w.cls != 0.0 {
            let sel = Rows {
                n,
                prefix: 0,
                per: 1,
                images: d.batch,
            };
            parts.cls = self
                .term(0, out, sel, self.loss.t_cls, w.cls, None, self.loss.dout)?
                .0;
        }
        if w.patch != 0.0 || w.gram != 0.0 {
            let sel = Rows {
                n,
                prefix: d.prefix,
                per: hw,
                images: d.batch,
            };
            let (l, g) = self.term(
                1,
                out,
                sel,
                self.loss.t_patches,
                w.patch,
                Some(w.gram),
                self.loss.dout,
            )?;
            parts.patch = l;
            parts.gram = g;
        }
        for k in 0..self.graph.inter.len() {
            let dsrc = self.loss.dinter[k];
            self.dev.zero(dsrc, 4 * r * dim)?;
            if w.inter != 0.0 {
                let sel = Rows {
                    n,
                    prefix: d.prefix,
                    per: hw,
                    images: d.batch,
                };
                let (src, t) = (self.graph.inter[k], self.loss.t_inter[k]);
                parts.inter += self.term(2 + k, src, sel, t, w.inter, None, dsrc)?.0;
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
        head: usize,
        src: DevPtr,
        sel: Rows,
        t: DevPtr,
        weight: f32,
        gram: Option<f32>,
        dsrc: DevPtr,
    ) -> Result<(f64, f64)> {
        let dim = self.graph.dims.dim;
        let dt = self.teacher_dim;
        let nr = sel.images * sel.per;
        let lb = &self.loss;
        let ops = &self.graph.ops;
        let sel_args = |dst: DevPtr, src: DevPtr| {
            [
                Arg::Ptr(dst),
                Arg::Ptr(src),
                Arg::I32(nr as i32),
                Arg::I32(dim as i32),
                Arg::I32(sel.n as i32),
                Arg::I32(sel.prefix as i32),
                Arg::I32(sel.per as i32),
            ]
        };
        let elements = LaunchCfg::elements(nr * dim);
        self.dev
            .launch("gather_rows", elements, &sel_args(lb.s, src))?;
        let p = self.params();
        let (hw, hb) = (ParamId::HeadWeight(head), ParamId::HeadBias(head));
        ops.matmul_forward_train(lb.p, dt, lb.s, p.w(hw), Some(p.id(hb)), nr, dim, dt)?;
        let main = if weight != 0.0 {
            let (wc, wl) = (weight / nr as f32, weight / (nr * dt) as f32);
            self.dev.launch(
                "cos_smooth_l1",
                rows_cfg(nr),
                &[
                    Arg::Ptr(lb.dp),
                    Arg::Ptr(lb.parts),
                    Arg::Ptr(lb.p),
                    Arg::Ptr(t),
                    Arg::I32(dt as i32),
                    Arg::F32(wc),
                    Arg::F32(wl),
                ],
            )?;
            let mut host = vec![0.0f32; 2 * nr];
            self.dev.download(lb.parts, bytes_mut(&mut host))?;
            let (cos, l1) = host.chunks_exact(2).fold((0.0f64, 0.0f64), |(c, l), x| {
                (c + x[0] as f64, l + x[1] as f64)
            });
            weight as f64 * (cos / nr as f64 + l1 / (nr * dt) as f64)
        } else {
            self.dev.zero(lb.dp, 4 * nr * dt)?;
            0.0
        };
        let gram_loss = match gram {
            Some(wg) if wg != 0.0 => self.gram(t, sel, wg)?,
            _ => 0.0,
        };
        let lb = &self.loss;
        let ops = &self.graph.ops;
        let g = DevGrads {
            layout: &self.layout,
            g: self.g,
        };
        ops.matmul_backward(
            Some((lb.ds, false)),
            g.id(hw),
            Some(g.id(hb)),
            lb.dp,
            dt,
            lb.s,
            p.w(hw),
            nr,
            dim,
            dt,
        )?;
        self.dev
            .launch("scatter_add_rows", elements, &sel_args(dsrc, lb.ds))?;
        Ok((main, gram_loss))
    }

    /// DINOv3's Gram term on the projected patches against `t`, per image; adds to dp.
    fn gram(&self, t: DevPtr, sel: Rows, weight: f32) -> Result<f64> {
        let (per, images, dt) = (sel.per, sel.images, self.teacher_dim);
        let scale = weight / (images * per * per) as f32;
        let lb = &self.loss;
        let ops = &self.graph.ops;
        let reduce = reduce_cfg(per * per);
        let nb = reduce.grid.0;
        for b in 0..images {
            let off = 4 * (b * per * dt) as u64;
            for (u, norms, x) in [(lb.u, lb.norms, lb.p), (lb.ut, lb.norms_t, t)] {
                self.dev.launch(
                    "normalize_rows",
                    rows_cfg(per),
                    &[
                        Arg::Ptr(u + off),
                        Arg::Ptr(norms),
                        Arg::Ptr(x + off),
                        Arg::I32(dt as i32),
                    ],
                )?;
            }
            // dG = 2 w (Gs - Gt) / (B G^2), symmetric; dU = 2 dG U.
            for (mat, u) in [(lb.gs, lb.u + off), (lb.gt, lb.ut + off)] {
                let (a, bt) = (Operand::rows(u, dt), Operand::transposed(u, dt));
                ops.product((per, per, dt), a, bt, mat, per)?;
            }
            self.dev.launch(
                "gram_difference",
                reduce,
                &[
                    Arg::Ptr(lb.gs),
                    Arg::Ptr(lb.gt),
                    Arg::I64((per * per) as i64),
                    Arg::F32(4.0 * scale),
                    Arg::Ptr(lb.gram_partials + 4 * (b * nb as usize) as u64),
                ],
            )?;
            let (a, u) = (Operand::rows(lb.gs, per), Operand::rows(lb.u + off, dt));
            ops.product((per, dt, per), a, u, lb.du, dt)?;
            self.dev.launch(
                "normalize_rows_backward",
                rows_cfg(per),
                &[
                    Arg::Ptr(lb.dp + off),
                    Arg::Ptr(lb.u + off),
                    Arg::Ptr(lb.du),
                    Arg::Ptr(lb.norms),
                    Arg::I32(dt as i32),
                ],
            )?;
        }
        let mut host = vec![0.0f32; images * nb as usize];
        self.dev.download(lb.gram_partials, bytes_mut(&mut host))?;
        let loss: f64 = host.iter().map(|&v| v as f64).sum();
        Ok(loss * weight as f64 / (images * per * per) as f64)
    }

    /// Sums the gradient buffer over the data-parallel ranks.
    pub fn sum_gradients(&self, c: &mut dyn crate::parallel::Collective) -> Result<()> {
        c.sum_device(&*self.dev, self.g, self.total)
    }

    /// L2 norm of the gradients (per-block f32 sums added in f64).
    pub fn grad_norm(&self) -> Result<f64> {
        let cfg = reduce_cfg(self.total);
        let nb = cfg.grid.0;
        self.dev.launch(
            "sum_squares",
            cfg,
            &[
                Arg::Ptr(self.partials),
                Arg::Ptr(self.g),
                Arg::I64(self.total as i64),
            ],
        )?;
        let mut host = vec![0.0f32; nb as usize];
        self.dev.download(self.partials, bytes_mut(&mut host))?;
        Ok(host.iter().map(|&v| v as f64).sum::<f64>().sqrt())
    }

    /// Clip (by `gscale`) + AdamW + EMA at 1-based step `t` in one kernel; values before
    /// `frozen` keep their weights. Returns false when a weight became non-finite.
    pub fn update(
        &self,
        c: &OptimConfig,
        lr: f32,
        t: usize,
        gscale: f32,
        frozen: usize,
    ) -> Result<bool> {
        let bc1 = 1.0 - (c.beta1 as f64).powi(t as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(t as i32);
        let ema_d = c.ema.min((1.0 + t as f32) / (10.0 + t as f32));
        self.dev.zero(self.bad, 4)?;
        self.dev.launch(
            "adamw_ema",
            reduce_cfg(self.total),
            &[
                Arg::Ptr(self.p),
                Arg::Ptr(self.m),
                Arg::Ptr(self.v),
                Arg::Ptr(self.ema),
                Arg::Ptr(self.half.unwrap_or(0)),
                Arg::Ptr(self.g),
                Arg::Ptr(self.decay),
                Arg::I64(self.total as i64),
                Arg::I64(frozen as i64),
                Arg::F32(gscale),
                Arg::F32(c.beta1),
                Arg::F32(c.beta2),
                Arg::F32(c.eps),
                Arg::F32(1.0 - lr * c.weight_decay),
                Arg::F32((lr as f64 / bc1) as f32),
                Arg::F32(bc2.sqrt() as f32),
                Arg::F32(ema_d),
                Arg::Ptr(self.bad),
            ],
        )?;
        let mut flag = [0u8; 4];
        self.dev.download(self.bad, &mut flag)?;
        Ok(i32::from_le_bytes(flag) == 0)
    }
}

/// Rows of the outputs a loss term selects: image b's rows `b*n + prefix .. + per`.
#[derive(Clone, Copy)]
struct Rows {
    n: usize,
    prefix: usize,
    per: usize,
    images: usize,
}
