//! What every CUDA user (the inference backend, the trainer) needs of a GPU, as one trait:
//! memory, copies, kernel launches by name, GEMMs, and recorded launch sequences (CUDA graphs).
//! [`super::gpu::CudaDevice`] (feature `cuda`) is a real GPU through cudarc;
//! [`super::emu::EmuDevice`] runs the same kernel source on the CPU, so the host code and the
//! kernels run in CI without a GPU.
//!
//! The device knows no op: it loads a [`Program`] (kernel sources and entry points) that its
//! user assembles from the op folders (`ops::cuda_program()`, or `ops::cuda_training_program()`
//! with the trainer-only ops).
//! Addresses are plain numbers ([`DevPtr`]), so a view into a buffer is an offset.

use crate::error::{Result, RuntimeError};

/// A device address.
pub type DevPtr = u64;

/// A kernel argument, passed by address as `cuLaunchKernel` expects.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    Ptr(DevPtr),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl Arg {
    /// The address of the value, for `void **kernelParams`.
    pub fn as_param(&self) -> *mut std::ffi::c_void {
        match self {
            Arg::Ptr(v) => v as *const u64 as *mut std::ffi::c_void,
            Arg::I32(v) => v as *const i32 as *mut std::ffi::c_void,
            Arg::I64(v) => v as *const i64 as *mut std::ffi::c_void,
            Arg::F32(v) => v as *const f32 as *mut std::ffi::c_void,
        }
    }

    /// A null pointer argument (an optional buffer left out).
    pub fn opt(p: Option<DevPtr>) -> Arg {
        Arg::Ptr(p.unwrap_or(0))
    }
}

/// Grid (x, y) of 1-D blocks of `block` threads with `shared` bytes of dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: (u32, u32),
    pub block: u32,
    pub shared: u32,
}

/// The most block partial sums a reduction writes (see [`LaunchCfg::partial_sums`]).
pub const PARTIALS: usize = 4096;

impl LaunchCfg {
    /// Blocks of 256 threads covering `n` elements with grid-stride loops.
    pub fn elements(n: usize) -> LaunchCfg {
        LaunchCfg {
            grid: (n.div_ceil(256).clamp(1, 65535) as u32, 1),
            block: 256,
            shared: 0,
        }
    }

    /// One block of 256 threads per row.
    pub fn per_row(rows: usize) -> LaunchCfg {
        LaunchCfg {
            grid: (rows as u32, 1),
            block: 256,
            shared: 0,
        }
    }

    /// Blocks of 256 threads for a reduction over `n` values that writes one partial sum per
    /// block: at most [`PARTIALS`] blocks, so the host reads back a bounded number.
    pub fn partial_sums(n: usize) -> LaunchCfg {
        LaunchCfg {
            grid: (n.div_ceil(256).clamp(1, PARTIALS) as u32, 1),
            block: 256,
            shared: 0,
        }
    }
}

/// The sum in f64, in order, of the `n` f32 partial sums at `p` (read back to the host).
pub fn sum_partials(dev: &dyn Device, p: DevPtr, n: usize) -> Result<f64> {
    let mut host = vec![0.0f32; n];
    dev.download(p, bytes_mut(&mut host))?;
    Ok(host.iter().map(|&v| v as f64).sum())
}

/// The kernels a device loads: CUDA C sources in order (`common.cuh` first) and the entry
/// points to find in them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Program {
    pub sources: Vec<(&'static str, &'static str)>,
    pub kernels: Vec<&'static str>,
}

impl Program {
    /// The program text NVRTC (or the emulator's C++ compiler) builds.
    pub fn text(&self) -> String {
        self.sources
            .iter()
            .map(|(name, src)| format!("// ---- {name}\n{src}\n"))
            .collect()
    }

    /// This program with `other`'s sources and kernels appended.
    pub fn with(mut self, other: &Program) -> Program {
        self.sources.extend(other.sources.iter().copied());
        self.kernels.extend(other.kernels.iter().copied());
        self
    }
}

/// Element type of GEMM inputs in memory (outputs are always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    F16,
    BF16,
}

impl Elem {
    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::BF16 => 2,
        }
    }
}

/// A row-major matrix operand: element (i, j) is at `ptr[trans ? j * ld + i : i * ld + j]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operand {
    pub ptr: DevPtr,
    pub ld: usize,
    pub trans: bool,
}

impl Operand {
    pub fn rows(ptr: DevPtr, ld: usize) -> Operand {
        Operand {
            ptr,
            ld,
            trans: false,
        }
    }

    pub fn transposed(ptr: DevPtr, ld: usize) -> Operand {
        Operand {
            ptr,
            ld,
            trans: true,
        }
    }

    /// Elements spanned by a `rows x cols` operand (for bounds checks).
    pub fn extent(&self, rows: usize, cols: usize) -> usize {
        let (outer, inner) = if self.trans {
            (cols, rows)
        } else {
            (rows, cols)
        };
        if outer == 0 || inner == 0 {
            0
        } else {
            (outer - 1) * self.ld + inner
        }
    }
}

/// What the GEMM adds to the product before writing it (cuBLASLt's epilogues).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fused {
    None,
    Bias,
    /// Bias, then tanh-approximated GELU.
    GeluBias,
}

impl Fused {
    /// The next simpler epilogue to try when a device refuses this one.
    pub fn simpler(self) -> Option<Fused> {
        match self {
            Fused::GeluBias => Some(Fused::Bias),
            Fused::Bias => Some(Fused::None),
            Fused::None => None,
        }
    }
}

/// `c (m, n; ldc) (= | += when accumulate) a (m, k) . b (k, n)`, f32 accumulation and output,
/// plus the epilogue `want` with `bias` (n values, per column of c). Both inputs have type
/// `ty` in memory; 16-bit GEMMs get their inputs converted by the caller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Operand,
    pub b: Operand,
    pub ty: Elem,
    pub c: DevPtr,
    pub ldc: usize,
    pub accumulate: bool,
    pub want: Fused,
    pub bias: DevPtr,
}

/// A recorded sequence of launches, replayed as one (a CUDA graph).
pub type GraphId = u64;

/// See the module docs. Sizes are in bytes unless said otherwise; every call is ordered on
/// the device's one stream.
pub trait Device: Send + Sync {
    /// "NVIDIA H100 80GB HBM3 (sm_90)", or the emulator.
    fn name(&self) -> String;
    /// Compute capability as major * 10 + minor (90 on Hopper, 87 on Jetson Orin).
    fn sm(&self) -> u32;
    /// Free and total memory.
    fn memory(&self) -> Result<(usize, usize)>;
    /// `bytes` of zeroed memory; `what` names it in an out-of-memory error.
    fn alloc(&self, bytes: usize, what: &str) -> Result<DevPtr>;
    fn free(&self, p: DevPtr);
    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// Waits for the work before it, then copies.
    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()>;
    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()>;
    /// Runs entry point `kernel` of the loaded program.
    fn launch(&self, kernel: &str, cfg: LaunchCfg, args: &[Arg]) -> Result<()>;
    /// Runs `g`; returns the epilogue it fused, the one wanted or a simpler one (the caller
    /// adds the rest).
    fn gemm(&self, g: &Gemm) -> Result<Fused>;
    /// Waits for all work issued so far.
    fn synchronize(&self) -> Result<()>;
    /// Starts recording instead of running: until [`Device::end_capture`], launches and GEMMs
    /// are recorded, not run. `false` when the device cannot record (everything runs directly).
    fn begin_capture(&self) -> Result<bool>;
    /// Ends a recording; `None` when it failed (the recorded work did not run and must be
    /// issued again directly).
    fn end_capture(&self) -> Result<Option<GraphId>>;
    /// Runs a recorded sequence.
    fn replay(&self, g: GraphId) -> Result<()>;
    fn drop_graph(&self, g: GraphId);
    /// The CUDA stream work is ordered on (for NCCL), where there is one.
    fn raw_stream(&self) -> Option<u64> {
        None
    }
    /// Whether all work issued so far has finished (without waiting).
    fn idle(&self) -> Result<bool> {
        Ok(true)
    }
}

/// An error of a device call.
pub fn device_error(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Device {
        backend: "cuda".into(),
        reason: format!("{what}: {e}"),
    }
}

/// The error for an allocation that does not fit: what, needed, free and total, in bytes and
/// GiB, and what to change.
pub fn out_of_memory(what: &str, needed: u64, free: u64, total: u64) -> RuntimeError {
    RuntimeError::Device {
        backend: "cuda".into(),
        reason: format!(
            "out of GPU memory for {what}: {needed} bytes ({:.2} GiB) needed, {free} bytes ({:.2} GiB) free of {:.2} GiB (use a smaller batch or input size; to embed, f16 or bf16; to train, --recompute)",
            needed as f64 / GIB,
            free as f64 / GIB,
            total as f64 / GIB
        ),
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// f32 slices as bytes.
pub fn bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

pub fn bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: as `bytes`; every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

/// The largest power of two up to 256 dividing a device address: GEMM libraries assume
/// 256-byte alignment unless told otherwise (views into scratch sit at offsets).
pub fn alignment(addr: u64) -> u32 {
    if addr == 0 {
        return 256;
    }
    (1u64 << addr.trailing_zeros().min(8)) as u32
}

/// A device buffer that frees itself: `len` elements of `elem` bytes.
pub struct DeviceBuffer {
    pub ptr: DevPtr,
    pub len: usize,
    dev: std::sync::Arc<dyn Device>,
}

impl DeviceBuffer {
    pub fn new(
        dev: &std::sync::Arc<dyn Device>,
        len: usize,
        elem: usize,
        what: &str,
    ) -> Result<DeviceBuffer> {
        let ptr = dev.alloc(len.max(1) * elem, what)?;
        Ok(DeviceBuffer {
            ptr,
            len,
            dev: dev.clone(),
        })
    }

    /// Address of element `i` of an f32 buffer.
    pub fn at(&self, i: usize) -> DevPtr {
        self.ptr + 4 * i as u64
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.dev.free(self.ptr);
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {})", self.ptr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0100 + 2352), 16);
        assert_eq!(alignment(4), 4);
        assert_eq!(alignment(0x7f00_0000_0080), 128);
    }

    #[test]
    fn operand_extents() {
        assert_eq!(Operand::rows(0, 10).extent(3, 4), 24);
        assert_eq!(Operand::transposed(0, 10).extent(3, 4), 33);
        assert_eq!(Operand::rows(0, 10).extent(0, 4), 0);
    }
}
