//! CUDA forms of `attention` (`attention.cu`), both flash-style with an online softmax and no
//! N x N matrix:
//! - `attention_mma_*`: tensor cores (mma.sync m16n8k16, f32 accumulation) for f16 / bf16
//!   sessions on sm_80+, 64 queries per block, 64-key tiles; head dims 16, 32, 64, 128;
//! - `attention`: CUDA cores in f32, 4 queries (warps) per block, 32-key tiles; f32 sessions,
//!   older GPUs, other head dims, and `DINOEDGE_CUDA_ATTENTION=simt`.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::backend::Precision;
use crate::backend::cuda::{CudaBackend, CudaBuffer, err};
use crate::error::{Result, RuntimeError};
use crate::ops::Dims;

const WARPS: usize = 4;
const TILE: usize = 32;
/// Head dims up to 128 keep the tiles within 48 KiB of shared memory (every released
/// DINOv3 / DINOv2 model uses 64, the 7B 128).
pub const MAX_HEAD_DIM: usize = 128;

/// Queries per block and keys per tile of the tensor-core kernel (`MMA_WARPS` x 16, `MMA_KT`).
const MMA_QUERIES: usize = 64;
const MMA_KEYS: usize = 64;
const MMA_PAD: usize = 8;

/// The tensor-core kernel for a session, or `None` for the f32 CUDA-core one.
/// `sm` is the compute capability as major * 10 + minor.
pub fn mma_kernel(precision: Precision, sm: u32, head_dim: usize) -> Option<&'static str> {
    if sm < 80 {
        return None;
    }
    let name = match (precision, head_dim) {
        (Precision::F16, 16) => "attention_mma_f16_hd16",
        (Precision::F16, 32) => "attention_mma_f16_hd32",
        (Precision::F16, 64) => "attention_mma_f16_hd64",
        (Precision::F16, 128) => "attention_mma_f16_hd128",
        (Precision::BF16, 16) => "attention_mma_bf16_hd16",
        (Precision::BF16, 32) => "attention_mma_bf16_hd32",
        (Precision::BF16, 64) => "attention_mma_bf16_hd64",
        (Precision::BF16, 128) => "attention_mma_bf16_hd128",
        _ => return None,
    };
    Some(name)
}

/// Shared memory of the tensor-core kernel: K (keys x (hd + pad)) and V^T (hd x (keys + pad)),
/// 16-bit.
pub fn mma_shared_bytes(head_dim: usize) -> usize {
    2 * (MMA_KEYS * (head_dim + MMA_PAD) + head_dim * (MMA_KEYS + MMA_PAD))
}

pub fn attention(be: &CudaBackend, out: &mut CudaBuffer, qkv: &CudaBuffer, d: &Dims) -> Result<()> {
    let hd = d.head_dim();
    let n = d.tokens();
    let (tokens, dim, heads) = (n as i32, d.dim as i32, d.heads as i32);
    let scale = 1.0 / (hd as f32).sqrt();
    let kernel = be.attention_kernel(hd);
    if kernel != "attention" {
        let cfg = LaunchConfig {
            grid_dim: (
                n.div_ceil(MMA_QUERIES) as u32,
                (d.batch * d.heads) as u32,
                1,
            ),
            block_dim: ((MMA_QUERIES / 16 * 32) as u32, 1, 1),
            shared_mem_bytes: mma_shared_bytes(hd) as u32,
        };
        let scale_log2 = scale * std::f32::consts::LOG2_E;
        let mut b = be.stream.launch_builder(be.function(kernel));
        b.arg(out)
            .arg(qkv)
            .arg(&tokens)
            .arg(&dim)
            .arg(&heads)
            .arg(&scale_log2);
        // SAFETY: arguments match the kernel's signature; shared memory as the kernel lays it out.
        return unsafe { b.launch(cfg) }
            .map_err(|e| err(kernel, e))
            .map(|_| ());
    }
    if hd > MAX_HEAD_DIM {
        return Err(RuntimeError::Device {
            backend: "cuda".into(),
            reason: format!("head dim {hd} exceeds the attention kernel's {MAX_HEAD_DIM}"),
        });
    }
    let smem = ((2 * TILE + WARPS) * hd * 4) as u32;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(WARPS) as u32, (d.batch * d.heads) as u32, 1),
        block_dim: ((WARPS * 32) as u32, 1, 1),
        shared_mem_bytes: smem,
    };
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
