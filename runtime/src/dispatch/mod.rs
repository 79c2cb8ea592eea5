//! The backend seam: the op set of [`crate::ops`] on one device. The model's forward pass
//! ([`crate::models::vit::forward`]) is written once against [`Backend`]; a backend supplies buffers,
//! weight preparation and one method per op, and reports what it cannot run
//! ([`Backend::supports`]). Arguments follow llm.c: outputs first, then inputs, then sizes.
//!
//! Each backend dispatches the ops to their forms for its device: `cpu-ref`
//! ([`reference::ReferenceBackend`], the f32 reference), `cpu` ([`cpu::CpuBackend`], SIMD
//! kernels, f32 / f16 weights / int8), `wgpu` ([`wgpu::WgpuBackend`], feature `wgpu`) and
//! `cuda` / `cuda-emulated` ([`cuda::CudaBackend`]). The arrows run one way: the ops use the
//! device layers of [`crate::backend`], and these dispatchers use both.

pub mod cpu;
pub mod cuda;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::backend::BackendInfo;
use crate::config::Activation;
pub mod train;

use crate::error::Result;
use crate::ops::Dims;
use crate::ops::dwconv::DwDims;
pub use crate::ops::matmul::Epilogue;

/// The ops of [`crate::ops`], for [`Backend::supports`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    PatchEmbed,
    LayerNorm,
    Matmul,
    Rope,
    /// Attention at this head width (kernels bound it).
    Attention {
        head_dim: usize,
        heads: usize,
    },
    Swiglu,
    /// The depthwise 7x7 convolution (ConvNeXt).
    Dwconv,
    /// The pooled token (ConvNeXt).
    TokenPool,
}

/// [`Backend::supports`] for a backend whose only model-dependent limit is its attention
/// kernel's head dim.
pub(crate) fn attention_head_dims_up_to(op: Op, max: usize) -> std::result::Result<(), String> {
    match op {
        Op::Attention { head_dim, heads } => {
            crate::ops::attention::check_head_dim(head_dim, heads, max)
        }
        _ => Ok(()),
    }
}

/// [`Backend::write`] for the backends whose buffers are host vectors (cpu, cpu-ref).
pub(crate) fn host_write(dst: &mut [f32], data: &[f32]) -> crate::error::Result<()> {
    if dst.len() != data.len() {
        return Err(crate::error::RuntimeError::input(
            "buffer",
            format!("write of {} values into {}", data.len(), dst.len()),
        ));
    }
    dst.copy_from_slice(data);
    Ok(())
}

/// [`Backend::read`] for the backends whose buffers are host vectors (cpu, cpu-ref).
pub(crate) fn host_read(src: &[f32], dst: &mut [f32]) -> crate::error::Result<()> {
    dst.copy_from_slice(&src[..dst.len()]);
    Ok(())
}

/// A Linear layer's weights on the host, as HF stores them.
#[derive(Clone, Debug)]
pub struct HostLinear {
    /// Which layer this is (`patch_embed`, `layer.3.qkv`, ...): for messages, and for
    /// precision policies (int8 keeps the patch embedding in float).
    pub name: String,
    pub out_features: usize,
    pub in_features: usize,
    /// (out, in), row-major.
    pub weight: Vec<f32>,
    /// (out); `None` when the layer has no bias.
    pub bias: Option<Vec<f32>>,
    /// For int8 models: the stored int8 weights (`weight` then holds their dequantised
    /// values, for backends that compute in float).
    pub int8: Option<crate::model::Int8Weight>,
}

/// A device that runs the op set. See the module docs.
pub trait Backend: Send {
    /// An f32 activation or parameter buffer on the device.
    type Buffer: Send;
    /// A Linear layer's weights in the backend's own layout and precision.
    type Linear: Send;

    fn info(&self) -> BackendInfo;

    /// Whether this backend runs `op` natively (no silent fallback elsewhere);
    /// `Err` says why not. [`crate::session::Session::new`] asks for every op a model uses,
    /// so a model beyond a kernel's limits fails at creation with the reason, not mid-run.
    fn supports(&self, op: Op) -> std::result::Result<(), String>;

    /// A zeroed buffer of `len` f32 values.
    fn alloc(&self, len: usize) -> Result<Self::Buffer>;
    /// A buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;
    /// Overwrites a buffer of the same length.
    fn write(&self, dst: &mut Self::Buffer, data: &[f32]) -> Result<()>;
    /// Copies a buffer to the host.
    fn read(&self, src: &Self::Buffer, dst: &mut [f32]) -> Result<()>;
    /// Copies several buffers to the host (GPU backends do it with one mapped copy).
    fn read_many(&self, reads: &mut [(&Self::Buffer, &mut [f32])]) -> Result<()> {
        for (src, dst) in reads.iter_mut() {
            self.read(src, dst)?;
        }
        Ok(())
    }
    /// Converts a Linear layer once, at session creation.
    fn linear(&self, w: HostLinear) -> Result<Self::Linear>;

    /// patch_embed, step 1: cols (B*HW, C*P*P) = the patches of pixels (B, C, H, W). Step 2,
    /// the convolution, is a [`Backend::matmul`] of cols by the patch weights.
    fn patch_embed_im2col(
        &self,
        cols: &mut Self::Buffer,
        pixels: &Self::Buffer,
        d: &Dims,
    ) -> Result<()>;

    /// patch_embed, step 3: x (B, N, D) = [cls (+pos[0]), registers, emb (+pos[1..])], from
    /// the embedded patches emb (B*HW, D).
    fn patch_embed_assemble(
        &self,
        x: &mut Self::Buffer,
        emb: &Self::Buffer,
        cls: &Self::Buffer,
        registers: Option<&Self::Buffer>,
        pos: Option<&Self::Buffer>,
        d: &Dims,
    ) -> Result<()>;

    /// patch_embed, step 1 on a channels-last map x (B, H, W, C): cols (B*HW, P*P*C) in
    /// (ky, kx, c) order (a ConvNeXt's downsampling conv, whose weight is permuted to match).
    fn patch_embed_im2col_nhwc(
        &self,
        cols: &mut Self::Buffer,
        x: &Self::Buffer,
        d: &Dims,
    ) -> Result<()>;

    /// out (B, H, W, C) = dwconv(inp) with weight (49, C) and bias (C): see
    /// [`crate::ops::dwconv`].
    fn dwconv(
        &self,
        out: &mut Self::Buffer,
        inp: &Self::Buffer,
        weight: &Self::Buffer,
        bias: &Self::Buffer,
        d: &DwDims,
    ) -> Result<()>;

    /// out (B, 1 + N, C) = [mean of inp's N cells, the cells] per image: see
    /// [`crate::ops::token_pool`].
    fn token_pool(
        &self,
        out: &mut Self::Buffer,
        inp: &Self::Buffer,
        batch: usize,
        cells: usize,
        channels: usize,
    ) -> Result<()>;

    /// out (R, C) = layer_norm(inp (R, C)) with weight, bias (C).
    fn layer_norm(
        &self,
        out: &mut Self::Buffer,
        inp: &Self::Buffer,
        weight: &Self::Buffer,
        bias: &Self::Buffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()>;

    /// out (R, O) = epilogue(inp (R, K) Wᵀ + b); `Epilogue::Residual(gamma)` reads `out`.
    fn matmul(
        &self,
        out: &mut Self::Buffer,
        inp: &Self::Buffer,
        w: &Self::Linear,
        rows: usize,
        epilogue: Epilogue<'_, Self::Buffer>,
    ) -> Result<()>;

    /// Rotates q and k of the patch tokens of qkv (B, N, 3D) in place.
    fn rope(
        &self,
        qkv: &mut Self::Buffer,
        cos: &Self::Buffer,
        sin: &Self::Buffer,
        d: &Dims,
    ) -> Result<()>;

    /// out (B, N, D) = attention(qkv (B, N, 3D)).
    fn attention(&self, out: &mut Self::Buffer, qkv: &Self::Buffer, d: &Dims) -> Result<()>;

    /// out (R, I) = act(gate_up[:, :I]) * gate_up[:, I:].
    fn swiglu(
        &self,
        out: &mut Self::Buffer,
        gate_up: &Self::Buffer,
        rows: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<()>;

    /// Sizes internal scratch for forwards of these dims (called when a plan is built, so
    /// that forwards themselves allocate nothing).
    fn reserve(&self, _d: &Dims) -> Result<()> {
        Ok(())
    }

    /// Waits for queued work (no-op for synchronous backends).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Called before the ops of a forward on plan `plan` (a unique id). Returns true when the
    /// backend replays a recorded forward itself, so the ops are not issued (CUDA graphs).
    fn begin_forward(&self, _plan: u64) -> Result<bool> {
        Ok(false)
    }

    /// Called after the ops of a forward (or after a replay); `completed` is false when an
    /// op failed. Returns false when the ops were only being recorded and the recording was
    /// dropped (the caller then issues them again, directly).
    fn end_forward(&self, _plan: u64, _completed: bool) -> Result<bool> {
        Ok(true)
    }
}
