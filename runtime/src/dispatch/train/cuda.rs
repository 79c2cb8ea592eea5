//! The training op set on a CUDA [`Device`] (a GPU, or the emulator): [`TrainBackend`] over
//! one device allocation. Each op is the runtime's CUDA form (`ops/<op>/cuda.rs`), every
//! product a GEMM in bf16 with f32 accumulation against f32 master weights (or in f32, for
//! parity checks), the objective's and optimizer's included (`ops/loss`, `ops/adamw`).

use std::cell::RefCell;
use std::sync::Arc;

use crate::backend::cuda::device::{DeviceBuffer, Fused};
use crate::config::Activation;
use crate::ops::Dims;
use crate::ops::activation::cuda as act;
use crate::ops::attention::cuda::{
    AttentionSaved, HEAD_DIMS, attention_backward, attention_forward_lse,
};
use crate::ops::column_sum::cuda::partial_len;
use crate::ops::dwconv::{DwDims, cuda as dw};
use crate::ops::layer_norm::cuda::{LayerNormCache, layer_norm_backward, layer_norm_forward};
use crate::ops::matmul::cuda::{
    GemmScratch, Input, Weight, matmul_backward, matmul_forward_train, product,
};
use crate::ops::patch_embed::cuda as pe;
use crate::ops::residual::cuda::{residual_backward, residual_forward};
use crate::ops::rope::cuda::{rope_backward, rope_forward};
use crate::ops::swiglu::cuda::{swiglu_backward, swiglu_forward};
use crate::ops::token_pool::cuda as pool;

use crate::ops::{adamw::cuda as adamw, loss::cuda as loss};

use super::{AdamwEma, AllReduce, Buf, Mat, Rows, StateBufs, Stats, TrainBackend};
use crate::backend::cuda::device::{
    DevPtr, Device, Elem, Operand, PARTIALS, bytes, bytes_mut, device_error,
};
use crate::error::{Result, RuntimeError};

/// The CUDA backend: the device, the arena and the kernels' own scratch.
pub struct Cuda {
    dev: Arc<dyn Device>,
    ty: Elem,
    arena: DeviceBuffer,
    /// In bf16 training: the bf16 copy of the parameters span (written by every update).
    half: Option<(DeviceBuffer, Buf)>,
    decay: DeviceBuffer,
    gemm: RefCell<GemmScratch>,
    /// Column sums' partials, for rows up to `partial_cols` wide.
    partial: DeviceBuffer,
    partial_cols: usize,
    /// Block sums of the reductions read back by the host.
    partials: DeviceBuffer,
    bad: DeviceBuffer,
}

impl Cuda {
    /// An arena of `len` f32 on `dev` (`parts` names what it holds, for out-of-memory
    /// messages); `params` is the span the optimizer updates (with a bf16 copy when `ty` is
    /// bf16), `decay` its weight-decay flags, and `widest` the widest row any column sum will
    /// see.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: Arc<dyn Device>,
        ty: Elem,
        len: usize,
        parts: &str,
        params: Buf,
        decay: &[bool],
        widest: usize,
    ) -> Result<Cuda> {
        let half = match ty {
            Elem::F32 => None,
            Elem::BF16 => Some((
                DeviceBuffer::new(&dev, params.len, 2, "bf16 weights")?,
                params,
            )),
            // adamw.cu writes the 16-bit copy as bf16.
            Elem::F16 => {
                return Err(RuntimeError::Unsupported {
                    backend: "cuda trainer".into(),
                    reason: "its GEMMs are f32 or bf16 (f16 has too little range for gradients)"
                        .into(),
                });
            }
        };
        let what = format!("the trainer's arena ({parts})");
        let arena = DeviceBuffer::new(&dev, len, 4, &what)?;
        dev.zero(arena.ptr, 4 * len)?;
        let flags = DeviceBuffer::new(&dev, decay.len(), 1, "weight-decay flags")?;
        let mask: Vec<u8> = decay.iter().map(|&d| d as u8).collect();
        dev.upload(flags.ptr, &mask)?;
        Ok(Cuda {
            ty,
            arena,
            half,
            decay: flags,
            gemm: RefCell::new(GemmScratch::new(&dev)),
            partial: DeviceBuffer::new(&dev, partial_len(widest), 4, "column partial sums")?,
            partial_cols: widest,
            partials: DeviceBuffer::new(&dev, PARTIALS, 4, "reduction scratch")?,
            bad: DeviceBuffer::new(&dev, 1, 4, "flags")?,
            dev,
        })
    }

    /// The attention kernels' head dims, checked before anything is allocated.
    pub fn check_head_dim(head_dim: usize) -> Result<()> {
        if HEAD_DIMS.contains(&head_dim) {
            return Ok(());
        }
        Err(RuntimeError::Unsupported {
            backend: "cuda trainer".into(),
            reason: format!(
                "it has attention kernels for head dims {HEAD_DIMS:?}; this student's is {head_dim}"
            ),
        })
    }

    fn d(&self) -> &dyn Device {
        &*self.dev
    }

    fn p(&self, b: Buf) -> DevPtr {
        self.arena.at(b.off)
    }

    fn opt(&self, b: Option<Buf>) -> Option<DevPtr> {
        b.map(|b| self.p(b))
    }

    /// A weight with its bf16 copy, when it lies in the parameters span (the EMA has none:
    /// its products convert as the GEMM type says).
    fn w(&self, b: Buf) -> Weight {
        let half = self.half.as_ref().and_then(|(h, params)| {
            (b.off >= params.off && b.end() <= params.end())
                .then(|| h.ptr + 2 * (b.off - params.off) as u64)
        });
        Weight {
            ptr: self.p(b),
            half,
        }
    }

    /// The column sums' scratch for rows `cols` wide.
    fn partial(&self, cols: usize) -> Result<DevPtr> {
        if cols > self.partial_cols {
            let e = format!("{cols} columns, scratch for {}", self.partial_cols);
            return Err(device_error("column sums", e));
        }
        Ok(self.partial.ptr)
    }
}

impl TrainBackend for Cuda {
    fn describe(&self) -> String {
        format!("{} ({:?} GEMMs)", self.dev.name(), self.ty).to_lowercase()
    }

    fn upload(&self, dst: Buf, src: &[f32]) -> Result<()> {
        assert_eq!(dst.len, src.len(), "upload size");
        self.dev.upload(self.p(dst), bytes(src))?;
        if let Some(h) = self.w(dst).half {
            let bits: Vec<u8> = src
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
                .collect();
            self.dev.upload(h, &bits)?;
        }
        Ok(())
    }

    fn download(&self, src: Buf, dst: &mut [f32]) -> Result<()> {
        assert_eq!(src.len, dst.len(), "download size");
        self.dev.download(self.p(src), bytes_mut(dst))
    }

    fn with_host(&self, bufs: &[Buf], f: &mut dyn FnMut(&[&[f32]]) -> Result<()>) -> Result<()> {
        let mut host = Vec::with_capacity(bufs.len());
        for &b in bufs {
            let mut v = vec![0.0f32; b.len];
            self.download(b, &mut v)?;
            host.push(v);
        }
        let views: Vec<&[f32]> = host.iter().map(|v| &v[..]).collect();
        f(&views)
    }

    fn zero(&self, b: Buf) -> Result<()> {
        self.dev.zero(self.p(b), 4 * b.len)
    }

    fn copy(&self, dst: Buf, src: Buf) -> Result<()> {
        self.dev.copy(self.p(dst), self.p(src), 4 * src.len)
    }

    fn check(&self) -> Result<()> {
        Ok(())
    }

    fn patch_embed_forward_im2col(&self, cols: Buf, pixels: Buf, d: &Dims) -> Result<()> {
        pe::patch_embed_forward_im2col(self.d(), self.p(cols), self.p(pixels), d)
    }

    fn patch_embed_forward_assemble(
        &self,
        x: Buf,
        emb: Buf,
        cls: Buf,
        regs: Option<Buf>,
        d: &Dims,
    ) -> Result<()> {
        let (x, emb, cls) = (self.p(x), self.p(emb), self.p(cls));
        let regs = self.opt(regs);
        pe::patch_embed_forward_assemble(self.d(), x, emb, cls, regs, None, d)
    }

    fn patch_embed_backward(
        &self,
        demb: Buf,
        dcls: Buf,
        dregs: Option<Buf>,
        dx: Buf,
        d: &Dims,
    ) -> Result<()> {
        let (demb, dcls, dx) = (self.p(demb), self.p(dcls), self.p(dx));
        let dregs = self.opt(dregs).unwrap_or(0);
        pe::patch_embed_backward(self.d(), demb, dcls, dregs, dx, d)
    }

    fn patch_embed_forward_im2col_nhwc(&self, cols: Buf, x: Buf, d: &Dims) -> Result<()> {
        pe::patch_embed_forward_im2col_nhwc(self.d(), self.p(cols), self.p(x), d)
    }

    fn patch_embed_backward_im2col_nhwc(&self, dx: Buf, dcols: Buf, d: &Dims) -> Result<()> {
        pe::patch_embed_backward_im2col_nhwc(self.d(), self.p(dx), self.p(dcols), d)
    }

    fn dwconv_forward(&self, out: Buf, inp: Buf, w: Buf, b: Buf, d: &DwDims) -> Result<()> {
        let (out, inp, w, b) = (self.p(out), self.p(inp), self.p(w), self.p(b));
        dw::dwconv_forward(self.d(), out, inp, w, b, d)
    }

    fn dwconv_backward(
        &self,
        din: Buf,
        dw: Buf,
        db: Buf,
        dout: Buf,
        inp: Buf,
        w: Buf,
        d: &DwDims,
    ) -> Result<()> {
        let (din, dwt, db) = (self.p(din), self.p(dw), self.p(db));
        let (dout, inp, w) = (self.p(dout), self.p(inp), self.p(w));
        dw::dwconv_backward(self.d(), din, dwt, db, dout, inp, w, d)
    }

    fn token_pool_forward(
        &self,
        out: Buf,
        inp: Buf,
        (b, n, c): (usize, usize, usize),
    ) -> Result<()> {
        pool::token_pool_forward(self.d(), self.p(out), self.p(inp), b, n, c)
    }

    fn token_pool_backward(
        &self,
        dinp: Buf,
        dout: Buf,
        (b, n, c): (usize, usize, usize),
    ) -> Result<()> {
        pool::token_pool_backward(self.d(), self.p(dinp), self.p(dout), b, n, c)
    }

    fn matmul_forward_train(
        &self,
        out: Buf,
        ldo: usize,
        inp: Buf,
        w: Buf,
        b: Option<Buf>,
        rko: (usize, usize, usize),
    ) -> Result<()> {
        let s = &mut self.gemm.borrow_mut();
        let (out, inp, w, b) = (self.p(out), self.p(inp), self.w(w), self.opt(b));
        matmul_forward_train(self.d(), s, self.ty, out, ldo, inp, w, b, rko)?;
        Ok(())
    }

    fn matmul_backward(
        &self,
        dinp: Option<(Buf, bool)>,
        dw: Buf,
        db: Option<Buf>,
        dout: Buf,
        ld: usize,
        inp: Buf,
        w: Buf,
        rko: (usize, usize, usize),
    ) -> Result<()> {
        let partial = self.partial(rko.2)?;
        let s = &mut self.gemm.borrow_mut();
        let dinp = dinp.map(|(b, acc)| (self.p(b), acc));
        let (dw, db, dout) = (self.p(dw), self.opt(db), self.p(dout));
        let (inp, w) = (self.p(inp), self.w(w));
        matmul_backward(
            self.d(),
            s,
            partial,
            self.ty,
            dinp,
            dw,
            db,
            dout,
            ld,
            inp,
            w,
            rko,
        )?;
        Ok(())
    }

    fn product(
        &self,
        mnk: (usize, usize, usize),
        a: Mat,
        b: Mat,
        c: Buf,
        ldc: usize,
    ) -> Result<()> {
        let op = |m: Mat| {
            let p = self.p(m.buf);
            Input::f32(if m.transposed {
                Operand::transposed(p, m.ld)
            } else {
                Operand::rows(p, m.ld)
            })
        };
        let s = &mut self.gemm.borrow_mut();
        let none = (Fused::None, 0);
        let (a, b, c) = (op(a), op(b), self.p(c));
        product(self.d(), s, mnk, a, b, c, ldc, false, self.ty, none)?;
        Ok(())
    }

    fn layer_norm_forward(
        &self,
        out: Buf,
        stats: Stats,
        inp: Buf,
        w: Buf,
        b: Buf,
        (rows, cols): (usize, usize),
        eps: f32,
    ) -> Result<()> {
        let cache = LayerNormCache {
            mean: self.p(stats.mean()),
            rstd: self.p(stats.rstd()),
        };
        let (out, inp, w, b) = (self.p(out), self.p(inp), self.p(w), self.p(b));
        layer_norm_forward(self.d(), out, Some(cache), inp, w, b, rows, cols, eps)
    }

    fn layer_norm_backward(
        &self,
        dinp: Buf,
        dw: Buf,
        db: Buf,
        dout: Buf,
        inp: Buf,
        w: Buf,
        stats: Stats,
        (rows, cols): (usize, usize),
    ) -> Result<()> {
        let partial = self.partial(cols)?;
        let cache = LayerNormCache {
            mean: self.p(stats.mean()),
            rstd: self.p(stats.rstd()),
        };
        let (dinp, dw, db, dout) = (self.p(dinp), self.p(dw), self.p(db), self.p(dout));
        let (inp, w) = (self.p(inp), self.p(w));
        layer_norm_backward(
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
        )
    }

    fn rope_forward(&self, qkv: Buf, cos: Buf, sin: Buf, d: &Dims) -> Result<()> {
        let (q, c, s) = (self.p(qkv), self.p(cos), self.p(sin));
        rope_forward(self.d(), q, c, s, d)
    }

    fn rope_backward(&self, dqkv: Buf, cos: Buf, sin: Buf, d: &Dims) -> Result<()> {
        let (q, c, s) = (self.p(dqkv), self.p(cos), self.p(sin));
        rope_backward(self.d(), q, c, s, d)
    }

    fn attention_forward(&self, out: Buf, lse: Buf, qkv: Buf, d: &Dims) -> Result<()> {
        let (o, l, q) = (self.p(out), self.p(lse), self.p(qkv));
        attention_forward_lse(self.d(), o, l, q, d)
    }

    fn attention_backward(
        &self,
        dqkv: Buf,
        dout: Buf,
        (qkv, out, lse): (Buf, Buf, Buf),
        delta: Buf,
        d: &Dims,
    ) -> Result<()> {
        let saved = AttentionSaved {
            qkv: self.p(qkv),
            out: self.p(out),
            lse: self.p(lse),
            delta: self.p(delta),
        };
        attention_backward(self.d(), self.p(dqkv), self.p(dout), saved, d)
    }

    fn swiglu_forward(
        &self,
        out: Buf,
        gate_up: Buf,
        (rows, hidden): (usize, usize),
        a: Activation,
    ) -> Result<()> {
        let (o, gu) = (self.p(out), self.p(gate_up));
        swiglu_forward(self.d(), o, gu, rows, hidden, a)
    }

    fn swiglu_backward(
        &self,
        dgate_up: Buf,
        dout: Buf,
        gate_up: Buf,
        (rows, hidden): (usize, usize),
        a: Activation,
    ) -> Result<()> {
        let (dgu, dy, gu) = (self.p(dgate_up), self.p(dout), self.p(gate_up));
        swiglu_backward(self.d(), dgu, dy, gu, rows, hidden, a)
    }

    fn activation_forward(&self, out: Buf, inp: Buf, a: Activation) -> Result<()> {
        let (o, x) = (self.p(out), self.p(inp));
        act::activation_forward(self.d(), o, x, out.len, a)
    }

    fn activation_backward(&self, dinp: Buf, dout: Buf, pre: Buf, a: Activation) -> Result<()> {
        let (dx, dy, h) = (self.p(dinp), self.p(dout), self.p(pre));
        act::activation_backward(self.d(), dx, dy, h, dinp.len, a)
    }

    fn residual_forward(&self, x: Buf, y: Buf, gamma: Option<Buf>, dim: usize) -> Result<()> {
        let (n, x, y, g) = (x.len, self.p(x), self.p(y), self.opt(gamma));
        residual_forward(self.d(), x, y, g, n, dim)
    }

    fn residual_backward(
        &self,
        dy: Buf,
        dgamma: Buf,
        dx: Buf,
        y: Buf,
        gamma: Buf,
        dim: usize,
    ) -> Result<()> {
        let (partial, rows) = (self.partial(dim)?, dx.len / dim);
        let (dy, dg, dx) = (self.p(dy), self.p(dgamma), self.p(dx));
        let (y, g) = (self.p(y), self.p(gamma));
        residual_backward(self.d(), partial, dy, dg, dx, y, g, rows, dim)
    }

    fn gather_rows(&self, dst: Buf, src: Buf, sel: Rows, dim: usize) -> Result<()> {
        loss::gather_rows(self.d(), self.p(dst), self.p(src), sel, dim)
    }

    fn scatter_add_rows(&self, dst: Buf, src: Buf, sel: Rows, dim: usize) -> Result<()> {
        loss::scatter_add_rows(self.d(), self.p(dst), self.p(src), sel, dim)
    }

    fn cos_smooth_l1(
        &self,
        dp: Buf,
        parts: Buf,
        p: Buf,
        t: Buf,
        dim: usize,
        weight: f32,
    ) -> Result<f64> {
        let rows = p.len / dim;
        let parts = parts.part(0, 2 * rows);
        let (dp, parts, p, t) = (self.p(dp), self.p(parts), self.p(p), self.p(t));
        loss::cos_smooth_l1(self.d(), dp, parts, p, t, rows, dim, weight)
    }

    fn normalize_rows(&self, u: Buf, norms: Buf, x: Buf, dim: usize) -> Result<()> {
        let (u, norms, rows) = (self.p(u), self.p(norms), x.len / dim);
        loss::normalize_rows(self.d(), u, norms, self.p(x), rows, dim)
    }

    fn gram_difference(&self, gs: Buf, gt: Buf, coef: f32) -> Result<f64> {
        let (n, partials) = (gs.len, self.partials.ptr);
        loss::gram_difference(self.d(), self.p(gs), self.p(gt), n, coef, partials)
    }

    fn normalize_rows_backward(
        &self,
        dp: Buf,
        u: Buf,
        du: Buf,
        norms: Buf,
        dim: usize,
    ) -> Result<()> {
        let rows = u.len / dim;
        let (dp, u, du, norms) = (self.p(dp), self.p(u), self.p(du), self.p(norms));
        loss::normalize_rows_backward(self.d(), dp, u, du, norms, rows, dim)
    }

    fn sum_squares(&self, g: Buf) -> Result<f64> {
        adamw::sum_squares(self.d(), self.partials.ptr, self.p(g), g.len)
    }

    fn adamw_ema(&self, s: &StateBufs, a: &AdamwEma) -> Result<bool> {
        let state = adamw::AdamwState {
            params: self.p(s.params),
            m: self.p(s.m),
            v: self.p(s.v),
            ema: self.p(s.ema),
            half: self.half.as_ref().map_or(0, |(h, _)| h.ptr),
            g: self.p(s.g),
            decay: self.decay.ptr,
            n: s.params.len,
        };
        adamw::adamw_ema(self.d(), &state, a, self.bad.ptr)
    }

    fn sum_over_ranks(&self, c: &mut dyn AllReduce, b: Buf) -> Result<()> {
        c.sum_device(self.d(), self.p(b), b.len)
    }
}
