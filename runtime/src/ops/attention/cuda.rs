//! CUDA forms of `attention` (`attention.cu`), all flash-style with an online softmax and no
//! N x N matrix:
//! - `attention_forward_mma_*`: tensor cores (mma.sync m16n8k16, f32 accumulation) for f16 /
//!   bf16 sessions on sm_80+, 64 queries per block, 64-key tiles; head dims 16, 32, 64, 128;
//! - `attention_forward`: CUDA cores in f32, 4 queries (warps) per block, 32-key tiles; f32
//!   sessions, older GPUs, other head dims, or when the tensor-core form is switched off; and
//!   training ([`attention_forward_lse`]: the same kernel, saving each query's log-sum-exp);
//! - `attention_backward_*` (training): dq per query, dk / dv per key, from that log-sum-exp.

use crate::backend::Precision;
use crate::backend::cuda::device::{Arg, DevPtr, Device, LaunchCfg};
use crate::error::{Result, RuntimeError};
use crate::ops::Dims;

pub const SOURCE: (&str, &str) = ("attention.cu", include_str!("attention.cu"));
pub const KERNELS: &[&str] = &[
    "attention_forward",
    "attention_forward_mma_f16_hd16",
    "attention_forward_mma_f16_hd32",
    "attention_forward_mma_f16_hd64",
    "attention_forward_mma_f16_hd128",
    "attention_forward_mma_bf16_hd16",
    "attention_forward_mma_bf16_hd32",
    "attention_forward_mma_bf16_hd64",
    "attention_forward_mma_bf16_hd128",
    "attention_backward_delta",
    "attention_backward_dq_hd16",
    "attention_backward_dq_hd32",
    "attention_backward_dq_hd64",
    "attention_backward_dq_hd128",
    "attention_backward_dkv_hd16",
    "attention_backward_dkv_hd32",
    "attention_backward_dkv_hd64",
    "attention_backward_dkv_hd128",
];

const WARPS: usize = 4;
const TILE: usize = 32;
/// Head dims up to 128 keep the tiles within 48 KiB of shared memory (every released
/// DINOv3 / DINOv2 model uses 64, the 7B 128).
pub const MAX_HEAD_DIM: usize = 128;
/// Head dims with tensor-core and training-backward kernels.
pub const HEAD_DIMS: [usize; 4] = [16, 32, 64, 128];

/// Queries per block and keys per tile of the tensor-core kernel (`MMA_WARPS` x 16, `MMA_KT`).
const MMA_QUERIES: usize = 64;
const MMA_KEYS: usize = 64;
const MMA_PAD: usize = 8;
/// Queries (or keys) per block of the backward kernels.
const TRAIN_BLOCK: usize = 64;

/// The entry point `attention_{part}_hd{hd}` of the kernel list.
fn kernel(part: &str, hd: usize) -> Result<&'static str> {
    let want = format!("attention_{part}_hd{hd}");
    KERNELS
        .iter()
        .copied()
        .find(|k| *k == want)
        .ok_or_else(|| RuntimeError::Unsupported {
            backend: "cuda".into(),
            reason: format!("no {part} attention kernel for head dim {hd} (16, 32, 64, 128)"),
        })
}

/// The tensor-core kernel for a session, or `None` for the f32 CUDA-core one.
/// `sm` is the compute capability as major * 10 + minor.
pub fn mma_kernel(precision: Precision, sm: u32, head_dim: usize) -> Option<&'static str> {
    let kind = match precision {
        Precision::F16 => "f16",
        Precision::BF16 => "bf16",
        _ => return None,
    };
    if sm < 80 {
        return None;
    }
    kernel(&format!("forward_mma_{kind}"), head_dim).ok()
}

/// Shared memory of the tensor-core kernel: K (keys x (hd + pad)) and V^T (hd x (keys + pad)),
/// 16-bit.
pub fn mma_shared_bytes(head_dim: usize) -> usize {
    2 * (MMA_KEYS * (head_dim + MMA_PAD) + head_dim * (MMA_KEYS + MMA_PAD))
}

/// out (B, N, D) (=) attention(qkv (B, N, 3D)) with `kernel`: an [`mma_kernel`] name, or
/// `attention_forward` (CUDA cores).
pub fn attention_forward(
    dev: &dyn Device,
    kernel: &str,
    out: DevPtr,
    qkv: DevPtr,
    d: &Dims,
) -> Result<()> {
    forward(dev, kernel, out, None, qkv, d)
}

/// Training forward: out (=) as [`attention_forward`] on CUDA cores, and lse (B*H, N) (=)
/// the log-sum-exp of each query's scores, for [`attention_backward`].
pub fn attention_forward_lse(
    dev: &dyn Device,
    out: DevPtr,
    lse: DevPtr,
    qkv: DevPtr,
    d: &Dims,
) -> Result<()> {
    forward(dev, "attention_forward", out, Some(lse), qkv, d)
}

fn forward(
    dev: &dyn Device,
    kernel: &str,
    out: DevPtr,
    lse: Option<DevPtr>,
    qkv: DevPtr,
    d: &Dims,
) -> Result<()> {
    let (hd, n) = (d.head_dim(), d.tokens());
    let scale = 1.0 / (hd as f32).sqrt();
    let bh = (d.batch * d.heads) as u32;
    let (cfg, scale) = if kernel != "attention_forward" {
        let cfg = LaunchCfg {
            grid: (n.div_ceil(MMA_QUERIES) as u32, bh),
            block: (MMA_QUERIES / 16 * 32) as u32,
            shared: mma_shared_bytes(hd) as u32,
        };
        // The tensor-core kernel's softmax runs in base 2.
        (cfg, scale * std::f32::consts::LOG2_E)
    } else {
        if hd > MAX_HEAD_DIM {
            return Err(RuntimeError::Device {
                backend: "cuda".into(),
                reason: format!("head dim {hd} exceeds the attention kernel's {MAX_HEAD_DIM}"),
            });
        }
        let cfg = LaunchCfg {
            grid: (n.div_ceil(WARPS) as u32, bh),
            block: (WARPS * 32) as u32,
            shared: ((2 * TILE + WARPS) * hd * 4) as u32,
        };
        (cfg, scale)
    };
    let mut args = vec![Arg::Ptr(out)];
    if kernel == "attention_forward" {
        args.push(Arg::opt(lse));
    }
    args.extend([
        Arg::Ptr(qkv),
        Arg::I32(n as i32),
        Arg::I32(d.dim as i32),
        Arg::I32(d.heads as i32),
        Arg::F32(scale),
    ]);
    dev.launch(kernel, cfg, &args)
}

/// Training grid: (batch * heads, query or key tiles); grid.y is limited to 65535, so the
/// larger count goes on x.
fn train_cfg(d: &Dims) -> LaunchCfg {
    LaunchCfg {
        grid: (
            (d.batch * d.heads) as u32,
            d.tokens().div_ceil(TRAIN_BLOCK) as u32,
        ),
        block: TRAIN_BLOCK as u32,
        shared: 0,
    }
}

/// Buffers of the attention backward.
#[derive(Clone, Copy, Debug)]
pub struct AttentionSaved {
    /// The forward's input (B, N, 3D), output (B, N, D) and log-sum-exp (B*H, N).
    pub qkv: DevPtr,
    pub out: DevPtr,
    pub lse: DevPtr,
    /// Scratch (B*H, N): dout . out per query.
    pub delta: DevPtr,
}

/// dqkv (B, N, 3D) (=) the gradient of the attention input from dout (B, N, D).
pub fn attention_backward(
    dev: &dyn Device,
    dqkv: DevPtr,
    dout: DevPtr,
    s: AttentionSaved,
    d: &Dims,
) -> Result<()> {
    let (n, hd) = (d.tokens(), d.head_dim());
    dev.launch(
        "attention_backward_delta",
        LaunchCfg::elements(d.batch * d.heads * n),
        &[
            Arg::Ptr(s.delta),
            Arg::Ptr(dout),
            Arg::Ptr(s.out),
            Arg::I32(d.batch as i32),
            Arg::I32(n as i32),
            Arg::I32(d.heads as i32),
            Arg::I32(hd as i32),
        ],
    )?;
    let args = [
        Arg::Ptr(dqkv),
        Arg::Ptr(dout),
        Arg::Ptr(s.qkv),
        Arg::Ptr(s.lse),
        Arg::Ptr(s.delta),
        Arg::I32(n as i32),
        Arg::I32(d.heads as i32),
    ];
    dev.launch(kernel("backward_dq", hd)?, train_cfg(d), &args)?;
    dev.launch(kernel("backward_dkv", hd)?, train_cfg(d), &args)
}
