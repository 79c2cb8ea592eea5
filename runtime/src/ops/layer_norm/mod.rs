//! `layer_norm`: per row of `cols` values, `out = (x - mean) / sqrt(var + eps) * weight + bias`
//! with the biased variance, as `nn.LayerNorm`. Writes `out` (`=`), never reads it.
//!
//! Shapes: inp (R, C), weight (C), bias (C), out (R, C).

pub mod cpu;
pub mod cuda;
pub mod fast;
#[cfg(feature = "wgpu")]
pub mod wgpu;
