//! `activation`: elementwise MLP activation, in place (`x = act(x)`).
//!
//! - gelu: `0.5 x (1 + erf(x / sqrt 2))` (exact, as `nn.GELU()`)
//! - gelu_tanh: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`
//! - silu: `x / (1 + exp(-x))`

pub mod cpu;
pub mod cuda;
pub mod fast;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use crate::config::Activation;
