//! The student's forward and backward on a [`Device`], op for op the CPU trainer's
//! ([`crate::graph`]): same order, same buffers, same `=` / `+=` conventions, with each op a
//! `train.cu` kernel and each product a GEMM.

use std::rc::Rc;

use dinoedge_runtime::config::{Activation, MlpKind, ModelConfig, Positions};
use dinoedge_runtime::forward::dims;
use dinoedge_runtime::ops::Dims;
use dinoedge_runtime::ops::rope::tables;
use dinoedge_runtime::weights::layout::{LayerParam as L, Param};

use super::{Arg, DevPtr, Device, GemmType, HEAD_DIMS, Mat, blocks, bytes, device_error};
use crate::error::{DistillError, Result};
use crate::params::{ParamId, ParamLayout};

/// Device allocations freed together.
pub struct Buffers {
    pub dev: Rc<dyn Device>,
    list: Vec<DevPtr>,
}

impl Buffers {
    pub fn new(dev: Rc<dyn Device>) -> Self {
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
        let p = self.dev.alloc(n, what)?;
        self.list.push(p);
        Ok(p)
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        for &p in &self.list {
            self.dev.free(p);
        }
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
    /// Weight `id` (o, k) as the B operand of `x · Wᵀ`.
    pub fn wt(&self, id: ParamId, k: usize) -> Mat {
        Mat::transposed(self.id(id), k).with_bf16(self.half(id))
    }
    /// Weight `id` (o, k) as the B operand of `dy · W`.
    pub fn w(&self, id: ParamId, k: usize) -> Mat {
        Mat::rows(self.id(id), k).with_bf16(self.half(id))
    }
    fn half(&self, id: ParamId) -> Option<DevPtr> {
        self.bf16
            .map(|h| h + 2 * self.layout.range(id).start as u64)
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
    ln1_mean: DevPtr,
    ln1_rstd: DevPtr,
    qkv: DevPtr,
    lse: DevPtr,
    att: DevPtr,
    y1: DevPtr,
    x_mid: DevPtr,
    ln2: DevPtr,
    ln2_mean: DevPtr,
    ln2_rstd: DevPtr,
    h: DevPtr,
    a: DevPtr,
    y2: DevPtr,
}

/// Shape-independent helpers: the device, GEMM type and the column-sum scratch.
pub struct Ops {
    pub dev: Rc<dyn Device>,
    pub t: GemmType,
    /// Column partial sums: 256 chunks of the widest row.
    partials: DevPtr,
    partial_cols: usize,
}

impl Ops {
    pub fn new(bufs: &mut Buffers, t: GemmType, widest: usize) -> Result<Ops> {
        Ok(Ops {
            dev: bufs.dev.clone(),
            t,
            partials: bufs.f32(256 * widest, "column partial sums")?,
            partial_cols: widest,
        })
    }

    pub fn launch(&self, k: &'static str, n: usize, args: &[Arg]) -> Result<()> {
        self.dev.launch(k, (blocks(n), 1), 256, args)
    }

    /// `out[:, 0..o]` (row stride `ldo`) = inp (rows, k) · Wᵀ + b.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_forward(
        &self,
        out: DevPtr,
        ldo: usize,
        inp: DevPtr,
        w: Mat,
        b: Option<DevPtr>,
        rows: usize,
        k: usize,
        o: usize,
    ) -> Result<()> {
        if let Some(b) = b {
            self.launch(
                "bias_rows",
                rows * o,
                &[
                    Arg::Ptr(out),
                    Arg::I32(ldo as i32),
                    Arg::Ptr(b),
                    Arg::I32(rows as i32),
                    Arg::I32(o as i32),
                ],
            )?;
        }
        self.dev.gemm(
            rows,
            o,
            k,
            Mat::rows(inp, k),
            w,
            out,
            ldo,
            b.is_some(),
            self.t,
        )
    }

    /// dinp (= | += when accumulate) dout · W, dw += doutᵀ · inp, db += column sums; dout
    /// (rows, o) with row stride `ld`. `w` is W (o, k) as rows.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward(
        &self,
        dinp: Option<(DevPtr, bool)>,
        dw: DevPtr,
        db: Option<DevPtr>,
        dout: DevPtr,
        ld: usize,
        inp: DevPtr,
        w: Mat,
        rows: usize,
        k: usize,
        o: usize,
    ) -> Result<()> {
        if let Some((dx, acc)) = dinp {
            self.dev
                .gemm(rows, k, o, Mat::rows(dout, ld), w, dx, k, acc, self.t)?;
        }
        self.dev.gemm(
            o,
            k,
            rows,
            Mat::transposed(dout, ld),
            Mat::rows(inp, k),
            dw,
            k,
            true,
            self.t,
        )?;
        if let Some(db) = db {
            self.column_sums(db, dout, None, ld, rows, o)?;
        }
        Ok(())
    }

    /// `acc[j] += sum_r a[r * ld + j]` (times `b[r * ld + j]`, or times the LayerNorm's
    /// normalised input when `b` is (x, mean, rstd)), summed in fixed row chunks.
    pub fn column_sums(
        &self,
        acc: DevPtr,
        a: DevPtr,
        b: Option<(DevPtr, Option<(DevPtr, DevPtr)>)>,
        ld: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if cols > self.partial_cols {
            return Err(device_error(
                "column sums",
                format!("{cols} columns, scratch for {}", self.partial_cols),
            ));
        }
        let chunk = rows.div_ceil(256).max(32);
        let chunks = rows.div_ceil(chunk);
        let (bp, mean, rstd, mode) = match b {
            None => (0, 0, 0, 0),
            Some((b, None)) => (b, 0, 0, 1),
            Some((x, Some((m, r)))) => (x, m, r, 2),
        };
        self.dev.launch(
            "column_partials",
            (cols.div_ceil(256) as u32, chunks as u32),
            256,
            &[
                Arg::Ptr(self.partials),
                Arg::Ptr(a),
                Arg::Ptr(bp),
                Arg::Ptr(mean),
                Arg::Ptr(rstd),
                Arg::I32(ld as i32),
                Arg::I32(rows as i32),
                Arg::I32(cols as i32),
                Arg::I32(chunk as i32),
                Arg::I32(mode),
            ],
        )?;
        self.launch(
            "column_reduce_add",
            cols,
            &[
                Arg::Ptr(acc),
                Arg::Ptr(self.partials),
                Arg::I32(chunks as i32),
                Arg::I32(cols as i32),
            ],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_forward(
        &self,
        out: DevPtr,
        mean: DevPtr,
        rstd: DevPtr,
        inp: DevPtr,
        w: DevPtr,
        b: DevPtr,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        self.dev.launch(
            "layer_norm_forward",
            (rows.div_ceil(8) as u32, 1),
            256,
            &[
                Arg::Ptr(out),
                Arg::Ptr(mean),
                Arg::Ptr(rstd),
                Arg::Ptr(inp),
                Arg::Ptr(w),
                Arg::Ptr(b),
                Arg::I32(rows as i32),
                Arg::I32(cols as i32),
                Arg::F32(eps),
            ],
        )
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
        (mean, rstd): (DevPtr, DevPtr),
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.column_sums(db, dout, None, cols, rows, cols)?;
        self.column_sums(dw, dout, Some((inp, Some((mean, rstd)))), cols, rows, cols)?;
        self.dev.launch(
            "layer_norm_backward",
            (rows.div_ceil(8) as u32, 1),
            256,
            &[
                Arg::Ptr(dinp),
                Arg::Ptr(dout),
                Arg::Ptr(inp),
                Arg::Ptr(w),
                Arg::Ptr(mean),
                Arg::Ptr(rstd),
                Arg::I32(rows as i32),
                Arg::I32(cols as i32),
            ],
        )
    }

    pub fn add_into(&self, acc: DevPtr, x: DevPtr, n: usize) -> Result<()> {
        self.launch(
            "add_into",
            n,
            &[Arg::Ptr(acc), Arg::Ptr(x), Arg::I64(n as i64)],
        )
    }

    fn layer_scale_forward(
        &self,
        x: DevPtr,
        y: DevPtr,
        gamma: DevPtr,
        n: usize,
        dim: usize,
    ) -> Result<()> {
        self.launch(
            "layer_scale_forward",
            n,
            &[
                Arg::Ptr(x),
                Arg::Ptr(y),
                Arg::Ptr(gamma),
                Arg::I64(n as i64),
                Arg::I32(dim as i32),
            ],
        )
    }

    /// dy (=) dx * gamma; dgamma += sum_rows(dx * y).
    #[allow(clippy::too_many_arguments)]
    fn layer_scale_backward(
        &self,
        dy: DevPtr,
        dgamma: DevPtr,
        dx: DevPtr,
        y: DevPtr,
        gamma: DevPtr,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        self.column_sums(dgamma, dx, Some((y, None)), dim, rows, dim)?;
        self.launch(
            "layer_scale_backward",
            rows * dim,
            &[
                Arg::Ptr(dy),
                Arg::Ptr(dx),
                Arg::Ptr(gamma),
                Arg::I64((rows * dim) as i64),
                Arg::I32(dim as i32),
            ],
        )
    }
}

fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::Silu => 3,
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
    out_stats: (DevPtr, DevPtr),
    pub inter_layers: Vec<usize>,
    pub inter: Vec<DevPtr>,
    inter_stats: Vec<(DevPtr, DevPtr)>,
    dx: DevPtr,
    dtmp: DevPtr,
    dy: DevPtr,
    dqkv: DevPtr,
    dh: DevPtr,
    da: DevPtr,
    delta: DevPtr,
    _bufs: Buffers,
}

impl DevGraph {
    /// A graph for `batch` images of `height x width` pixels; `widest` is the widest row any column
    /// sum will see besides the student's own (the teacher's width, for the heads).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: Rc<dyn Device>,
        t: GemmType,
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
        let ops = Ops::new(&mut b, t, widest.max(3 * dim).max(h_w))?;
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
                ln1_mean: b.f32(r, what)?,
                ln1_rstd: b.f32(r, what)?,
                qkv: b.f32(r * 3 * dim, what)?,
                lse: b.f32(lse_n, what)?,
                att: b.f32(r * dim, what)?,
                y1: b.f32(r * dim, what)?,
                x_mid: b.f32(r * dim, what)?,
                ln2: b.f32(r * dim, what)?,
                ln2_mean: b.f32(r, what)?,
                ln2_rstd: b.f32(r, what)?,
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
        let mut inter_stats = Vec::new();
        for _ in inter_layers {
            inter.push(b.f32(r * dim, "intermediate outputs")?);
            inter_stats.push((b.f32(r, "norm stats")?, b.f32(r, "norm stats")?));
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
            out_stats: (b.f32(r, "norm stats")?, b.f32(r, "norm stats")?),
            inter_layers: inter_layers.to_vec(),
            inter,
            inter_stats,
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

    /// Forward on the pixels already in [`DevGraph::pixels`].
    pub fn forward(&self, p: DevParams) -> Result<()> {
        let d = self.dims;
        let (dim, eps) = (d.dim, self.cfg.layer_norm_eps as f32);
        let o = &self.ops;
        let n = d.batch * d.patches() * d.patch_len();
        o.launch(
            "im2col_forward",
            n,
            &[
                Arg::Ptr(self.cols),
                Arg::Ptr(self.pixels),
                Arg::I32(d.batch as i32),
                Arg::I32(d.channels as i32),
                Arg::I32(d.height as i32),
                Arg::I32(d.width as i32),
                Arg::I32(d.patch as i32),
                Arg::I32(d.grid_h as i32),
                Arg::I32(d.grid_w as i32),
            ],
        )?;
        let pl = d.patch_len();
        o.linear_forward(
            self.emb,
            dim,
            self.cols,
            p.wt(ParamId::Model(Param::PatchWeight), pl),
            Some(p.get(Param::PatchBias)),
            d.batch * d.patches(),
            pl,
            dim,
        )?;
        o.launch(
            "assemble_forward",
            d.rows() * dim,
            &[
                Arg::Ptr(self.xs[0]),
                Arg::Ptr(self.emb),
                Arg::Ptr(p.get(Param::ClsToken)),
                Arg::Ptr(p.opt(Param::RegisterTokens).unwrap_or(0)),
                Arg::I32(d.batch as i32),
                Arg::I32(d.tokens() as i32),
                Arg::I32(d.prefix as i32),
                Arg::I32(dim as i32),
            ],
        )?;
        for l in 0..self.cfg.num_layers {
            let b = &self.blocks[if self.recompute { 0 } else { l }];
            self.block_forward(p, l, self.xs[l], self.xs[l + 1], b)?;
        }
        let (nw, nb) = (p.get(Param::NormWeight), p.get(Param::NormBias));
        let r = d.rows();
        let nl = self.cfg.num_layers;
        o.layer_norm_forward(
            self.out,
            self.out_stats.0,
            self.out_stats.1,
            self.xs[nl],
            nw,
            nb,
            r,
            dim,
            eps,
        )?;
        for (k, &l) in self.inter_layers.iter().enumerate() {
            let (m, s) = self.inter_stats[k];
            o.layer_norm_forward(self.inter[k], m, s, self.xs[l + 1], nw, nb, r, dim, eps)?;
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
        let o = &self.ops;
        let ml = |lp| ParamId::Model(Param::Layer(l, lp));
        o.layer_norm_forward(
            b.ln1,
            b.ln1_mean,
            b.ln1_rstd,
            x,
            p.l(l, L::Norm1Weight),
            p.l(l, L::Norm1Bias),
            r,
            dim,
            eps,
        )?;
        for (j, (w, bias)) in QKV.into_iter().enumerate() {
            o.linear_forward(
                b.qkv + 4 * (j * dim) as u64,
                3 * dim,
                b.ln1,
                p.wt(ml(w), dim),
                p.lo(l, bias),
                r,
                dim,
                dim,
            )?;
        }
        self.rope(b.qkv, false)?;
        let hd = d.head_dim();
        o.dev.launch(
            attention_kernel("forward", hd),
            ((d.batch * d.heads) as u32, d.tokens().div_ceil(64) as u32),
            64,
            &[
                Arg::Ptr(b.att),
                Arg::Ptr(b.lse),
                Arg::Ptr(b.qkv),
                Arg::I32(d.tokens() as i32),
                Arg::I32(d.heads as i32),
            ],
        )?;
        o.linear_forward(
            b.y1,
            dim,
            b.att,
            p.wt(ml(L::OWeight), dim),
            p.lo(l, L::OBias),
            r,
            dim,
            dim,
        )?;
        o.dev.copy(b.x_mid, x, 4 * r * dim)?;
        o.layer_scale_forward(b.x_mid, b.y1, p.l(l, L::LayerScale1), r * dim, dim)?;
        o.layer_norm_forward(
            b.ln2,
            b.ln2_mean,
            b.ln2_rstd,
            b.x_mid,
            p.l(l, L::Norm2Weight),
            p.l(l, L::Norm2Bias),
            r,
            dim,
            eps,
        )?;
        if gated {
            o.linear_forward(
                b.h,
                2 * i,
                b.ln2,
                p.wt(ml(L::GateWeight), dim),
                p.lo(l, L::GateBias),
                r,
                dim,
                i,
            )?;
            o.linear_forward(
                b.h + 4 * i as u64,
                2 * i,
                b.ln2,
                p.wt(ml(L::UpWeight), dim),
                p.lo(l, L::UpBias),
                r,
                dim,
                i,
            )?;
            o.launch(
                "swiglu_forward",
                r * i,
                &[
                    Arg::Ptr(b.a),
                    Arg::Ptr(b.h),
                    Arg::I32(r as i32),
                    Arg::I32(i as i32),
                    Arg::I32(act_code(act)),
                ],
            )?;
        } else {
            o.linear_forward(
                b.h,
                i,
                b.ln2,
                p.wt(ml(L::UpWeight), dim),
                p.lo(l, L::UpBias),
                r,
                dim,
                i,
            )?;
            o.launch(
                "activation_forward",
                r * i,
                &[
                    Arg::Ptr(b.a),
                    Arg::Ptr(b.h),
                    Arg::I64((r * i) as i64),
                    Arg::I32(act_code(act)),
                ],
            )?;
        }
        o.linear_forward(
            b.y2,
            dim,
            b.a,
            p.wt(ml(L::DownWeight), i),
            p.lo(l, L::DownBias),
            r,
            i,
            dim,
        )?;
        o.dev.copy(x_out, b.x_mid, 4 * r * dim)?;
        o.layer_scale_forward(x_out, b.y2, p.l(l, L::LayerScale2), r * dim, dim)
    }

    fn rope(&self, qkv: DevPtr, inverse: bool) -> Result<()> {
        let d = self.dims;
        let n = d.batch * d.patches() * 2 * d.heads * d.head_dim() / 2;
        self.ops.launch(
            "rope_apply",
            n,
            &[
                Arg::Ptr(qkv),
                Arg::Ptr(self.cos),
                Arg::Ptr(self.sin),
                Arg::I32(d.batch as i32),
                Arg::I32(d.tokens() as i32),
                Arg::I32(d.prefix as i32),
                Arg::I32(d.dim as i32),
                Arg::I32(d.head_dim() as i32),
                Arg::I32(inverse as i32),
            ],
        )
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
        let (dim, r, i) = (d.dim, d.rows(), d.hidden);
        let (gated, act) = self.act();
        let nl = self.cfg.num_layers;
        let o = &self.ops;
        let ml = |l, lp| ParamId::Model(Param::Layer(l, lp));
        let nw = p.get(Param::NormWeight);
        let (gnw, gnb) = (g.m(Param::NormWeight), g.m(Param::NormBias));
        o.layer_norm_backward(
            self.dx,
            gnw,
            gnb,
            dout,
            self.xs[nl],
            nw,
            self.out_stats,
            r,
            dim,
        )?;
        for l in (0..nl).rev() {
            for (k, _) in self
                .inter_layers
                .iter()
                .enumerate()
                .filter(|&(_, &il)| il == l)
            {
                o.layer_norm_backward(
                    self.dtmp,
                    gnw,
                    gnb,
                    dinter[k],
                    self.xs[l + 1],
                    nw,
                    self.inter_stats[k],
                    r,
                    dim,
                )?;
                o.add_into(self.dx, self.dtmp, r * dim)?;
            }
            let b = &self.blocks[if self.recompute { 0 } else { l }];
            if self.recompute {
                self.block_forward(p, l, self.xs[l], self.xs[l + 1], b)?;
            }
            // MLP branch: x_out = x_mid + ls2 * y2.
            o.layer_scale_backward(
                self.dy,
                g.l(l, L::LayerScale2),
                self.dx,
                b.y2,
                p.l(l, L::LayerScale2),
                r,
                dim,
            )?;
            o.linear_backward(
                Some((self.da, false)),
                g.l(l, L::DownWeight),
                g.lo(l, L::DownBias),
                self.dy,
                dim,
                b.a,
                p.w(ml(l, L::DownWeight), i),
                r,
                i,
                dim,
            )?;
            if gated {
                o.launch(
                    "swiglu_backward",
                    r * i,
                    &[
                        Arg::Ptr(self.dh),
                        Arg::Ptr(self.da),
                        Arg::Ptr(b.h),
                        Arg::I32(r as i32),
                        Arg::I32(i as i32),
                        Arg::I32(act_code(act)),
                    ],
                )?;
                o.linear_backward(
                    Some((self.dtmp, false)),
                    g.l(l, L::GateWeight),
                    g.lo(l, L::GateBias),
                    self.dh,
                    2 * i,
                    b.ln2,
                    p.w(ml(l, L::GateWeight), dim),
                    r,
                    dim,
                    i,
                )?;
                o.linear_backward(
                    Some((self.dtmp, true)),
                    g.l(l, L::UpWeight),
                    g.lo(l, L::UpBias),
                    self.dh + 4 * i as u64,
                    2 * i,
                    b.ln2,
                    p.w(ml(l, L::UpWeight), dim),
                    r,
                    dim,
                    i,
                )?;
            } else {
                o.launch(
                    "activation_backward",
                    r * i,
                    &[
                        Arg::Ptr(self.dh),
                        Arg::Ptr(self.da),
                        Arg::Ptr(b.h),
                        Arg::I64((r * i) as i64),
                        Arg::I32(act_code(act)),
                    ],
                )?;
                o.linear_backward(
                    Some((self.dtmp, false)),
                    g.l(l, L::UpWeight),
                    g.lo(l, L::UpBias),
                    self.dh,
                    i,
                    b.ln2,
                    p.w(ml(l, L::UpWeight), dim),
                    r,
                    dim,
                    i,
                )?;
            }
            o.layer_norm_backward(
                self.dy,
                g.l(l, L::Norm2Weight),
                g.l(l, L::Norm2Bias),
                self.dtmp,
                b.x_mid,
                p.l(l, L::Norm2Weight),
                (b.ln2_mean, b.ln2_rstd),
                r,
                dim,
            )?;
            o.add_into(self.dx, self.dy, r * dim)?;
            // Attention branch: x_mid = x + ls1 * y1.
            o.layer_scale_backward(
                self.dy,
                g.l(l, L::LayerScale1),
                self.dx,
                b.y1,
                p.l(l, L::LayerScale1),
                r,
                dim,
            )?;
            o.linear_backward(
                Some((self.dtmp, false)),
                g.l(l, L::OWeight),
                g.lo(l, L::OBias),
                self.dy,
                dim,
                b.att,
                p.w(ml(l, L::OWeight), dim),
                r,
                dim,
                dim,
            )?;
            self.attention_backward(b)?;
            self.rope(self.dqkv, true)?;
            for (j, (w, bias)) in QKV.into_iter().enumerate() {
                o.linear_backward(
                    Some((self.dtmp, j > 0)),
                    g.l(l, w),
                    g.lo(l, bias),
                    self.dqkv + 4 * (j * dim) as u64,
                    3 * dim,
                    b.ln1,
                    p.w(ml(l, w), dim),
                    r,
                    dim,
                    dim,
                )?;
            }
            o.layer_norm_backward(
                self.dy,
                g.l(l, L::Norm1Weight),
                g.l(l, L::Norm1Bias),
                self.dtmp,
                self.xs[l],
                p.l(l, L::Norm1Weight),
                (b.ln1_mean, b.ln1_rstd),
                r,
                dim,
            )?;
            o.add_into(self.dx, self.dy, r * dim)?;
        }
        // Token assembly and the patch convolution.
        o.launch(
            "assemble_backward",
            d.rows() * dim,
            &[
                Arg::Ptr(self.emb),
                Arg::Ptr(g.m(Param::ClsToken)),
                Arg::Ptr(g.opt(ParamId::Model(Param::RegisterTokens)).unwrap_or(0)),
                Arg::Ptr(self.dx),
                Arg::I32(d.batch as i32),
                Arg::I32(d.tokens() as i32),
                Arg::I32(d.prefix as i32),
                Arg::I32(dim as i32),
            ],
        )?;
        let pl = d.patch_len();
        o.linear_backward(
            None,
            g.m(Param::PatchWeight),
            Some(g.m(Param::PatchBias)),
            self.emb,
            dim,
            self.cols,
            p.w(ParamId::Model(Param::PatchWeight), pl),
            d.batch * d.patches(),
            pl,
            dim,
        )
    }

    /// dqkv (=) from dtmp (the gradient of the attention output).
    fn attention_backward(&self, b: &BlockActs) -> Result<()> {
        let d = self.dims;
        let (n, hd) = (d.tokens(), d.head_dim());
        let o = &self.ops;
        o.launch(
            "attention_backward_delta",
            d.batch * d.heads * n,
            &[
                Arg::Ptr(self.delta),
                Arg::Ptr(self.dtmp),
                Arg::Ptr(b.att),
                Arg::I32(d.batch as i32),
                Arg::I32(n as i32),
                Arg::I32(d.heads as i32),
                Arg::I32(hd as i32),
            ],
        )?;
        let args = [
            Arg::Ptr(self.dqkv),
            Arg::Ptr(self.dtmp),
            Arg::Ptr(b.qkv),
            Arg::Ptr(b.lse),
            Arg::Ptr(self.delta),
            Arg::I32(n as i32),
            Arg::I32(d.heads as i32),
        ];
        let grid = ((d.batch * d.heads) as u32, n.div_ceil(64) as u32);
        o.dev
            .launch(attention_kernel("backward_dq", hd), grid, 64, &args)?;
        o.dev
            .launch(attention_kernel("backward_dkv", hd), grid, 64, &args)
    }
}

/// `attention_{part}_hd{hd}` (hd one of [`HEAD_DIMS`], checked when the graph is made).
fn attention_kernel(part: &str, hd: usize) -> &'static str {
    match (part, hd) {
        ("forward", 16) => "attention_forward_hd16",
        ("forward", 32) => "attention_forward_hd32",
        ("forward", 64) => "attention_forward_hd64",
        ("forward", _) => "attention_forward_hd128",
        ("backward_dq", 16) => "attention_backward_dq_hd16",
        ("backward_dq", 32) => "attention_backward_dq_hd32",
        ("backward_dq", 64) => "attention_backward_dq_hd64",
        ("backward_dq", _) => "attention_backward_dq_hd128",
        (_, 16) => "attention_backward_dkv_hd16",
        (_, 32) => "attention_backward_dkv_hd32",
        (_, 64) => "attention_backward_dkv_hd64",
        _ => "attention_backward_dkv_hd128",
    }
}
