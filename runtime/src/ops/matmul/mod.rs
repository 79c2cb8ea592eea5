//! `matmul`: a Linear layer, `out = act(inp Wᵀ + bias)`, with W stored (out, in) row-major
//! exactly as HF stores `nn.Linear.weight`. Writes `out` (`=`).
//!
//! Shapes: inp (R, K), weight (O, K), bias (O), out (R, O). The optional activation is the
//! epilogue a backend may fuse; the reference applies [`crate::ops::activation`] after the sum.

pub mod cpu;
