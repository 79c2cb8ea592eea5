//! CUDA form of `layer_norm` (`layer_norm.cu`): one 256-thread block per row.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::backend::cuda::{CudaBackend, CudaBuffer, err};
use crate::error::Result;

#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    be: &CudaBackend,
    out: &mut CudaBuffer,
    inp: &CudaBuffer,
    weight: &CudaBuffer,
    bias: &CudaBuffer,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<()> {
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let cols_i = cols as i32;
    let mut b = be.stream.launch_builder(be.function("layer_norm"));
    b.arg(out)
        .arg(inp)
        .arg(weight)
        .arg(bias)
        .arg(&cols_i)
        .arg(&eps);
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(cfg) }
        .map_err(|e| err("layer_norm", e))
        .map(|_| ())
}
