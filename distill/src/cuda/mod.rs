//! The student trainer on CUDA: the same forward, objective, backward and AdamW + EMA step as
//! the CPU trainer ([`crate::graph`], [`crate::loss`], [`crate::optim`]), with every op a
//! kernel of `train.cu` (compiled by NVRTC at run time) and every product a cuBLASLt GEMM in
//! bf16 with f32 accumulation against f32 master weights (or in f32, for parity checks).
//!
//! The trainer talks to a [`Device`]: [`device::CudaDevice`] (feature `cuda`) on a GPU, or
//! [`emu::EmuDevice`], which runs the same kernel source on the CPU (each CUDA thread a fiber,
//! built with the system C++ compiler), so the trainer's host code and kernels are tested
//! against the CPU trainer on machines without a GPU.
//!
//! | file | job |
//! |---|---|
//! | `train.cu` | kernels, each the device form of a CPU training op with the same name |
//! | [`graph`] | forward that keeps activations, backward (mirrors [`crate::graph`]) |
//! | [`step`] | objective, gradient norm, fused clip + AdamW + EMA, state up / download |
//! | [`device`] | the GPU: context, NVRTC module, cuBLASLt GEMMs |
//! | [`emu`] | the kernels on the CPU, for tests |

#[cfg(feature = "cuda")]
pub mod device;
pub mod emu;
pub mod graph;
pub mod step;

use std::ffi::c_void;

use crate::error::{DistillError, Result};

/// The kernel source (after the runtime's `common.cuh`).
pub const TRAIN_CU: &str = include_str!("train.cu");

/// Kernel entry points of `train.cu`.
pub const KERNELS: [&str; 38] = [
    "im2col_forward",
    "assemble_forward",
    "assemble_backward",
    "bias_rows",
    "to_bf16",
    "column_partials",
    "column_reduce_add",
    "layer_norm_forward",
    "layer_norm_backward",
    "rope_apply",
    "attention_forward_hd16",
    "attention_forward_hd32",
    "attention_forward_hd64",
    "attention_forward_hd128",
    "attention_backward_delta",
    "attention_backward_dq_hd16",
    "attention_backward_dq_hd32",
    "attention_backward_dq_hd64",
    "attention_backward_dq_hd128",
    "attention_backward_dkv_hd16",
    "attention_backward_dkv_hd32",
    "attention_backward_dkv_hd64",
    "attention_backward_dkv_hd128",
    "activation_forward",
    "activation_backward",
    "swiglu_forward",
    "swiglu_backward",
    "layer_scale_forward",
    "layer_scale_backward",
    "add_into",
    "gather_rows",
    "scatter_add_rows",
    "cos_smooth_l1",
    "normalize_rows",
    "gram_difference",
    "normalize_rows_backward",
    "sum_squares",
    "adamw_ema",
];

/// The program NVRTC (or the emulator's C++ compiler) builds: `common.cuh`, then `train.cu`.
pub fn program() -> String {
    format!(
        "// ---- common.cuh\n{}\n// ---- train.cu\n{}\n",
        dinoedge_runtime::backend::CUDA_COMMON,
        TRAIN_CU
    )
}

/// Head dims with attention kernels.
pub const HEAD_DIMS: [usize; 4] = [16, 32, 64, 128];

/// A device address (f32 unless said otherwise).
pub type DevPtr = u64;

/// A kernel argument, passed by address as `cuLaunchKernel` expects.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(DevPtr),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl Arg {
    /// The address of the value, for `void **kernelParams`.
    pub fn as_param(&self) -> *mut c_void {
        match self {
            Arg::Ptr(v) => v as *const u64 as *mut c_void,
            Arg::I32(v) => v as *const i32 as *mut c_void,
            Arg::I64(v) => v as *const i64 as *mut c_void,
            Arg::F32(v) => v as *const f32 as *mut c_void,
        }
    }
}

/// A row-major matrix operand of [`Device::gemm`]: element (i, j) is at
/// `ptr[trans ? j * ld + i : i * ld + j]`. `bf16` is the same values rounded to bf16 (for
/// weights, kept by the optimizer); without it a bf16 GEMM converts the operand first.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub ptr: DevPtr,
    pub ld: usize,
    pub trans: bool,
    pub bf16: Option<DevPtr>,
}

impl Mat {
    pub fn rows(ptr: DevPtr, ld: usize) -> Mat {
        Mat {
            ptr,
            ld,
            trans: false,
            bf16: None,
        }
    }
    pub fn transposed(ptr: DevPtr, ld: usize) -> Mat {
        Mat {
            ptr,
            ld,
            trans: true,
            bf16: None,
        }
    }
    pub fn with_bf16(self, half: Option<DevPtr>) -> Mat {
        Mat { bf16: half, ..self }
    }
}

/// GEMM input type: f32 (no TF32) for parity checks, bf16 with f32 accumulation to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmType {
    F32,
    BF16,
}

/// What the trainer needs of a GPU. Addresses are plain numbers so views into a buffer are
/// offsets; sizes are in elements of the named type.
pub trait Device {
    /// "NVIDIA H100 80GB HBM3 (sm_90)", or the emulator.
    fn name(&self) -> String;
    /// `bytes` of zeroed device memory; `what` names it in an out-of-memory error.
    fn alloc(&self, bytes: usize, what: &str) -> Result<DevPtr>;
    fn free(&self, p: DevPtr);
    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()>;
    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()>;
    /// Runs `kernel` on a (grid.0, grid.1) grid of 1-D blocks of `block` threads.
    fn launch(
        &self,
        kernel: &'static str,
        grid: (u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<()>;
    /// `c (m, n; ldc) (= | += when accumulate) a (m, k) · b (k, n)`, f32 output.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: Mat,
        b: Mat,
        c: DevPtr,
        ldc: usize,
        accumulate: bool,
        t: GemmType,
    ) -> Result<()>;
    /// The CUDA stream work is ordered on (for NCCL), where there is one.
    fn raw_stream(&self) -> Option<u64> {
        None
    }
    /// Whether all work issued so far has finished (without waiting).
    fn idle(&self) -> Result<bool> {
        Ok(true)
    }
}

/// Error of a device call.
pub fn device_error(what: &str, e: impl std::fmt::Display) -> DistillError {
    DistillError::Runtime(dinoedge_runtime::RuntimeError::Device {
        backend: "cuda".into(),
        reason: format!("{what}: {e}"),
    })
}

/// Blocks of 256 threads covering `n` elements with grid-stride loops.
pub fn blocks(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 4096) as u32
}

/// f32 slices as bytes.
pub fn bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

pub fn bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: as `bytes`; every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}
