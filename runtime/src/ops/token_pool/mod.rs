//! `token_pool`: a ConvNeXt's output sequence, `[mean of the cells, the cells]` per image
//! (HF `DINOv3ConvNextModel`: `AdaptiveAvgPool2d(1)` concatenated before the final norm, so
//! the pooled token takes the CLS slot). Writes `out` (`=`).
//!
//! Shapes: inp (B, N, C) (N = h*w cells of a channels-last map), out (B, 1 + N, C). The mean
//! sums the cells in order, in f32, and multiplies by 1/N.
//!
//! Backward (`token_pool_backward`, cpu and cuda): dinp (=) each cell's gradient plus the
//! pooled token's divided by N.

pub mod cpu;
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;
