//! The op set of a DINOv3 / DINOv2 forward pass, each named once.
//!
//! | op | what it computes | shapes |
//! |---|---|---|
//! | [`patch_embed`] | conv PxP stride P, then `[CLS, registers, patches] (+ pos)` | pixels (B,C,H,W) -> x (B,N,D) |
//! | [`layer_norm`] | `(x - mean) / sqrt(var + eps) * w + b` per row | (R,D) -> (R,D) |
//! | [`matmul`] | `x Wᵀ + b` then an epilogue: store, `act(.)`, or LayerScale + residual `out += gamma * (.)` | (R,K) -> (R,O) |
//! | [`rope`] | rotary embedding of q and k of patch tokens, in place | qkv (B,N,3D) |
//! | [`attention`] | softmax(q kᵀ / sqrt(hd)) v per head, no mask | qkv (B,N,3D) -> (B,N,D) |
//! | [`activation`] | gelu / gelu_tanh / silu, in place | (R,I) |
//! | [`swiglu`] | `act(gate) * up` | (R,2I) -> (R,I) |
//!
//! Each op folder has `mod.rs` (math, shapes, the `=`/`+=` contract) and one file per
//! CPU form: `cpu.rs` is the readable reference, `fast.rs` (or `fast/`) the SIMD form of the
//! fast CPU backend; GPU backends add `wgpu.rs` / `cuda.rs`. N = 1 CLS + registers + patches.

pub mod activation;
pub mod attention;
pub mod layer_norm;
pub mod matmul;
pub mod patch_embed;
pub mod rope;
pub mod swiglu;

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
