//! Fast CPU form of `matmul`: weights prepacked once into panels of NR columns, SIMD
//! register-tile microkernels (one file per ISA family), a fused epilogue (bias, activation,
//! LayerScale + residual, int8 dequantisation), and tasks spread over the backend's pool.
//!
//! Layouts (NR = the family's tile width, K = in_features):
//! - f32 / f16 weights: `[panel][k][NR]`, last panel zero-padded.
//! - bf16 weights for the bf16 dot products (AMX tiles, AVX-512 `vdpbf16ps`):
//!   `[panel][k / 2][NR][2]`, K padded to a multiple of 32; activations are rounded to bf16
//!   rows in scratch first. Families without bf16 dot products keep `[panel][k][NR]` and
//!   convert to f32 like f16.
//! - int8 weights: `[panel][k / 4][NR][4]`, K padded to a multiple of 4, per-output-channel
//!   f32 scales, and per-column sums for the u8-shifted activation format.
//!
//! The microkernel computes a full-K tile into a stack buffer; the epilogue then writes the
//! valid rows and columns of the destination, so edge tiles need no special kernels.

#[cfg(target_arch = "x86_64")]
pub mod amx;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_bf16;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod portable;
pub mod train;

use crate::backend::cpu::isa::{Isa, multiversion};
use crate::backend::cpu::pool::Pool;
use crate::ops::activation::fast as act;
use crate::ops::matmul::Epi;

/// Largest tile any family uses (for stack buffers).
pub const MR_MAX: usize = 12;
pub const NR_MAX: usize = 32;
/// Floats of a task's tile buffer: the f16 path's strips, or one 32 x 32 AMX block.
const TILE_MAX: usize = {
    let strips = STRIPS * MR_MAX * NR_MAX;
    if strips > 1024 { strips } else { 1024 }
};
/// Rows of f16 weights converted at a time (into an L1-resident f32 chunk).
const F16_CHUNK: usize = 64;
/// MR-row strips per task (the row block is STRIPS x MR rows).
pub(crate) const STRIPS: usize = 4;

/// How activations enter the int8 kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantFormat {
    /// `q + 128` as u8 (x86 `vpdpbusd` is u8 x i8); the kernel result is corrected by
    /// `128 * colsum(W)`.
    U8Shifted,
    /// `q` as i8 (NEON `sdot`, portable).
    S8,
}

/// Tile geometry of an ISA family.
pub fn tile(isa: Isa) -> (usize, usize) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 { .. } | Isa::Amx => (avx512::MR, avx512::NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 { .. } => (avx2::MR, avx2::NR),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon { .. } => (neon::MR, neon::NR),
        _ => (portable::MR, portable::NR),
    }
}

/// The activation format the family's int8 kernel takes.
pub fn quant_format(isa: Isa) -> QuantFormat {
    match isa {
        Isa::Amx | Isa::Avx512 { vnni: true } | Isa::Avx2 { vnni: true } => QuantFormat::U8Shifted,
        _ => QuantFormat::S8,
    }
}

/// Weights of a Linear layer in a kernel layout.
pub enum PackedWeights {
    F32(Vec<f32>),
    /// IEEE half bits, converted to f32 in the kernel's inner chunks.
    F16(Vec<u16>),
    /// bf16 bits: in the dot layout when `dot` (bf16 activations, f32 accumulation), else
    /// converted to f32 like `F16`.
    Bf16 {
        data: Vec<u16>,
        dot: bool,
    },
    I8 {
        data: Vec<i8>,
        /// Per output channel: `w ~ q * scale`.
        scales: Vec<f32>,
        /// Per output channel: sum of the int8 weights (u8-shifted correction).
        colsum: Vec<i32>,
    },
}

/// A Linear layer prepared for the fast kernels of one ISA family.
pub struct PackedLinear {
    pub out_features: usize,
    pub in_features: usize,
    pub isa: Isa,
    pub nr: usize,
    pub panels: usize,
    pub weights: PackedWeights,
    /// (out); zeros when the layer has no bias.
    pub bias: Vec<f32>,
    /// Static per-tensor activation scale from calibration; `None` = per-token dynamic.
    pub act_scale: Option<f32>,
}

fn panels(out: usize, nr: usize) -> usize {
    out.div_ceil(nr)
}

/// K of a bf16 dot-layout panel: a multiple of the AMX tile step.
pub fn bf16_k_pad(k: usize) -> usize {
    k.div_ceil(BF16_K_STEP) * BF16_K_STEP
}
const BF16_K_STEP: usize = 32;
/// Rows the bf16 / int8 activation scratch is padded to (the AMX block reads 32 rows).
const ROW_PAD: usize = 32;

/// Whether an int8 layer runs on the AMX tiles (K a whole number of 64-byte tile rows).
fn int8_on_tiles(w: &PackedLinear) -> bool {
    w.isa == Isa::Amx
        && w.in_features.is_multiple_of(64)
        && matches!(w.weights, PackedWeights::I8 { .. })
}

/// Round to nearest, ties to even, for |x| <= 2^22: adding and subtracting 1.5 * 2^23 leaves
/// the rounded value (SSE2-vectorisable, no libm call). Quantised values are within 127.
#[inline(always)]
pub fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Symmetric per-output-channel int8 quantisation: `scale = max|w_row| / 127`,
/// `q = round(w / scale)` (ties to even, the rounding SIMD units do), clamped to [-127, 127].
pub fn quantize_rows(w: &[f32], out: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; out * k];
    let mut scales = vec![0.0f32; out];
    for o in 0..out {
        let row = &w[o * k..(o + 1) * k];
        let amax = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let s = amax / 127.0;
        scales[o] = s;
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        for (d, x) in q[o * k..(o + 1) * k].iter_mut().zip(row) {
            *d = round_even((x * inv).clamp(-127.0, 127.0)) as i8;
        }
    }
    (q, scales)
}

impl PackedLinear {
    fn empty(
        isa: Isa,
        out: usize,
        k: usize,
        bias: Option<Vec<f32>>,
        weights: PackedWeights,
    ) -> Self {
        let nr = tile(isa).1;
        PackedLinear {
            out_features: out,
            in_features: k,
            isa,
            nr,
            panels: panels(out, nr),
            weights,
            bias: bias.unwrap_or_else(|| vec![0.0; out]),
            act_scale: None,
        }
    }

    /// f32 weights (out, k) row-major.
    pub fn f32(isa: Isa, w: &[f32], bias: Option<Vec<f32>>, out: usize, k: usize) -> Self {
        let nr = tile(isa).1;
        let mut data = vec![0.0f32; panels(out, nr) * k * nr];
        for (o, row) in w.chunks_exact(k).enumerate() {
            let (p, j) = (o / nr, o % nr);
            for (kk, &v) in row.iter().enumerate() {
                data[(p * k + kk) * nr + j] = v;
            }
        }
        Self::empty(isa, out, k, bias, PackedWeights::F32(data))
    }

    /// f16 weights: half the memory and bandwidth, f32 arithmetic.
    pub fn f16(isa: Isa, w: &[f32], bias: Option<Vec<f32>>, out: usize, k: usize) -> Self {
        let nr = tile(isa).1;
        let mut data = vec![0u16; panels(out, nr) * k * nr];
        for (o, row) in w.chunks_exact(k).enumerate() {
            let (p, j) = (o / nr, o % nr);
            for (kk, &v) in row.iter().enumerate() {
                data[(p * k + kk) * nr + j] = half::f16::from_f32(v).to_bits();
            }
        }
        Self::empty(isa, out, k, bias, PackedWeights::F16(data))
    }

    /// bf16 weights: on families with bf16 dot products ([`Isa::bf16_dot`]) activations are
    /// rounded to bf16 too, with f32 accumulation; elsewhere bf16 weights, f32 arithmetic.
    pub fn bf16(isa: Isa, w: &[f32], bias: Option<Vec<f32>>, out: usize, k: usize) -> Self {
        let nr = tile(isa).1;
        let bits = |v: f32| half::bf16::from_f32(v).to_bits();
        let data = if isa.bf16_dot() {
            let k_pad = bf16_k_pad(k);
            let mut data = vec![0u16; panels(out, nr) * k_pad * nr];
            for (o, row) in w.chunks_exact(k).enumerate() {
                let (p, j) = (o / nr, o % nr);
                for (kk, &v) in row.iter().enumerate() {
                    data[((p * k_pad + kk) / 2 * nr + j) * 2 + kk % 2] = bits(v);
                }
            }
            data
        } else {
            let mut data = vec![0u16; panels(out, nr) * k * nr];
            for (o, row) in w.chunks_exact(k).enumerate() {
                let (p, j) = (o / nr, o % nr);
                for (kk, &v) in row.iter().enumerate() {
                    data[(p * k + kk) * nr + j] = bits(v);
                }
            }
            data
        };
        let dot = isa.bf16_dot();
        Self::empty(isa, out, k, bias, PackedWeights::Bf16 { data, dot })
    }

    /// int8 weights `q` (out, k) with per-output-channel scales.
    pub fn int8(
        isa: Isa,
        q: &[i8],
        scales: Vec<f32>,
        bias: Option<Vec<f32>>,
        out: usize,
        k: usize,
        act_scale: Option<f32>,
    ) -> Self {
        let nr = tile(isa).1;
        let k4 = k.div_ceil(4);
        let mut data = vec![0i8; panels(out, nr) * k4 * nr * 4];
        let mut colsum = vec![0i32; out];
        for (o, row) in q.chunks_exact(k).enumerate() {
            let (p, j) = (o / nr, o % nr);
            for (kk, &v) in row.iter().enumerate() {
                data[((p * k4 + kk / 4) * nr + j) * 4 + kk % 4] = v;
                colsum[o] += v as i32;
            }
        }
        let mut l = Self::empty(
            isa,
            out,
            k,
            bias,
            PackedWeights::I8 {
                data,
                scales,
                colsum,
            },
        );
        l.act_scale = act_scale;
        l
    }

    /// int8 from f32 weights (per-channel symmetric quantisation at load).
    pub fn int8_from_f32(
        isa: Isa,
        w: &[f32],
        bias: Option<Vec<f32>>,
        out: usize,
        k: usize,
    ) -> Self {
        let (q, s) = quantize_rows(w, out, k);
        Self::int8(isa, &q, s, bias, out, k, None)
    }

    /// Bytes of scratch a matmul over `rows` rows needs: quantised rows + scales (int8) or
    /// bf16 rows (bf16 dot products), rows padded for the AMX blocks.
    pub fn scratch_bytes(&self, rows: usize) -> usize {
        match self.weights {
            PackedWeights::I8 { .. } => Self::int8_scratch_bytes(rows, self.in_features),
            PackedWeights::Bf16 { dot: true, .. } => {
                Self::bf16_scratch_bytes(rows, self.in_features)
            }
            _ => 0,
        }
    }

    /// Scratch bytes of an int8 matmul over `rows` rows of `k` inputs.
    pub fn int8_scratch_bytes(rows: usize, k: usize) -> usize {
        rows.div_ceil(ROW_PAD) * ROW_PAD * k.div_ceil(4) * 4 + rows * 4 + 64
    }

    /// Scratch bytes of a bf16 dot-product matmul over `rows` rows of `k` inputs.
    pub fn bf16_scratch_bytes(rows: usize, k: usize) -> usize {
        rows.div_ceil(ROW_PAD) * ROW_PAD * bf16_k_pad(k) * 2 + 64
    }
}

/// A raw pointer pool tasks share, each writing its own disjoint part.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: tasks write disjoint regions (each user's contract).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Through a method, so closures capture the `Sync` wrapper, not the raw field.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Writes (or adds, with `accumulate`) rows `0..m`, columns `0..ncols` of an f32 tile of row
/// stride `nr` to `c` at row `r`, column `col0` (row stride `ldc`).
///
/// # Safety
/// That part of `c` is in bounds and written by the calling task alone.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn store_tile(
    c: *mut f32,
    ldc: usize,
    (r, m): (usize, usize),
    (col0, ncols): (usize, usize),
    tile: &[f32],
    nr: usize,
    accumulate: bool,
) {
    for i in 0..m {
        // SAFETY: the caller's contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add((r + i) * ldc + col0), ncols) };
        let src = &tile[i * nr..i * nr + ncols];
        if accumulate {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        } else {
            dst.copy_from_slice(src);
        }
    }
}

/// One matmul call, shared by its tasks.
struct Job<'a> {
    out: SendPtr<f32>,
    inp: &'a [f32],
    rows: usize,
    w: &'a PackedLinear,
    epi: Epi<'a>,
    /// int8: quantised activations (rows x k_pad bytes) and per-row scales.
    qa: &'a [u8],
    qscale: &'a [f32],
    /// bf16 dot products: activations as bf16 rows of `bf16_k_pad(k)`.
    a16: &'a [u16],
    /// On the AMX tiles (rows in blocks of [`ROW_PAD`]).
    tiled: bool,
    row_block: usize,
    panel_group: usize,
}

impl Job<'_> {
    fn tasks(&self) -> usize {
        self.rows.div_ceil(self.row_block) * self.w.panels.div_ceil(self.panel_group)
    }
}

/// The per-family kernels a task body calls.
pub(crate) trait Family {
    const MR: usize;
    const NR: usize;
    const QUANT: QuantFormat;
    /// f32 tile of `m <= MR` rows: `c[i][0..NR] (+)= sum_k a[i*a_rs + k*a_cs] * b[k*ldb + 0..NR]`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn f32(
        m: usize,
        k: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    );
    /// int8 tile of `m <= MR` rows.
    unsafe fn i8(
        m: usize,
        k4: usize,
        a: *const u8,
        lda: usize,
        b: *const i8,
        c: *mut i32,
        ldc: usize,
    );
    /// bf16 dot-product tile of `m <= MR` rows (bf16 rows of stride `lda` elements, packed
    /// pairs), overwriting `c`. Only families with [`Isa::bf16_dot`] get dot-layout
    /// weights, so the others never reach this.
    unsafe fn bf16(
        _m: usize,
        _k2: usize,
        _a: *const u16,
        _lda: usize,
        _b: *const u16,
        _c: *mut f32,
        _ldc: usize,
    ) {
        unreachable!("bf16 dot-layout weights on a family without bf16 dot products")
    }
}

/// Dispatches a runtime row count `$m` (one of the listed literals) to a const-generic kernel.
macro_rules! by_rows {
    ($m:expr, |$M:ident| $call:expr, $($n:literal)*) => {
        match $m {
            $( $n => { const $M: usize = $n; $call } )*
            _ => unreachable!("tile of {} rows", $m),
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512<const VNNI: bool>;
#[cfg(target_arch = "x86_64")]
impl<const VNNI: bool> Family for Avx512<VNNI> {
    const MR: usize = avx512::MR;
    const NR: usize = avx512::NR;
    const QUANT: QuantFormat = if VNNI {
        QuantFormat::U8Shifted
    } else {
        QuantFormat::S8
    };
    #[inline(always)]
    unsafe fn f32(
        m: usize,
        k: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        unsafe {
            by_rows!(m, |M| avx512::f32_tile::<M>(k, a, a_rs, a_cs, b, ldb, c, ldc, acc), 1 2 3 4 5 6 7 8 9 10 11 12)
        }
    }
    #[inline(always)]
    unsafe fn i8(
        m: usize,
        k4: usize,
        a: *const u8,
        lda: usize,
        b: *const i8,
        c: *mut i32,
        ldc: usize,
    ) {
        unsafe {
            if VNNI {
                by_rows!(m, |M| avx512::i8_tile::<M>(k4, a, lda, b, c, ldc), 1 2 3 4 5 6 7 8 9 10 11 12)
            } else {
                avx2::i8_rows_sign::<32>(m, k4, a, lda, b, c, ldc)
            }
        }
    }
    #[inline(always)]
    unsafe fn bf16(
        m: usize,
        k2: usize,
        a: *const u16,
        lda: usize,
        b: *const u16,
        c: *mut f32,
        ldc: usize,
    ) {
        unsafe {
            by_rows!(m, |M| avx512::bf16_tile::<M>(k2, a, lda, b, c, ldc), 1 2 3 4 5 6 7 8 9 10 11 12)
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2<const VNNI: bool>;
#[cfg(target_arch = "x86_64")]
impl<const VNNI: bool> Family for Avx2<VNNI> {
    const MR: usize = avx2::MR;
    const NR: usize = avx2::NR;
    const QUANT: QuantFormat = if VNNI {
        QuantFormat::U8Shifted
    } else {
        QuantFormat::S8
    };
    #[inline(always)]
    unsafe fn f32(
        m: usize,
        k: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        unsafe {
            by_rows!(m, |M| avx2::f32_tile::<M>(k, a, a_rs, a_cs, b, ldb, c, ldc, acc), 1 2 3 4 5 6)
        }
    }
    #[inline(always)]
    unsafe fn i8(
        m: usize,
        k4: usize,
        a: *const u8,
        lda: usize,
        b: *const i8,
        c: *mut i32,
        ldc: usize,
    ) {
        unsafe {
            if VNNI {
                by_rows!(m, |M| avx2::i8_tile::<M>(k4, a, lda, b, c, ldc), 1 2 3 4 5 6)
            } else {
                avx2::i8_rows_sign::<16>(m, k4, a, lda, b, c, ldc)
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) struct Neon<const DOT: bool>;
#[cfg(target_arch = "aarch64")]
impl<const DOT: bool> Family for Neon<DOT> {
    const MR: usize = neon::MR;
    const NR: usize = neon::NR;
    const QUANT: QuantFormat = QuantFormat::S8;
    #[inline(always)]
    unsafe fn f32(
        m: usize,
        k: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        unsafe {
            by_rows!(m, |M| neon::f32_tile::<M>(k, a, a_rs, a_cs, b, ldb, c, ldc, acc), 1 2 3 4 5 6)
        }
    }
    #[inline(always)]
    unsafe fn i8(
        m: usize,
        k4: usize,
        a: *const u8,
        lda: usize,
        b: *const i8,
        c: *mut i32,
        ldc: usize,
    ) {
        unsafe {
            if DOT {
                by_rows!(m, |M| neon::i8_tile::<M>(k4, a, lda, b, c, ldc), 1 2 3 4 5 6)
            } else {
                by_rows!(m, |M| portable::i8_tile::<M, 16>(k4, a, lda, b, c, ldc), 1 2 3 4 5 6)
            }
        }
    }
}

pub(crate) struct Portable;
impl Family for Portable {
    const MR: usize = portable::MR;
    const NR: usize = portable::NR;
    const QUANT: QuantFormat = QuantFormat::S8;
    #[inline(always)]
    unsafe fn f32(
        m: usize,
        k: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        unsafe {
            by_rows!(m, |M| portable::f32_tile::<M, 16>(k, a, a_rs, a_cs, b, ldb, c, ldc, acc), 1 2 3 4)
        }
    }
    #[inline(always)]
    unsafe fn i8(
        m: usize,
        k4: usize,
        a: *const u8,
        lda: usize,
        b: *const i8,
        c: *mut i32,
        ldc: usize,
    ) {
        unsafe { by_rows!(m, |M| portable::i8_tile::<M, 16>(k4, a, lda, b, c, ldc), 1 2 3 4) }
    }
}

/// max |x| with 16 independent lanes (vectorisable; NaN-free input assumed).
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let body = x.len() / 16 * 16;
    for c in x[..body].chunks_exact(16) {
        for l in 0..16 {
            let a = c[l].abs();
            acc[l] = if a > acc[l] { a } else { acc[l] };
        }
    }
    let mut m = acc.iter().fold(0.0f32, |a, &b| a.max(b));
    for v in &x[body..] {
        m = m.max(v.abs());
    }
    m
}

multiversion! {
    /// Quantises rows of `inp` (rows x k) into `qa` (rows x k_pad) and `qscale` (rows):
    /// `q = round(x / s)` with `s = max|x_row| / 127` (or the static scale), as u8 `q + 128`
    /// or i8 bits depending on the format.
    fn quantize_activations(inp: &[f32], k: usize, k_pad: usize, format: QuantFormat, fixed: Option<f32>, qa: &mut [u8], qscale: &mut [f32]) {
        let shift = if format == QuantFormat::U8Shifted { 128i32 } else { 0 };
        for (r, (x, q)) in inp.chunks_exact(k).zip(qa.chunks_exact_mut(k_pad)).enumerate() {
            let s = match fixed {
                Some(s) => s,
                None => abs_max(x) / 127.0,
            };
            qscale[r] = s;
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            for (d, v) in q[..k].iter_mut().zip(x) {
                let t = round_even((v * inv).clamp(-127.0, 127.0));
                // SAFETY: t is an integer in [-127, 127].
                *d = (unsafe { t.to_int_unchecked::<i32>() } + shift) as u8;
            }
            q[k..].fill(shift as u8);
        }
    }
}

/// f16 (`brain` false) or bf16 bits to f32.
#[inline(always)]
fn half_to_f32(bits: &[u16], brain: bool, dst: &mut [f32]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    if brain {
        bits.reinterpret_cast::<half::bf16>()
            .convert_to_f32_slice(dst);
    } else {
        bits.reinterpret_cast::<half::f16>()
            .convert_to_f32_slice(dst);
    }
}

/// One task: a block of rows times a group of panels.
#[inline(always)]
unsafe fn task<F: Family>(job: &Job, t: usize) {
    let w = job.w;
    let (k, o) = (w.in_features, w.out_features);
    let groups = w.panels.div_ceil(job.panel_group);
    let (rb, pg) = (t / groups, t % groups);
    let (r0, r1) = (rb * job.row_block, ((rb + 1) * job.row_block).min(job.rows));
    let nr = F::NR;
    debug_assert_eq!(nr, w.nr);
    // One f32 tile per MR-row strip of the block (the f16 path fills them all per chunk).
    let mut tiles = [0.0f32; TILE_MAX];
    let mut itile = [0i32; TILE_MAX];
    let strips: usize = (r1 - r0).div_ceil(F::MR);
    let strip = |s: usize| (r0 + s * F::MR, F::MR.min(r1 - r0 - s * F::MR));
    for p in pg * job.panel_group..((pg + 1) * job.panel_group).min(w.panels) {
        let col0 = p * nr;
        let ncols = nr.min(o - col0);
        match &w.weights {
            PackedWeights::F32(d) => {
                for s in 0..strips {
                    let (r, m) = strip(s);
                    let tile = &mut tiles[..MR_MAX * NR_MAX];
                    unsafe {
                        F::f32(
                            m,
                            k,
                            job.inp[r * k..].as_ptr(),
                            k,
                            1,
                            d.as_ptr().add(p * k * nr),
                            nr,
                            tile.as_mut_ptr(),
                            nr,
                            false,
                        )
                    };
                    finish(job, r, m, col0, ncols, nr, tile);
                }
            }
            PackedWeights::F16(d)
            | PackedWeights::Bf16 {
                data: d,
                dot: false,
            } => {
                // Convert each chunk of the panel once and run every strip over it.
                let mut chunk = [0.0f32; F16_CHUNK * NR_MAX];
                let base = p * k * nr;
                let brain = matches!(w.weights, PackedWeights::Bf16 { .. });
                for k0 in (0..k).step_by(F16_CHUNK) {
                    let kc = F16_CHUNK.min(k - k0);
                    let bits = &d[base + k0 * nr..base + (k0 + kc) * nr];
                    half_to_f32(bits, brain, &mut chunk[..kc * nr]);
                    for s in 0..strips {
                        let (r, m) = strip(s);
                        let tile = tiles[s * MR_MAX * NR_MAX..].as_mut_ptr();
                        unsafe {
                            F::f32(
                                m,
                                kc,
                                job.inp[r * k + k0..].as_ptr(),
                                k,
                                1,
                                chunk.as_ptr(),
                                nr,
                                tile,
                                nr,
                                k0 > 0,
                            )
                        };
                    }
                }
                for s in 0..strips {
                    let (r, m) = strip(s);
                    finish(
                        job,
                        r,
                        m,
                        col0,
                        ncols,
                        nr,
                        &mut tiles[s * MR_MAX * NR_MAX..(s + 1) * MR_MAX * NR_MAX],
                    );
                }
            }
            PackedWeights::Bf16 { data, dot: true } => {
                let k_pad = bf16_k_pad(k);
                let b = data[p * k_pad * nr..].as_ptr();
                #[cfg(target_arch = "x86_64")]
                if job.tiled {
                    for r in (r0..r1).step_by(amx::ROWS) {
                        let m = amx::ROWS.min(r1 - r);
                        let a = job.a16[r * k_pad..].as_ptr();
                        unsafe { amx::bf16_block(k_pad, a, k_pad * 2, b, tiles.as_mut_ptr(), nr) };
                        finish(job, r, m, col0, ncols, nr, &mut tiles);
                    }
                    continue;
                }
                for s in 0..strips {
                    let (r, m) = strip(s);
                    let a = job.a16[r * k_pad..].as_ptr();
                    let tile = &mut tiles[..MR_MAX * NR_MAX];
                    unsafe { F::bf16(m, k_pad / 2, a, k_pad, b, tile.as_mut_ptr(), nr) };
                    finish(job, r, m, col0, ncols, nr, tile);
                }
            }
            PackedWeights::I8 {
                data,
                scales,
                colsum,
            } => {
                let k4 = k.div_ceil(4);
                let zp = if F::QUANT == QuantFormat::U8Shifted {
                    128
                } else {
                    0
                };
                let (sw, cs) = (&scales[col0..col0 + ncols], &colsum[col0..col0 + ncols]);
                let b = data[p * k4 * nr * 4..].as_ptr();
                let tiled = job.tiled;
                let (step, blocks) = if tiled {
                    (ROW_PAD, (r1 - r0).div_ceil(ROW_PAD))
                } else {
                    (F::MR, strips)
                };
                for s in 0..blocks {
                    let (r, m) = (r0 + s * step, step.min(r1 - r0 - s * step));
                    let qa = job.qa[r * k4 * 4..].as_ptr();
                    #[cfg(target_arch = "x86_64")]
                    if tiled {
                        unsafe { amx::i8_block(k4 * 4, qa, k4 * 4, b, itile.as_mut_ptr()) };
                    }
                    if !tiled {
                        unsafe { F::i8(m, k4, qa, k4 * 4, b, itile.as_mut_ptr(), nr) };
                    }
                    // Dequantise: (acc - zp * colsum) * sa * sw.
                    let tile = &mut tiles[..];
                    for i in 0..m {
                        let sa = job.qscale[r + i];
                        let (src, acc) = (
                            &mut tile[i * nr..i * nr + ncols],
                            &itile[i * nr..i * nr + ncols],
                        );
                        for j in 0..ncols {
                            src[j] = (acc[j] - zp * cs[j]) as f32 * (sa * sw[j]);
                        }
                    }
                    finish(job, r, m, col0, ncols, nr, tile);
                }
            }
        }
    }
}

/// The epilogue: writes rows r..r+m, columns col0..col0+ncols of the destination from an
/// f32 tile of row stride `nr`.
#[inline(always)]
fn finish(job: &Job, r: usize, m: usize, col0: usize, ncols: usize, nr: usize, tile: &mut [f32]) {
    let o = job.w.out_features;
    let bias = &job.w.bias[col0..col0 + ncols];
    for i in 0..m {
        let src = &tile[i * nr..i * nr + ncols];
        // SAFETY: rows r..r+m and columns col0..col0+ncols belong to the calling task alone.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(job.out.get().add((r + i) * o + col0), ncols) };
        match job.epi {
            Epi::Store => {
                for j in 0..ncols {
                    dst[j] = src[j] + bias[j];
                }
            }
            Epi::Act(a) => {
                for j in 0..ncols {
                    dst[j] = src[j] + bias[j];
                }
                act::activation_slice(dst, a);
            }
            Epi::Residual(gamma) => {
                let g = &gamma[col0..col0 + ncols];
                for j in 0..ncols {
                    dst[j] += g[j] * (src[j] + bias[j]);
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn run_family<F: Family>(pool: &Pool, job: &Job) {
    pool.run(job.tasks(), |t| unsafe { task_entry::<F>(job, t) });
}

/// Compiles a task body for the family's target features.
#[inline(always)]
unsafe fn task_entry<F: Family>(job: &Job, t: usize) {
    unsafe {
        match job.w.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Amx if job.tiled => {
                // The tiles are configured per task: pool threads carry no tile state
                // between jobs, so a context switch saves none.
                let _tiles = amx::Tiles::configure();
                task_amx::<F>(job, t);
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => task_amx::<F>(job, t),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 { .. } => task_avx512::<F>(job, t),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 { vnni: true } => task_avx2_vnni::<F>(job, t),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 { vnni: false } => task_avx2::<F>(job, t),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon { .. } => task_neon::<F>(job, t),
            _ => task::<F>(job, t),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn task_avx512<F: Family>(job: &Job, t: usize) {
    unsafe { task::<F>(job, t) }
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512bf16,avx2,fma,f16c")]
unsafe fn task_amx<F: Family>(job: &Job, t: usize) {
    unsafe { task::<F>(job, t) }
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn task_avx2_vnni<F: Family>(job: &Job, t: usize) {
    unsafe { task::<F>(job, t) }
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn task_avx2<F: Family>(job: &Job, t: usize) {
    unsafe { task::<F>(job, t) }
}
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn task_neon<F: Family>(job: &Job, t: usize) {
    unsafe { task::<F>(job, t) }
}

/// Splits `rows` into chunks over the pool and runs `f(first, end)` on each.
fn by_row_chunks(pool: &Pool, rows: usize, f: impl Fn(usize, usize) + Sync) {
    let chunk_rows = rows.div_ceil(pool.threads() * 4).max(1);
    pool.run(rows.div_ceil(chunk_rows), |c| {
        f(c * chunk_rows, ((c + 1) * chunk_rows).min(rows))
    });
}

/// int8: quantises the activations into `scratch` (rows padded to [`ROW_PAD`]) and returns
/// them with their per-row scales.
fn quantize_into<'s>(
    pool: &Pool,
    inp: &[f32],
    w: &PackedLinear,
    rows: usize,
    scratch: &'s mut [u8],
) -> (&'s mut [u8], &'s mut [f32]) {
    let (k, k_pad) = (w.in_features, w.in_features.div_ceil(4) * 4);
    let (qa, rest) = scratch.split_at_mut(rows.div_ceil(ROW_PAD) * ROW_PAD * k_pad);
    // Align the scale area to 4 bytes.
    let off = rest.as_ptr().align_offset(4);
    let rest = &mut rest[off..off + rows * 4];
    // SAFETY: aligned, in bounds, f32 has no invalid bit patterns.
    let qs = unsafe { std::slice::from_raw_parts_mut(rest.as_mut_ptr() as *mut f32, rows) };
    let format = quant_format(w.isa);
    let (qa_ptr, qs_ptr) = (SendPtr(qa.as_mut_ptr()), SendPtr(qs.as_mut_ptr()));
    by_row_chunks(pool, rows, |a, b| {
        // SAFETY: disjoint row ranges per task.
        let (q, s) = unsafe {
            (
                std::slice::from_raw_parts_mut(qa_ptr.get().add(a * k_pad), (b - a) * k_pad),
                std::slice::from_raw_parts_mut(qs_ptr.get().add(a), b - a),
            )
        };
        let x = &inp[a * k..b * k];
        quantize_activations(w.isa, x, k, k_pad, format, w.act_scale, q, s);
    });
    (qa, qs)
}

/// bf16 dot products: rounds the activations to bf16 rows of `bf16_k_pad(k)` in `scratch`
/// (K padding zeroed, rows padded to [`ROW_PAD`]).
fn bf16_into<'s>(
    pool: &Pool,
    inp: &[f32],
    w: &PackedLinear,
    rows: usize,
    scratch: &'s mut [u8],
) -> &'s mut [u16] {
    let (k, k_pad) = (w.in_features, bf16_k_pad(w.in_features));
    let off = scratch.as_ptr().align_offset(2);
    let len = rows.div_ceil(ROW_PAD) * ROW_PAD * k_pad;
    let bytes = &mut scratch[off..off + 2 * len];
    // SAFETY: aligned for u16, in bounds, any bits are a valid u16.
    let a16 = unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut u16, len) };
    let ptr = SendPtr(a16.as_mut_ptr());
    by_row_chunks(pool, rows, |a, b| {
        for r in a..b {
            // SAFETY: disjoint rows per task.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(r * k_pad), k_pad) };
            to_bf16(w.isa, &inp[r * k..(r + 1) * k], &mut dst[..k]);
            dst[k..].fill(0);
        }
    });
    a16
}

/// f32 -> bf16 bits, rounding to nearest even.
fn to_bf16(isa: Isa, x: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if isa.bf16_dot() {
        // SAFETY: `bf16_dot` checked AVX512_BF16 on this CPU.
        return unsafe { avx512::to_bf16(x, dst) };
    }
    let _ = isa;
    for (d, &v) in dst.iter_mut().zip(x) {
        *d = half::bf16::from_f32(v).to_bits();
    }
}

/// `out (rows, O) = epilogue(inp (rows, K) · Wᵀ + b)` with the fast kernels of `w.isa`.
/// `scratch` holds at least [`PackedLinear::scratch_bytes`] bytes (int8 and bf16 dot
/// products).
pub fn matmul_forward(
    pool: &Pool,
    out: &mut [f32],
    inp: &[f32],
    w: &PackedLinear,
    rows: usize,
    epi: Epi,
    scratch: &mut [u8],
) {
    assert!(
        inp.len() >= rows * w.in_features && out.len() >= rows * w.out_features,
        "matmul_forward: buffers too small"
    );
    if let Epi::Residual(g) = epi {
        assert_eq!(g.len(), w.out_features, "LayerScale length");
    }
    let (mr, _) = tile(w.isa);
    let tiled = w.isa == Isa::Amx
        && (matches!(w.weights, PackedWeights::Bf16 { dot: true, .. }) || int8_on_tiles(w));
    // Enough tasks for load balance across the pool, tiles big enough to amortise the call.
    assert!(
        !tiled || crate::backend::cpu::amx::tiles_granted(),
        "AMX kernels without the tile state (an Isa::Amx not from detection)"
    );
    // On the tiles: 64-row blocks (two AMX blocks share each weight tile); blocks of 128
    // rows, or one panel per task, measured within noise of this at 224 and 448.
    let row_block = if tiled { 2 * ROW_PAD } else { mr * STRIPS };
    let panel_group = if w.panels >= 8 { 4 } else { 2.min(w.panels) };
    let (mut qa, mut qscale, mut a16): (&mut [u8], &mut [f32], &mut [u16]) =
        (&mut [], &mut [], &mut []);
    match w.weights {
        PackedWeights::I8 { .. } => (qa, qscale) = quantize_into(pool, inp, w, rows, scratch),
        PackedWeights::Bf16 { dot: true, .. } => a16 = bf16_into(pool, inp, w, rows, scratch),
        _ => {}
    }
    let job = Job {
        out: SendPtr(out.as_mut_ptr()),
        inp,
        rows,
        w,
        epi,
        qa,
        qscale,
        a16,
        tiled,
        row_block,
        panel_group,
    };
    unsafe {
        match w.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Amx | Isa::Avx512 { vnni: true } => run_family::<Avx512<true>>(pool, &job),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 { vnni: false } => run_family::<Avx512<false>>(pool, &job),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 { vnni: true } => run_family::<Avx2<true>>(pool, &job),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 { vnni: false } => run_family::<Avx2<false>>(pool, &job),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon { dotprod: true } => run_family::<Neon<true>>(pool, &job),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon { dotprod: false } => run_family::<Neon<false>>(pool, &job),
            _ => run_family::<Portable>(pool, &job),
        }
    }
}
