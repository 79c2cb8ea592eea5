//! x86_64 AVX-512 microkernels: a 12 x 32 register tile (24 zmm accumulators).
//!
//! - f32: `c[i][0..32] (+)= sum_k a[i][k] * b[k][0..32]`, one broadcast of `a` and two
//!   loads of `b` per k.
//! - int8 (AVX-512 VNNI): `vpdpbusd` multiplies 4 consecutive u8 activations by 4 i8
//!   weights and adds them to an i32 lane: 64 MACs per instruction.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

pub const MR: usize = 12;
pub const NR: usize = 32;

/// f32 tile of `M` rows. `b` row k is at `b + k * ldb` (32 contiguous floats).
#[target_feature(enable = "avx512f")]
pub unsafe fn f32_tile<const M: usize>(
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; M];
        if accumulate {
            for (i, r) in acc.iter_mut().enumerate() {
                r[0] = _mm512_loadu_ps(c.add(i * ldc));
                r[1] = _mm512_loadu_ps(c.add(i * ldc + 16));
            }
        }
        for kk in 0..k {
            let bp = b.add(kk * ldb);
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for (i, r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(i * a_rs + kk * a_cs));
                r[0] = _mm512_fmadd_ps(av, b0, r[0]);
                r[1] = _mm512_fmadd_ps(av, b1, r[1]);
            }
        }
        for (i, r) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * ldc), r[0]);
            _mm512_storeu_ps(c.add(i * ldc + 16), r[1]);
        }
    }
}

/// int8 tile of `M` rows: `a` holds u8 activations (row stride `lda` bytes), `b` the
/// packed weights [k4][32][4] i8, `c` i32 results.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn i8_tile<const M: usize>(
    k4: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    c: *mut i32,
    ldc: usize,
) {
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); 2]; M];
        for g in 0..k4 {
            let bp = b.add(g * 4 * NR);
            let b0 = _mm512_loadu_si512(bp as *const __m512i);
            let b1 = _mm512_loadu_si512(bp.add(64) as *const __m512i);
            for (i, r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32((a.add(i * lda + g * 4) as *const i32).read_unaligned());
                r[0] = _mm512_dpbusd_epi32(r[0], av, b0);
                r[1] = _mm512_dpbusd_epi32(r[1], av, b1);
            }
        }
        for (i, r) in acc.iter().enumerate() {
            _mm512_storeu_si512(c.add(i * ldc) as *mut __m512i, r[0]);
            _mm512_storeu_si512(c.add(i * ldc + 16) as *mut __m512i, r[1]);
        }
    }
}

/// bf16 tile of `M` rows with AVX512_BF16 (`vdpbf16ps`: a pair of bf16 products added to
/// each f32 lane). `a` holds bf16 rows (row stride `lda` elements), `b` the packed pairs
/// `[k2][32][2]`, `c` f32 results (overwritten).
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn bf16_tile<const M: usize>(
    k2: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; M];
        for g in 0..k2 {
            let bp = b.add(g * 2 * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const __m512i));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(bp.add(NR) as *const __m512i));
            for (i, r) in acc.iter_mut().enumerate() {
                let pair = (a.add(i * lda + g * 2) as *const i32).read_unaligned();
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                r[0] = _mm512_dpbf16_ps(r[0], av, b0);
                r[1] = _mm512_dpbf16_ps(r[1], av, b1);
            }
        }
        for (i, r) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * ldc), r[0]);
            _mm512_storeu_ps(c.add(i * ldc + 16), r[1]);
        }
    }
}

/// Rounds `x` to bf16 (nearest, ties to even; `vcvtneps2bf16` flushes denormals to zero, the
/// scalar tail keeps them) into `dst`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn to_bf16(x: &[f32], dst: &mut [u16]) {
    let n = x.len().min(dst.len());
    let body = n / 16 * 16;
    unsafe {
        for i in (0..body).step_by(16) {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr().add(i)));
            _mm256_storeu_si256(
                dst.as_mut_ptr().add(i) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
        }
    }
    for i in body..n {
        dst[i] = half::bf16::from_f32(x[i]).to_bits();
    }
}
