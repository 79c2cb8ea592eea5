//! CPU form of `column_sum`: columns split among the pool's tasks, rows added in order.

use crate::backend::cpu::pool::{Pool, RowsMut};

/// Columns per task.
const COLUMNS: usize = 64;

/// Runs `add(r, c0..c1, acc[c0..c1])` for every row r in order, the columns split among the
/// pool's tasks.
fn by_columns(
    pool: &Pool,
    acc: &mut [f32],
    rows: usize,
    add: impl Fn(usize, std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    let n = acc.len();
    let cols = RowsMut::new(acc, 1);
    pool.run(n.div_ceil(COLUMNS), |t| {
        let (c0, c1) = (t * COLUMNS, ((t + 1) * COLUMNS).min(n));
        // SAFETY: columns c0..c1 of acc belong to this task.
        let a = unsafe { cols.rows(c0, c1) };
        for r in 0..rows {
            add(r, c0..c1, a);
        }
    });
}

/// `acc[j] += sum_r x[r * ld + j]` (a bias gradient).
pub fn column_sum_forward(pool: &Pool, acc: &mut [f32], x: &[f32], ld: usize, rows: usize) {
    by_columns(pool, acc, rows, |r, c, a| {
        let row = &x[r * ld + c.start..r * ld + c.end];
        a.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    });
}

/// `acc[j] += sum_r x[r * ld + j] * y[r * ld + j]` (a LayerScale gradient).
pub fn column_sum_forward_product(
    pool: &Pool,
    acc: &mut [f32],
    x: &[f32],
    y: &[f32],
    ld: usize,
    rows: usize,
) {
    by_columns(pool, acc, rows, |r, c, a| {
        let (xr, yr) = (
            &x[r * ld + c.start..r * ld + c.end],
            &y[r * ld + c.start..r * ld + c.end],
        );
        a.iter_mut()
            .zip(xr)
            .zip(yr)
            .for_each(|((s, u), v)| *s += u * v);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_columns_in_row_order() {
        let pool = Pool::new(2).unwrap();
        let x: Vec<f32> = (0..3 * 130).map(|i| i as f32).collect();
        let mut acc = vec![1.0f32; 129];
        column_sum_forward(&pool, &mut acc, &x, 130, 3);
        for (j, a) in acc.iter().enumerate() {
            assert_eq!(*a, 1.0 + (j + (130 + j) + (260 + j)) as f32);
        }
    }
}
