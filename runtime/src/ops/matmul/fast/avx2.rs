//! x86_64 AVX2 + FMA microkernels: a 6 x 16 register tile (12 ymm accumulators), and an
//! AVX-VNNI (256-bit `vpdpbusd`) int8 tile.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

pub const MR: usize = 6;
pub const NR: usize = 16;

#[target_feature(enable = "avx2,fma")]
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
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        if accumulate {
            for (i, r) in acc.iter_mut().enumerate() {
                r[0] = _mm256_loadu_ps(c.add(i * ldc));
                r[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
            }
        }
        for kk in 0..k {
            let bp = b.add(kk * ldb);
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for (i, r) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(i * a_rs + kk * a_cs));
                r[0] = _mm256_fmadd_ps(av, b0, r[0]);
                r[1] = _mm256_fmadd_ps(av, b1, r[1]);
            }
        }
        for (i, r) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(i * ldc), r[0]);
            _mm256_storeu_ps(c.add(i * ldc + 8), r[1]);
        }
    }
}

/// int8 tile with AVX-VNNI: u8 activations, packed weights [k4][16][4] i8, i32 results.
#[target_feature(enable = "avx2,avxvnni")]
pub unsafe fn i8_tile<const M: usize>(
    k4: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    c: *mut i32,
    ldc: usize,
) {
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); 2]; M];
        for g in 0..k4 {
            let bp = b.add(g * 4 * NR);
            let b0 = _mm256_loadu_si256(bp as *const __m256i);
            let b1 = _mm256_loadu_si256(bp.add(32) as *const __m256i);
            for (i, r) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_epi32((a.add(i * lda + g * 4) as *const i32).read_unaligned());
                r[0] = _mm256_dpbusd_avx_epi32(r[0], av, b0);
                r[1] = _mm256_dpbusd_avx_epi32(r[1], av, b1);
            }
        }
        for (i, r) in acc.iter().enumerate() {
            _mm256_storeu_si256(c.add(i * ldc) as *mut __m256i, r[0]);
            _mm256_storeu_si256(c.add(i * ldc + 8) as *mut __m256i, r[1]);
        }
    }
}
