//! [`CudaDevice`]: the trainer's [`Device`] on an NVIDIA GPU. cudarc with dynamic loading (the
//! driver, NVRTC and cuBLASLt are found at run time), `train.cu` compiled by NVRTC for the
//! GPU's own architecture, stream-ordered allocations, and GEMMs in cuBLASLt with f32
//! accumulation (f32 inputs without TF32, or bf16 inputs), prepared once per shape.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::{result as lt, sys as ltsys};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, result, sys};
use dinoedge_runtime::ops::matmul::cuda::{algorithm, alignment, set_desc};

use super::{Arg, DevPtr, Device, GemmType, KERNELS, Mat, blocks, device_error, program};
use crate::error::{DistillError, Result};

/// cuBLASLt workspace (NVIDIA's recommendation for Hopper).
const WORKSPACE: usize = 32 << 20;

/// Compiles the trainer's kernels with NVRTC for `arch` ("sm_90"); needs only libnvrtc, so
/// CI checks every kernel without a GPU.
pub fn compile(arch: &str) -> Result<String> {
    Ok(dinoedge_runtime::backend::cuda::compile_program(
        program(),
        arch,
        "the trainer's kernels",
    )?)
}

fn unavailable(reason: &str) -> DistillError {
    DistillError::Runtime(dinoedge_runtime::RuntimeError::BackendUnavailable {
        backend: "cuda".into(),
        reason: reason.into(),
    })
}

fn e(what: &str) -> impl Fn(&dyn std::fmt::Debug) -> DistillError + '_ {
    move |x| device_error(what, format!("{x:?}"))
}

/// GEMM shape, operand layouts, type and alignments: one prepared cuBLASLt plan each.
type Key = ([usize; 6], (bool, bool), GemmType, [u32; 3]);

struct Prepared {
    desc: ltsys::cublasLtMatmulDesc_t,
    x: ltsys::cublasLtMatrixLayout_t,
    y: ltsys::cublasLtMatrixLayout_t,
    c: ltsys::cublasLtMatrixLayout_t,
    algo: ltsys::cublasLtMatmulAlgo_t,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: created by `prepare` (null until then), destroyed once.
        unsafe {
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
            for l in [self.x, self.y, self.c] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
        }
    }
}

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    handle: ltsys::cublasLtHandle_t,
    workspace: DevPtr,
    prepared: RefCell<HashMap<Key, Prepared>>,
    /// bf16 copies of the two GEMM operands: (address, bytes).
    half: RefCell<[(DevPtr, usize); 2]>,
    name: String,
}

impl CudaDevice {
    /// Opens GPU `ordinal` (`DINOEDGE_CUDA_DEVICE` overrides; default 0) and compiles the
    /// kernels for it. A missing driver or library is an error, not a panic.
    pub fn new(ordinal: Option<usize>) -> Result<CudaDevice> {
        let missing: Vec<&str> = dinoedge_runtime::backend::cuda::libraries_present()
            .iter()
            .filter(|l| !l.1)
            .map(|l| l.0)
            .collect();
        if !missing.is_empty() {
            return Err(unavailable(&format!(
                "no usable CUDA installation: {} not found (needs an NVIDIA driver; CUDA 12.x or 13.x libraries on the loader path)",
                missing.join(", ")
            )));
        }
        let ordinal = ordinal
            .or_else(|| std::env::var("DINOEDGE_CUDA_DEVICE").ok()?.parse().ok())
            .unwrap_or(0);
        let count = CudaContext::device_count()
            .map_err(|x| unavailable(&format!("the driver reports no usable GPU: {x:?}")))?;
        if count <= ordinal as i32 {
            return Err(unavailable(&format!(
                "GPU {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|x| unavailable(&format!("cannot open GPU {ordinal}: {x:?}")))?;
        let stream = ctx.new_stream().map_err(|x| e("stream")(&x))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|x| e("compute capability")(&x))?;
        let arch = format!("sm_{major}{minor}");
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(compile(&arch)?))
            .map_err(|x| match x.0 {
                sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => unavailable(
                    "the driver is older than the NVRTC on the loader path (its PTX is too new): use an NVRTC of the driver's CUDA version or older, or update the driver",
                ),
                _ => e("loading the trainer's kernels")(&x),
            })?;
        let mut functions = HashMap::new();
        for k in KERNELS.into_iter() {
            functions.insert(k, module.load_function(k).map_err(|x| e(k)(&x))?);
        }
        let handle = lt::create_handle().map_err(|x| e("cuBLASLt")(&x))?;
        let name = format!(
            "{} ({arch})",
            ctx.name().unwrap_or_else(|_| "CUDA GPU".into())
        );
        let mut dev = CudaDevice {
            ctx,
            stream,
            _module: module,
            functions,
            handle,
            workspace: 0,
            prepared: RefCell::new(HashMap::new()),
            half: RefCell::new([(0, 0); 2]),
            name,
        };
        dev.workspace = dev.alloc(WORKSPACE, "cuBLASLt workspace")?;
        Ok(dev)
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|x| e("binding the context")(&x))
    }

    fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// The bf16 form of operand `which` (0, 1) of `rows x cols` (as stored).
    fn to_bf16(&self, which: usize, m: &Mat, rows: usize, cols: usize) -> Result<DevPtr> {
        if let Some(h) = m.bf16 {
            return Ok(h);
        }
        let (outer, inner) = if m.trans { (cols, rows) } else { (rows, cols) };
        if outer == 0 || inner == 0 {
            return Ok(m.ptr);
        }
        let n = (outer - 1) * m.ld + inner;
        let mut half = self.half.borrow_mut();
        if half[which].1 < 2 * n {
            if half[which].0 != 0 {
                self.free(half[which].0);
            }
            half[which] = (self.alloc(2 * n, "bf16 GEMM operands")?, 2 * n);
        }
        let dst = half[which].0;
        self.launch(
            "to_bf16",
            (blocks(n), 1),
            256,
            &[Arg::Ptr(dst), Arg::Ptr(m.ptr), Arg::I64(n as i64)],
        )?;
        Ok(dst)
    }

    /// cuBLASLt plan for row-major C (m, n) = A (m, k) · B (k, n), as column-major
    /// Cᵀ (n, m) = op(B-side) · op(A-side).
    fn prepare(&self, key: &Key) -> Result<Prepared> {
        let ([m, n, k, lda, ldb, ldc], (ta, tb), t, align) = *key;
        let what = format!("cuBLASLt GEMM {m}x{n}x{k} ({t:?})");
        let ty = match t {
            GemmType::F32 => ltsys::cudaDataType::CUDA_R_32F,
            GemmType::BF16 => ltsys::cudaDataType::CUDA_R_16BF,
        };
        let mut p = Prepared {
            desc: std::ptr::null_mut(),
            x: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            // SAFETY: plain data, overwritten by the heuristic.
            algo: unsafe { std::mem::zeroed() },
        };
        // First operand: B; stored (n, k) when not transposed (op N), else (k, n) (op T).
        let (xr, xc) = if tb { (k, n) } else { (n, k) };
        let (yr, yc) = if ta { (m, k) } else { (k, m) };
        p.x = lt::create_matrix_layout(ty, xr as u64, xc as u64, ldb as i64)
            .map_err(|x| e(&what)(&x))?;
        p.y = lt::create_matrix_layout(ty, yr as u64, yc as u64, lda as i64)
            .map_err(|x| e(&what)(&x))?;
        p.c = lt::create_matrix_layout(
            ltsys::cudaDataType::CUDA_R_32F,
            n as u64,
            m as u64,
            ldc as i64,
        )
        .map_err(|x| e(&what)(&x))?;
        p.desc = lt::create_matmul_desc(
            ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ltsys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|x| e(&what)(&x))?;
        let (op_x, op_y) = (tb as i32, ta as i32);
        // SAFETY: live descriptor; i32 is the attributes' type.
        unsafe {
            use ltsys::cublasLtMatmulDescAttributes_t as D;
            for (attr, v) in [
                (D::CUBLASLT_MATMUL_DESC_TRANSA, op_x),
                (D::CUBLASLT_MATMUL_DESC_TRANSB, op_y),
            ] {
                set_desc(p.desc, attr, &v).map_err(|x| e(&what)(&x))?;
            }
        }
        // cuBLASLt's A is our B side: alignments (B side, A side, C).
        // SAFETY: live handles, made above.
        let algo = unsafe {
            algorithm(
                self.handle,
                p.desc,
                [p.x, p.y, p.c],
                WORKSPACE,
                [align[1], align[0], align[2]],
            )
        };
        p.algo = algo.map_err(|x| e(&format!("{what}: no algorithm"))(&x))?;
        Ok(p)
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // Work in flight may still use the plans and buffers.
        let _ = self.stream.synchronize();
        self.prepared.borrow_mut().clear();
        // SAFETY: destroyed once, after every plan made with it.
        let _ = unsafe { lt::destroy_handle(self.handle) };
        for (p, _) in *self.half.borrow() {
            if p != 0 {
                self.free(p);
            }
        }
        if self.workspace != 0 {
            self.free(self.workspace);
        }
        let _ = self.stream.synchronize();
    }
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, bytes: usize, what: &str) -> Result<DevPtr> {
        self.bind()?;
        // SAFETY: a fresh stream-ordered allocation, zeroed before use.
        let p = match unsafe { result::malloc_async(self.cu_stream(), bytes.max(4)) } {
            Ok(p) => p,
            Err(result::DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
                let (free, total) = self.ctx.mem_get_info().unwrap_or((0, 0));
                return Err(DistillError::Config(format!(
                    "out of GPU memory: {what} needs {:.2} GiB, {:.2} GiB of {:.2} GiB free on {}; lower --batch or --size, or pass --recompute",
                    gib(bytes),
                    gib(free),
                    gib(total),
                    self.name
                )));
            }
            Err(x) => return Err(e(what)(&x)),
        };
        // SAFETY: the allocation just made.
        unsafe { result::memset_d8_async(p, 0, bytes.max(4), self.cu_stream()) }
            .map_err(|x| e(what)(&x))?;
        Ok(p)
    }

    fn free(&self, p: DevPtr) {
        if self.bind().is_ok() {
            // SAFETY: allocated by `alloc` and freed once (the trainer's buffer lists).
            let _ = unsafe { result::free_async(p, self.cu_stream()) };
        }
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: dst is a live allocation of at least src.len() bytes; synchronised before
        // src can change.
        unsafe { result::memcpy_htod_async(dst, src, self.cu_stream()) }
            .map_err(|x| e("upload")(&x))?;
        self.stream.synchronize().map_err(|x| e("upload")(&x))
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: as `upload`; synchronised before dst is read.
        unsafe { result::memcpy_dtoh_async(dst, src, self.cu_stream()) }
            .map_err(|x| e("download")(&x))?;
        self.stream
            .synchronize()
            .map_err(|x| e("a kernel or the download after it")(&x))
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both live allocations of at least `bytes`.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.cu_stream()) }
            .map_err(|x| e("copy")(&x))
    }

    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: a live allocation of at least `bytes`.
        unsafe { result::memset_d8_async(dst, 0, bytes, self.cu_stream()) }
            .map_err(|x| e("zero")(&x))
    }

    fn launch(
        &self,
        kernel: &'static str,
        grid: (u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<()> {
        self.bind()?;
        let f = self
            .functions
            .get(kernel)
            .ok_or_else(|| device_error("launch", format!("no kernel named {kernel}")))?;
        let mut params: Vec<*mut c_void> = args.iter().map(Arg::as_param).collect();
        // SAFETY: the arguments match the kernel's signature in train.cu (the trainer's
        // launch sites), and point at values alive during the call.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                (grid.0, grid.1, 1),
                (block, 1, 1),
                0,
                self.cu_stream(),
                &mut params,
            )
        }
        .map_err(|x| e(kernel)(&x))
    }

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
    ) -> Result<()> {
        self.bind()?;
        let (ap, bp) = match t {
            GemmType::F32 => (a.ptr, b.ptr),
            GemmType::BF16 => (self.to_bf16(0, &a, m, k)?, self.to_bf16(1, &b, k, n)?),
        };
        let key: Key = (
            [m, n, k, a.ld, b.ld, ldc],
            (a.trans, b.trans),
            t,
            [alignment(ap), alignment(bp), alignment(c)],
        );
        if !self.prepared.borrow().contains_key(&key) {
            let p = self.prepare(&key)?;
            self.prepared.borrow_mut().insert(key, p);
        }
        let prepared = self.prepared.borrow();
        let p = &prepared[&key];
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        // SAFETY: device addresses of live buffers of the extents the layouts describe;
        // alpha / beta are host f32; the workspace is ours.
        unsafe {
            lt::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                bp as *const c_void,
                p.x,
                ap as *const c_void,
                p.y,
                c as *const c_void,
                p.c,
                c as *mut c_void,
                p.c,
                &p.algo,
                self.workspace as *mut c_void,
                WORKSPACE,
                self.cu_stream() as *mut _,
            )
        }
        .map_err(|x| e(&format!("cuBLASLt GEMM {m}x{n}x{k}"))(&x))
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
            x => Err(e("stream")(&x)),
        }
    }
}
