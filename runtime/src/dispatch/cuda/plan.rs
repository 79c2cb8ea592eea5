//! GPU memory planning, on the host (no GPU needed): the bytes a model and an input shape take
//! on the CUDA backend. `dinoedge info --backend cuda MODEL` prints it, and the backend checks
//! each allocation against free memory with [`out_of_memory`]'s message before making it.
//!
//! What the backend allocates: Linear weights in the session precision (biases, norms, tokens
//! and position tables stay f32), the forward's f32 buffers (the table
//! `Architecture::buffer_table` that `Plan::new` allocates from), and the GEMM scratch
//! ([`gemm_scratch_bytes`]).

use crate::backend::Precision;
use crate::config::{MlpKind, VitConfig};
use crate::models::Architecture;
use crate::models::vit::Vit;
use crate::models::vit::forward::dims;
use crate::ops::Dims;

/// Bytes one model + input shape needs on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub weights: u64,
    /// The forward's activation buffers (f32).
    pub activations: u64,
    /// GEMM accumulators (f32) and, in f16 / bf16, the 16-bit GEMM inputs.
    pub scratch: u64,
}

impl MemoryPlan {
    pub fn total(&self) -> u64 {
        self.weights + self.activations + self.scratch
    }
}

/// Elements of the f32 GEMM accumulator for `d`: the residual GEMMs (attention output and
/// MLP down projection) write rows x dim before the LayerScale + residual epilogue.
pub fn acc_scratch_len(d: &Dims) -> usize {
    d.rows() * d.dim
}

/// Elements of the 16-bit GEMM input (f16 / bf16 only): the widest GEMM input, the block
/// inputs (dim), the MLP hidden activations or the patch-embedding im2col rows.
pub fn half_scratch_len(d: &Dims) -> usize {
    (d.rows() * d.dim.max(d.hidden)).max(d.batch * d.patches() * d.patch_len())
}

/// Bytes of GEMM scratch for `d` in `precision`.
pub fn gemm_scratch_bytes(d: &Dims, precision: Precision) -> usize {
    4 * acc_scratch_len(d)
        + match precision {
            Precision::F16 | Precision::BF16 => 2 * half_scratch_len(d),
            _ => 0,
        }
}

/// Weights of all Linear layers (patch embedding, qkv, projection, MLP), which the backend
/// stores in the session precision.
pub fn linear_weight_count(cfg: &VitConfig) -> u64 {
    let (d, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let mlp = match cfg.mlp {
        MlpKind::Gated(_) => 3 * d * i,
        MlpKind::Plain(_) => 2 * d * i,
    };
    let patch = d * (cfg.num_channels * cfg.patch_size * cfg.patch_size) as u64;
    patch + cfg.num_layers as u64 * (4 * d * d + mlp)
}

/// The plan for `num_params` parameters (from the checkpoint) at `batch` x `height` x `width`.
pub fn memory_plan(
    cfg: &VitConfig,
    num_params: u64,
    precision: Precision,
    batch: usize,
    height: usize,
    width: usize,
) -> MemoryPlan {
    let linear = linear_weight_count(cfg).min(num_params);
    let wbytes = match precision {
        Precision::F16 | Precision::BF16 => 2,
        _ => 4,
    };
    let d = dims(cfg, batch, height, width);
    let act: usize = Vit::buffer_table(cfg, &d, 0).iter().map(|e| e.1).sum();
    MemoryPlan {
        batch,
        height,
        width,
        weights: linear * wbytes + (num_params - linear) * 4,
        activations: 4 * act as u64,
        scratch: gemm_scratch_bytes(&d, precision) as u64,
    }
}

pub use crate::backend::cuda::device::out_of_memory;
