//! `residual`: `x += gamma * y` per column (LayerScale and the residual add in one), or
//! `x += y` without gamma. Inference fuses it into the matmul epilogue
//! (`Epilogue::Residual`); training runs it on its own and needs its backward:
//! `dy = dx * gamma` (`=`), `dgamma += sum_rows(dx * y)` (a [`super::column_sum`]), and
//! `dx_in = dx_out` (the caller's residual path).
//!
//! Shapes: x, y (R, D); gamma (D).

pub mod cpu;
pub mod cuda;
