//! The student's forward and backward on a [`Device`], op for op the CPU trainer's
//! ([`crate::graph`]): same order, same buffers, same `=` / `+=` conventions, each op the
//! runtime's CUDA form (`ops/<op>/cuda.rs`) and each product a GEMM.

use std::cell::RefCell;
use std::sync::Arc;

use dinoedge_runtime::backend::cuda::device::DeviceBuffer;
use dinoedge_runtime::config::{Activation, MlpKind, ModelConfig, Positions};
use dinoedge_runtime::forward::dims;
use dinoedge_runtime::ops::Dims;
use dinoedge_runtime::ops::activation::cuda::{activation_backward, activation_forward};
use dinoedge_runtime::ops::attention::cuda::{
    AttentionSaved, HEAD_DIMS, attention_backward, attention_forward_lse,
};
use dinoedge_runtime::ops::column_sum::cuda::partial_len;
use dinoedge_runtime::ops::layer_norm::cuda::{
    LayerNormCache, layer_norm_backward, layer_norm_forward,
};
use dinoedge_runtime::ops::matmul::cuda::{
    GemmScratch, Input, Weight, matmul_backward, matmul_forward_train, product,
};
use dinoedge_runtime::ops::patch_embed::cuda::{patch_embed_backward, patch_embed_forward_train};
use dinoedge_runtime::ops::residual::cuda::{residual_backward, residual_forward};
use dinoedge_runtime::ops::rope::cuda::{rope_backward, rope_forward};
use dinoedge_runtime::ops::rope::tables;
use dinoedge_runtime::ops::swiglu::cuda::{swiglu_backward, swiglu_forward};
use dinoedge_runtime::weights::layout::{LayerParam as L, Param};

use super::{DevPtr, Device, Elem, Operand, bytes, device_error};
use crate::error::{DistillError, Result};
use crate::params::{ParamId, ParamLayout};

/// Device allocations freed together.
pub struct Buffers {
    pub dev: Arc<dyn Device>,
    list: Vec<DeviceBuffer>,
}

impl Buffers {
    pub fn new(dev: Arc<dyn Device>) -> Self {
        Buffers {
            dev,
            list: Vec::new(),
        }
    }

    /// `n` zeroed f32.
    pub fn f32(&mut self, n: usize, what: &str) -> Result<DevPtr> {
        self.bytes(4 * n, what)
    }

    pub fn bytes(&mut self, n: usize, what: &str) -> Result<DevPtr> {
        let b = DeviceBuffer::new(&self.dev, n, 1, what)?;
        let p = b.ptr;
        self.list.push(b);
        Ok(p)
    }
}

/// Parameter values on the device: f32 masters and, in bf16 training, their bf16 copy.
#[derive(Clone, Copy)]
pub struct DevParams<'a> {
    pub layout: &'a ParamLayout,
    pub v: DevPtr,
    pub bf16: Option<DevPtr>,
}

impl DevParams<'_> {
    pub fn id(&self, id: ParamId) -> DevPtr {
        self.v + 4 * self.layout.range(id).start as u64
    }
    pub fn get(&self, p: Param) -> DevPtr {
        self.id(ParamId::Model(p))
    }
    pub fn opt(&self, p: Param) -> Option<DevPtr> {
        self.layout.has(ParamId::Model(p)).then(|| self.get(p))
    }
    fn l(&self, l: usize, lp: L) -> DevPtr {
        self.get(Param::Layer(l, lp))
    }
    fn lo(&self, l: usize, lp: L) -> Option<DevPtr> {
        self.opt(Param::Layer(l, lp))
    }
    /// Weight `id` (o, k) with its bf16 copy.
    pub fn w(&self, id: ParamId) -> Weight {
        Weight {
            ptr: self.id(id),
            half: self
                .bf16
                .map(|h| h + 2 * self.layout.range(id).start as u64),
        }
    }
}

/// Gradient addresses (same layout as the parameters).
#[derive(Clone, Copy)]
pub struct DevGrads<'a> {
    pub layout: &'a ParamLayout,
    pub g: DevPtr,
}

impl DevGrads<'_> {
    pub fn id(&self, id: ParamId) -> DevPtr {
        self.g + 4 * self.layout.range(id).start as u64
    }
    pub fn opt(&self, id: ParamId) -> Option<DevPtr> {
        self.layout.has(id).then(|| self.id(id))
    }
    fn m(&self, p: Param) -> DevPtr {
        self.id(ParamId::Model(p))
    }
    fn l(&self, l: usize, lp: L) -> DevPtr {
        self.m(Param::Layer(l, lp))
    }
    fn lo(&self, l: usize, lp: L) -> Option<DevPtr> {
        self.opt(ParamId::Model(Param::Layer(l, lp)))
    }
}

/// The q, k, v projections (weight, bias), in their order in the fused qkv rows.
const QKV: [(L, L); 3] = [
    (L::QWeight, L::QBias),
    (L::KWeight, L::KBias),
    (L::VWeight, L::VBias),
];

/// What one block keeps for its backward (as [`crate::graph`]'s `BlockActs`).
struct BlockActs {
    ln1: DevPtr,
    ln1_cache: LayerNormCache,
    qkv: DevPtr,
    lse: DevPtr,
    att: DevPtr,
    y1: DevPtr,
    x_mid: DevPtr,
    ln2: DevPtr,
    ln2_cache: LayerNormCache,
    h: DevPtr,
    a: DevPtr,
    y2: DevPtr,
}

/// Shape-independent helpers: the device, GEMM type and scratch of the products and the
/// column sums.
pub struct Ops {
    pub dev: Arc<dyn Device>,
    pub ty: Elem,
    pub gemm: RefCell<GemmScratch>,
    /// Column sums' partials, for rows up to `partial_cols` wide.
    partial: DevPtr,
    partial_cols: usize,
}

impl Ops {
    pub fn new(bufs: &mut Buffers, ty: Elem, widest: usize) -> Result<Ops> {
        Ok(Ops {
            dev: bufs.dev.clone(),
            ty,
            gemm: RefCell::new(GemmScratch::new(&bufs.dev)),
            partial: bufs.f32(partial_len(widest), "column partial sums")?,
            partial_cols: widest,
        })
    }

    fn d(&self) -> &dyn Device {
        &*self.dev
    }

    /// The column sums' scratch for rows `cols` wide.
    fn partial(&self, cols: usize) -> Result<DevPtr> {
        if cols > self.partial_cols {
            return Err(device_error(
                "column sums",
                format!("{cols} columns, scratch for {}", self.partial_cols),
            )
            .into());
        }
        Ok(self.partial)
    }

    /// `c (m, n; ldc) (=) a (m, k) · b (k, n)`, both f32 in memory.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        mnk: (usize, usize, usize),
        a: Operand,
        b: Operand,
        c: DevPtr,
        ldc: usize,
    ) -> Result<()> {
        let none = (dinoedge_runtime::backend::cuda::device::Fused::None, 0);
        let mut s = self.gemm.borrow_mut();
        let (a, b) = (Input::f32(a), Input::f32(b));
        product(self.d(), &mut s, mnk, a, b, c, ldc, false, self.ty, none)?;
        Ok(())
    }

    /// `out[:, 0..o]` (row stride `ldo`) = inp (rows, k) · Wᵀ + b.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward_train(
        &self,
        out: DevPtr,
        ldo: usize,
        inp: DevPtr,
        w: Weight,
        b: Option<DevPtr>,
        rows: usize,
        k: usize,
        o: usize,
    ) -> Result<()> {
        let mut s = self.gemm.borrow_mut();
        let rko = (rows, k, o);
        matmul_forward_train(self.d(), &mut s, self.ty, out, ldo, inp, w, b, rko)?;
        Ok(())
    }

    /// dinp (= | += when accumulate) dout · W, dw += doutᵀ · inp, db += column sums; dout
    /// (rows, o) with row stride `ld`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward(
        &self,
        dinp: Option<(DevPtr, bool)>,
        dw: DevPtr,
        db: Option<DevPtr>,
        dout: DevPtr,
        ld: usize,
        inp: DevPtr,
        w: Weight,
        rows: usize,
        k: usize,
        o: usize,
    ) -> Result<()> {
        let partial = self.partial(o)?;
        let mut s = self.gemm.borrow_mut();
        let (d, ty) = (self.d(), self.ty);
        matmul_backward(
            d,
            &mut s,
            partial,
            ty,
            dinp,
            dw,
            db,
            dout,
            ld,
            inp,
            w,
            (rows, k, o),
        )?;
        Ok(())
    }

    /// dinp (=); dw, db (+=).
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward(
        &self,
        dinp: DevPtr,
        dw: DevPtr,
        db: DevPtr,
        dout: DevPtr,
        inp: DevPtr,
        w: DevPtr,
        cache: LayerNormCache,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let partial = self.partial(cols)?;
        Ok(layer_norm_backward(
            self.d(),
            partial,
            dinp,
            dw,
            db,
            dout,
            inp,
            w,
            cache,
            rows,
            cols,
        )?)
    }

    /// dy (=) dx * gamma; dgamma += sum_rows(dx * y).
    #[allow(clippy::too_many_arguments)]
    fn residual_backward(
        &self,
        dy: DevPtr,
        dgamma: DevPtr,
        dx: DevPtr,
        y: DevPtr,
        gamma: DevPtr,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let partial = self.partial(dim)?;
        Ok(residual_backward(
            self.d(),
            partial,
            dy,
            dgamma,
            dx,
            y,
            gamma,
            rows,
            dim,
        )?)
    }
}

/// A student's forward and backward at one input shape on a device.
pub struct DevGraph {
    pub cfg: ModelConfig,
    pub dims: Dims,
    pub ops: Ops,
    cos: DevPtr,
    sin: DevPtr,
    pub pixels: DevPtr,
    cols: DevPtr,
    emb: DevPtr,
    xs: Vec<DevPtr>,
    blocks: Vec<BlockActs>,
    recompute: bool,
    pub out: DevPtr,
    out_cache: LayerNormCache,
    pub inter_layers: Vec<usize>,
    pub inter: Vec<DevPtr>,
    inter_caches: Vec<LayerNormCache>,
    dx: DevPtr,
    dtmp: DevPtr,
    dy: DevPtr,
    dqkv: DevPtr,
    dh: DevPtr,
    da: DevPtr,
    delta: DevPtr,
    _bufs: Buffers,
}

fn cache(b: &mut Buffers, rows: usize) -> Result<LayerNormCache> {
    Ok(LayerNormCache {
        mean: b.f32(rows, "norm stats")?,
        rstd: b.f32(rows, "norm stats")?,
    })
}

impl DevGraph {
    /// A graph for `batch` images of `height x width` pixels; `widest` is the widest row any
    /// column sum will see besides the student's own (the teacher's width, for the heads).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: Arc<dyn Device>,
        ty: Elem,
        cfg: &ModelConfig,
        batch: usize,
        (height, width): (usize, usize),
        inter_layers: &[usize],
        recompute: bool,
        widest: usize,
    ) -> Result<DevGraph> {
        let d = dims(cfg, batch, height, width);
        let hd = d.head_dim();
        if !HEAD_DIMS.contains(&hd) {
            return Err(DistillError::Config(format!(
                "the CUDA trainer has attention kernels for head dims {HEAD_DIMS:?}; this student's is {hd}"
            )));
        }
        let theta = match cfg.positions {
            Positions::Rope { theta } => theta,
            Positions::Learned { .. } => {
                return Err(DistillError::Config(
                    "the CUDA trainer trains RoPE students".into(),
                ));
            }
        };
        let (cos_h, sin_h) = tables(d.grid_h, d.grid_w, hd, theta);
        let mut b = Buffers::new(dev.clone());
        let (r, dim, i) = (d.rows(), d.dim, d.hidden);
        let gated = matches!(cfg.mlp, MlpKind::Gated(_));
        let h_w = if gated { 2 * i } else { i };
        let ops = Ops::new(&mut b, ty, widest.max(3 * dim).max(h_w))?;
        let cos = b.f32(cos_h.len(), "rope tables")?;
        let sin = b.f32(sin_h.len(), "rope tables")?;
        dev.upload(cos, bytes(&cos_h))?;
        dev.upload(sin, bytes(&sin_h))?;
        let kept = if recompute { 1 } else { cfg.num_layers };
        let lse_n = d.batch * d.heads * d.tokens();
        let mut blocks_ = Vec::with_capacity(kept);
        for _ in 0..kept {
            let what = "block activations";
            blocks_.push(BlockActs {
                ln1: b.f32(r * dim, what)?,
                ln1_cache: cache(&mut b, r)?,
                qkv: b.f32(r * 3 * dim, what)?,
                lse: b.f32(lse_n, what)?,
                att: b.f32(r * dim, what)?,
                y1: b.f32(r * dim, what)?,
                x_mid: b.f32(r * dim, what)?,
                ln2: b.f32(r * dim, what)?,
                ln2_cache: cache(&mut b, r)?,
                h: b.f32(r * h_w, what)?,
                a: b.f32(r * i, what)?,
                y2: b.f32(r * dim, what)?,
            });
        }
        let mut xs = Vec::new();
        for _ in 0..=cfg.num_layers {
            xs.push(b.f32(r * dim, "residual stream")?);
        }
        let mut inter = Vec::new();
        let mut inter_caches = Vec::new();
        for _ in inter_layers {
            inter.push(b.f32(r * dim, "intermediate outputs")?);
            inter_caches.push(cache(&mut b, r)?);
        }
        let patches = d.batch * d.patches();
        Ok(DevGraph {
            cfg: cfg.clone(),
            dims: d,
            cos,
            sin,
            pixels: b.f32(d.batch * d.channels * d.height * d.width, "pixels")?,
            cols: b.f32(patches * d.patch_len(), "patch rows")?,
            emb: b.f32(patches * dim, "patch embeddings")?,
            xs,
            blocks: blocks_,
            recompute,
            out: b.f32(r * dim, "outputs")?,
            out_cache: cache(&mut b, r)?,
            inter_layers: inter_layers.to_vec(),
            inter,
            inter_caches,
            dx: b.f32(r * dim, "backward scratch")?,
            dtmp: b.f32(r * dim, "backward scratch")?,
            dy: b.f32(r * dim, "backward scratch")?,
            dqkv: b.f32(r * 3 * dim, "backward scratch")?,
            dh: b.f32(r * h_w, "backward scratch")?,
            da: b.f32(r * i, "backward scratch")?,
            delta: b.f32(lse_n, "backward scratch")?,
            ops,
            _bufs: b,
        })
    }

    fn act(&self) -> (bool, Activation) {
        match self.cfg.mlp {
            MlpKind::Gated(a) => (true, a),
            MlpKind::Plain(a) => (false, a),
        }
    }

    fn dev(&self) -> &dyn Device {
        &*self.ops.dev
    }

    /// Forward on the pixels already in [`DevGraph::pixels`].
    pub fn forward(&self, p: DevParams) -> Result<()> {
        let d = self.dims;
        let (dim, eps) = (d.dim, self.cfg.layer_norm_eps as f32);
        let o = &self.ops;
        let conv = (
            p.w(ParamId::Model(Param::PatchWeight)),
            p.get(Param::PatchBias),
        );
        let (cls, regs) = (p.get(Param::ClsToken), p.opt(Param::RegisterTokens));
        let bufs = (self.xs[0], self.cols, self.emb);
        let mut s = o.gemm.borrow_mut();
        patch_embed_forward_train(
            self.dev(),
            &mut s,
            o.ty,
            bufs,
            self.pixels,
            conv,
            cls,
            regs,
            &d,
        )?;
        drop(s);
        for l in 0..self.cfg.num_layers {
            let b = &self.blocks[if self.recompute { 0 } else { l }];
            self.block_forward(p, l, self.xs[l], self.xs[l + 1], b)?;
        }
        let (nw, nb) = (p.get(Param::NormWeight), p.get(Param::NormBias));
        let r = d.rows();
        let nl = self.cfg.num_layers;
        let dev = self.dev();
        layer_norm_forward(
            dev,
            self.out,
            Some(self.out_cache),
            self.xs[nl],
            nw,
            nb,
            r,
            dim,
            eps,
        )?;
        for (k, &l) in self.inter_layers.iter().enumerate() {
            let c = Some(self.inter_caches[k]);
            layer_norm_forward(dev, self.inter[k], c, self.xs[l + 1], nw, nb, r, dim, eps)?;
        }
        Ok(())
    }

    fn block_forward(
        &self,
        p: DevParams,
        l: usize,
        x: DevPtr,
        x_out: DevPtr,
        b: &BlockActs,
    ) -> Result<()> {
        let d = self.dims;
        let (dim, r, eps, i) = (d.dim, d.rows(), self.cfg.layer_norm_eps as f32, d.hidden);
        let (gated, act) = self.act();
        let (o, dev) = (&self.ops, self.dev());
        let ml = |lp| ParamId::Model(Param::Layer(l, lp));
        let (w1, b1) = (p.l(l, L::Norm1Weight), p.l(l, L::Norm1Bias));
        layer_norm_forward(dev, b.ln1, Some(b.ln1_cache), x, w1, b1, r, dim, eps)?;
        for (j, (w, bias)) in QKV.into_iter().enumerate() {
            let dst = b.qkv + 4 * (j * dim) as u64;
            o.matmul_forward_train(dst, 3 * dim, b.ln1, p.w(ml(w)), p.lo(l, bias), r, dim, dim)?;
        }
        rope_forward(dev, b.qkv, self.cos, self.sin, &d)?;
        attention_forward_lse(dev, b.att, b.lse, b.qkv, &d)?;
        let (wo, bo) = (p.w(ml(L::OWeight)), p.lo(l, L::OBias));
        o.matmul_forward_train(b.y1, dim, b.att, wo, bo, r, dim, dim)?;
        dev.copy(b.x_mid, x, 4 * r * dim)?;
        let ls1 = Some(p.l(l, L::LayerScale1));
        residual_forward(dev, b.x_mid, b.y1, ls1, r * dim, dim)?;
        let (w2, b2) = (p.l(l, L::Norm2Weight), p.l(l, L::Norm2Bias));
        layer_norm_forward(dev, b.ln2, Some(b.ln2_cache), b.x_mid, w2, b2, r, dim, eps)?;
        if gated {
            let (wg, bg) = (p.w(ml(L::GateWeight)), p.lo(l, L::GateBias));
            o.matmul_forward_train(b.h, 2 * i, b.ln2, wg, bg, r, dim, i)?;
            let (wu, bu) = (p.w(ml(L::UpWeight)), p.lo(l, L::UpBias));
            o.matmul_forward_train(b.h + 4 * i as u64, 2 * i, b.ln2, wu, bu, r, dim, i)?;
            swiglu_forward(dev, b.a, b.h, r, i, act)?;
        } else {
            let (wu, bu) = (p.w(ml(L::UpWeight)), p.lo(l, L::UpBias));
            o.matmul_forward_train(b.h, i, b.ln2, wu, bu, r, dim, i)?;
            activation_forward(dev, b.a, b.h, r * i, act)?;
        }
        let (wd, bd) = (p.w(ml(L::DownWeight)), p.lo(l, L::DownBias));
        o.matmul_forward_train(b.y2, dim, b.a, wd, bd, r, i, dim)?;
        dev.copy(x_out, b.x_mid, 4 * r * dim)?;
        let ls2 = Some(p.l(l, L::LayerScale2));
        Ok(residual_forward(dev, x_out, b.y2, ls2, r * dim, dim)?)
    }

    /// Accumulates (`+=`) every parameter gradient into `g`, given the gradients of `out`
    /// and of each intermediate output (device addresses). Call after [`DevGraph::forward`].
    pub fn backward(
        &self,
        p: DevParams,
        g: DevGrads,
        dout: DevPtr,
        dinter: &[DevPtr],
    ) -> Result<()> {
        let d = self.dims;
        let (dim, r) = (d.dim, d.rows());
        let nl = self.cfg.num_layers;
        let o = &self.ops;
        let nw = p.get(Param::NormWeight);
        let (gnw, gnb) = (g.m(Param::NormWeight), g.m(Param::NormBias));
        let xn = self.xs[nl];
        o.layer_norm_backward(self.dx, gnw, gnb, dout, xn, nw, self.out_cache, r, dim)?;
        for l in (0..nl).rev() {
            for (k, _) in self
                .inter_layers
                .iter()
                .enumerate()
                .filter(|&(_, &il)| il == l)
            {
                let (c, x) = (self.inter_caches[k], self.xs[l + 1]);
                o.layer_norm_backward(self.dtmp, gnw, gnb, dinter[k], x, nw, c, r, dim)?;
                residual_forward(self.dev(), self.dx, self.dtmp, None, r * dim, dim)?;
            }
            let b = &self.blocks[if self.recompute { 0 } else { l }];
            if self.recompute {
                self.block_forward(p, l, self.xs[l], self.xs[l + 1], b)?;
            }
            self.mlp_backward(p, g, l, b)?;
            self.attention_block_backward(p, g, l, b)?;
        }
        // Token assembly and the patch convolution.
        let dregs = g.opt(ParamId::Model(Param::RegisterTokens)).unwrap_or(0);
        let dcls = g.m(Param::ClsToken);
        patch_embed_backward(self.dev(), self.emb, dcls, dregs, self.dx, &d)?;
        o.matmul_backward(
            None,
            g.m(Param::PatchWeight),
            Some(g.m(Param::PatchBias)),
            self.emb,
            dim,
            self.cols,
            p.w(ParamId::Model(Param::PatchWeight)),
            d.batch * d.patches(),
            d.patch_len(),
            dim,
        )
    }

    /// The MLP branch `x_out = x_mid + ls2 * y2`: dx (+=) its input gradient.
    fn mlp_backward(&self, p: DevParams, g: DevGrads, l: usize, b: &BlockActs) -> Result<()> {
        let d = self.dims;
        let (dim, r, i) = (d.dim, d.rows(), d.hidden);
        let (gated, act) = self.act();
        let (o, dev) = (&self.ops, self.dev());
        let ml = |lp| ParamId::Model(Param::Layer(l, lp));
        let ls2 = p.l(l, L::LayerScale2);
        o.residual_backward(self.dy, g.l(l, L::LayerScale2), self.dx, b.y2, ls2, r, dim)?;
        let (gw, gb) = (g.l(l, L::DownWeight), g.lo(l, L::DownBias));
        let wd = p.w(ml(L::DownWeight));
        o.matmul_backward(
            Some((self.da, false)),
            gw,
            gb,
            self.dy,
            dim,
            b.a,
            wd,
            r,
            i,
            dim,
        )?;
        if gated {
            swiglu_backward(dev, self.dh, self.da, b.h, r, i, act)?;
            for (j, (w, bias)) in [(L::GateWeight, L::GateBias), (L::UpWeight, L::UpBias)]
                .into_iter()
                .enumerate()
            {
                let dh = self.dh + 4 * (j * i) as u64;
                let (gw, gb) = (g.l(l, w), g.lo(l, bias));
                let dinp = Some((self.dtmp, j > 0));
                o.matmul_backward(dinp, gw, gb, dh, 2 * i, b.ln2, p.w(ml(w)), r, dim, i)?;
            }
        } else {
            activation_backward(dev, self.dh, self.da, b.h, r * i, act)?;
            let (gw, gb) = (g.l(l, L::UpWeight), g.lo(l, L::UpBias));
            let wu = p.w(ml(L::UpWeight));
            o.matmul_backward(
                Some((self.dtmp, false)),
                gw,
                gb,
                self.dh,
                i,
                b.ln2,
                wu,
                r,
                dim,
                i,
            )?;
        }
        let (gw, gb) = (g.l(l, L::Norm2Weight), g.l(l, L::Norm2Bias));
        let w2 = p.l(l, L::Norm2Weight);
        o.layer_norm_backward(self.dy, gw, gb, self.dtmp, b.x_mid, w2, b.ln2_cache, r, dim)?;
        Ok(residual_forward(dev, self.dx, self.dy, None, r * dim, dim)?)
    }

    /// The attention branch `x_mid = x + ls1 * y1`: dx (+=) its input gradient.
    fn attention_block_backward(
        &self,
        p: DevParams,
        g: DevGrads,
        l: usize,
        b: &BlockActs,
    ) -> Result<()> {
        let d = self.dims;
        let (dim, r) = (d.dim, d.rows());
        let (o, dev) = (&self.ops, self.dev());
        let ml = |lp| ParamId::Model(Param::Layer(l, lp));
        let ls1 = p.l(l, L::LayerScale1);
        o.residual_backward(self.dy, g.l(l, L::LayerScale1), self.dx, b.y1, ls1, r, dim)?;
        let (gw, gb) = (g.l(l, L::OWeight), g.lo(l, L::OBias));
        let wo = p.w(ml(L::OWeight));
        o.matmul_backward(
            Some((self.dtmp, false)),
            gw,
            gb,
            self.dy,
            dim,
            b.att,
            wo,
            r,
            dim,
            dim,
        )?;
        let saved = AttentionSaved {
            qkv: b.qkv,
            out: b.att,
            lse: b.lse,
            delta: self.delta,
        };
        attention_backward(dev, self.dqkv, self.dtmp, saved, &d)?;
        rope_backward(dev, self.dqkv, self.cos, self.sin, &d)?;
        for (j, (w, bias)) in QKV.into_iter().enumerate() {
            let dq = self.dqkv + 4 * (j * dim) as u64;
            let (gw, gb) = (g.l(l, w), g.lo(l, bias));
            let dinp = Some((self.dtmp, j > 0));
            o.matmul_backward(dinp, gw, gb, dq, 3 * dim, b.ln1, p.w(ml(w)), r, dim, dim)?;
        }
        let (gw, gb) = (g.l(l, L::Norm1Weight), g.l(l, L::Norm1Bias));
        let w1 = p.l(l, L::Norm1Weight);
        o.layer_norm_backward(
            self.dy,
            gw,
            gb,
            self.dtmp,
            self.xs[l],
            w1,
            b.ln1_cache,
            r,
            dim,
        )?;
        Ok(residual_forward(dev, self.dx, self.dy, None, r * dim, dim)?)
    }
}
