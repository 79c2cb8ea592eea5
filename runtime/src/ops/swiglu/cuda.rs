//! CUDA form of `swiglu` (`swiglu.cu`).

use cudarc::driver::PushKernelArg;

use crate::backend::cuda::{CudaBackend, CudaBuffer, err};
use crate::error::Result;

pub fn swiglu(
    be: &CudaBackend,
    out: &mut CudaBuffer,
    gate_up: &CudaBuffer,
    rows: usize,
    hidden: usize,
    act: i32,
) -> Result<()> {
    let cfg = be.grid(rows * hidden);
    let (r, h) = (rows as i32, hidden as i32);
    let mut b = be.stream.launch_builder(be.function("swiglu"));
    b.arg(out).arg(gate_up).arg(&r).arg(&h).arg(&act);
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(cfg) }
        .map_err(|e| err("swiglu", e))
        .map(|_| ())
}
