//! WGSL form of `activation`: `activate(x, act)` for the kernels of the ops that apply an
//! activation (a prelude of their sources; codes as `Activation::kernel_code`).

/// `erf_approx` and `activate`.
pub const ACTIVATE: &str = include_str!("activation.wgsl");
