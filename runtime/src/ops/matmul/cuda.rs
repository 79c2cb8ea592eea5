//! CUDA form of `matmul`: the product in cuBLAS (f32 `sgemm`, or f16 / bf16 weights and
//! inputs with f32 accumulation through `GemmEx`), then `matmul_epilogue` (bias +
//! activation, or LayerScale + residual) from `matmul.cu`. Operands are device addresses, so
//! views into larger buffers work too.

use std::ffi::c_void;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::PushKernelArg;

use crate::backend::cuda::{CudaBackend, CudaBuffer, CudaLinear, CudaWeight, err};
use crate::error::Result;

/// Device address `c` (rows, O) = `inp` (rows, K) · Wᵀ, row-major.
pub(crate) fn product(
    be: &CudaBackend,
    c: u64,
    inp: u64,
    w: &CudaLinear,
    rows: usize,
) -> Result<()> {
    let (o, k) = (w.out_features as i32, w.in_features as i32);
    let handle = *be.blas.handle();
    // Row-major out (R, O) is column-major (O, R) = Wᵀ-op of col-major W (K, O) times col-major inp (K, R).
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (wptr, dtype, kind) = match &w.w {
        CudaWeight::F32(wt) => {
            // SAFETY: device addresses of live buffers of the sizes the shapes say.
            return unsafe {
                cudarc::cublas::result::sgemm(
                    handle,
                    cublasOperation_t::CUBLAS_OP_T,
                    cublasOperation_t::CUBLAS_OP_N,
                    o,
                    rows as i32,
                    k,
                    &alpha,
                    be.ptr(wt) as *const f32,
                    k,
                    inp as *const f32,
                    k,
                    &beta,
                    c as *mut f32,
                    o,
                )
            }
            .map_err(|e| err("cuBLAS sgemm", e));
        }
        CudaWeight::F16(wt) => (be.ptr(wt), cudaDataType::CUDA_R_16F, 0i32),
        CudaWeight::BF16(wt) => (be.ptr(wt), cudaDataType::CUDA_R_16BF, 1i32),
    };
    // 16-bit weights: the input is converted to the same type first.
    let n = rows * w.in_features;
    let mut half = be.half_scratch(n)?;
    let cfg = be.grid(n);
    let n_i64 = n as i64;
    let mut b = be.stream.launch_builder(be.function("to_half"));
    b.arg(&mut *half).arg(&inp).arg(&n_i64).arg(&kind);
    // SAFETY: arguments match the kernel's signature (a device address for `src`).
    unsafe { b.launch(cfg) }.map_err(|e| err("to_half", e))?;
    let hptr = be.ptr(&*half);
    // SAFETY: as above; alpha / beta are host f32 for CUBLAS_COMPUTE_32F.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            handle,
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            o,
            rows as i32,
            k,
            &alpha as *const f32 as *const c_void,
            wptr,
            dtype,
            k,
            hptr,
            dtype,
            k,
            &beta as *const f32 as *const c_void,
            c as *mut c_void,
            cudaDataType::CUDA_R_32F,
            o,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
        )
    }
    .map_err(|e| err("cuBLAS GemmEx", e))
}

/// `matmul_epilogue` on device addresses: mode 0 `out = act(out + bias)`, mode 1
/// `out += gamma * (acc + bias)`.
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

/// out (rows, O) = act(inp Wᵀ + b), or with `gamma`: out += gamma * (inp Wᵀ + b).
pub fn matmul(
    be: &CudaBackend,
    out: &mut CudaBuffer,
    inp: &CudaBuffer,
    w: &CudaLinear,
    rows: usize,
    gamma: Option<&CudaBuffer>,
    act: i32,
) -> Result<()> {
    let (o, i, bias) = (
        be.ptr_mut(out) as u64,
        be.ptr(inp) as u64,
        be.ptr(&w.bias) as u64,
    );
    match gamma {
        None => {
            product(be, o, i, w, rows)?;
            epilogue(be, o, o, bias, bias, rows, w.out_features, 0, act)
        }
        Some(g) => {
            let acc = be.ptr(&*be.acc_scratch(rows * w.out_features)?) as u64;
            product(be, acc, i, w, rows)?;
            epilogue(
                be,
                o,
                acc,
                bias,
                be.ptr(g) as u64,
                rows,
                w.out_features,
                1,
                act,
            )
        }
    }
}
