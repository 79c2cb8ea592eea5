//! cuBLASLt GEMMs for [`super::gpu::CudaDevice`]: f32 without TF32, or f16 / bf16 inputs,
//! always with f32 accumulation and f32 output; the bias (and tanh GELU) fused in the epilogue
//! where cuBLASLt has an algorithm for it. Descriptors, layouts and the heuristic's algorithm
//! are made once per shape, layout, type, epilogue and alignment; an epilogue cuBLASLt refuses
//! falls back to a simpler one, which the device reports so the caller adds the rest.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;

use super::device::{DevPtr, Elem, Fused, Gemm, alignment, device_error};
use crate::error::Result;

/// Workspace handed to cuBLASLt: NVIDIA's recommendation for Hopper (32 MiB).
pub const WORKSPACE_BYTES: usize = 32 << 20;

fn cuda_type(t: Elem) -> sys::cudaDataType {
    match t {
        Elem::F32 => sys::cudaDataType::CUDA_R_32F,
        Elem::F16 => sys::cudaDataType::CUDA_R_16F,
        Elem::BF16 => sys::cudaDataType::CUDA_R_16BF,
    }
}

fn epilogue(f: Fused) -> sys::cublasLtEpilogue_t {
    match f {
        Fused::None => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
        Fused::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
        Fused::GeluBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
    }
}

/// (m, n, k, lda, ldb, ldc), (trans a, trans b), type, epilogue, alignments (a, b, c).
type Key = ([usize; 6], (bool, bool), Elem, Fused, [u32; 3]);

struct Prepared {
    desc: sys::cublasLtMatmulDesc_t,
    x: sys::cublasLtMatrixLayout_t,
    y: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    fused: Fused,
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

/// The cuBLASLt handle, its workspace (device address) and the prepared GEMMs.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: DevPtr,
    prepared: HashMap<Key, Prepared>,
}

// SAFETY: the handle and plans are used under the device's mutex, one call at a time.
unsafe impl Send for Blas {}

/// # Safety
/// `desc` is live and `T` is the attribute's type.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> std::result::Result<(), lt::CublasError> {
    unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            value as *const T as *const c_void,
            size_of::<T>(),
        )
    }
}

/// cuBLASLt's first heuristic algorithm for a descriptor and the layouts of A, B and C (= D)
/// within the workspace, given the alignment in bytes of A, B and C / D.
///
/// # Safety
/// `handle`, `desc` and the layouts are live.
unsafe fn algorithm(
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    [a, b, c]: [sys::cublasLtMatrixLayout_t; 3],
    [align_a, align_b, align_c]: [u32; 3],
) -> std::result::Result<sys::cublasLtMatmulAlgo_t, lt::CublasError> {
    use sys::cublasLtMatmulPreferenceAttributes_t as P;
    let pref = lt::create_matmul_pref()?;
    let heuristic = (|| {
        // SAFETY: live handles; each value has its attribute's type.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &WORKSPACE_BYTES as *const usize as *const c_void,
                size_of::<usize>(),
            )?;
            for (attr, bytes) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c),
            ] {
                lt::set_matmul_pref_attribute(
                    pref,
                    attr,
                    &bytes as *const u32 as *const c_void,
                    size_of::<u32>(),
                )?;
            }
            lt::get_matmul_algo_heuristic(handle, desc, a, b, c, c, pref)
        }
    })();
    // SAFETY: created above, destroyed once.
    let _ = unsafe { lt::destroy_matmul_pref(pref) };
    heuristic.map(|h| h.algo)
}

impl Blas {
    /// A handle, with `workspace` (WORKSPACE_BYTES of device memory the caller allocated).
    pub fn new(workspace: DevPtr) -> Result<Blas> {
        let handle = lt::create_handle().map_err(|e| device_error("cuBLASLt", format!("{e:?}")))?;
        Ok(Blas {
            handle,
            workspace,
            prepared: HashMap::new(),
        })
    }

    /// The plan for `key` with its epilogue, or `None` when cuBLASLt has no algorithm.
    fn prepare(&self, key: &Key) -> Result<Option<Prepared>> {
        let ([m, n, k, lda, ldb, ldc], (ta, tb), t, fused, align) = *key;
        let what = format!("cuBLASLt GEMM {m}x{n}x{k} ({t:?}, {fused:?})");
        let e = |x: lt::CublasError| device_error(&what, format!("{x:?}"));
        let ty = cuda_type(t);
        let mut p = Prepared {
            desc: std::ptr::null_mut(),
            x: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            // SAFETY: plain data, overwritten by the heuristic.
            algo: unsafe { std::mem::zeroed() },
            fused,
        };
        // Row-major C (m, n) = A (m, k) . B (k, n) is column-major C^T (n, m) = op(B side) .
        // op(A side): cuBLASLt's first operand is our B, stored (n, k) column-major when not
        // transposed (op N), else (k, n) (op T); likewise A.
        let (xr, xc) = if tb { (k, n) } else { (n, k) };
        let (yr, yc) = if ta { (m, k) } else { (k, m) };
        p.x = lt::create_matrix_layout(ty, xr as u64, xc as u64, ldb as i64).map_err(e)?;
        p.y = lt::create_matrix_layout(ty, yr as u64, yc as u64, lda as i64).map_err(e)?;
        p.c = lt::create_matrix_layout(
            sys::cudaDataType::CUDA_R_32F,
            n as u64,
            m as u64,
            ldc as i64,
        )
        .map_err(e)?;
        // CUBLAS_COMPUTE_32F: full f32 accumulation (no TF32 for f32 inputs).
        p.desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(e)?;
        let (op_x, op_y, epi) = (tb as i32, ta as i32, epilogue(fused));
        // SAFETY: live descriptor; each value has its attribute's type.
        unsafe {
            use sys::cublasLtMatmulDescAttributes_t as D;
            set_desc(p.desc, D::CUBLASLT_MATMUL_DESC_TRANSA, &op_x).map_err(e)?;
            set_desc(p.desc, D::CUBLASLT_MATMUL_DESC_TRANSB, &op_y).map_err(e)?;
            set_desc(p.desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi).map_err(e)?;
        }
        // cuBLASLt's A is our B side: alignments (B side, A side, C).
        // SAFETY: live handles, made above.
        let algo = unsafe {
            algorithm(
                self.handle,
                p.desc,
                [p.x, p.y, p.c],
                [align[1], align[0], align[2]],
            )
        };
        match algo {
            Ok(a) => {
                p.algo = a;
                Ok(Some(p))
            }
            // No algorithm for this epilogue / type combination on this GPU.
            Err(_) if fused != Fused::None => Ok(None),
            Err(x) => Err(device_error(
                &format!("{what}: no algorithm"),
                format!("{x:?}"),
            )),
        }
    }

    /// Runs `g` on `stream`; returns the epilogue fused.
    pub fn gemm(&mut self, g: &Gemm, stream: *mut c_void) -> Result<Fused> {
        let want = if g.bias == 0 { Fused::None } else { g.want };
        let base = (
            [g.m, g.n, g.k, g.a.ld, g.b.ld, g.ldc],
            (g.a.trans, g.b.trans),
            g.ty,
            want,
            [alignment(g.a.ptr), alignment(g.b.ptr), alignment(g.c)],
        );
        if !self.prepared.contains_key(&base) {
            let mut try_fused = Some(want);
            let mut got = None;
            while let Some(f) = try_fused {
                if let Some(p) = self.prepare(&(base.0, base.1, base.2, f, base.4))? {
                    got = Some(p);
                    break;
                }
                try_fused = f.simpler();
            }
            let p =
                got.ok_or_else(|| device_error("cuBLASLt", "no algorithm for the plain product"))?;
            self.prepared.insert(base, p);
        }
        let p = &self.prepared[&base];
        if p.fused != Fused::None {
            // SAFETY: live descriptor; the attribute is a device pointer.
            unsafe {
                set_desc(
                    p.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &g.bias,
                )
            }
            .map_err(|x| device_error("cuBLASLt bias", format!("{x:?}")))?;
        }
        let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
        // SAFETY: device addresses of live buffers of the extents the layouts describe;
        // alpha / beta are host f32 (the scale type); the workspace is ours.
        unsafe {
            lt::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                g.b.ptr as *const c_void,
                p.x,
                g.a.ptr as *const c_void,
                p.y,
                g.c as *const c_void,
                p.c,
                g.c as *mut c_void,
                p.c,
                &p.algo,
                self.workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream as *mut _,
            )
        }
        .map_err(|x| {
            device_error(
                &format!("cuBLASLt GEMM {}x{}x{}", g.m, g.n, g.k),
                format!("{x:?}"),
            )
        })?;
        Ok(p.fused)
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        self.prepared.clear();
        // SAFETY: destroyed once, after every plan made with it.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}
