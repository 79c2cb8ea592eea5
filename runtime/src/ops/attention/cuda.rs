//! CUDA form of `attention` (`attention.cu`): flash-style, 4 queries (warps) per block,
//! key / value tiles of 32 tokens in shared memory, online softmax, no N x N matrix.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::backend::cuda::{CudaBackend, CudaBuffer, err};
use crate::error::{Result, RuntimeError};
use crate::ops::Dims;

const WARPS: usize = 4;
const TILE: usize = 32;
/// Head dims up to 128 keep the tiles within 48 KiB of shared memory (every released
/// DINOv3 / DINOv2 model uses 64, the 7B 128).
const MAX_HEAD_DIM: usize = 128;

pub fn attention(be: &CudaBackend, out: &mut CudaBuffer, qkv: &CudaBuffer, d: &Dims) -> Result<()> {
    let hd = d.head_dim();
    if hd > MAX_HEAD_DIM {
        return Err(RuntimeError::Device {
            backend: "cuda".into(),
            reason: format!("head dim {hd} exceeds the attention kernel's {MAX_HEAD_DIM}"),
        });
    }
    let n = d.tokens();
    let smem = ((2 * TILE + WARPS) * hd * 4) as u32;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(WARPS) as u32, (d.batch * d.heads) as u32, 1),
        block_dim: ((WARPS * 32) as u32, 1, 1),
        shared_mem_bytes: smem,
    };
    let (tokens, dim, heads) = (n as i32, d.dim as i32, d.heads as i32);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut b = be.stream.launch_builder(be.function("attention"));
    b.arg(out)
        .arg(qkv)
        .arg(&tokens)
        .arg(&dim)
        .arg(&heads)
        .arg(&scale);
    // SAFETY: arguments match the kernel's signature; shared memory as the kernel lays it out.
    unsafe { b.launch(cfg) }
        .map_err(|e| err("attention", e))
        .map(|_| ())
}
