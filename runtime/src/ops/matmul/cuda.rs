//! CUDA form of `matmul`: the product in cuBLASLt (f32 without TF32, or f16 / bf16 weights and
//! inputs with f32 accumulation and f32 output), with the bias, and GELU where cuBLASLt's
//! (tanh) GELU is the model's, fused into its epilogue; what cuBLASLt cannot fuse (erf GELU,
//! SiLU, LayerScale + residual) runs in `matmul_epilogue` from `matmul.cu`. Operands are
//! device addresses, so views into larger buffers work too.
//!
//! Descriptors, layouts and the heuristic's algorithm are made once per GEMM shape and
//! epilogue ([`Lt`]); an epilogue cuBLASLt refuses for a shape falls back to a simpler one
//! plus the NVRTC kernel, so every model runs whatever the library version supports.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};

use crate::backend::cuda::{CudaBackend, CudaBuffer, CudaLinear, CudaWeight, err};
use crate::error::Result;

/// What cuBLASLt adds to the product before writing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Fused {
    None,
    Bias,
    /// Bias then tanh-approximated GELU.
    GeluBias,
}

impl Fused {
    /// The next simpler epilogue to try when cuBLASLt refuses this one.
    fn simpler(self) -> Option<Fused> {
        match self {
            Fused::GeluBias => Some(Fused::Bias),
            Fused::Bias => Some(Fused::None),
            Fused::None => None,
        }
    }

    fn code(self) -> sys::cublasLtEpilogue_t {
        match self {
            Fused::None => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Fused::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Fused::GeluBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        }
    }
}

/// Element type of the GEMM inputs (the weights' type; outputs are always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum InputType {
    F32,
    F16,
    BF16,
}

impl InputType {
    fn cuda(self) -> sys::cudaDataType {
        match self {
            InputType::F32 => sys::cudaDataType::CUDA_R_32F,
            InputType::F16 => sys::cudaDataType::CUDA_R_16F,
            InputType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        }
    }
}

/// (out_features, in_features, rows, input type, epilogue asked for, alignment of B and C)
type Key = (usize, usize, usize, InputType, Fused, u32, u32);

/// The largest power of two up to 256 dividing a device address: cuBLASLt assumes 256-byte
/// alignment unless told otherwise (patch-embedding outputs sit at an offset in scratch).
pub fn alignment(addr: u64) -> u32 {
    if addr == 0 {
        return 256;
    }
    (1u64 << addr.trailing_zeros().min(8)) as u32
}

/// One prepared GEMM: its descriptor, layouts and algorithm, and the epilogue it fuses.
struct Prepared {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    fused: Fused,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: created by this struct (null until then) and destroyed once; errors here
        // cannot be acted on.
        unsafe {
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
            for l in [self.a, self.b, self.c] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
        }
    }
}

/// The cuBLASLt handle, its workspace and the prepared GEMMs of a backend.
pub(crate) struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    prepared: RefCell<HashMap<Key, Prepared>>,
}

/// Workspace handed to cuBLASLt: NVIDIA's recommendation for Hopper (32 MiB).
pub(crate) const WORKSPACE_BYTES: usize = 32 << 20;

impl Lt {
    pub(crate) fn new(stream: &std::sync::Arc<CudaStream>) -> Result<Lt> {
        let handle = lt::create_handle().map_err(|e| err("cuBLASLt", e))?;
        // A fixed workspace, so no allocation happens inside a captured graph.
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| err("cuBLASLt workspace", e))?;
        Ok(Lt {
            handle,
            workspace,
            prepared: RefCell::new(HashMap::new()),
        })
    }

    /// Descriptor, layouts and algorithm for one shape with `fused`, or `None` when cuBLASLt
    /// has no algorithm for that combination.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        o: usize,
        k: usize,
        rows: usize,
        t: InputType,
        fused: Fused,
        align_b: u32,
        align_c: u32,
    ) -> Result<Option<Prepared>> {
        let e = |what: &'static str| {
            move |x| {
                err(
                    &format!("cuBLASLt {what} ({o}x{k}, {rows} rows, {t:?}, {fused:?})"),
                    x,
                )
            }
        };
        // Handles are filled in one by one; dropping `p` frees those made so far.
        let mut p = Prepared {
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            // SAFETY: plain data, overwritten by the heuristic before use.
            algo: unsafe { std::mem::zeroed() },
            fused,
        };
        // Row-major out (rows, O) = inp (rows, K) . W^T is column-major D (O, rows) =
        // op_T(W as column-major (K, O)) . inp as column-major (K, rows).
        p.a = lt::create_matrix_layout(t.cuda(), k as u64, o as u64, k as i64)
            .map_err(e("layout"))?;
        p.b = lt::create_matrix_layout(t.cuda(), k as u64, rows as u64, k as i64)
            .map_err(e("layout"))?;
        p.c = lt::create_matrix_layout(
            sys::cudaDataType::CUDA_R_32F,
            o as u64,
            rows as u64,
            o as i64,
        )
        .map_err(e("layout"))?;
        // CUBLAS_COMPUTE_32F: full f32 accumulation (no TF32 for f32 inputs).
        p.desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(e("descriptor"))?;
        // cublasOperation_t: 0 N, 1 T.
        let (trans_a, trans_b, epi) = (1i32, 0i32, fused.code());
        // SAFETY: live descriptors; each value has the size the attribute expects.
        unsafe {
            set_desc(
                p.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans_a,
            )
            .map_err(e("transa"))?;
            set_desc(
                p.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &trans_b,
            )
            .map_err(e("transb"))?;
            set_desc(
                p.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epi,
            )
            .map_err(e("epilogue"))?;
        }
        // Weights are whole allocations (256-byte aligned); B and C may be views.
        // SAFETY: live handles, made above.
        let heuristic = unsafe {
            algorithm(
                self.handle,
                p.desc,
                [p.a, p.b, p.c],
                WORKSPACE_BYTES,
                [256, align_b, align_c],
            )
        };
        match heuristic {
            Ok(algo) => {
                p.algo = algo;
                Ok(Some(p))
            }
            // No algorithm for this epilogue / type combination here.
            Err(_) if fused != Fused::None => Ok(None),
            Err(x) => Err(e("heuristic")(x)),
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.prepared.borrow_mut().clear();
        // SAFETY: the handle is destroyed once, after every descriptor made with it.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// cuBLASLt's first heuristic algorithm for a matmul descriptor and the layouts of A, B and
/// C (= D), within `workspace` bytes, given the alignment in bytes of A, B and C / D.
///
/// # Safety
/// `handle`, `desc` and the layouts are live.
pub unsafe fn algorithm(
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    [a, b, c]: [sys::cublasLtMatrixLayout_t; 3],
    workspace: usize,
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
                &workspace as *const usize as *const c_void,
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

/// # Safety
/// `desc` is live and `T` is the attribute's type.
pub unsafe fn set_desc<T>(
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

/// Device address `c` (rows, O) = `inp` (rows, K) . W^T, row-major, plus what cuBLASLt could
/// fuse of `want` (bias from `w`); returns what it fused.
pub(crate) fn product(
    be: &CudaBackend,
    c: u64,
    inp: u64,
    w: &CudaLinear,
    rows: usize,
    want: Fused,
) -> Result<Fused> {
    let (o, k) = (w.out_features, w.in_features);
    let want = if w.has_bias { want } else { Fused::None };
    let (wptr, t) = match &w.w {
        CudaWeight::F32(wt) => (be.ptr(wt), InputType::F32),
        CudaWeight::F16(wt) => (be.ptr(wt), InputType::F16),
        CudaWeight::BF16(wt) => (be.ptr(wt), InputType::BF16),
    };
    // 16-bit weights: the input is converted to the same type first.
    let mut half = None;
    let bptr = if t == InputType::F32 {
        inp as *const c_void
    } else {
        let n = rows * k;
        let mut h = be.half_scratch(n)?;
        let cfg = be.grid(n);
        let (n_i64, kind) = (n as i64, (t == InputType::BF16) as i32);
        let mut b = be.stream.launch_builder(be.function("to_half"));
        b.arg(&mut *h).arg(&inp).arg(&n_i64).arg(&kind);
        // SAFETY: arguments match the kernel's signature (a device address for `src`).
        unsafe { b.launch(cfg) }.map_err(|e| err("to_half", e))?;
        let p = be.ptr(&*h);
        half = Some(h);
        p
    };
    let lt = &be.lt;
    let (align_b, align_c) = (alignment(bptr as u64), alignment(c));
    let key = (o, k, rows, t, want, align_b, align_c);
    if !lt.prepared.borrow().contains_key(&key) {
        let mut try_fused = Some(want);
        let mut got = None;
        while let Some(f) = try_fused {
            if let Some(p) = lt.prepare(o, k, rows, t, f, align_b, align_c)? {
                got = Some(p);
                break;
            }
            try_fused = f.simpler();
        }
        let p = got.expect("the plain product always has an algorithm or errors");
        lt.prepared.borrow_mut().insert(key, p);
    }
    let prepared = lt.prepared.borrow();
    let p = &prepared[&key];
    if p.fused != Fused::None {
        let bias = be.ptr(&w.bias) as u64;
        // SAFETY: live descriptor; the attribute is a device pointer.
        unsafe {
            set_desc(
                p.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias,
            )
        }
        .map_err(|e| err("cuBLASLt bias", e))?;
    }
    let (alpha, beta) = (1.0f32, 0.0f32);
    let ws = be.ptr(&lt.workspace) as *mut c_void;
    // SAFETY: device addresses of live buffers of the sizes the layouts say; alpha / beta are
    // host f32 (the scale type); the workspace is ours for the handle's lifetime.
    unsafe {
        lt::matmul(
            lt.handle,
            p.desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            wptr,
            p.a,
            bptr,
            p.b,
            c as *const c_void,
            p.c,
            c as *mut c_void,
            p.c,
            &p.algo,
            ws,
            WORKSPACE_BYTES,
            be.stream.cu_stream() as *mut _,
        )
    }
    .map_err(|e| err(&format!("cuBLASLt matmul ({o}x{k}, {rows} rows)"), e))?;
    drop(half);
    Ok(p.fused)
}

/// `matmul_epilogue` on device addresses: mode 0 `out = act(out + bias)`, mode 1
/// `out += gamma * (acc + bias)`; a zero `bias` address means no bias.
#[allow(clippy::too_many_arguments)]
pub(crate) fn epilogue(
    be: &CudaBackend,
    out: u64,
    acc: u64,
    bias: u64,
    gamma: u64,
    rows: usize,
    cols: usize,
    mode: i32,
    act: i32,
) -> Result<()> {
    let cfg = be.grid(rows * cols);
    let (r, c) = (rows as i32, cols as i32);
    let mut b = be.stream.launch_builder(be.function("matmul_epilogue"));
    b.arg(&out)
        .arg(&acc)
        .arg(&bias)
        .arg(&gamma)
        .arg(&r)
        .arg(&c)
        .arg(&mode)
        .arg(&act);
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(cfg) }
        .map_err(|e| err("matmul_epilogue", e))
        .map(|_| ())
}

/// The bias address the NVRTC epilogue still has to add after cuBLASLt fused `fused`.
pub(crate) fn remaining_bias(be: &CudaBackend, w: &CudaLinear, fused: Fused) -> u64 {
    if fused == Fused::None && w.has_bias {
        be.ptr(&w.bias) as u64
    } else {
        0
    }
}

/// Activation code 2 (tanh GELU) is cuBLASLt's GELU; f32 sessions keep it in the kernel so
/// they stay exact against the reference.
const ACT_GELU_TANH: i32 = 2;

/// out (rows, O) = act(inp W^T + b), or with `gamma`: out += gamma * (inp W^T + b).
pub fn matmul(
    be: &CudaBackend,
    out: &mut CudaBuffer,
    inp: &CudaBuffer,
    w: &CudaLinear,
    rows: usize,
    gamma: Option<&CudaBuffer>,
    act: i32,
) -> Result<()> {
    let (o, i) = (be.ptr_mut(out) as u64, be.ptr(inp) as u64);
    match gamma {
        None => {
            let want = if act == ACT_GELU_TANH && !matches!(w.w, CudaWeight::F32(_)) {
                Fused::GeluBias
            } else {
                Fused::Bias
            };
            let fused = product(be, o, i, w, rows, want)?;
            let act = if fused == Fused::GeluBias { 0 } else { act };
            let bias = remaining_bias(be, w, fused);
            if act != 0 || bias != 0 {
                epilogue(be, o, o, bias, 0, rows, w.out_features, 0, act)?;
            }
            Ok(())
        }
        Some(g) => {
            let acc = be.ptr(&*be.acc_scratch(rows * w.out_features)?) as u64;
            let fused = product(be, acc, i, w, rows, Fused::Bias)?;
            let bias = remaining_bias(be, w, fused);
            epilogue(
                be,
                o,
                acc,
                bias,
                be.ptr(g) as u64,
                rows,
                w.out_features,
                1,
                0,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::alignment;

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0100 + 2352), 16);
        assert_eq!(alignment(4), 4);
        assert_eq!(alignment(0x7f00_0000_0080), 128);
    }
}
