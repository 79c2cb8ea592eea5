//! `patch_embed`: the token sequence of an image batch. Writes x (`=`).
//!
//! 1. Conv2d with kernel = stride = P and bias: each P x P patch (c, ky, kx order, as the
//!    conv weight (D, C, P, P)) becomes a D-vector; pixels past the last full patch are
//!    ignored, as the conv does.
//! 2. `x = [CLS, registers, patches]`, row-major patches (h outer, w inner).
//! 3. With a learned position table pos (1 + HW, D) (DINOv2): CLS += pos[0] and
//!    patch p += pos[1 + p]; registers get none (HF inserts them after the add).
//!
//! Shapes: pixels (B, C, H, W); weight (D, C*P*P); bias (D); cls (D); registers (R, D);
//! x (B, N, D).
//!
//! A channels-last variant of step 1 (`patch_embed_forward_im2col_nhwc`: x (B, H, W, C),
//! patches in (ky, kx, c) order) serves a ConvNeXt's 2x2 stride-2 downsampling convs, whose
//! weights are permuted to (D, P, P, C) to match; its output rows are the next stage's map.
//! Its backward (`patch_embed_backward_im2col_nhwc`, cpu and cuda) puts each gradient back
//! where the value was read (=), zero past the last full patch.
//!
//! Every form has the three steps as separate calls (`patch_embed_forward_im2col`, the
//! `matmul`, `patch_embed_forward_assemble`); the model makes them one after another.

pub mod cpu;
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;
