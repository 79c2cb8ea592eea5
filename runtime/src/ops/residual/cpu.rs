//! CPU form of `residual` (LayerScale + residual) and its backward, rows split among the
//! pool's tasks.

use crate::backend::cpu::pool::{Pool, RowsMut};
use crate::ops::column_sum::cpu::column_sum_forward_product;

/// `x += gamma * y` per row (or `x += y` when `gamma` is `None`), keeping nothing: the
/// backward needs y, which the caller saves.
pub fn residual_forward(pool: &Pool, x: &mut [f32], y: &[f32], gamma: Option<&[f32]>, dim: usize) {
    let rows = RowsMut::new(x, dim);
    pool.run_rows(y.len() / dim, 32, |r0, r1| {
        // SAFETY: rows r0..r1 belong to this task.
        let xr = unsafe { rows.rows(r0, r1) };
        for (xrow, yrow) in xr
            .chunks_exact_mut(dim)
            .zip(y[r0 * dim..r1 * dim].chunks_exact(dim))
        {
            match gamma {
                Some(g) => xrow
                    .iter_mut()
                    .zip(yrow)
                    .zip(g)
                    .for_each(|((a, b), c)| *a += c * b),
                None => xrow.iter_mut().zip(yrow).for_each(|(a, b)| *a += b),
            }
        }
    });
}

/// Backward of `x_out = x_in + gamma * y`: `dgamma += sum_rows(dx * y)`, `dy = dx * gamma`
/// (`=`). (dx_in = dx_out is the caller's residual path.)
pub fn residual_backward(
    pool: &Pool,
    dy: &mut [f32],
    dgamma: &mut [f32],
    dx: &[f32],
    y: &[f32],
    gamma: &[f32],
) {
    let d = gamma.len();
    let rows = dx.len() / d;
    column_sum_forward_product(pool, dgamma, dx, y, d, rows);
    let out = RowsMut::new(dy, d);
    pool.run_rows(rows, 32, |r0, r1| {
        // SAFETY: rows r0..r1 belong to this task.
        let o = unsafe { out.rows(r0, r1) };
        for (orow, drow) in o
            .chunks_exact_mut(d)
            .zip(dx[r0 * d..r1 * d].chunks_exact(d))
        {
            orow.iter_mut()
                .zip(drow)
                .zip(gamma)
                .for_each(|((a, b), g)| *a = b * g);
        }
    });
}
