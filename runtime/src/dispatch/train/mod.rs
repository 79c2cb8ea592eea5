//! The training seam: [`TrainBackend`], the training op set, named as the op folders name
//! their forms (`ops/<op>/{cpu,fast,cuda}.rs`), over spans ([`Buf`]) of one arena the
//! backend owns; and one dispatcher per device, as for inference ([`super::Backend`]):
//! [`cpu::Cpu`] (a host arena) and [`cuda::Cuda`] (one device allocation, on a GPU or the
//! emulator). The trainer (`dinoedge-distill`'s `trainer/`: graph, objective, step) is
//! written once over it.
//!
//! Conventions: outputs come first; `=` unless an op says `+=`; parameter gradients always
//! accumulate (`+=`). A backend runs ops in call order (a device queues them on one stream).

pub mod cpu;
pub mod cuda;

use crate::config::Activation;
use crate::ops::Dims;
pub use crate::ops::adamw::AdamwEma;
use crate::ops::dwconv::DwDims;
pub use crate::ops::loss::Rows;

use crate::backend::cuda::device::{DevPtr, Device, bytes, bytes_mut};
use crate::error::Result;

/// Sums buffers over the data-parallel ranks (the trainer's collective: TCP or NCCL).
pub trait AllReduce {
    /// `v` summed over every rank, in place (the same result on each).
    fn sum_f32(&mut self, v: &mut [f32]) -> Result<()>;
    /// A device buffer of `n` f32 summed in place (through the host unless the collective
    /// reaches the device).
    fn sum_device(&mut self, dev: &dyn Device, p: DevPtr, n: usize) -> Result<()> {
        let mut host = vec![0.0f32; n];
        dev.download(p, bytes_mut(&mut host))?;
        self.sum_f32(&mut host)?;
        dev.upload(p, bytes(&host))
    }
}

/// `len` f32 at element `off` of a backend's arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buf {
    pub off: usize,
    pub len: usize,
}

impl Buf {
    /// The span from element `k` on (a column offset into rows with a larger stride).
    pub fn at(self, k: usize) -> Buf {
        assert!(k <= self.len, "offset {k} past a span of {}", self.len);
        Buf {
            off: self.off.checked_add(k).expect("span offset overflows"),
            len: self.len - k,
        }
    }

    /// `n` elements from element `k`.
    pub fn part(self, k: usize, n: usize) -> Buf {
        assert!(
            k.checked_add(n).is_some_and(|e| e <= self.len),
            "{k}+{n} past a span of {}",
            self.len
        );
        Buf {
            off: self.off.checked_add(k).expect("span offset overflows"),
            len: n,
        }
    }

    /// One past the last element (saturating: a span past `usize::MAX` ends there).
    pub fn end(self) -> usize {
        self.off.saturating_add(self.len)
    }
}

/// A GEMM operand: row-major with leading dimension `ld`, or its transpose.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub buf: Buf,
    pub ld: usize,
    pub transposed: bool,
}

impl Mat {
    pub fn rows(buf: Buf, ld: usize) -> Mat {
        Mat {
            buf,
            ld,
            transposed: false,
        }
    }
    pub fn transposed(buf: Buf, ld: usize) -> Mat {
        Mat {
            buf,
            ld,
            transposed: true,
        }
    }
}

/// Per-row LayerNorm statistics kept for the backward: `rows` means, then `rows` rstds.
#[derive(Clone, Copy, Debug)]
pub struct Stats(pub Buf);

impl Stats {
    pub fn mean(self) -> Buf {
        self.0.part(0, self.0.len / 2)
    }
    pub fn rstd(self) -> Buf {
        self.0.part(self.0.len / 2, self.0.len / 2)
    }
}

/// The training state's spans, each `total` long (the trainer's parameter order).
#[derive(Clone, Copy, Debug)]
pub struct StateBufs {
    pub params: Buf,
    pub ema: Buf,
    pub m: Buf,
    pub v: Buf,
    pub g: Buf,
}

/// The training op set on one device, over one arena of f32 (see the module docs).
#[allow(clippy::too_many_arguments)]
pub trait TrainBackend {
    /// What trains ("cpu, 2 threads", "NVIDIA H100 (bf16 GEMMs)").
    fn describe(&self) -> String;
    fn upload(&self, dst: Buf, src: &[f32]) -> Result<()>;
    fn download(&self, src: Buf, dst: &mut [f32]) -> Result<()>;
    /// Runs `f` on host views of `bufs` (the arena itself on the CPU, copies elsewhere).
    fn with_host(&self, bufs: &[Buf], f: &mut dyn FnMut(&[&[f32]]) -> Result<()>) -> Result<()>;
    fn zero(&self, b: Buf) -> Result<()>;
    fn copy(&self, dst: Buf, src: Buf) -> Result<()>;
    /// `Err` when something the backend ran since the last check failed (a kernel task
    /// panicked, a launch failed): the step's buffers must not reach the optimizer.
    fn check(&self) -> Result<()>;

    // patch_embed, in its three steps (the conv is a matmul over the im2col rows).
    fn patch_embed_forward_im2col(&self, cols: Buf, pixels: Buf, d: &Dims) -> Result<()>;
    fn patch_embed_forward_assemble(
        &self,
        x: Buf,
        emb: Buf,
        cls: Buf,
        regs: Option<Buf>,
        d: &Dims,
    ) -> Result<()>;
    /// demb (=); dcls, dregs (+=).
    fn patch_embed_backward(
        &self,
        demb: Buf,
        dcls: Buf,
        dregs: Option<Buf>,
        dx: Buf,
        d: &Dims,
    ) -> Result<()>;

    /// cols (B*HW, P*P*C) (=) the patches of a channels-last map x (B, H, W, C) (a
    /// ConvNeXt's downsampling conv, whose weight the trainer keeps as (D, P, P, C)).
    fn patch_embed_forward_im2col_nhwc(&self, cols: Buf, x: Buf, d: &Dims) -> Result<()>;
    /// dx (=) from dcols; pixels past the last full patch get zero.
    fn patch_embed_backward_im2col_nhwc(&self, dx: Buf, dcols: Buf, d: &Dims) -> Result<()>;

    /// out (B, H, W, C) (=) the depthwise 7x7 conv of inp, weight (49, C) tap-major.
    fn dwconv_forward(&self, out: Buf, inp: Buf, w: Buf, b: Buf, d: &DwDims) -> Result<()>;
    /// din (=); dw, db (+=).
    fn dwconv_backward(
        &self,
        din: Buf,
        dw: Buf,
        db: Buf,
        dout: Buf,
        inp: Buf,
        w: Buf,
        d: &DwDims,
    ) -> Result<()>;

    /// out (B, 1 + N, C) (=) [mean of the N cells, the cells] per image.
    fn token_pool_forward(&self, out: Buf, inp: Buf, bnc: (usize, usize, usize)) -> Result<()>;
    /// dinp (B, N, C) (=) from dout (B, 1 + N, C).
    fn token_pool_backward(&self, dinp: Buf, dout: Buf, bnc: (usize, usize, usize)) -> Result<()>;

    /// `out[:, 0..o]` (row stride `ldo`) = inp (rows, k) · Wᵀ + b, W (o, k) a parameter.
    fn matmul_forward_train(
        &self,
        out: Buf,
        ldo: usize,
        inp: Buf,
        w: Buf,
        b: Option<Buf>,
        rko: (usize, usize, usize),
    ) -> Result<()>;
    /// dinp (= | += when its flag is set) dout · W, dw += doutᵀ · inp, db += column sums;
    /// dout (rows, o) with row stride `ld`.
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
    ) -> Result<()>;
    /// `c (m, n; ldc) = a (m, k) · b (k, n)`.
    fn product(&self, mnk: (usize, usize, usize), a: Mat, b: Mat, c: Buf, ldc: usize)
    -> Result<()>;

    fn layer_norm_forward(
        &self,
        out: Buf,
        stats: Stats,
        inp: Buf,
        w: Buf,
        b: Buf,
        rows_cols: (usize, usize),
        eps: f32,
    ) -> Result<()>;
    fn layer_norm_backward(
        &self,
        dinp: Buf,
        dw: Buf,
        db: Buf,
        dout: Buf,
        inp: Buf,
        w: Buf,
        stats: Stats,
        rows_cols: (usize, usize),
    ) -> Result<()>;

    /// In place on the q and k columns of qkv (B*N, 3D).
    fn rope_forward(&self, qkv: Buf, cos: Buf, sin: Buf, d: &Dims) -> Result<()>;
    fn rope_backward(&self, dqkv: Buf, cos: Buf, sin: Buf, d: &Dims) -> Result<()>;

    /// out (B*N, D) and the log-sum-exp of each query row (B*H*N) from qkv.
    fn attention_forward(&self, out: Buf, lse: Buf, qkv: Buf, d: &Dims) -> Result<()>;
    /// `delta` (B*H*N) is scratch.
    fn attention_backward(
        &self,
        dqkv: Buf,
        dout: Buf,
        saved: (Buf, Buf, Buf),
        delta: Buf,
        d: &Dims,
    ) -> Result<()>;

    fn swiglu_forward(
        &self,
        out: Buf,
        gate_up: Buf,
        rows_hidden: (usize, usize),
        act: Activation,
    ) -> Result<()>;
    fn swiglu_backward(
        &self,
        dgate_up: Buf,
        dout: Buf,
        gate_up: Buf,
        rows_hidden: (usize, usize),
        act: Activation,
    ) -> Result<()>;
    fn activation_forward(&self, out: Buf, inp: Buf, act: Activation) -> Result<()>;
    fn activation_backward(&self, dinp: Buf, dout: Buf, pre: Buf, act: Activation) -> Result<()>;

    /// x (+=) gamma * y (gamma per column, or 1).
    fn residual_forward(&self, x: Buf, y: Buf, gamma: Option<Buf>, dim: usize) -> Result<()>;
    /// dy = dx * gamma; dgamma += column sums of dx * y.
    fn residual_backward(
        &self,
        dy: Buf,
        dgamma: Buf,
        dx: Buf,
        y: Buf,
        gamma: Buf,
        dim: usize,
    ) -> Result<()>;

    // The objective's kernels (`ops/loss`).
    fn gather_rows(&self, dst: Buf, src: Buf, sel: Rows, dim: usize) -> Result<()>;
    /// dst (+=) on the selected rows.
    fn scatter_add_rows(&self, dst: Buf, src: Buf, sel: Rows, dim: usize) -> Result<()>;
    /// dp (=) the gradient of `weight * (mean_rows(1 - cos(p, t)) + mean(smooth_l1(p - t)))`
    /// over rows of width `dim`; returns that loss. `parts` (2 per row) is scratch.
    fn cos_smooth_l1(
        &self,
        dp: Buf,
        parts: Buf,
        p: Buf,
        t: Buf,
        dim: usize,
        weight: f32,
    ) -> Result<f64>;
    /// u = rows of x / max(|row|, 1e-12); norms (=) those norms.
    fn normalize_rows(&self, u: Buf, norms: Buf, x: Buf, dim: usize) -> Result<()>;
    /// gs (=) coef * (gs - gt); returns the sum of (gs - gt)².
    fn gram_difference(&self, gs: Buf, gt: Buf, coef: f32) -> Result<f64>;
    /// dp (+=) (du - u (u · du)) / norm, row by row.
    fn normalize_rows_backward(
        &self,
        dp: Buf,
        u: Buf,
        du: Buf,
        norms: Buf,
        dim: usize,
    ) -> Result<()>;

    // The optimizer's kernels (`ops/adamw`).
    /// The sum of squares of `g`, in a fixed order.
    fn sum_squares(&self, g: Buf) -> Result<f64>;
    /// Clip + AdamW + EMA on `s` (decay flags as given at construction); false when a weight
    /// became non-finite.
    fn adamw_ema(&self, s: &StateBufs, a: &AdamwEma) -> Result<bool>;
    /// Sums `b` over the data-parallel ranks of `c`.
    fn sum_over_ranks(&self, c: &mut dyn AllReduce, b: Buf) -> Result<()>;
}
