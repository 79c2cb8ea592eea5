//! The student's training graph: a forward pass that keeps what the backward needs, and the
//! backward that turns gradients of the outputs into parameter gradients. The math is the
//! runtime's forward (`runtime/src/forward.rs`) op by op, so an exported student computes
//! in the runtime exactly what it computed here.
//!
//! Per block, with x the residual stream:
//!   x_mid = x + ls1 * o_proj(attention(rope(qkv(norm1(x)))))
//!   x_out = x_mid + ls2 * mlp(norm2(x_mid))
//! and the outputs are `norm(x_L)` plus `norm(x_j)` for requested intermediate blocks.

use dinoedge_runtime::config::{MlpKind, ModelConfig, Positions};
use dinoedge_runtime::forward::dims;
use dinoedge_runtime::ops::Dims;
use dinoedge_runtime::ops::layer_norm::cpu::LayerNormCache;
use dinoedge_runtime::ops::patch_embed::cpu::{assemble_rows, im2col_rows, patch_embed_backward};
use dinoedge_runtime::ops::rope::cpu::{rope_backward, rope_forward};
use dinoedge_runtime::ops::rope::tables;
use dinoedge_runtime::weights::layout::{LayerParam as L, Param};
use rayon::prelude::*;

use dinoedge_runtime::ops::residual::cpu::{residual_backward, residual_forward};

use crate::ops::{Ctx, matmul_backward, matmul_forward_train};
use crate::params::{ParamId, ParamLayout};

/// Read access to parameter values by name.
#[derive(Clone, Copy)]
pub struct Params<'a> {
    pub layout: &'a ParamLayout,
    pub v: &'a [f32],
}

impl<'a> Params<'a> {
    pub fn get(&self, p: Param) -> &'a [f32] {
        self.layout.get(self.v, ParamId::Model(p))
    }
    pub fn opt(&self, p: Param) -> Option<&'a [f32]> {
        self.layout.has(ParamId::Model(p)).then(|| self.get(p))
    }
    fn l(&self, l: usize, lp: L) -> &'a [f32] {
        self.get(Param::Layer(l, lp))
    }
    fn lo(&self, l: usize, lp: L) -> Option<&'a [f32]> {
        self.opt(Param::Layer(l, lp))
    }
}

/// Mutable access to gradients: `w` and optionally `b` at once (distinct tensors).
pub fn grad_pair<'g>(
    layout: &ParamLayout,
    g: &'g mut [f32],
    w: ParamId,
    b: Option<ParamId>,
) -> (&'g mut [f32], Option<&'g mut [f32]>) {
    match b.filter(|&b| layout.has(b)) {
        Some(b) => {
            let [gw, gb] = g
                .get_disjoint_mut([layout.range(w), layout.range(b)])
                .expect("distinct parameters");
            (gw, Some(gb))
        }
        None => (layout.get_mut(g, w), None),
    }
}

fn m(p: Param) -> ParamId {
    ParamId::Model(p)
}

fn ml(l: usize, lp: L) -> ParamId {
    ParamId::Model(Param::Layer(l, lp))
}

/// The q, k, v projections (weight, bias), in their order in the fused qkv rows.
const QKV: [(L, L); 3] = [
    (L::QWeight, L::QBias),
    (L::KWeight, L::KBias),
    (L::VWeight, L::VBias),
];

/// What one block keeps for its backward.
#[derive(Default)]
struct BlockActs {
    ln1: Vec<f32>,
    ln1c: LayerNormCache,
    /// q, k, v after RoPE (R, 3D).
    qkv: Vec<f32>,
    lse: Vec<f32>,
    att: Vec<f32>,
    /// o_proj output, before LayerScale.
    y1: Vec<f32>,
    x_mid: Vec<f32>,
    ln2: Vec<f32>,
    ln2c: LayerNormCache,
    /// MLP pre-activation (R, I), or gate and up (R, 2I).
    h: Vec<f32>,
    /// MLP activation output (R, I).
    a: Vec<f32>,
    /// down_proj output, before LayerScale.
    y2: Vec<f32>,
}

/// A student's forward and backward at one input shape, with its activations and scratch
/// kept between steps (no allocation after the first step).
pub struct Graph {
    pub cfg: ModelConfig,
    pub dims: Dims,
    cos: Vec<f32>,
    sin: Vec<f32>,
    cols: Vec<f32>,
    emb: Vec<f32>,
    /// Residual stream before block l (xs[0]) and after the last block (xs[L]).
    xs: Vec<Vec<f32>>,
    /// One per block, or a single one reused by every block when recomputing.
    blocks: Vec<BlockActs>,
    /// Keep only the residual stream between blocks and recompute each block's activations
    /// during the backward (activation checkpointing): ~1/17 of the activation memory of a
    /// ViT-S block for one more forward.
    recompute: bool,
    /// `norm(x_L)` (R, D).
    pub out: Vec<f32>,
    outc: LayerNormCache,
    /// Intermediate outputs `norm(x_{l+1})` for the requested blocks l.
    pub inter_layers: Vec<usize>,
    pub inter: Vec<Vec<f32>>,
    interc: Vec<LayerNormCache>,
    // Backward scratch.
    dx: Vec<f32>,
    dtmp: Vec<f32>,
    dy: Vec<f32>,
    dqkv: Vec<f32>,
    dh: Vec<f32>,
    da: Vec<f32>,
}

impl Graph {
    /// A graph for `batch` images of `height x width` pixels, returning the outputs of the
    /// blocks in `inter_layers` as well.
    pub fn new(
        cfg: &ModelConfig,
        batch: usize,
        height: usize,
        width: usize,
        inter_layers: &[usize],
    ) -> Self {
        Self::with_recompute(cfg, batch, height, width, inter_layers, false)
    }

    /// [`Graph::new`], recomputing block activations in the backward when `recompute`.
    pub fn with_recompute(
        cfg: &ModelConfig,
        batch: usize,
        height: usize,
        width: usize,
        inter_layers: &[usize],
        recompute: bool,
    ) -> Self {
        let d = dims(cfg, batch, height, width);
        let (cos, sin) = match cfg.positions {
            Positions::Rope { theta } => tables(d.grid_h, d.grid_w, d.head_dim(), theta),
            Positions::Learned { .. } => {
                unreachable!("students use RoPE (checked by student::resolve)")
            }
        };
        let z = |n: usize| vec![0.0f32; n];
        let (r, dim) = (d.rows(), d.dim);
        let (i, gated) = (d.hidden, matches!(cfg.mlp, MlpKind::Gated(_)));
        let h_w = if gated { 2 * i } else { i };
        let kept = if recompute { 1 } else { cfg.num_layers };
        let blocks = (0..kept)
            .map(|_| BlockActs {
                ln1: z(r * dim),
                qkv: z(r * 3 * dim),
                lse: z(d.batch * d.heads * d.tokens()),
                att: z(r * dim),
                y1: z(r * dim),
                x_mid: z(r * dim),
                ln2: z(r * dim),
                h: z(r * h_w),
                a: z(r * i),
                y2: z(r * dim),
                ..Default::default()
            })
            .collect();
        Graph {
            cfg: cfg.clone(),
            dims: d,
            cos,
            sin,
            cols: z(d.batch * d.patches() * d.patch_len()),
            emb: z(d.batch * d.patches() * dim),
            xs: (0..=cfg.num_layers).map(|_| z(r * dim)).collect(),
            blocks,
            recompute,
            out: z(r * dim),
            outc: LayerNormCache::default(),
            inter_layers: inter_layers.to_vec(),
            inter: inter_layers.iter().map(|_| z(r * dim)).collect(),
            interc: inter_layers
                .iter()
                .map(|_| LayerNormCache::default())
                .collect(),
            dx: z(r * dim),
            dtmp: z(r * dim),
            dy: z(r * dim),
            dqkv: z(r * 3 * dim),
            dh: z(r * h_w),
            da: z(r * i),
        }
    }

    /// Bytes of activation memory a graph allocates: what it keeps for the backward (block
    /// activations, or one block's when recomputing; the residual stream between blocks;
    /// outputs), the patch rows, and the backward's scratch. Parameters, gradients and
    /// optimizer state are not included.
    pub fn activation_bytes(
        cfg: &ModelConfig,
        batch: usize,
        height: usize,
        width: usize,
        inter: usize,
        recompute: bool,
    ) -> u64 {
        let d = dims(cfg, batch, height, width);
        let (r, dim, i) = (d.rows() as u64, d.dim as u64, d.hidden as u64);
        let h_w = if matches!(cfg.mlp, MlpKind::Gated(_)) {
            2 * i
        } else {
            i
        };
        // ln1, qkv (3), att, y1, x_mid, ln2, y2 + h + a, and the attention's log-sum-exp.
        let block = r * (9 * dim + h_w + i) + (d.batch * d.heads * d.tokens()) as u64;
        let kept = if recompute { 1 } else { cfg.num_layers as u64 };
        let patches = (d.batch * d.patches()) as u64;
        // xs (L + 1), out, inter; cols and emb; dx, dtmp, dy, dqkv (3), dh, da.
        let stream = (cfg.num_layers as u64 + 2 + inter as u64) * r * dim;
        let patch_rows = patches * (d.patch_len() as u64 + dim);
        let scratch = r * (6 * dim + h_w + i);
        4 * (kept * block + stream + patch_rows + scratch)
    }

    fn act(&self) -> dinoedge_runtime::config::Activation {
        match self.cfg.mlp {
            MlpKind::Plain(a) | MlpKind::Gated(a) => a,
        }
    }

    /// Runs the forward on `pixels` (B, C, H, W), keeping every activation (or, when
    /// recomputing, the residual stream between blocks).
    pub fn forward(&mut self, ctx: &Ctx, p: Params, pixels: &[f32]) {
        let d = self.dims;
        let (dim, eps) = (d.dim, self.cfg.layer_norm_eps as f32);
        let pl = d.patch_len();
        self.cols
            .par_chunks_mut(pl * 16)
            .enumerate()
            .for_each(|(k, c)| im2col_rows(c, k * 16, pixels, &d));
        matmul_forward_train(
            ctx,
            &mut self.emb,
            dim,
            &self.cols,
            p.get(Param::PatchWeight),
            Some(p.get(Param::PatchBias)),
            d.batch * d.patches(),
            pl,
        );
        let regs = p.opt(Param::RegisterTokens).unwrap_or(&[]);
        assemble_rows(
            &mut self.xs[0],
            0,
            &self.emb,
            p.get(Param::ClsToken),
            regs,
            None,
            &d,
        );
        let keep = !self.recompute;
        for l in 0..self.cfg.num_layers {
            let (before, after) = self.xs.split_at_mut(l + 1);
            let b = &mut self.blocks[if keep { l } else { 0 }];
            let g = BlockGeom {
                cfg: &self.cfg,
                d: &self.dims,
                cos: &self.cos,
                sin: &self.sin,
            };
            block_forward(ctx, p, &g, l, &before[l], &mut after[0], b);
        }
        let (nw, nb) = (p.get(Param::NormWeight), p.get(Param::NormBias));
        ctx.layer_norm_forward(
            &mut self.out,
            &mut self.outc,
            &self.xs[self.cfg.num_layers],
            nw,
            nb,
            dim,
            eps,
        );
        for (k, &l) in self.inter_layers.iter().enumerate() {
            ctx.layer_norm_forward(
                &mut self.inter[k],
                &mut self.interc[k],
                &self.xs[l + 1],
                nw,
                nb,
                dim,
                eps,
            );
        }
    }

    /// Accumulates (`+=`) into `g` the gradients of every parameter, given the gradients of
    /// `out` and of each intermediate output. Call after [`Graph::forward`].
    pub fn backward(
        &mut self,
        ctx: &Ctx,
        p: Params,
        g: &mut [f32],
        dout: &[f32],
        dinter: &[Vec<f32>],
    ) {
        let d = self.dims;
        let lay = p.layout;
        let (dim, r) = (d.dim, d.rows());
        let (i, act) = (d.hidden, self.act());
        let gated = matches!(self.cfg.mlp, MlpKind::Gated(_));
        let nl = self.cfg.num_layers;
        let nw = p.get(Param::NormWeight);
        {
            let (gw, gb) = grad_pair(lay, g, m(Param::NormWeight), Some(m(Param::NormBias)));
            ctx.layer_norm_backward(
                &mut self.dx,
                gw,
                gb.expect("norm bias"),
                dout,
                &self.xs[nl],
                nw,
                &self.outc,
                dim,
            );
        }
        for l in (0..nl).rev() {
            // Gradients reaching x_{l+1} from an intermediate output.
            for (k, _) in self
                .inter_layers
                .iter()
                .enumerate()
                .filter(|&(_, &il)| il == l)
            {
                let (gw, gb) = grad_pair(lay, g, m(Param::NormWeight), Some(m(Param::NormBias)));
                ctx.layer_norm_backward(
                    &mut self.dtmp,
                    gw,
                    gb.expect("norm bias"),
                    &dinter[k],
                    &self.xs[l + 1],
                    nw,
                    &self.interc[k],
                    dim,
                );
                residual_forward(&ctx.pool, &mut self.dx, &self.dtmp, None, dim);
            }
            if self.recompute {
                // This block's activations again, from its input (bit for bit the forward's).
                let (before, after) = self.xs.split_at_mut(l + 1);
                let g = BlockGeom {
                    cfg: &self.cfg,
                    d: &self.dims,
                    cos: &self.cos,
                    sin: &self.sin,
                };
                block_forward(
                    ctx,
                    p,
                    &g,
                    l,
                    &before[l],
                    &mut after[0],
                    &mut self.blocks[0],
                );
            }
            let b = &self.blocks[if self.recompute { 0 } else { l }];
            // MLP branch: x_out = x_mid + ls2 * y2.
            residual_backward(
                &ctx.pool,
                &mut self.dy,
                lay.get_mut(g, ml(l, L::LayerScale2)),
                &self.dx,
                &b.y2,
                p.l(l, L::LayerScale2),
            );
            let (gw, gb) = grad_pair(lay, g, ml(l, L::DownWeight), Some(ml(l, L::DownBias)));
            matmul_backward(
                ctx,
                Some((&mut self.da, false)),
                gw,
                gb,
                &self.dy,
                dim,
                &b.a,
                p.l(l, L::DownWeight),
                r,
                i,
            );
            if gated {
                ctx.swiglu_backward(&mut self.dh, &self.da, &b.h, i, act);
                let (gw, gb) = grad_pair(lay, g, ml(l, L::GateWeight), Some(ml(l, L::GateBias)));
                matmul_backward(
                    ctx,
                    Some((&mut self.dtmp, false)),
                    gw,
                    gb,
                    &self.dh,
                    2 * i,
                    &b.ln2,
                    p.l(l, L::GateWeight),
                    r,
                    dim,
                );
                let (gw, gb) = grad_pair(lay, g, ml(l, L::UpWeight), Some(ml(l, L::UpBias)));
                matmul_backward(
                    ctx,
                    Some((&mut self.dtmp, true)),
                    gw,
                    gb,
                    &self.dh[i..],
                    2 * i,
                    &b.ln2,
                    p.l(l, L::UpWeight),
                    r,
                    dim,
                );
            } else {
                ctx.activation_backward(&mut self.dh, &self.da, &b.h, act);
                let (gw, gb) = grad_pair(lay, g, ml(l, L::UpWeight), Some(ml(l, L::UpBias)));
                matmul_backward(
                    ctx,
                    Some((&mut self.dtmp, false)),
                    gw,
                    gb,
                    &self.dh,
                    i,
                    &b.ln2,
                    p.l(l, L::UpWeight),
                    r,
                    dim,
                );
            }
            // dtmp = d ln2; dy = d x_mid through norm2.
            let (gw, gb) = grad_pair(lay, g, ml(l, L::Norm2Weight), Some(ml(l, L::Norm2Bias)));
            ctx.layer_norm_backward(
                &mut self.dy,
                gw,
                gb.expect("norm2 bias"),
                &self.dtmp,
                &b.x_mid,
                p.l(l, L::Norm2Weight),
                &b.ln2c,
                dim,
            );
            residual_forward(&ctx.pool, &mut self.dx, &self.dy, None, dim);
            // Attention branch: x_mid = x + ls1 * y1.
            residual_backward(
                &ctx.pool,
                &mut self.dy,
                lay.get_mut(g, ml(l, L::LayerScale1)),
                &self.dx,
                &b.y1,
                p.l(l, L::LayerScale1),
            );
            let (gw, gb) = grad_pair(lay, g, ml(l, L::OWeight), Some(ml(l, L::OBias)));
            matmul_backward(
                ctx,
                Some((&mut self.dtmp, false)),
                gw,
                gb,
                &self.dy,
                dim,
                &b.att,
                p.l(l, L::OWeight),
                r,
                dim,
            );
            ctx.attention_backward(&mut self.dqkv, &self.dtmp, &b.qkv, &b.att, &b.lse, &d);
            rope_backward(&mut self.dqkv, &self.cos, &self.sin, &d);
            for (j, (w, bias)) in QKV.into_iter().enumerate() {
                let (gw, gb) = grad_pair(lay, g, ml(l, w), Some(ml(l, bias)));
                matmul_backward(
                    ctx,
                    Some((&mut self.dtmp, j > 0)),
                    gw,
                    gb,
                    &self.dqkv[j * dim..],
                    3 * dim,
                    &b.ln1,
                    p.l(l, w),
                    r,
                    dim,
                );
            }
            let (gw, gb) = grad_pair(lay, g, ml(l, L::Norm1Weight), Some(ml(l, L::Norm1Bias)));
            ctx.layer_norm_backward(
                &mut self.dy,
                gw,
                gb.expect("norm1 bias"),
                &self.dtmp,
                &self.xs[l],
                p.l(l, L::Norm1Weight),
                &b.ln1c,
                dim,
            );
            residual_forward(&ctx.pool, &mut self.dx, &self.dy, None, dim);
        }
        // Token assembly and the patch convolution.
        let (gc, gr) = grad_pair(lay, g, m(Param::ClsToken), Some(m(Param::RegisterTokens)));
        let mut no_regs = [];
        patch_embed_backward(&mut self.emb, gc, gr.unwrap_or(&mut no_regs), &self.dx, &d);
        let (gw, gb) = grad_pair(lay, g, m(Param::PatchWeight), Some(m(Param::PatchBias)));
        matmul_backward(
            ctx,
            None,
            gw,
            gb,
            &self.emb,
            dim,
            &self.cols,
            p.get(Param::PatchWeight),
            d.batch * d.patches(),
            d.patch_len(),
        );
    }
}

/// What a block's forward needs besides its parameters and buffers.
struct BlockGeom<'a> {
    cfg: &'a ModelConfig,
    d: &'a Dims,
    cos: &'a [f32],
    sin: &'a [f32],
}

/// Block `l`: x_out = block(x), keeping in `b` what its backward needs.
fn block_forward(
    ctx: &Ctx,
    p: Params,
    g: &BlockGeom,
    l: usize,
    x: &[f32],
    x_out: &mut [f32],
    b: &mut BlockActs,
) {
    let d = *g.d;
    let (dim, r, eps) = (d.dim, d.rows(), g.cfg.layer_norm_eps as f32);
    let i = d.hidden;
    let (gated, act) = match g.cfg.mlp {
        MlpKind::Gated(a) => (true, a),
        MlpKind::Plain(a) => (false, a),
    };
    ctx.layer_norm_forward(
        &mut b.ln1,
        &mut b.ln1c,
        x,
        p.l(l, L::Norm1Weight),
        p.l(l, L::Norm1Bias),
        dim,
        eps,
    );
    for (j, (w, bias)) in QKV.into_iter().enumerate() {
        matmul_forward_train(
            ctx,
            &mut b.qkv[j * dim..],
            3 * dim,
            &b.ln1,
            p.l(l, w),
            p.lo(l, bias),
            r,
            dim,
        );
    }
    rope_forward(&mut b.qkv, g.cos, g.sin, &d);
    ctx.attention_forward(&mut b.att, &mut b.lse, &b.qkv, &d);
    matmul_forward_train(
        ctx,
        &mut b.y1,
        dim,
        &b.att,
        p.l(l, L::OWeight),
        p.lo(l, L::OBias),
        r,
        dim,
    );
    b.x_mid.copy_from_slice(x);
    residual_forward(
        &ctx.pool,
        &mut b.x_mid,
        &b.y1,
        Some(p.l(l, L::LayerScale1)),
        dim,
    );
    ctx.layer_norm_forward(
        &mut b.ln2,
        &mut b.ln2c,
        &b.x_mid,
        p.l(l, L::Norm2Weight),
        p.l(l, L::Norm2Bias),
        dim,
        eps,
    );
    if gated {
        matmul_forward_train(
            ctx,
            &mut b.h,
            2 * i,
            &b.ln2,
            p.l(l, L::GateWeight),
            p.lo(l, L::GateBias),
            r,
            dim,
        );
        matmul_forward_train(
            ctx,
            &mut b.h[i..],
            2 * i,
            &b.ln2,
            p.l(l, L::UpWeight),
            p.lo(l, L::UpBias),
            r,
            dim,
        );
        ctx.swiglu_forward(&mut b.a, &b.h, i, act);
    } else {
        matmul_forward_train(
            ctx,
            &mut b.h,
            i,
            &b.ln2,
            p.l(l, L::UpWeight),
            p.lo(l, L::UpBias),
            r,
            dim,
        );
        b.a.copy_from_slice(&b.h);
        ctx.activation_forward(&mut b.a, act);
    }
    matmul_forward_train(
        ctx,
        &mut b.y2,
        dim,
        &b.a,
        p.l(l, L::DownWeight),
        p.lo(l, L::DownBias),
        r,
        i,
    );
    x_out.copy_from_slice(&b.x_mid);
    residual_forward(&ctx.pool, x_out, &b.y2, Some(p.l(l, L::LayerScale2)), dim);
}
