//! CUDA form of `activation` (`activation.cu`, which also defines `activate` for the other
//! ops' kernels).

use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg};
use crate::config::Activation;
use crate::error::Result;

pub const SOURCE: (&str, &str) = ("activation.cu", include_str!("activation.cu"));
pub const KERNELS: &[&str] = &["activation_forward", "activation_backward"];

/// a (n) (=) act(h).
pub fn activation_forward(
    dev: &dyn Device,
    a: DevPtr,
    h: DevPtr,
    n: usize,
    act: Activation,
) -> Result<()> {
    dev.launch(
        "activation_forward",
        LaunchCfg::elements(n),
        &[
            Arg::Ptr(a),
            Arg::Ptr(h),
            Arg::I64(n as i64),
            Arg::I32(act.kernel_code()),
        ],
    )
}

/// dh (=) da * act'(h).
pub fn activation_backward(
    dev: &dyn Device,
    dh: DevPtr,
    da: DevPtr,
    h: DevPtr,
    n: usize,
    act: Activation,
) -> Result<()> {
    dev.launch(
        "activation_backward",
        LaunchCfg::elements(n),
        &[
            Arg::Ptr(dh),
            Arg::Ptr(da),
            Arg::Ptr(h),
            Arg::I64(n as i64),
            Arg::I32(act.kernel_code()),
        ],
    )
}
