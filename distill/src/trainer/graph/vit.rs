//! A ViT student's training graph: the runtime's forward (`runtime/src/models/vit/forward.rs`)
//! op by op, so an exported student computes in the runtime exactly what it computed here.
//!
//! Per block, with x the residual stream:
//!   x_mid = x + ls1 * o_proj(attention(rope(qkv(norm1(x)))))
//!   x_out = x_mid + ls2 * mlp(norm2(x_mid))
//! and the outputs are `norm(x_L)` plus `norm(x_j)` for requested intermediate blocks.

use dinoedge_runtime::config::{Activation, MlpKind, Positions, VitConfig};
use dinoedge_runtime::dispatch::train::cuda::Cuda;
use dinoedge_runtime::models::vit::forward::dims;
use dinoedge_runtime::models::vit::layout::{LayerParam as L, Param};
use dinoedge_runtime::ops::Dims;
use dinoedge_runtime::ops::rope::tables;

use super::{ParamBufs, StudentGraph, stats};
use crate::error::{DistillError, Result};
use crate::trainer::plan::Plan;
use dinoedge_runtime::dispatch::train::{Buf, Stats, TrainBackend};

/// The q, k, v projections (weight, bias), in their order in the fused qkv rows.
const QKV: [(L, L); 3] = [
    (L::QWeight, L::QBias),
    (L::KWeight, L::KBias),
    (L::VWeight, L::VBias),
];

/// What one block keeps for its backward.
struct BlockActs {
    ln1: Buf,
    ln1_stats: Stats,
    /// q, k, v after RoPE (R, 3D).
    qkv: Buf,
    lse: Buf,
    att: Buf,
    /// o_proj output, before LayerScale.
    y1: Buf,
    x_mid: Buf,
    ln2: Buf,
    ln2_stats: Stats,
    /// MLP pre-activation (R, I), or gate and up (R, 2I).
    h: Buf,
    /// MLP activation output (R, I).
    a: Buf,
    /// down_proj output, before LayerScale.
    y2: Buf,
}

/// A ViT student's forward and backward at one input shape: its buffers, planned once.
pub struct VitGraph {
    pub cfg: VitConfig,
    pub dims: Dims,
    /// RoPE tables, uploaded by [`StudentGraph::init`].
    tables: (Vec<f32>, Vec<f32>),
    cos: Buf,
    sin: Buf,
    pub pixels: Buf,
    cols: Buf,
    emb: Buf,
    /// Residual stream before block l (xs[0]) and after the last block (xs[L]).
    xs: Vec<Buf>,
    /// One per block, or a single one reused by every block when recomputing.
    blocks: Vec<BlockActs>,
    /// Keep only the residual stream between blocks and recompute each block's activations
    /// during the backward (activation checkpointing).
    recompute: bool,
    /// `norm(x_L)` (R, D).
    pub out: Buf,
    out_stats: Stats,
    /// Intermediate outputs `norm(x_{l+1})` for the requested blocks l.
    pub inter_layers: Vec<usize>,
    pub inter: Vec<Buf>,
    inter_stats: Vec<Stats>,
    // Backward scratch.
    dx: Buf,
    dtmp: Buf,
    dy: Buf,
    dqkv: Buf,
    dh: Buf,
    da: Buf,
    delta: Buf,
}

impl VitGraph {
    /// Plans the buffers for `batch` images of `height x width` pixels, returning the
    /// outputs of the blocks in `inter_layers` as well.
    pub fn new(
        plan: &mut Plan,
        cfg: &VitConfig,
        batch: usize,
        (height, width): (usize, usize),
        inter_layers: &[usize],
        recompute: bool,
    ) -> Result<VitGraph> {
        if let Some(&l) = inter_layers.iter().find(|&&l| l >= cfg.num_layers) {
            return Err(DistillError::Config(format!(
                "intermediate output of block {l}: the student has blocks 0..{}",
                cfg.num_layers
            )));
        }
        let d = dims(cfg, batch, height, width);
        let Positions::Rope { theta } = cfg.positions else {
            return Err(DistillError::Config(
                "the trainer trains RoPE students (learned position embeddings are not trained)"
                    .into(),
            ));
        };
        let tables = tables(d.grid_h, d.grid_w, d.head_dim(), theta);
        let (r, dim, i) = (d.rows(), d.dim, d.hidden);
        let h_w = if matches!(cfg.mlp, MlpKind::Gated(_)) {
            2 * i
        } else {
            i
        };
        let lse_n = d.batch * d.heads * d.tokens();
        let kept = if recompute { 1 } else { cfg.num_layers };
        let cos = plan.take("rope tables", tables.0.len());
        let sin = plan.take("rope tables", tables.1.len());
        let patches = d.batch * d.patches();
        let pixels = plan.take("pixels", d.batch * d.channels * d.height * d.width);
        let cols = plan.take("patch rows", patches * d.patch_len());
        let emb = plan.take("patch embeddings", patches * dim);
        let xs = (0..=cfg.num_layers)
            .map(|_| plan.take("residual stream", r * dim))
            .collect();
        let blocks = (0..kept)
            .map(|_| {
                let mut t = |n| plan.take("block activations", n);
                BlockActs {
                    ln1: t(r * dim),
                    ln1_stats: Stats(t(2 * r)),
                    qkv: t(r * 3 * dim),
                    lse: t(lse_n),
                    att: t(r * dim),
                    y1: t(r * dim),
                    x_mid: t(r * dim),
                    ln2: t(r * dim),
                    ln2_stats: Stats(t(2 * r)),
                    h: t(r * h_w),
                    a: t(r * i),
                    y2: t(r * dim),
                }
            })
            .collect();
        let out = plan.take("outputs", r * dim);
        let out_stats = stats(plan, r);
        let inter = inter_layers
            .iter()
            .map(|_| plan.take("intermediate outputs", r * dim))
            .collect();
        let inter_stats = inter_layers.iter().map(|_| stats(plan, r)).collect();
        let mut s = |n| plan.take("backward scratch", n);
        Ok(VitGraph {
            cfg: cfg.clone(),
            dims: d,
            tables,
            cos,
            sin,
            pixels,
            cols,
            emb,
            xs,
            blocks,
            recompute,
            out,
            out_stats,
            inter_layers: inter_layers.to_vec(),
            inter,
            inter_stats,
            dx: s(r * dim),
            dtmp: s(r * dim),
            dy: s(r * dim),
            dqkv: s(r * 3 * dim),
            dh: s(r * h_w),
            da: s(r * i),
            delta: s(lse_n),
        })
    }

    /// Uploads what the graph reads but never writes (the RoPE tables).
    fn init_tables(&self, be: &dyn TrainBackend) -> Result<()> {
        be.upload(self.cos, &self.tables.0)?;
        Ok(be.upload(self.sin, &self.tables.1)?)
    }

    fn act(&self) -> (bool, Activation) {
        match self.cfg.mlp {
            MlpKind::Gated(a) => (true, a),
            MlpKind::Plain(a) => (false, a),
        }
    }

    fn block(&self, l: usize) -> &BlockActs {
        &self.blocks[if self.recompute { 0 } else { l }]
    }

    /// Runs the forward on the pixels in [`StudentGraph::pixels`] with parameters `p`, keeping
    /// every activation (or, when recomputing, the residual stream between blocks).
    fn forward_all(&self, be: &dyn TrainBackend, p: ParamBufs) -> Result<()> {
        let d = self.dims;
        let (dim, eps, r) = (d.dim, self.cfg.layer_norm_eps as f32, d.rows());
        be.patch_embed_forward_im2col(self.cols, self.pixels, &d)?;
        let rko = (d.batch * d.patches(), d.patch_len(), dim);
        let (pw, pb) = (p.get(Param::PatchWeight), Some(p.get(Param::PatchBias)));
        be.matmul_forward_train(self.emb, dim, self.cols, pw, pb, rko)?;
        let (cls, regs) = (p.get(Param::ClsToken), p.opt(Param::RegisterTokens));
        be.patch_embed_forward_assemble(self.xs[0], self.emb, cls, regs, &d)?;
        for l in 0..self.cfg.num_layers {
            self.block_forward(be, p, l)?;
        }
        let (nw, nb) = (p.get(Param::NormWeight), p.get(Param::NormBias));
        let x_last = self.xs[self.cfg.num_layers];
        be.layer_norm_forward(self.out, self.out_stats, x_last, nw, nb, (r, dim), eps)?;
        for (k, &l) in self.inter_layers.iter().enumerate() {
            let (o, s, x) = (self.inter[k], self.inter_stats[k], self.xs[l + 1]);
            be.layer_norm_forward(o, s, x, nw, nb, (r, dim), eps)?;
        }
        Ok(())
    }

    /// Block `l`: xs[l + 1] = block(xs[l]), keeping what its backward needs.
    fn block_forward(&self, be: &dyn TrainBackend, p: ParamBufs, l: usize) -> Result<()> {
        let d = self.dims;
        let (dim, r, eps, i) = (d.dim, d.rows(), self.cfg.layer_norm_eps as f32, d.hidden);
        let (gated, act) = self.act();
        let (x, x_out, b) = (self.xs[l], self.xs[l + 1], self.block(l));
        let (w1, b1) = (p.l(l, L::Norm1Weight), p.l(l, L::Norm1Bias));
        be.layer_norm_forward(b.ln1, b.ln1_stats, x, w1, b1, (r, dim), eps)?;
        for (j, (w, bias)) in QKV.into_iter().enumerate() {
            let dst = b.qkv.at(j * dim);
            be.matmul_forward_train(dst, 3 * dim, b.ln1, p.l(l, w), p.lo(l, bias), (r, dim, dim))?;
        }
        be.rope_forward(b.qkv, self.cos, self.sin, &d)?;
        be.attention_forward(b.att, b.lse, b.qkv, &d)?;
        let (wo, bo) = (p.l(l, L::OWeight), p.lo(l, L::OBias));
        be.matmul_forward_train(b.y1, dim, b.att, wo, bo, (r, dim, dim))?;
        be.copy(b.x_mid, x)?;
        be.residual_forward(b.x_mid, b.y1, Some(p.l(l, L::LayerScale1)), dim)?;
        let (w2, b2) = (p.l(l, L::Norm2Weight), p.l(l, L::Norm2Bias));
        be.layer_norm_forward(b.ln2, b.ln2_stats, b.x_mid, w2, b2, (r, dim), eps)?;
        if gated {
            let (wg, bg) = (p.l(l, L::GateWeight), p.lo(l, L::GateBias));
            be.matmul_forward_train(b.h, 2 * i, b.ln2, wg, bg, (r, dim, i))?;
            let (wu, bu) = (p.l(l, L::UpWeight), p.lo(l, L::UpBias));
            be.matmul_forward_train(b.h.at(i), 2 * i, b.ln2, wu, bu, (r, dim, i))?;
            be.swiglu_forward(b.a, b.h, (r, i), act)?;
        } else {
            let (wu, bu) = (p.l(l, L::UpWeight), p.lo(l, L::UpBias));
            be.matmul_forward_train(b.h, i, b.ln2, wu, bu, (r, dim, i))?;
            be.activation_forward(b.a, b.h, act)?;
        }
        let (wd, bd) = (p.l(l, L::DownWeight), p.lo(l, L::DownBias));
        be.matmul_forward_train(b.y2, dim, b.a, wd, bd, (r, i, dim))?;
        be.copy(x_out, b.x_mid)?;
        Ok(be.residual_forward(x_out, b.y2, Some(p.l(l, L::LayerScale2)), dim)?)
    }

    /// Accumulates (`+=`) every parameter gradient into `g`, given the gradients of `out`
    /// and of each intermediate output. Call after [`StudentGraph::forward`].
    fn backward_all(
        &self,
        be: &dyn TrainBackend,
        p: ParamBufs,
        g: ParamBufs,
        dout: Buf,
        dinter: &[Buf],
    ) -> Result<()> {
        let d = self.dims;
        let (dim, r, nl) = (d.dim, d.rows(), self.cfg.num_layers);
        let nw = p.get(Param::NormWeight);
        let (gnw, gnb) = (g.get(Param::NormWeight), g.get(Param::NormBias));
        let rc = (r, dim);
        be.layer_norm_backward(self.dx, gnw, gnb, dout, self.xs[nl], nw, self.out_stats, rc)?;
        for l in (0..nl).rev() {
            // Gradients reaching x_{l+1} from an intermediate output.
            for (k, _) in self
                .inter_layers
                .iter()
                .enumerate()
                .filter(|(_, il)| **il == l)
            {
                let (s, x) = (self.inter_stats[k], self.xs[l + 1]);
                be.layer_norm_backward(self.dtmp, gnw, gnb, dinter[k], x, nw, s, rc)?;
                be.residual_forward(self.dx, self.dtmp, None, dim)?;
            }
            if self.recompute {
                // This block's activations again, from its input (bit for bit the forward's).
                self.block_forward(be, p, l)?;
            }
            self.mlp_backward(be, p, g, l)?;
            self.attention_block_backward(be, p, g, l)?;
        }
        // Token assembly and the patch convolution.
        let (dcls, dregs) = (g.get(Param::ClsToken), g.opt(Param::RegisterTokens));
        be.patch_embed_backward(self.emb, dcls, dregs, self.dx, &d)?;
        let (gw, gb) = (g.get(Param::PatchWeight), Some(g.get(Param::PatchBias)));
        let rko = (d.batch * d.patches(), d.patch_len(), dim);
        let w = p.get(Param::PatchWeight);
        Ok(be.matmul_backward(None, gw, gb, self.emb, dim, self.cols, w, rko)?)
    }

    /// The MLP branch `x_out = x_mid + ls2 * y2`: dx (+=) its input gradient.
    fn mlp_backward(
        &self,
        be: &dyn TrainBackend,
        p: ParamBufs,
        g: ParamBufs,
        l: usize,
    ) -> Result<()> {
        let d = self.dims;
        let (dim, r, i) = (d.dim, d.rows(), d.hidden);
        let (gated, act) = self.act();
        let b = self.block(l);
        let ls2 = p.l(l, L::LayerScale2);
        be.residual_backward(self.dy, g.l(l, L::LayerScale2), self.dx, b.y2, ls2, dim)?;
        let (gw, gb, w) = (
            g.l(l, L::DownWeight),
            g.lo(l, L::DownBias),
            p.l(l, L::DownWeight),
        );
        be.matmul_backward(
            Some((self.da, false)),
            gw,
            gb,
            self.dy,
            dim,
            b.a,
            w,
            (r, i, dim),
        )?;
        if gated {
            be.swiglu_backward(self.dh, self.da, b.h, (r, i), act)?;
            let gate_up = [(L::GateWeight, L::GateBias), (L::UpWeight, L::UpBias)];
            for (j, (w, bias)) in gate_up.into_iter().enumerate() {
                let (dh, dinp) = (self.dh.at(j * i), Some((self.dtmp, j > 0)));
                let (gw, gb) = (g.l(l, w), g.lo(l, bias));
                be.matmul_backward(dinp, gw, gb, dh, 2 * i, b.ln2, p.l(l, w), (r, dim, i))?;
            }
        } else {
            be.activation_backward(self.dh, self.da, b.h, act)?;
            let (gw, gb, w) = (g.l(l, L::UpWeight), g.lo(l, L::UpBias), p.l(l, L::UpWeight));
            let dinp = Some((self.dtmp, false));
            be.matmul_backward(dinp, gw, gb, self.dh, i, b.ln2, w, (r, dim, i))?;
        }
        // dtmp = d ln2; dy = d x_mid through norm2.
        let (gw, gb, w) = (
            g.l(l, L::Norm2Weight),
            g.l(l, L::Norm2Bias),
            p.l(l, L::Norm2Weight),
        );
        be.layer_norm_backward(
            self.dy,
            gw,
            gb,
            self.dtmp,
            b.x_mid,
            w,
            b.ln2_stats,
            (r, dim),
        )?;
        Ok(be.residual_forward(self.dx, self.dy, None, dim)?)
    }

    /// The attention branch `x_mid = x + ls1 * y1`: dx (+=) its input gradient.
    fn attention_block_backward(
        &self,
        be: &dyn TrainBackend,
        p: ParamBufs,
        g: ParamBufs,
        l: usize,
    ) -> Result<()> {
        let d = self.dims;
        let (dim, r) = (d.dim, d.rows());
        let b = self.block(l);
        let ls1 = p.l(l, L::LayerScale1);
        be.residual_backward(self.dy, g.l(l, L::LayerScale1), self.dx, b.y1, ls1, dim)?;
        let (gw, gb, w) = (g.l(l, L::OWeight), g.lo(l, L::OBias), p.l(l, L::OWeight));
        let dinp = Some((self.dtmp, false));
        be.matmul_backward(dinp, gw, gb, self.dy, dim, b.att, w, (r, dim, dim))?;
        let saved = (b.qkv, b.att, b.lse);
        be.attention_backward(self.dqkv, self.dtmp, saved, self.delta, &d)?;
        be.rope_backward(self.dqkv, self.cos, self.sin, &d)?;
        for (j, (w, bias)) in QKV.into_iter().enumerate() {
            let (dq, dinp) = (self.dqkv.at(j * dim), Some((self.dtmp, j > 0)));
            let (gw, gb) = (g.l(l, w), g.lo(l, bias));
            be.matmul_backward(dinp, gw, gb, dq, 3 * dim, b.ln1, p.l(l, w), (r, dim, dim))?;
        }
        let (gw, gb, w) = (
            g.l(l, L::Norm1Weight),
            g.l(l, L::Norm1Bias),
            p.l(l, L::Norm1Weight),
        );
        be.layer_norm_backward(
            self.dy,
            gw,
            gb,
            self.dtmp,
            self.xs[l],
            w,
            b.ln1_stats,
            (r, dim),
        )?;
        Ok(be.residual_forward(self.dx, self.dy, None, dim)?)
    }
}

impl StudentGraph for VitGraph {
    fn dims(&self) -> &Dims {
        &self.dims
    }
    fn pixels(&self) -> Buf {
        self.pixels
    }
    fn out(&self) -> Buf {
        self.out
    }
    fn inter(&self) -> &[Buf] {
        &self.inter
    }
    fn init(&self, be: &dyn TrainBackend) -> Result<()> {
        self.init_tables(be)
    }
    fn forward(&self, be: &dyn TrainBackend, p: ParamBufs) -> Result<()> {
        self.forward_all(be, p)
    }
    fn backward(
        &self,
        be: &dyn TrainBackend,
        p: ParamBufs,
        g: ParamBufs,
        dout: Buf,
        dinter: &[Buf],
    ) -> Result<()> {
        self.backward_all(be, p, g, dout, dinter)
    }
    fn cuda_widest(&self, teacher_dim: usize) -> Result<usize> {
        let d = self.dims;
        Cuda::check_head_dim(d.head_dim())?;
        Ok(teacher_dim.max(3 * d.dim).max(2 * d.hidden))
    }
}
