//! The CUDA backend: cudarc with dynamic loading (no toolkit at build time), kernels in CUDA
//! C compiled by NVRTC for the device's own architecture at session creation, GEMMs in
//! cuBLASLt (f32 without TF32; f16 / bf16 weights with f32 accumulation, bias fused in the
//! epilogue), tensor-core attention in f16 / bf16 sessions, pinned host memory for uploads
//! and downloads, and the whole forward replayed as a CUDA graph after its first run.
//!
//! Device plumbing only: library checks, the context and stream, the kernel module, scratch,
//! graphs. Kernels and their launchers live with their ops (`ops/<op>/<op>.cu` + `cuda.rs`).
//!
//! cudarc panics when a CUDA library is missing; [`CudaBackend::new`] checks that libcuda,
//! libnvrtc and libcublasLt load first and returns [`RuntimeError::BackendUnavailable`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    LaunchConfig, PinnedHostSlice,
};
use half::{bf16, f16};

use crate::backend::{Backend, BackendInfo, BackendKind, Epilogue, HostLinear, Op, Precision};
use crate::config::{Activation, ModelConfig};
use crate::error::{Result, RuntimeError};
use crate::ops::{self, Dims};

pub mod plan;

/// Every kernel source, compiled as one NVRTC program (the launchers find them by name).
pub const SOURCES: [(&str, &str); 7] = [
    ("common.cuh", super::CUDA_COMMON),
    ("matmul.cu", include_str!("../../ops/matmul/matmul.cu")),
    (
        "layer_norm.cu",
        include_str!("../../ops/layer_norm/layer_norm.cu"),
    ),
    ("rope.cu", include_str!("../../ops/rope/rope.cu")),
    (
        "attention.cu",
        include_str!("../../ops/attention/attention.cu"),
    ),
    (
        "patch_embed.cu",
        include_str!("../../ops/patch_embed/patch_embed.cu"),
    ),
    ("swiglu.cu", include_str!("../../ops/swiglu/swiglu.cu")),
];

/// Kernel entry points of [`SOURCES`].
pub const KERNELS: [&str; 16] = [
    "matmul_epilogue",
    "to_half",
    "layer_norm",
    "rope",
    "attention",
    "attention_mma_f16_hd16",
    "attention_mma_f16_hd32",
    "attention_mma_f16_hd64",
    "attention_mma_f16_hd128",
    "attention_mma_bf16_hd16",
    "attention_mma_bf16_hd32",
    "attention_mma_bf16_hd64",
    "attention_mma_bf16_hd128",
    "im2col",
    "assemble",
    "swiglu",
];

/// The NVRTC program text (all sources, `common.cuh` first).
pub fn program() -> String {
    SOURCES
        .iter()
        .map(|(name, src)| format!("// ---- {name}\n{src}\n"))
        .collect()
}

fn unavailable(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::BackendUnavailable {
        backend: "cuda".into(),
        reason: reason.into(),
    }
}

pub(crate) fn err(what: &str, e: impl std::fmt::Debug) -> RuntimeError {
    RuntimeError::Device {
        backend: "cuda".into(),
        reason: format!("{what}: {e:?}"),
    }
}

/// Which CUDA libraries load on this machine (without touching cudarc's panicking loaders).
pub fn libraries_present() -> [(&'static str, bool); 3] {
    // SAFETY: these only try to dlopen the libraries.
    unsafe {
        [
            (
                "libcuda (the NVIDIA driver)",
                cudarc::driver::sys::is_culib_present(),
            ),
            (
                "libnvrtc (the CUDA runtime compiler)",
                cudarc::nvrtc::sys::is_culib_present(),
            ),
            ("libcublasLt", cudarc::cublaslt::sys::is_culib_present()),
        ]
    }
}

/// Compiles the kernels with NVRTC for `arch` (e.g. "sm_90"); returns the PTX text or the
/// compiler log. Needs only libnvrtc (no GPU): CI compiles every kernel this way.
pub fn compile(arch: &str) -> Result<String> {
    compile_program(program(), arch, "the kernels")
}

/// Compiles CUDA C `src` (no system headers) with NVRTC for `arch`; `what` names it in errors.
/// Other crates' kernels (the distill trainer's) are compiled this way too.
pub fn compile_program(src: String, arch: &str, what: &str) -> Result<String> {
    // SAFETY: only dlopens libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(unavailable(
            "libnvrtc not found (install the CUDA toolkit or the pip wheel nvidia-cuda-nvrtc and add its lib folder to LD_LIBRARY_PATH)",
        ));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(src, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => Err(RuntimeError::Device {
            backend: "cuda".into(),
            reason: format!(
                "NVRTC failed to compile {what} for {arch}:\n{}",
                log.to_string_lossy()
            ),
        }),
        Err(e) => Err(err("NVRTC", e)),
    }
}

/// The kernels compiled for `arch`, once per process (sessions on the same GPU share them).
fn compiled(arch: &str) -> Result<String> {
    static CACHE: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, ptx)) = cache.iter().find(|(a, _)| a == arch) {
        return Ok(ptx.clone());
    }
    let ptx = compile(arch)?;
    cache.push((arch.to_string(), ptx.clone()));
    Ok(ptx)
}

/// An f32 device buffer.
pub type CudaBuffer = CudaSlice<f32>;

/// Weights of a Linear layer in the session's precision.
pub enum CudaWeight {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

pub struct CudaLinear {
    pub w: CudaWeight,
    /// Zeros when the layer has no bias.
    pub bias: CudaSlice<f32>,
    pub has_bias: bool,
    pub out_features: usize,
    pub in_features: usize,
}

/// Scratch reused by every op: f32 GEMM accumulators and 16-bit GEMM inputs.
#[derive(Default)]
pub(crate) struct Scratch {
    pub acc: Option<CudaSlice<f32>>,
    pub half: Option<CudaSlice<u16>>,
}

pub struct CudaBackend {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) lt: ops::matmul::cuda::Lt,
    staging: RefCell<Staging>,
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    pub(crate) precision: Precision,
    /// Compute capability, major * 10 + minor.
    pub(crate) sm: u32,
    /// Tensor-core attention where the kernel exists (`DINOEDGE_CUDA_ATTENTION=simt`: off).
    pub(crate) tensor_core_attention: bool,
    pub(crate) scratch: RefCell<Scratch>,
    name: String,
    arch: String,
    /// Kernel launches issued (for reports).
    launches: std::cell::Cell<u64>,
    graphs: RefCell<Graphs>,
}

/// Transfers of at least this many floats go through pinned host memory (smaller ones are
/// not worth a host copy).
const PINNED_MIN: usize = 4096;

/// Pinned (page-locked) host buffers for uploads and downloads, one per transfer size in use
/// (the pixels of each input shape, the features read back): the DMA engine copies from them
/// directly, where pageable memory is staged by the driver first.
#[derive(Default)]
pub(crate) struct Staging {
    up: Vec<PinnedHostSlice<f32>>,
    down: Vec<PinnedHostSlice<f32>>,
}

/// Pinned buffers kept per direction (oldest dropped first).
const MAX_STAGING: usize = 8;

impl Staging {
    /// The buffer of exactly `len` floats for uploads (`up`, write-combined: the host only
    /// writes it) or downloads (cached, the host reads it).
    fn buffer(
        &mut self,
        ctx: &Arc<CudaContext>,
        up: bool,
        len: usize,
    ) -> Result<&mut PinnedHostSlice<f32>> {
        let list = if up { &mut self.up } else { &mut self.down };
        let i = match list.iter().position(|b| b.len() == len) {
            Some(i) => i,
            None => {
                if list.len() == MAX_STAGING {
                    list.remove(0);
                }
                let flags = if up {
                    cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED
                } else {
                    0
                };
                // SAFETY: the contents are written (upload) or overwritten by a copy
                // (download) before they are read.
                let b = unsafe { ctx.alloc_pinned_with_flags::<f32>(len, flags) }
                    .map_err(|e| err(&format!("pinned host buffer of {len} floats"), e))?;
                list.push(b);
                list.len() - 1
            }
        };
        Ok(&mut list[i])
    }
}

/// Recorded forwards: a plan's second forward is captured into a CUDA graph and every later
/// one replays it (one launch instead of one per op). Reallocated scratch invalidates them.
#[derive(Default)]
pub(crate) struct Graphs {
    enabled: bool,
    runs: HashMap<u64, u32>,
    recorded: Vec<(u64, cudarc::driver::CudaGraph)>,
    capturing: Option<u64>,
    invalid: bool,
}

/// Graphs kept (oldest dropped first).
const MAX_GRAPHS: usize = 8;

// SAFETY: a backend is used by one thread at a time (the session owns it); cudarc's
// handles are thread-safe to move, and the RefCell / Cell are never shared across threads.
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Opens GPU `ordinal` (default 0; `DINOEDGE_CUDA_DEVICE` overrides) and compiles the kernels.
    pub fn new(precision: Precision, ordinal: Option<usize>) -> Result<Self> {
        let missing: Vec<&str> = libraries_present()
            .iter()
            .filter(|l| !l.1)
            .map(|l| l.0)
            .collect();
        if !missing.is_empty() {
            return Err(unavailable(format!(
                "no usable CUDA installation: {} not found (needs an NVIDIA driver; CUDA 12.x or 13.x libraries on the loader path)",
                missing.join(", ")
            )));
        }
        if !matches!(precision, Precision::F32 | Precision::F16 | Precision::BF16) {
            return Err(unavailable(format!(
                "{precision} is not supported on cuda (f32, f16, bf16)"
            )));
        }
        let ordinal = ordinal
            .or_else(|| {
                std::env::var("DINOEDGE_CUDA_DEVICE")
                    .ok()
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        let count = CudaContext::device_count()
            .map_err(|e| unavailable(format!("the driver reports no usable GPU: {e:?}")))?;
        if count <= ordinal as i32 {
            return Err(unavailable(format!(
                "GPU {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cannot open GPU {ordinal}: {e:?}")))?;
        // One stream, no cross-stream events (they are not allowed inside graph capture).
        // SAFETY: nothing else uses this context's streams.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured into a graph.
        let stream = ctx
            .new_stream()
            .map_err(|e| unavailable(format!("cannot create a stream on GPU {ordinal}: {e:?}")))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| err("compute capability", e))?;
        let arch = format!("sm_{major}{minor}");
        let ptx = cudarc::nvrtc::Ptx::from_src(compiled(&arch)?);
        let module = ctx
            .load_module(ptx)
            .map_err(|e| err("loading the kernels", e))?;
        let mut functions = HashMap::new();
        for k in KERNELS {
            functions.insert(k, module.load_function(k).map_err(|e| err(k, e))?);
        }
        let lt = ops::matmul::cuda::Lt::new(&stream)?;
        let name = ctx.name().unwrap_or_else(|_| "CUDA GPU".into());
        let graphs = Graphs {
            enabled: std::env::var("DINOEDGE_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            ..Default::default()
        };
        Ok(CudaBackend {
            ctx,
            stream,
            lt,
            staging: RefCell::new(Staging::default()),
            _module: module,
            functions,
            precision,
            sm: (major * 10 + minor) as u32,
            tensor_core_attention: std::env::var("DINOEDGE_CUDA_ATTENTION")
                .map_or(true, |v| v != "simt"),
            scratch: RefCell::new(Scratch::default()),
            name,
            arch,
            launches: std::cell::Cell::new(0),
            graphs: RefCell::new(graphs),
        })
    }

    /// Switches the tensor-core attention on or off (f16 / bf16 sessions on sm_80+; the
    /// CUDA-core kernel otherwise). Parity checks compare both.
    pub fn set_tensor_core_attention(&mut self, on: bool) {
        self.tensor_core_attention = on;
    }

    /// The attention kernel this backend runs for `head_dim`.
    pub fn attention_kernel(&self, head_dim: usize) -> &'static str {
        let mma = ops::attention::cuda::mma_kernel(self.precision, self.sm, head_dim);
        match mma {
            Some(k) if self.tensor_core_attention => k,
            _ => "attention",
        }
    }

    pub(crate) fn function(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| err("memory info", e))
    }

    /// Compute capability as major * 10 + minor (90 on Hopper, 87 on Jetson Orin).
    pub fn sm(&self) -> u32 {
        self.sm
    }

    /// Device name and architecture.
    pub fn device(&self) -> (&str, &str) {
        (&self.name, &self.arch)
    }

    /// A launch configuration covering `n` elements with grid-stride loops.
    pub(crate) fn grid(&self, n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, 65535) as u32;
        self.launches.set(self.launches.get() + 1);
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// An f32 scratch buffer of at least `n` elements.
    pub(crate) fn acc_scratch(&self, n: usize) -> Result<std::cell::RefMut<'_, CudaSlice<f32>>> {
        let mut s = self.scratch.borrow_mut();
        if s.acc.as_ref().is_none_or(|a| a.len() < n) {
            s.acc = Some(
                self.stream
                    .alloc_zeros::<f32>(n)
                    .map_err(|e| err("scratch", e))?,
            );
            self.graphs.borrow_mut().invalid = true;
        }
        Ok(std::cell::RefMut::map(s, |s| {
            s.acc.as_mut().expect("allocated")
        }))
    }

    /// A 16-bit scratch buffer of at least `n` elements.
    pub(crate) fn half_scratch(&self, n: usize) -> Result<std::cell::RefMut<'_, CudaSlice<u16>>> {
        let mut s = self.scratch.borrow_mut();
        if s.half.as_ref().is_none_or(|a| a.len() < n) {
            s.half = Some(
                self.stream
                    .alloc_zeros::<u16>(n)
                    .map_err(|e| err("scratch", e))?,
            );
            self.graphs.borrow_mut().invalid = true;
        }
        Ok(std::cell::RefMut::map(s, |s| {
            s.half.as_mut().expect("allocated")
        }))
    }

    /// Raw device pointer of a buffer (for cuBLAS).
    pub(crate) fn ptr<T>(&self, b: &CudaSlice<T>) -> *const c_void {
        b.device_ptr(&self.stream).0 as *const c_void
    }

    pub(crate) fn ptr_mut<T>(&self, b: &mut CudaSlice<T>) -> *mut c_void {
        b.device_ptr_mut(&self.stream).0 as *mut c_void
    }

    fn check_memory(&self, bytes: usize, what: &str) -> Result<()> {
        let (free, total) = self.memory()?;
        if bytes > free {
            return Err(plan::out_of_memory(
                what,
                bytes as u64,
                free as u64,
                total as u64,
            ));
        }
        Ok(())
    }
}

fn act_code(a: Option<Activation>) -> i32 {
    match a {
        None => 0,
        Some(Activation::Gelu) => 1,
        Some(Activation::GeluTanh) => 2,
        Some(Activation::Silu) => 3,
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;
    type Linear = CudaLinear;

    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Cuda,
            precision: self.precision,
            device: format!("{} ({})", self.name, self.arch),
            threads: 1,
        }
    }

    fn supports(&self, op: Op, cfg: &ModelConfig) -> std::result::Result<(), String> {
        super::attention_head_dims_up_to(op, cfg, crate::ops::attention::cuda::MAX_HEAD_DIM)
    }

    fn alloc(&self, len: usize) -> Result<CudaBuffer> {
        if len >= 1 << 20 {
            self.check_memory(4 * len, &format!("an activation buffer of {len} floats"))?;
        }
        self.stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| err(&format!("allocating {len} floats"), e))
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuffer> {
        if data.is_empty() {
            return self.alloc(1);
        }
        self.stream.clone_htod(data).map_err(|e| err("upload", e))
    }

    fn write(&self, dst: &mut CudaBuffer, data: &[f32]) -> Result<()> {
        if data.len() > dst.len() {
            return Err(err(
                "upload",
                format!("{} floats into a buffer of {}", data.len(), dst.len()),
            ));
        }
        if data.len() < PINNED_MIN {
            return self
                .stream
                .memcpy_htod(data, dst)
                .map_err(|e| err("upload", e));
        }
        let mut st = self.staging.borrow_mut();
        let buf = st.buffer(&self.ctx, true, data.len())?;
        // Waits until the previous copy out of this buffer has finished.
        buf.as_mut_slice()
            .map_err(|e| err("pinned upload buffer", e))?
            .copy_from_slice(data);
        self.stream
            .memcpy_htod(&*buf, dst)
            .map_err(|e| err("upload", e))
    }

    fn read(&self, src: &CudaBuffer, dst: &mut [f32]) -> Result<()> {
        let n = dst.len();
        if n > src.len() {
            return Err(err(
                "download",
                format!("{n} floats from a buffer of {}", src.len()),
            ));
        }
        if n < PINNED_MIN {
            self.stream
                .memcpy_dtoh(&src.slice(..n), dst)
                .map_err(|e| err("download", e))?;
            return self.stream.synchronize().map_err(|e| err("synchronize", e));
        }
        let mut st = self.staging.borrow_mut();
        let buf = st.buffer(&self.ctx, false, n)?;
        self.stream
            .memcpy_dtoh(&src.slice(..n), buf)
            .map_err(|e| err("download", e))?;
        // `as_slice` waits for the copy (and so for everything queued before it).
        dst.copy_from_slice(buf.as_slice().map_err(|e| err("download", e))?);
        Ok(())
    }

    fn linear(&self, w: HostLinear) -> Result<CudaLinear> {
        let bytes = w.weight.len()
            * if self.precision == Precision::F32 {
                4
            } else {
                2
            };
        self.check_memory(bytes, &format!("the weights of {}", w.name))?;
        let weight = match self.precision {
            Precision::F16 => CudaWeight::F16(
                self.stream
                    .clone_htod(
                        &w.weight
                            .iter()
                            .map(|&v| f16::from_f32(v))
                            .collect::<Vec<_>>(),
                    )
                    .map_err(|e| err("upload", e))?,
            ),
            Precision::BF16 => CudaWeight::BF16(
                self.stream
                    .clone_htod(
                        &w.weight
                            .iter()
                            .map(|&v| bf16::from_f32(v))
                            .collect::<Vec<_>>(),
                    )
                    .map_err(|e| err("upload", e))?,
            ),
            _ => CudaWeight::F32(
                self.stream
                    .clone_htod(&w.weight)
                    .map_err(|e| err("upload", e))?,
            ),
        };
        let bias = match &w.bias {
            Some(b) => self.upload(b)?,
            None => self.alloc(w.out_features)?,
        };
        Ok(CudaLinear {
            w: weight,
            has_bias: w.bias.is_some(),
            bias,
            out_features: w.out_features,
            in_features: w.in_features,
        })
    }

    fn patch_embed_scratch(&self, d: &Dims) -> usize {
        ops::patch_embed::scratch_len(d)
    }

    fn reserve(&self, d: &Dims) -> Result<()> {
        self.check_memory(
            plan::gemm_scratch_bytes(d, self.precision),
            "the GEMM scratch of this input shape",
        )?;
        drop(self.acc_scratch(plan::acc_scratch_len(d))?);
        if self.precision != Precision::F32 {
            drop(self.half_scratch(plan::half_scratch_len(d))?);
        }
        Ok(())
    }

    fn patch_embed(
        &self,
        x: &mut CudaBuffer,
        scratch: &mut CudaBuffer,
        pixels: &CudaBuffer,
        w: &CudaLinear,
        cls: &CudaBuffer,
        registers: Option<&CudaBuffer>,
        pos: Option<&CudaBuffer>,
        d: &Dims,
    ) -> Result<()> {
        ops::patch_embed::cuda::patch_embed(self, x, scratch, pixels, w, cls, registers, pos, d)
    }

    fn layer_norm(
        &self,
        out: &mut CudaBuffer,
        inp: &CudaBuffer,
        weight: &CudaBuffer,
        bias: &CudaBuffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        ops::layer_norm::cuda::layer_norm(self, out, inp, weight, bias, rows, cols, eps)
    }

    fn matmul(
        &self,
        out: &mut CudaBuffer,
        inp: &CudaBuffer,
        w: &CudaLinear,
        rows: usize,
        epilogue: Epilogue<'_, CudaBuffer>,
    ) -> Result<()> {
        match epilogue {
            Epilogue::Store => ops::matmul::cuda::matmul(self, out, inp, w, rows, None, 0),
            Epilogue::Act(a) => {
                ops::matmul::cuda::matmul(self, out, inp, w, rows, None, act_code(Some(a)))
            }
            Epilogue::Residual(gamma) => {
                ops::matmul::cuda::matmul(self, out, inp, w, rows, Some(gamma), 0)
            }
        }
    }

    fn rope(
        &self,
        qkv: &mut CudaBuffer,
        cos: &CudaBuffer,
        sin: &CudaBuffer,
        d: &Dims,
    ) -> Result<()> {
        ops::rope::cuda::rope(self, qkv, cos, sin, d)
    }

    fn attention(&self, out: &mut CudaBuffer, qkv: &CudaBuffer, d: &Dims) -> Result<()> {
        ops::attention::cuda::attention(self, out, qkv, d)
    }

    fn swiglu(
        &self,
        out: &mut CudaBuffer,
        gate_up: &CudaBuffer,
        rows: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<()> {
        ops::swiglu::cuda::swiglu(self, out, gate_up, rows, hidden, act_code(Some(act)))
    }

    fn synchronize(&self) -> Result<()> {
        // Synchronising a stream that is being captured would invalidate the capture.
        if self.graphs.borrow().capturing.is_some() {
            return Ok(());
        }
        self.stream.synchronize().map_err(|e| err("synchronize", e))
    }

    fn begin_forward(&self, plan: u64) -> Result<bool> {
        let mut g = self.graphs.borrow_mut();
        if !g.enabled {
            return Ok(false);
        }
        if g.invalid {
            g.recorded.clear();
            g.runs.clear();
            g.invalid = false;
        }
        if let Some((_, graph)) = g.recorded.iter().find(|(id, _)| *id == plan) {
            graph.launch().map_err(|e| err("graph launch", e))?;
            return Ok(true);
        }
        let runs = *g.runs.get(&plan).unwrap_or(&0);
        if runs >= 1 {
            let mode =
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
            match self.stream.begin_capture(mode) {
                Ok(()) => g.capturing = Some(plan),
                // Capture unsupported here: run every forward directly from now on.
                Err(_) => g.enabled = false,
            }
        }
        Ok(false)
    }

    fn end_forward(&self, plan: u64, completed: bool) -> Result<bool> {
        let mut g = self.graphs.borrow_mut();
        if g.capturing != Some(plan) {
            if g.enabled {
                *g.runs.entry(plan).or_insert(0) += 1;
            }
            return Ok(true);
        }
        g.capturing = None;
        *g.runs.entry(plan).or_insert(0) += 1;
        // The captured ops did not run: they run now through the graph, or, when the capture
        // or an op failed, graphs are switched off and the caller issues the ops directly.
        let graph = self
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        let graph = match (completed, graph) {
            (true, Ok(Some(graph))) => graph,
            _ => {
                g.enabled = false;
                return Ok(false);
            }
        };
        if graph.launch().is_err() {
            g.enabled = false;
            return Ok(false);
        }
        if g.recorded.len() == MAX_GRAPHS {
            g.recorded.remove(0);
        }
        g.recorded.push((plan, graph));
        Ok(true)
    }
}
