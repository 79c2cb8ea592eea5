//! CUDA form of `matmul`: the product on the device's GEMM (cuBLASLt on a GPU: f32 without
//! TF32, or f16 / bf16 inputs with f32 accumulation and output), with the bias, and GELU where
//! cuBLASLt's (tanh) GELU is the model's, fused into its epilogue where the device can; what
//! it cannot fuse (erf GELU, SiLU, LayerScale + residual) runs in `matmul_forward_epilogue`.
//! Training uses [`product`] for its forward and backward GEMMs (f32, or bf16 with f32
//! master weights) and `matmul_forward_bias_rows` before accumulating products.

use std::sync::Arc;

use crate::backend::cuda::device::{
    Arg, DevPtr, Device, DeviceBuffer, Elem, Fused, Gemm, LaunchCfg, Operand,
};
use crate::config::Activation;
use crate::error::Result;
use crate::ops::column_sum::cuda::{Summand, column_sum_forward};

pub const SOURCE: (&str, &str) = ("matmul.cu", include_str!("matmul.cu"));
pub const KERNELS: &[&str] = &[
    "matmul_forward_epilogue",
    "matmul_forward_convert",
    "matmul_forward_bias_rows",
];

/// A Linear layer on the device: weights (out, in) row-major in `ty`, and an f32 bias.
pub struct CudaLinear {
    pub w: DeviceBuffer,
    pub ty: Elem,
    /// Zeros when the layer has no bias.
    pub bias: DeviceBuffer,
    pub has_bias: bool,
    pub out_features: usize,
    pub in_features: usize,
}

/// Scratch of the products: f32 accumulators and the 16-bit copies of f32 inputs, grown on
/// demand. `grew` tells the caller that addresses changed (recorded graphs are stale).
pub struct GemmScratch {
    dev: Arc<dyn Device>,
    acc: Option<DeviceBuffer>,
    half: [Option<DeviceBuffer>; 2],
    pub grew: bool,
}

impl GemmScratch {
    pub fn new(dev: &Arc<dyn Device>) -> GemmScratch {
        GemmScratch {
            dev: dev.clone(),
            acc: None,
            half: [None, None],
            grew: false,
        }
    }

    /// An f32 buffer of at least `n` elements.
    pub fn acc(&mut self, n: usize) -> Result<DevPtr> {
        if self.acc.as_ref().is_none_or(|b| b.len < n) {
            self.acc = Some(DeviceBuffer::new(&self.dev, n, 4, "GEMM accumulators")?);
            self.grew = true;
        }
        Ok(self.acc.as_ref().expect("allocated").ptr)
    }

    /// 16-bit buffer `which` (0, 1) of at least `n` elements.
    pub fn half(&mut self, which: usize, n: usize) -> Result<DevPtr> {
        if self.half[which].as_ref().is_none_or(|b| b.len < n) {
            self.half[which] = Some(DeviceBuffer::new(&self.dev, n, 2, "16-bit GEMM inputs")?);
            self.grew = true;
        }
        Ok(self.half[which].as_ref().expect("allocated").ptr)
    }
}

/// A GEMM input: its f32 layout, and a 16-bit copy when the caller keeps one (weights).
#[derive(Clone, Copy, Debug)]
pub struct Input {
    pub op: Operand,
    pub half: Option<DevPtr>,
}

impl Input {
    pub fn f32(op: Operand) -> Input {
        Input { op, half: None }
    }
}

/// `c (m, n; ldc) (= | +=) a (m, k) . b (k, n)` with the epilogue `want` (bias per column of
/// c), inputs in `ty`: f32 inputs of a 16-bit product without a copy are converted into
/// scratch first. Returns the epilogue the device fused.
#[allow(clippy::too_many_arguments)]
pub fn product(
    dev: &dyn Device,
    scratch: &mut GemmScratch,
    (m, n, k): (usize, usize, usize),
    a: Input,
    b: Input,
    c: DevPtr,
    ldc: usize,
    accumulate: bool,
    ty: Elem,
    (want, bias): (Fused, DevPtr),
) -> Result<Fused> {
    let mut input = |which: usize, x: Input, rows: usize, cols: usize| -> Result<Operand> {
        match (ty, x.half) {
            (Elem::F32, _) => Ok(x.op),
            (_, Some(h)) => Ok(Operand { ptr: h, ..x.op }),
            _ => {
                let len = x.op.extent(rows, cols);
                let dst = scratch.half(which, len)?;
                matmul_forward_convert(dev, dst, x.op.ptr, len, ty)?;
                Ok(Operand { ptr: dst, ..x.op })
            }
        }
    };
    let (a, b) = (input(0, a, m, k)?, input(1, b, k, n)?);
    dev.gemm(&Gemm {
        m,
        n,
        k,
        a,
        b,
        ty,
        c,
        ldc,
        accumulate,
        want,
        bias,
    })
}

/// `dst` (16 bits, `ty`) (=) `src` (f32), `n` elements.
pub fn matmul_forward_convert(
    dev: &dyn Device,
    dst: DevPtr,
    src: DevPtr,
    n: usize,
    ty: Elem,
) -> Result<()> {
    let kind = (ty == Elem::BF16) as i32;
    dev.launch(
        "matmul_forward_convert",
        LaunchCfg::elements(n),
        &[
            Arg::Ptr(dst),
            Arg::Ptr(src),
            Arg::I64(n as i64),
            Arg::I32(kind),
        ],
    )
}

/// Rows of `out` (rows, o; ldo) (=) `bias`, before a product accumulates into them.
pub fn matmul_forward_bias_rows(
    dev: &dyn Device,
    out: DevPtr,
    ldo: usize,
    bias: DevPtr,
    rows: usize,
    o: usize,
) -> Result<()> {
    dev.launch(
        "matmul_forward_bias_rows",
        LaunchCfg::elements(rows * o),
        &[
            Arg::Ptr(out),
            Arg::I32(ldo as i32),
            Arg::Ptr(bias),
            Arg::I32(rows as i32),
            Arg::I32(o as i32),
        ],
    )
}

/// Mode 0: `out (=) act(out + bias)`; mode 1: `out += gamma * (acc + bias)`; a zero `bias`
/// means none.
#[allow(clippy::too_many_arguments)]
fn epilogue(
    dev: &dyn Device,
    out: DevPtr,
    acc: DevPtr,
    bias: DevPtr,
    gamma: DevPtr,
    rows: usize,
    cols: usize,
    mode: i32,
    act: i32,
) -> Result<()> {
    dev.launch(
        "matmul_forward_epilogue",
        LaunchCfg::elements(rows * cols),
        &[
            Arg::Ptr(out),
            Arg::Ptr(acc),
            Arg::Ptr(bias),
            Arg::Ptr(gamma),
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
            Arg::I32(mode),
            Arg::I32(act),
        ],
    )
}

/// out (rows, O) (=) act(inp W^T + b), or with `gamma`: out += gamma * (inp W^T + b).
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward(
    dev: &dyn Device,
    scratch: &mut GemmScratch,
    out: DevPtr,
    inp: DevPtr,
    w: &CudaLinear,
    rows: usize,
    gamma: Option<DevPtr>,
    act: Option<Activation>,
) -> Result<()> {
    let (o, k) = (w.out_features, w.in_features);
    let a = Input::f32(Operand::rows(inp, k));
    // W (o, k) row-major is B = W^T (k, o): element (kk, j) at j * k + kk.
    let b = Input {
        op: Operand::transposed(w.w.ptr, k),
        half: (w.ty != Elem::F32).then_some(w.w.ptr),
    };
    let bias = if w.has_bias { w.bias.ptr } else { 0 };
    let mut act = Activation::code(act);
    match gamma {
        None => {
            // cuBLASLt's GELU is the tanh form; f32 sessions keep it in the kernel so they
            // stay exact against the reference.
            let want = if act == Activation::GeluTanh.kernel_code() && w.ty != Elem::F32 {
                Fused::GeluBias
            } else {
                Fused::Bias
            };
            let fused = product(
                dev,
                scratch,
                (rows, o, k),
                a,
                b,
                out,
                o,
                false,
                w.ty,
                (want, bias),
            )?;
            if fused == Fused::GeluBias {
                act = 0;
            }
            let bias = if fused == Fused::None { bias } else { 0 };
            if act != 0 || bias != 0 {
                epilogue(dev, out, out, bias, 0, rows, o, 0, act)?;
            }
            Ok(())
        }
        Some(g) => {
            let acc = scratch.acc(rows * o)?;
            let fused = product(
                dev,
                scratch,
                (rows, o, k),
                a,
                b,
                acc,
                o,
                false,
                w.ty,
                (Fused::Bias, bias),
            )?;
            let bias = if fused == Fused::None { bias } else { 0 };
            epilogue(dev, out, acc, bias, g, rows, o, 1, 0)
        }
    }
}

/// A trained weight W (out, in), row-major f32, and its 16-bit copy where the optimizer keeps
/// one (bf16 training).
#[derive(Clone, Copy, Debug)]
pub struct Weight {
    pub ptr: DevPtr,
    pub half: Option<DevPtr>,
}

impl Weight {
    /// W as the B operand of `x W^T` (k = in features).
    fn transposed(self, k: usize) -> Input {
        Input {
            op: Operand::transposed(self.ptr, k),
            half: self.half,
        }
    }

    /// W as the B operand of `dy W`.
    fn rows(self, k: usize) -> Input {
        Input {
            op: Operand::rows(self.ptr, k),
            half: self.half,
        }
    }
}

/// Training forward: out[:, 0..o] (row stride `ldo`) (=) inp (rows, k) W^T + bias, products
/// in `ty`. The bias rows are written first and the product accumulated onto them, as the CPU
/// trainer does.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_train(
    dev: &dyn Device,
    scratch: &mut GemmScratch,
    ty: Elem,
    out: DevPtr,
    ldo: usize,
    inp: DevPtr,
    w: Weight,
    bias: Option<DevPtr>,
    (rows, k, o): (usize, usize, usize),
) -> Result<()> {
    if let Some(b) = bias {
        matmul_forward_bias_rows(dev, out, ldo, b, rows, o)?;
    }
    let a = Input::f32(Operand::rows(inp, k));
    let none = (Fused::None, 0);
    product(
        dev,
        scratch,
        (rows, o, k),
        a,
        w.transposed(k),
        out,
        ldo,
        bias.is_some(),
        ty,
        none,
    )?;
    Ok(())
}

/// Backward of [`matmul_forward_train`] for dout (rows, o; row stride `ld`): dinp (= | +=
/// when its flag is set) dout W, dweight += dout^T inp, dbias += the column sums of dout
/// (`partial`: `column_sum::cuda::partial_len(o)` floats).
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dev: &dyn Device,
    scratch: &mut GemmScratch,
    partial: DevPtr,
    ty: Elem,
    dinp: Option<(DevPtr, bool)>,
    dweight: DevPtr,
    dbias: Option<DevPtr>,
    dout: DevPtr,
    ld: usize,
    inp: DevPtr,
    w: Weight,
    (rows, k, o): (usize, usize, usize),
) -> Result<()> {
    let none = (Fused::None, 0);
    if let Some((dx, acc)) = dinp {
        let dy = Input::f32(Operand::rows(dout, ld));
        product(
            dev,
            scratch,
            (rows, k, o),
            dy,
            w.rows(k),
            dx,
            k,
            acc,
            ty,
            none,
        )?;
    }
    let dyt = Input::f32(Operand::transposed(dout, ld));
    let x = Input::f32(Operand::rows(inp, k));
    product(
        dev,
        scratch,
        (o, k, rows),
        dyt,
        x,
        dweight,
        k,
        true,
        ty,
        none,
    )?;
    if let Some(db) = dbias {
        column_sum_forward(dev, db, partial, dout, Summand::A, ld, rows, o)?;
    }
    Ok(())
}
