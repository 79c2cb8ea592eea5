//! CUDA form of `swiglu` (`swiglu.cu`).

use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg};
use crate::config::Activation;
use crate::error::Result;

pub const SOURCE: (&str, &str) = ("swiglu.cu", include_str!("swiglu.cu"));
pub const KERNELS: &[&str] = &["swiglu_forward", "swiglu_backward"];

fn launch(
    dev: &dyn Device,
    kernel: &str,
    (a, b, c): (DevPtr, DevPtr, Option<DevPtr>),
    rows: usize,
    hidden: usize,
    act: Activation,
) -> Result<()> {
    let mut args = vec![Arg::Ptr(a), Arg::Ptr(b)];
    args.extend(c.map(Arg::Ptr));
    args.extend([
        Arg::I32(rows as i32),
        Arg::I32(hidden as i32),
        Arg::I32(act.kernel_code()),
    ]);
    dev.launch(kernel, LaunchCfg::elements(rows * hidden), &args)
}

/// out (R, I) (=) act(gate_up[:, :I]) * gate_up[:, I:].
pub fn swiglu_forward(
    dev: &dyn Device,
    out: DevPtr,
    gate_up: DevPtr,
    rows: usize,
    hidden: usize,
    act: Activation,
) -> Result<()> {
    launch(
        dev,
        "swiglu_forward",
        (out, gate_up, None),
        rows,
        hidden,
        act,
    )
}

/// dgate_up (R, 2I) (=) from dout (R, I) and the forward's gate_up.
pub fn swiglu_backward(
    dev: &dyn Device,
    dgate_up: DevPtr,
    dout: DevPtr,
    gate_up: DevPtr,
    rows: usize,
    hidden: usize,
    act: Activation,
) -> Result<()> {
    launch(
        dev,
        "swiglu_backward",
        (dgate_up, dout, Some(gate_up)),
        rows,
        hidden,
        act,
    )
}
