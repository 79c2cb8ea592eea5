//! [`CudaDevice`]: a real GPU through cudarc with dynamic loading (no toolkit at build time):
//! the context and one stream of its own, the program compiled by NVRTC for the GPU's own
//! architecture (once per process and architecture), stream-ordered allocations, pinned host
//! memory for large uploads and downloads, cuBLASLt GEMMs ([`super::blas`]) and CUDA graphs.
//!
//! cudarc panics when a CUDA library is missing; [`CudaDevice::new`] checks that libcuda,
//! libnvrtc and libcublasLt load first and returns [`RuntimeError::BackendUnavailable`].

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, result, sys};

use super::blas::{Blas, WORKSPACE_BYTES};
use super::device::{Arg, DevPtr, Device, Fused, Gemm, GraphId, LaunchCfg, Program, device_error};
use crate::error::{Result, RuntimeError};

fn unavailable(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::BackendUnavailable {
        backend: "cuda".into(),
        reason: reason.into(),
    }
}

fn e(what: &str) -> impl Fn(result::DriverError) -> RuntimeError + '_ {
    move |x| device_error(what, format!("{x:?}"))
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

/// Compiles `program` with NVRTC for `arch` (e.g. "sm_90"); returns the PTX text or the
/// compiler log. Needs only libnvrtc (no GPU): CI compiles every kernel this way.
pub fn compile(program: &Program, arch: &str) -> Result<String> {
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
    match cudarc::nvrtc::compile_ptx_with_opts(program.text(), opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => Err(RuntimeError::Device {
            backend: "cuda".into(),
            reason: format!(
                "NVRTC failed to compile the kernels for {arch}:\n{}",
                log.to_string_lossy()
            ),
        }),
        Err(x) => Err(device_error("NVRTC", format!("{x:?}"))),
    }
}

/// `program` compiled for `arch`, once per process (devices of one architecture share it).
fn compiled(program: &Program, arch: &str) -> Result<String> {
    static CACHE: Mutex<Vec<(String, String, String)>> = Mutex::new(Vec::new());
    let text = program.text();
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, ptx)) = cache.iter().find(|(a, t, _)| a == arch && *t == text) {
        return Ok(ptx.clone());
    }
    let ptx = compile(program, arch)?;
    cache.push((arch.to_string(), text, ptx.clone()));
    Ok(ptx)
}

/// Transfers of at least this many bytes go through pinned host memory.
const PINNED_MIN: usize = 16 << 10;

/// A pinned (page-locked) host buffer: the DMA engine copies from it directly, where pageable
/// memory is staged by the driver first. An upload's event says when it may be reused.
struct Pinned {
    ptr: *mut c_void,
    bytes: usize,
    event: Option<sys::CUevent>,
}

impl Pinned {
    fn ensure(&mut self, bytes: usize) -> Result<()> {
        if self.bytes >= bytes {
            return Ok(());
        }
        self.release();
        // SAFETY: a fresh pinned allocation; its contents are written before being read.
        self.ptr = unsafe { result::malloc_host(bytes, 0) }.map_err(e("pinned host buffer"))?;
        self.bytes = bytes;
        Ok(())
    }

    /// Waits until the last copy out of this buffer has finished.
    fn wait(&mut self) -> Result<()> {
        if let Some(ev) = self.event.take() {
            // SAFETY: our event, recorded on our stream.
            unsafe {
                result::event::synchronize(ev).map_err(e("pinned upload"))?;
                let _ = result::event::destroy(ev);
            }
        }
        Ok(())
    }

    fn release(&mut self) {
        let _ = self.wait();
        if !self.ptr.is_null() {
            // SAFETY: allocated by `malloc_host`, freed once.
            let _ = unsafe { result::free_host(self.ptr) };
            self.ptr = std::ptr::null_mut();
            self.bytes = 0;
        }
    }
}

struct Graphs {
    capturing: bool,
    recorded: HashMap<GraphId, cudarc::driver::CudaGraph>,
    next: GraphId,
}

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    blas: Mutex<Blas>,
    up: Mutex<Pinned>,
    down: Mutex<Pinned>,
    graphs: Mutex<Graphs>,
    name: String,
    sm: u32,
}

// SAFETY: all mutable state is behind mutexes; cudarc's handles may move between threads, and
// every call binds the context to the calling thread first.
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

impl CudaDevice {
    /// Opens GPU `ordinal` and loads `program` compiled for it.
    pub fn new(program: &Program, ordinal: usize) -> Result<CudaDevice> {
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
        let count = CudaContext::device_count()
            .map_err(|x| unavailable(format!("the driver reports no usable GPU: {x:?}")))?;
        if count <= ordinal as i32 {
            return Err(unavailable(format!(
                "GPU {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|x| unavailable(format!("cannot open GPU {ordinal}: {x:?}")))?;
        // One stream, no cross-stream events (they are not allowed inside graph capture).
        // SAFETY: nothing else uses this context's streams.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured into a graph.
        let stream = ctx
            .new_stream()
            .map_err(|x| unavailable(format!("cannot create a stream on GPU {ordinal}: {x:?}")))?;
        let (major, minor) = ctx.compute_capability().map_err(e("compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(compiled(program, &arch)?))
            .map_err(|x| match x.0 {
                sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => unavailable(
                    "the driver is older than the NVRTC on the loader path (its PTX is too new): use an NVRTC of the driver's CUDA version or older, or update the driver",
                ),
                _ => device_error("loading the kernels", format!("{x:?}")),
            })?;
        let mut functions = HashMap::new();
        for &k in &program.kernels {
            functions.insert(k, module.load_function(k).map_err(e(k))?);
        }
        let name = format!(
            "{} ({arch})",
            ctx.name().unwrap_or_else(|_| "CUDA GPU".into())
        );
        let nothing = || Pinned {
            ptr: std::ptr::null_mut(),
            bytes: 0,
            event: None,
        };
        let mut dev = CudaDevice {
            ctx,
            stream,
            _module: module,
            functions,
            blas: Mutex::new(Blas::new(0)?),
            up: Mutex::new(nothing()),
            down: Mutex::new(nothing()),
            graphs: Mutex::new(Graphs {
                capturing: false,
                recorded: HashMap::new(),
                next: 0,
            }),
            name,
            sm: (major * 10 + minor) as u32,
        };
        // A fixed workspace, so no allocation happens inside a captured graph.
        let ws = dev.alloc(WORKSPACE_BYTES, "the cuBLASLt workspace")?;
        dev.blas = Mutex::new(Blas::new(ws)?);
        Ok(dev)
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(e("binding the context"))
    }

    fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    fn capturing(&self) -> bool {
        self.graphs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .capturing
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // Work in flight may still use buffers and plans.
        let _ = self.bind();
        let _ = self.stream.synchronize();
        self.up.lock().unwrap_or_else(|p| p.into_inner()).release();
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release();
        self.graphs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recorded
            .clear();
    }
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn sm(&self) -> u32 {
        self.sm
    }

    fn memory(&self) -> Result<(usize, usize)> {
        self.bind()?;
        self.ctx.mem_get_info().map_err(e("memory info"))
    }

    fn alloc(&self, bytes: usize, what: &str) -> Result<DevPtr> {
        self.bind()?;
        // SAFETY: a fresh stream-ordered allocation, zeroed before use.
        let p = match unsafe { result::malloc_async(self.cu_stream(), bytes.max(4)) } {
            Ok(p) => p,
            Err(result::DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                let (free, total) = self.ctx.mem_get_info().unwrap_or((0, 0));
                return Err(super::device::out_of_memory(
                    &format!("{what} on {}", self.name),
                    bytes as u64,
                    free as u64,
                    total as u64,
                ));
            }
            Err(x) => return Err(e(what)(x)),
        };
        // SAFETY: the allocation just made.
        unsafe { result::memset_d8_async(p, 0, bytes.max(4), self.cu_stream()) }
            .map_err(e(what))?;
        Ok(p)
    }

    fn free(&self, p: DevPtr) {
        if self.bind().is_ok() {
            // SAFETY: allocated by `alloc` and freed once (the owner's contract).
            let _ = unsafe { result::free_async(p, self.cu_stream()) };
        }
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        if src.len() < PINNED_MIN || self.capturing() {
            // SAFETY: `dst` is a live allocation of at least src.len() bytes; synchronised
            // before `src` can change.
            unsafe { result::memcpy_htod_async(dst, src, self.cu_stream()) }
                .map_err(e("upload"))?;
            return self.stream.synchronize().map_err(e("upload"));
        }
        let mut pin = self.up.lock().unwrap_or_else(|p| p.into_inner());
        pin.wait()?;
        pin.ensure(src.len())?;
        // SAFETY: the pinned buffer holds at least src.len() bytes and no copy reads it now.
        let staged = unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), pin.ptr as *mut u8, src.len());
            std::slice::from_raw_parts(pin.ptr as *const u8, src.len())
        };
        // SAFETY: as above; the event marks when the pinned buffer may be written again.
        unsafe {
            result::memcpy_htod_async(dst, staged, self.cu_stream()).map_err(e("upload"))?;
            let ev = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(e("upload event"))?;
            result::event::record(ev, self.cu_stream()).map_err(e("upload event"))?;
            pin.event = Some(ev);
        }
        Ok(())
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        if dst.len() < PINNED_MIN {
            // SAFETY: `src` is a live allocation of at least dst.len() bytes; synchronised
            // before `dst` is read.
            unsafe { result::memcpy_dtoh_async(dst, src, self.cu_stream()) }
                .map_err(e("download"))?;
            return self
                .stream
                .synchronize()
                .map_err(e("a kernel or the download after it"));
        }
        let mut pin = self.down.lock().unwrap_or_else(|p| p.into_inner());
        pin.ensure(dst.len())?;
        // SAFETY: the pinned buffer holds at least dst.len() bytes; the copy is waited for.
        unsafe {
            let staged = std::slice::from_raw_parts_mut(pin.ptr as *mut u8, dst.len());
            result::memcpy_dtoh_async(staged, src, self.cu_stream()).map_err(e("download"))?;
            self.stream
                .synchronize()
                .map_err(e("a kernel or the download after it"))?;
            dst.copy_from_slice(staged);
        }
        Ok(())
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both live allocations of at least `bytes`.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.cu_stream()) }.map_err(e("copy"))
    }

    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: a live allocation of at least `bytes`.
        unsafe { result::memset_d8_async(dst, 0, bytes, self.cu_stream()) }.map_err(e("zero"))
    }

    fn launch(&self, kernel: &str, cfg: LaunchCfg, args: &[Arg]) -> Result<()> {
        self.bind()?;
        let f = self
            .functions
            .get(kernel)
            .ok_or_else(|| device_error("launch", format!("no kernel named {kernel}")))?;
        let mut params: Vec<*mut c_void> = args.iter().map(Arg::as_param).collect();
        // SAFETY: the arguments match the kernel's signature (its launcher in the op folder)
        // and point at values alive during the call.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                (cfg.grid.0, cfg.grid.1, 1),
                (cfg.block, 1, 1),
                cfg.shared,
                self.cu_stream(),
                &mut params,
            )
        }
        .map_err(e(kernel))
    }

    fn gemm(&self, g: &Gemm) -> Result<Fused> {
        self.bind()?;
        self.blas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gemm(g, self.cu_stream() as *mut c_void)
    }

    fn synchronize(&self) -> Result<()> {
        // Synchronising a stream that is being captured would invalidate the capture.
        if self.capturing() {
            return Ok(());
        }
        self.bind()?;
        self.stream.synchronize().map_err(e("synchronize"))
    }

    fn begin_capture(&self) -> Result<bool> {
        self.bind()?;
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        let mut g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        match self.stream.begin_capture(mode) {
            Ok(()) => {
                g.capturing = true;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    fn end_capture(&self) -> Result<Option<GraphId>> {
        self.bind()?;
        let mut g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        g.capturing = false;
        match self.stream.end_capture(sys::CUgraphInstantiate_flags(0)) {
            Ok(Some(graph)) => {
                g.next += 1;
                let id = g.next;
                g.recorded.insert(id, graph);
                Ok(Some(id))
            }
            _ => Ok(None),
        }
    }

    fn replay(&self, id: GraphId) -> Result<()> {
        self.bind()?;
        let g = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        let graph = g
            .recorded
            .get(&id)
            .ok_or_else(|| device_error("graph", format!("no recorded graph {id}")))?;
        graph.launch().map_err(e("graph launch"))
    }

    fn drop_graph(&self, id: GraphId) {
        self.graphs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recorded
            .remove(&id);
    }

    fn raw_stream(&self) -> Option<u64> {
        self.bind().ok()?;
        Some(self.cu_stream() as u64)
    }

    fn idle(&self) -> Result<bool> {
        self.bind()?;
        // SAFETY: our live stream.
        match unsafe { sys::cuStreamQuery(self.cu_stream()) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            x => Err(device_error("stream", format!("{x:?}"))),
        }
    }
}
