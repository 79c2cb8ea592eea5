//! `swiglu`: gated MLP activation, `out = act(gate) * up` (SwiGLU with act = SiLU).
//! Writes `out` (`=`).
//!
//! Shapes: gate_up (R, 2I) with gate in columns [0, I) and up in [I, 2I); out (R, I).
//! The model fuses the gate and up projections into one matmul producing `gate_up`.

pub mod cpu;
pub mod cuda;
pub mod fast;
#[cfg(feature = "wgpu")]
pub mod wgpu;
