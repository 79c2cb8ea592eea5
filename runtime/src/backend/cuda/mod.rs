//! The CUDA device layer, shared by the inference backend ([`crate::dispatch::cuda`]) and the
//! training one ([`crate::dispatch::train::cuda`]), knowing no op:
//!
//! | file | job |
//! |---|---|
//! | [`device`] | the [`device::Device`] trait: memory, copies, launches by name, GEMMs, graphs |
//! | `gpu` (feature `cuda`) | a real GPU through cudarc: context, stream, NVRTC module, pinned staging, graphs |
//! | `blas` (feature `cuda`) | cuBLASLt GEMMs prepared once per shape, epilogue fallbacks |
//! | [`emu`] | the same kernels on the CPU (fibers; tensor-core instructions on fragments), for CI |
//! | `common.cuh` | device helpers every program starts with (warp sums, f16 / bf16 rounding) |
//!
//! Kernels live with their ops (`ops/<op>/<op>.cu`); `ops::cuda_program()` assembles them.

#[cfg(feature = "cuda")]
pub mod blas;
pub mod device;
pub mod emu;
#[cfg(feature = "cuda")]
pub mod gpu;

/// Device helpers every CUDA program starts with.
pub const COMMON: (&str, &str) = ("common.cuh", include_str!("common.cuh"));

/// Opens the CUDA device a session or trainer asks for, with `program` loaded: GPU `ordinal`
/// (default 0) with feature `cuda`, or the emulator
/// (`emulated`, any build).
pub fn open(
    program: &device::Program,
    emulated: bool,
    ordinal: Option<usize>,
) -> crate::error::Result<std::sync::Arc<dyn device::Device>> {
    if emulated {
        return Ok(std::sync::Arc::new(emu::EmuDevice::new(program, 80)?));
    }
    let ordinal = ordinal.unwrap_or(0);
    #[cfg(feature = "cuda")]
    {
        Ok(std::sync::Arc::new(gpu::CudaDevice::new(program, ordinal)?))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(crate::error::RuntimeError::BackendUnavailable {
            backend: "cuda".into(),
            reason: format!(
                "not compiled into this build (available: {}); rebuild with --features cuda, or use cuda-emulated",
                super::compiled_backends().join(", ")
            ),
        })
    }
}
