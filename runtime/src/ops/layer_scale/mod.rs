//! `layer_scale`: LayerScale plus residual, `x += y * gamma` (x is read and written).
//!
//! Shapes: x (R, D), y (R, D), gamma (D).

pub mod cpu;
