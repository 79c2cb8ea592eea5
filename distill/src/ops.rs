//! The training op set on the CPU: each forward and backward op of the student, named once,
//! on top of the runtime's op folders (`ops/<op>/cpu.rs` references; the GEMM and attention
//! run on the fast SIMD kernels). Every GEMM output tile and every reduction is computed by
//! one task in a fixed order, so a training step is bitwise reproducible at any thread count.

use std::cell::RefCell;

use rayon::prelude::*;

use dinoedge_runtime::backend::cpu::isa::Isa;
use dinoedge_runtime::backend::cpu::pool::{Pool, RowsMut};
use dinoedge_runtime::ops::matmul::fast::gemm::{Strided, gemm};

use crate::error::{DistillError, Result};

/// Threads, SIMD family and GEMM scratch for training ops.
pub struct Ctx {
    pub pool: Pool,
    pub isa: Isa,
    pack: RefCell<Vec<f32>>,
}

impl Ctx {
    pub fn new(threads: Option<usize>) -> Result<Self> {
        let threads = threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1);
        let pool = Pool::new(threads)
            .map_err(|e| DistillError::Config(format!("cannot start {threads} threads: {e}")))?;
        Ok(Ctx {
            pool,
            isa: Isa::detect(),
            pack: RefCell::new(Vec::new()),
        })
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
