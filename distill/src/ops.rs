//! The training op set on the CPU: each forward and backward op of the student, named once,
//! dispatching to the runtime's op folders (`ops/<op>/cpu.rs` references or `fast.rs`
//! kernels). Every GEMM output tile and every reduction is computed by one task in a fixed
//! order, so a training step is bitwise reproducible at any thread count.

use std::cell::RefCell;

use rayon::prelude::*;

use dinoedge_runtime::backend::cpu::isa::Isa;
use dinoedge_runtime::backend::cpu::pool::{Pool, RowsMut};
use dinoedge_runtime::config::Activation;
use dinoedge_runtime::ops::Dims;
use dinoedge_runtime::ops::activation::{cpu as act_cpu, fast as act_fast};
use dinoedge_runtime::ops::attention::{cpu as att_cpu, fast as att_fast};
use dinoedge_runtime::ops::layer_norm::cpu::LayerNormCache;
use dinoedge_runtime::ops::layer_norm::{cpu as ln_cpu, fast as ln_fast};
use dinoedge_runtime::ops::matmul::fast::gemm::{Strided, gemm};
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
            ln_cpu::layer_norm_forward_train(out, cache, inp, w, b, cols, eps)
        } else {
            ln_fast::layer_norm_forward_train_fast(
                &self.pool, self.isa, out, cache, inp, w, b, cols, eps,
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
            ln_fast::layer_norm_backward_fast(
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
            act_fast::activation_forward_fast(&self.pool, self.isa, x, act)
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
            act_fast::activation_backward_fast(&self.pool, self.isa, dinp, dout, pre, act)
        }
    }

    pub fn swiglu_forward(&self, out: &mut [f32], gate_up: &[f32], hidden: usize, act: Activation) {
        if self.reference {
            swiglu_cpu::swiglu_forward(out, gate_up, hidden, act)
        } else {
            swiglu_fast::swiglu_fast(
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
            swiglu_fast::swiglu_backward_fast(
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
            att_cpu::attention_forward_train(out, lse, qkv, d)
        } else {
            att_fast::attention_forward_train_fast(&self.pool, self.isa, out, lse, qkv, d)
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
            att_fast::attention_backward_fast(&self.pool, self.isa, dqkv, dout, qkv, out, lse, d)
        }
    }
}

/// Linear forward: `out[:, 0..o]` (row stride `ldo`) = inp (rows, k) · Wᵀ + b, W (o, k).
/// The bias is written first and the product accumulated onto it.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    ctx: &Ctx,
    out: &mut [f32],
    ldo: usize,
    inp: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    k: usize,
) {
    let o = w.len() / k;
    match b {
        Some(b) => {
            out.par_chunks_mut(ldo)
                .take(rows)
                .with_min_len(64)
                .for_each(|row| row[..o].copy_from_slice(b));
            ctx.gemm(
                rows,
                o,
                k,
                Strided::rows(inp, k),
                Strided::transposed(w, k),
                out,
                ldo,
                true,
            );
        }
        None => ctx.gemm(
            rows,
            o,
            k,
            Strided::rows(inp, k),
            Strided::transposed(w, k),
            out,
            ldo,
            false,
        ),
    }
}

/// Linear backward for `out = inp · Wᵀ + b` with dout (rows, o; row stride `ld`):
/// `dinp (=|+= when accumulate)` = dout · W, `dw += doutᵀ · inp`, `db += column sums`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
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
    let o = w.len() / k;
    let dy = Strided {
        data: dout,
        rs: ld,
        cs: 1,
    };
    if let Some((dx, acc)) = dinp {
        ctx.gemm(rows, k, o, dy, Strided::rows(w, k), dx, k, acc);
    }
    ctx.gemm(
        o,
        k,
        rows,
        Strided {
            data: dout,
            rs: 1,
            cs: ld,
        },
        Strided::rows(inp, k),
        dw,
        k,
        true,
    );
    if let Some(db) = db {
        column_sums_add(ctx, db, dout, ld, rows);
    }
}

/// `acc[j] += sum_r x[r * ld + j]` for j < acc.len(), rows summed in order.
pub fn column_sums_add(ctx: &Ctx, acc: &mut [f32], x: &[f32], ld: usize, rows: usize) {
    let n = acc.len();
    let chunk = 64;
    let acc_rows = RowsMut::new(acc, 1);
    ctx.pool.run(n.div_ceil(chunk), |t| {
        let (c0, c1) = (t * chunk, ((t + 1) * chunk).min(n));
        // SAFETY: columns c0..c1 of acc belong to this task.
        let a = unsafe { acc_rows.rows(c0, c1) };
        for r in 0..rows {
            let row = &x[r * ld + c0..r * ld + c1];
            a.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
    });
}

/// `x += gamma * y` per row (LayerScale + residual), keeping nothing: the backward needs y,
/// which the caller saves.
pub fn layer_scale_forward(ctx: &Ctx, x: &mut [f32], y: &[f32], gamma: &[f32]) {
    let d = gamma.len();
    let rows = RowsMut::new(x, d);
    ctx.pool.run_rows(y.len() / d, 32, |r0, r1| {
        // SAFETY: rows r0..r1 belong to this task.
        let xr = unsafe { rows.rows(r0, r1) };
        for (xrow, yrow) in xr
            .chunks_exact_mut(d)
            .zip(y[r0 * d..r1 * d].chunks_exact(d))
        {
            for i in 0..d {
                xrow[i] += gamma[i] * yrow[i];
            }
        }
    });
}

/// Backward of `x_out = x_in + gamma * y`: `dgamma += sum_rows(dx * y)`, `dy = dx * gamma` (=).
/// (dx_in = dx_out is the caller's residual path.)
pub fn layer_scale_backward(
    ctx: &Ctx,
    dy: &mut [f32],
    dgamma: &mut [f32],
    dx: &[f32],
    y: &[f32],
    gamma: &[f32],
) {
    let d = gamma.len();
    let rows = dx.len() / d;
    let chunk = 64;
    let acc = RowsMut::new(dgamma, 1);
    ctx.pool.run(d.div_ceil(chunk), |t| {
        let (c0, c1) = (t * chunk, ((t + 1) * chunk).min(d));
        // SAFETY: columns c0..c1 of dgamma belong to this task.
        let a = unsafe { acc.rows(c0, c1) };
        for r in 0..rows {
            let (xr, yr) = (&dx[r * d + c0..r * d + c1], &y[r * d + c0..r * d + c1]);
            for ((s, u), v) in a.iter_mut().zip(xr).zip(yr) {
                *s += u * v;
            }
        }
    });
    let out = RowsMut::new(dy, d);
    ctx.pool.run_rows(rows, 32, |r0, r1| {
        // SAFETY: rows r0..r1 belong to this task.
        let o = unsafe { out.rows(r0, r1) };
        for (orow, drow) in o
            .chunks_exact_mut(d)
            .zip(dx[r0 * d..r1 * d].chunks_exact(d))
        {
            for i in 0..d {
                orow[i] = drow[i] * gamma[i];
            }
        }
    });
}

/// `acc += x`, elementwise.
pub fn add_into(acc: &mut [f32], x: &[f32]) {
    acc.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(s, v)| *s += v));
}
