//! The training op set on the CPU: each forward and backward op of the student, named once,
//! dispatching to the runtime's op folders (`ops/<op>/cpu.rs` references or `fast.rs`
//! kernels). Every GEMM output tile and every reduction is computed by one task in a fixed
//! order, so a training step is bitwise reproducible at any thread count.

use std::cell::RefCell;

use dinoedge_runtime::backend::cpu::isa::Isa;
use dinoedge_runtime::backend::cpu::pool::Pool;
use dinoedge_runtime::config::Activation;
use dinoedge_runtime::ops::Dims;
use dinoedge_runtime::ops::activation::{cpu as act_cpu, fast as act_fast};
use dinoedge_runtime::ops::attention::{cpu as att_cpu, fast as att_fast};
use dinoedge_runtime::ops::layer_norm::cpu::LayerNormCache;
use dinoedge_runtime::ops::layer_norm::{cpu as ln_cpu, fast as ln_fast};
use dinoedge_runtime::ops::matmul::fast::gemm::{Strided, gemm};
use dinoedge_runtime::ops::matmul::fast::train as mm_train;
use dinoedge_runtime::ops::swiglu::{cpu as swiglu_cpu, fast as swiglu_fast};

use crate::error::{DistillError, Result};

/// Threads, kernel choice and scratch for training ops.
///
/// [`Ctx::new`] runs the fast kernels (SIMD GEMM and attention, vectorised LayerNorm and
/// activations on the pool); [`Ctx::reference`] runs the readable `cpu.rs` references and the
/// portable GEMM. Both are checked against PyTorch autograd.
pub struct Ctx {
    pub pool: Pool,
    pub isa: Isa,
    pub reference: bool,
    pack: RefCell<Vec<f32>>,
    partials: RefCell<Vec<f32>>,
}

impl Ctx {
    pub fn new(threads: Option<usize>) -> Result<Self> {
        Self::with(threads, false)
    }

    pub fn reference(threads: Option<usize>) -> Result<Self> {
        Self::with(threads, true)
    }

    fn with(threads: Option<usize>, reference: bool) -> Result<Self> {
        let threads = threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1);
        let pool = Pool::new(threads)
            .map_err(|e| DistillError::Config(format!("cannot start {threads} threads: {e}")))?;
        let isa = if reference {
            Isa::Scalar
        } else {
            Isa::detect()
        };
        Ok(Ctx {
            pool,
            isa,
            reference,
            pack: RefCell::new(Vec::new()),
            partials: RefCell::new(Vec::new()),
        })
    }

    /// `Err` when a kernel task panicked since the last check (a bug): the step's buffers
    /// are incomplete and must not reach the optimizer.
    pub fn check(&self) -> Result<()> {
        match self.pool.take_panic() {
            None => Ok(()),
            Some(reason) => Err(DistillError::Runtime(
                dinoedge_runtime::RuntimeError::TaskPanicked {
                    backend: "cpu trainer".into(),
                    reason,
                },
            )),
        }
    }

    /// `c (m, n; ldc) (=|+=) a (m, k) · b (k, n)`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: Strided,
        b: Strided,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        gemm(
            Some(&self.pool),
            self.isa,
            m,
            n,
            k,
            a,
            b,
            c,
            ldc,
            accumulate,
            &mut self.pack.borrow_mut(),
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_forward(
        &self,
        out: &mut [f32],
        cache: &mut LayerNormCache,
        inp: &[f32],
        w: &[f32],
        b: &[f32],
        cols: usize,
        eps: f32,
    ) {
        if self.reference {
            ln_cpu::layer_norm_forward(out, Some(cache), inp, w, b, cols, eps)
        } else {
            let rows = inp.len() / cols;
            ln_fast::layer_norm_forward(
                &self.pool,
                self.isa,
                out,
                Some(cache),
                inp,
                w,
                b,
                rows,
                cols,
                eps,
            )
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward(
        &self,
        dinp: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        w: &[f32],
        cache: &LayerNormCache,
        cols: usize,
    ) {
        if self.reference {
            ln_cpu::layer_norm_backward(dinp, dw, db, dout, inp, w, cache, cols)
        } else {
            ln_fast::layer_norm_backward(
                &self.pool,
                self.isa,
                dinp,
                dw,
                db,
                dout,
                inp,
                w,
                cache,
                cols,
                &mut self.partials.borrow_mut(),
            )
        }
    }

    pub fn activation_forward(&self, x: &mut [f32], act: Activation) {
        if self.reference {
            act_cpu::activation_forward(x, act)
        } else {
            act_fast::activation_forward(&self.pool, self.isa, x, act)
        }
    }

    pub fn activation_backward(
        &self,
        dinp: &mut [f32],
        dout: &[f32],
        pre: &[f32],
        act: Activation,
    ) {
        if self.reference {
            act_cpu::activation_backward(dinp, dout, pre, act)
        } else {
            act_fast::activation_backward(&self.pool, self.isa, dinp, dout, pre, act)
        }
    }

    pub fn swiglu_forward(&self, out: &mut [f32], gate_up: &[f32], hidden: usize, act: Activation) {
        if self.reference {
            swiglu_cpu::swiglu_forward(out, gate_up, hidden, act)
        } else {
            swiglu_fast::swiglu_forward(
                &self.pool,
                self.isa,
                out,
                gate_up,
                out.len() / hidden,
                hidden,
                act,
            )
        }
    }

    pub fn swiglu_backward(
        &self,
        dgate_up: &mut [f32],
        dout: &[f32],
        gate_up: &[f32],
        hidden: usize,
        act: Activation,
    ) {
        if self.reference {
            swiglu_cpu::swiglu_backward(dgate_up, dout, gate_up, hidden, act)
        } else {
            swiglu_fast::swiglu_backward(
                &self.pool,
                self.isa,
                dgate_up,
                dout,
                gate_up,
                dout.len() / hidden,
                hidden,
                act,
            )
        }
    }

    pub fn attention_forward(&self, out: &mut [f32], lse: &mut [f32], qkv: &[f32], d: &Dims) {
        if self.reference {
            att_cpu::attention_forward_lse(out, lse, qkv, d)
        } else {
            att_fast::attention_forward_lse(&self.pool, self.isa, out, lse, qkv, d)
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        dqkv: &mut [f32],
        dout: &[f32],
        qkv: &[f32],
        out: &[f32],
        lse: &[f32],
        d: &Dims,
    ) {
        if self.reference {
            att_cpu::attention_backward(dqkv, dout, qkv, out, lse, d)
        } else {
            att_fast::attention_backward(&self.pool, self.isa, dqkv, dout, qkv, out, lse, d)
        }
    }
}

/// `matmul_forward_train` of the op folder on this context's pool and GEMM scratch.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_train(
    ctx: &Ctx,
    out: &mut [f32],
    ldo: usize,
    inp: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    k: usize,
) {
    let pack = &mut ctx.pack.borrow_mut();
    mm_train::matmul_forward_train(&ctx.pool, ctx.isa, pack, out, ldo, inp, w, b, rows, k)
}

/// `matmul_backward` of the op folder on this context's pool and GEMM scratch.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    ctx: &Ctx,
    dinp: Option<(&mut [f32], bool)>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    ld: usize,
    inp: &[f32],
    w: &[f32],
    rows: usize,
    k: usize,
) {
    let pack = &mut ctx.pack.borrow_mut();
    mm_train::matmul_backward(
        &ctx.pool, ctx.isa, pack, dinp, dw, db, dout, ld, inp, w, rows, k,
    )
}
