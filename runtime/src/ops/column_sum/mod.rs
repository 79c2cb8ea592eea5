//! `column_sum`: `acc[j] += sum_r f(a[r, j], ...)` over the rows of a matrix, adding fixed row
//! chunks in order (no atomics, no scheduling-dependent order), so training steps are
//! reproducible bit for bit. Accumulates (`+=`). The backward passes use it for the gradients
//! of biases (`sum dout`), LayerNorm weights (`sum dout * xhat`) and LayerScale
//! (`sum dx * y`).
//!
//! Shapes: a (R, C; ld), acc (C).

pub mod cpu;
pub mod cuda;
