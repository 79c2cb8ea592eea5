//! The op set of a DINOv3 / DINOv2 forward pass, each named once.
//!
//! | op | what it computes | shapes |
//! |---|---|---|
//! | [`patch_embed`] | conv PxP stride P, then `[CLS, registers, patches] (+ pos)` | pixels (B,C,H,W) -> x (B,N,D) |
//! | [`layer_norm`] | `(x - mean) / sqrt(var + eps) * w + b` per row | (R,D) -> (R,D) |
//! | [`matmul`] | `x Wᵀ + b` then an epilogue: store, `act(.)`, or LayerScale + residual `out += gamma * (.)` | (R,K) -> (R,O) |
//! | [`rope`] | rotary embedding of q and k of patch tokens, in place | qkv (B,N,3D) |
//! | [`attention`] | softmax(q kᵀ / sqrt(hd)) v per head, no mask | qkv (B,N,3D) -> (B,N,D) |
//! | [`dwconv`] | depthwise 7x7 conv, padding 3, + bias (ConvNeXt) | (B,H,W,C) -> (B,H,W,C) |
//! | [`token_pool`] | `[mean of the cells, cells]` per image (ConvNeXt's pooled token) | (B,N,C) -> (B,1+N,C) |
//! | [`activation`] | gelu / gelu_tanh / silu | (R,I) -> (R,I) |
//! | [`swiglu`] | `act(gate) * up` | (R,2I) -> (R,I) |
//! | [`residual`] | `x += gamma * y` (LayerScale + residual; training) | (R,D) |
//! | [`column_sum`] | `acc += sum over rows` in a fixed order (gradients of biases, norms, LayerScale) | (R,C) -> (C) |
//! | [`loss`] | the distillation objective: row selection, cosine + smooth-L1, normalisation, Gram (training) | rows of (R,D) |
//! | [`adamw`] | the optimizer: sum of squares, fused clip + AdamW + EMA (training) | (P) |
//!
//! Each op folder owns every form of its op, forward and backward, under one name per
//! direction (`<op>_<forward|backward>[_variant]`) on every device: `mod.rs` (math, shapes,
//! the `=` / `+=` contract), `cpu.rs` (the readable reference), `fast.rs` (the SIMD form of
//! the fast CPU backend), `<op>.wgsl` + `wgpu.rs`, and `<op>.cu` + `cuda.rs` (kernels and
//! their launchers, for inference and training). N = 1 CLS + registers + patches.

pub mod activation;
pub mod adamw;
pub mod attention;
pub mod column_sum;
pub mod dwconv;
pub mod layer_norm;
pub mod loss;
pub mod matmul;
pub mod patch_embed;
pub mod residual;
pub mod rope;
pub mod swiglu;
pub mod token_pool;

use crate::backend::cuda::device::Program;

/// Every op's CUDA kernels as one program: the device layer's `common.cuh`, then
/// `activation.cu` (whose `activate` other kernels call), then each op, each exporting its
/// source and kernel list (no list is kept by hand here).
pub fn cuda_program() -> Program {
    let ops: [((&'static str, &'static str), &'static [&'static str]); 11] = [
        (activation::cuda::SOURCE, activation::cuda::KERNELS),
        (matmul::cuda::SOURCE, matmul::cuda::KERNELS),
        (column_sum::cuda::SOURCE, column_sum::cuda::KERNELS),
        (layer_norm::cuda::SOURCE, layer_norm::cuda::KERNELS),
        (rope::cuda::SOURCE, rope::cuda::KERNELS),
        (attention::cuda::SOURCE, attention::cuda::KERNELS),
        (patch_embed::cuda::SOURCE, patch_embed::cuda::KERNELS),
        (swiglu::cuda::SOURCE, swiglu::cuda::KERNELS),
        (residual::cuda::SOURCE, residual::cuda::KERNELS),
        (dwconv::cuda::SOURCE, dwconv::cuda::KERNELS),
        (token_pool::cuda::SOURCE, token_pool::cuda::KERNELS),
    ];
    let mut p = Program {
        sources: vec![crate::backend::cuda::COMMON],
        kernels: Vec::new(),
    };
    for (source, kernels) in ops {
        p.sources.push(source);
        p.kernels.extend_from_slice(kernels);
    }
    p
}

/// What the trainer loads: [`cuda_program`], then the objective's and the optimizer's
/// kernels.
pub fn cuda_training_program() -> Program {
    cuda_program().with(&Program {
        sources: vec![loss::cuda::SOURCE, adamw::cuda::SOURCE],
        kernels: [loss::cuda::KERNELS, adamw::cuda::KERNELS].concat(),
    })
}

/// Sizes of one forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dims {
    pub batch: usize,
    pub channels: usize,
    /// Input height and width in pixels (remainders past the last full patch are ignored).
    pub height: usize,
    pub width: usize,
    pub patch: usize,
    pub grid_h: usize,
    pub grid_w: usize,
    /// CLS + register tokens.
    pub prefix: usize,
    pub dim: usize,
    /// Attention heads; 0 for a model without attention (a ConvNeXt's stages).
    pub heads: usize,
    /// MLP hidden width.
    pub hidden: usize,
}

impl Dims {
    pub fn patches(&self) -> usize {
        self.grid_h * self.grid_w
    }
    pub fn tokens(&self) -> usize {
        self.prefix + self.patches()
    }
    /// Rows of the token matrix, batch x tokens.
    pub fn rows(&self) -> usize {
        self.batch * self.tokens()
    }
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
    /// Length of one flattened patch, C*P*P.
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }
}
