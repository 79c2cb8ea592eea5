//! `adamw`: the optimizer's kernels (trainer only).
//!
//! - `sum_squares`: the sum of squares of the gradients (their global norm, for clipping),
//!   in f64 over fixed chunks;
//! - `adamw_ema`: one fused update per value: the gradient scaled (clipping, the mean over
//!   ranks), Adam moments, AdamW with decoupled weight decay for values whose decay flag is
//!   set (as `torch.optim.AdamW`), and the EMA of the weights. Values before `frozen` keep
//!   their weights (heads-only runs). Every value is updated alone, so the update is
//!   bitwise reproducible.

pub mod cpu;
pub mod cuda;

/// The arguments of one fused clip + AdamW + EMA update.
#[derive(Clone, Copy, Debug)]
pub struct AdamwEma {
    /// Values before this index keep their weights (heads-only runs); their moments update.
    pub frozen: usize,
    /// Applied to every gradient first (clipping and the mean over ranks).
    pub gscale: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `1 - lr * weight_decay`, for values whose decay flag is set.
    pub shrink: f32,
    /// `lr / (1 - beta1^t)`.
    pub step: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bc2_sqrt: f32,
    pub ema_decay: f32,
}
