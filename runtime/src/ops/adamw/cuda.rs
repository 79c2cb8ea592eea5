//! CUDA launchers of the optimizer's kernels (`adamw.cu`).

use super::AdamwEma;
use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg, sum_partials};
use crate::error::Result;

pub const SOURCE: (&str, &str) = ("adamw.cu", include_str!("adamw.cu"));
pub const KERNELS: &[&str] = &["sum_squares", "adamw_ema"];

/// The sum of squares of the `n` values of g, through the block partial sums in `partials`.
pub fn sum_squares(dev: &dyn Device, partials: DevPtr, g: DevPtr, n: usize) -> Result<f64> {
    let cfg = LaunchCfg::partial_sums(n);
    let args = [Arg::Ptr(partials), Arg::Ptr(g), Arg::I64(n as i64)];
    dev.launch("sum_squares", cfg, &args)?;
    sum_partials(dev, partials, cfg.grid.0 as usize)
}

/// The training state an update reads and writes, `n` values each.
#[derive(Clone, Copy, Debug)]
pub struct AdamwState {
    pub params: DevPtr,
    pub m: DevPtr,
    pub v: DevPtr,
    pub ema: DevPtr,
    /// The bf16 copy of the parameters the GEMMs read (0: none).
    pub half: DevPtr,
    pub g: DevPtr,
    /// One byte per value: apply weight decay.
    pub decay: DevPtr,
    pub n: usize,
}

/// One clip + AdamW + EMA update of `s`; false when a weight became non-finite (`bad`, one
/// i32, is the kernel's flag).
pub fn adamw_ema(dev: &dyn Device, s: &AdamwState, a: &AdamwEma, bad: DevPtr) -> Result<bool> {
    dev.zero(bad, 4)?;
    let args = [
        Arg::Ptr(s.params),
        Arg::Ptr(s.m),
        Arg::Ptr(s.v),
        Arg::Ptr(s.ema),
        Arg::Ptr(s.half),
        Arg::Ptr(s.g),
        Arg::Ptr(s.decay),
        Arg::I64(s.n as i64),
        Arg::I64(a.frozen as i64),
        Arg::F32(a.gscale),
        Arg::F32(a.beta1),
        Arg::F32(a.beta2),
        Arg::F32(a.eps),
        Arg::F32(a.shrink),
        Arg::F32(a.step),
        Arg::F32(a.bc2_sqrt),
        Arg::F32(a.ema_decay),
        Arg::Ptr(bad),
    ];
    dev.launch("adamw_ema", LaunchCfg::partial_sums(s.n), &args)?;
    let mut flag = [0u8; 4];
    dev.download(bad, &mut flag)?;
    Ok(i32::from_le_bytes(flag) == 0)
}
