//! `matmul`: a Linear layer, `out = act(inp Wᵀ + bias)`, with W stored (out, in) row-major
//! exactly as HF stores `nn.Linear.weight`. Writes `out` (`=`).
//!
//! Shapes: inp (R, K), weight (O, K), bias (O), out (R, O).
//!
//! The epilogue ([`Epilogue`]) is part of the op: store, activation (`act(acc + b)`), or
//! LayerScale + residual (`out += gamma * (acc + b)`, which reads `out`). The reference
//! computes each output and applies the epilogue to it; the fast form does the same on
//! register tiles.

pub mod cpu;
pub mod cuda;
pub mod fast;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::config::Activation;

/// What happens to `acc + bias` on the way out of a matmul (CPU forms, slice operands).
#[derive(Clone, Copy, Debug)]
pub enum Epi<'a> {
    /// out = acc + bias
    Store,
    /// out = act(acc + bias)
    Act(Activation),
    /// out += gamma * (acc + bias): LayerScale + residual, `out` holds the residual stream.
    Residual(&'a [f32]),
}

/// The epilogue as the backend seam passes it (`Residual` names a backend buffer).
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a, B> {
    Store,
    Act(Activation),
    Residual(&'a B),
}
