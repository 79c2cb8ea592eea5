//! `attention`: multi-head scaled dot-product attention without mask or dropout.
//! Writes `out` (`=`).
//!
//! For each batch b and head h: `out[b, :, h] = softmax(q kᵀ * hd^-0.5) v`, with q, k, v
//! the h-th head slices of qkv. Output heads are concatenated along D, as HF's
//! `attn_output.reshape(B, N, D)`.
//!
//! Shapes: qkv (B, N, 3, heads, hd) = (B, N, 3D); out (B, N, D).
//! No N x N matrix is formed: each query streams over the keys with an online softmax.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod cpu;
pub mod cuda;
pub mod fast;
#[cfg(feature = "wgpu")]
pub mod wgpu;

/// Largest head dim the CPU kernels keep on the stack (released models use 64 and 128).
pub const MAX_HEAD_DIM: usize = 256;

/// `Err` naming the limit when a head dim exceeds `max` (each backend's kernel limit).
pub fn check_head_dim(head_dim: usize, heads: usize, max: usize) -> Result<(), String> {
    if head_dim > max {
        return Err(format!(
            "head dim {head_dim} (hidden_size {} / {heads} heads) exceeds its attention kernel's limit of {max}",
            head_dim * heads
        ));
    }
    Ok(())
}
