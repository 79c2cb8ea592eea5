//! The training forms of `matmul` on the CPU, f32 or bf16 through the strided GEMM
//! ([`super::gemm`]):
//! every output tile is one task summing in a fixed order, so a training step is bitwise
//! reproducible at any thread count. `pack` is the GEMM's reusable scratch.

use rayon::prelude::*;

use super::gemm::{Kernels, Strided, gemm};
use crate::backend::cpu::pool::Pool;
use crate::ops::column_sum::cpu::column_sum_forward;

/// out[:, 0..o] (row stride `ldo`) (=) inp (rows, k) W^T + b, W (o, k). The bias is written
/// first and the product accumulated onto it.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_train(
    pool: &Pool,
    isa: impl Into<Kernels> + Copy,
    pack: &mut Vec<f32>,
    out: &mut [f32],
    ldo: usize,
    inp: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    k: usize,
) {
    let o = w.len() / k;
    if let Some(b) = b {
        out.par_chunks_mut(ldo)
            .take(rows)
            .with_min_len(64)
            .for_each(|row| row[..o].copy_from_slice(b));
    }
    let (x, wt) = (Strided::rows(inp, k), Strided::transposed(w, k));
    gemm(
        Some(pool),
        isa,
        rows,
        o,
        k,
        x,
        wt,
        out,
        ldo,
        b.is_some(),
        pack,
    );
}

/// Backward of [`matmul_forward_train`] for dout (rows, o; row stride `ld`): dinp (= | +=
/// when its flag is set) dout W, dw += dout^T inp, db += the column sums of dout.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    pool: &Pool,
    isa: impl Into<Kernels> + Copy,
    pack: &mut Vec<f32>,
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
        gemm(
            Some(pool),
            isa,
            rows,
            k,
            o,
            dy,
            Strided::rows(w, k),
            dx,
            k,
            acc,
            pack,
        );
    }
    let dyt = Strided {
        data: dout,
        rs: 1,
        cs: ld,
    };
    gemm(
        Some(pool),
        isa,
        o,
        k,
        rows,
        dyt,
        Strided::rows(inp, k),
        dw,
        k,
        true,
        pack,
    );
    if let Some(db) = db {
        column_sum_forward(pool, db, dout, ld, rows);
    }
}
