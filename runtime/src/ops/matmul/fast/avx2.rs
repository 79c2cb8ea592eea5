//! x86_64 AVX2 + FMA microkernels: a 6 x 16 register tile (12 ymm accumulators), an
//! AVX-VNNI (256-bit `vpdpbusd`) int8 tile, and an exact int8 tile for CPUs without VNNI
//! (`vpsignb` + `vpmaddubsw` + `vpmaddwd`).

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

/// int8 tile without VNNI (AVX2 only, e.g. Zen 2/3, Skylake to Comet Lake): signed
/// activations (`a` holds i8 bits) and packed weights [k4][N][4]. `vpmaddubsw` multiplies
/// u8 by i8, so `|a|` is multiplied by `b` carrying the sign of `a` (`vpsignb`). A pair sum
/// of `|a| <= 128` and `b` in [-128, 127] stays within i16, so it never saturates; `vpmaddwd`
/// by ones then adds the pairs into i32 lanes, 4 products each as `vpdpbusd` does. The one
/// hazard is a weight of -128, which `vpsignb` cannot negate: the loader refuses those
/// (`models::vit::layout`), and our quantisers clamp to ±127, so the result is exact.
/// `N` is 16 (AVX2 panels) or 32 (AVX-512 without VNNI).
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)] // chunk and row index several arrays at once
pub unsafe fn i8_tile_sign<const M: usize, const N: usize>(
    k4: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    c: *mut i32,
    ldc: usize,
) {
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); 4]; M];
        let ones = _mm256_set1_epi16(1);
        for g in 0..k4 {
            let bp = b.add(g * 4 * N);
            let mut av = [_mm256_setzero_si256(); M];
            let mut aa = [_mm256_setzero_si256(); M];
            for i in 0..M {
                av[i] = _mm256_set1_epi32((a.add(i * lda + g * 4) as *const i32).read_unaligned());
                aa[i] = _mm256_abs_epi8(av[i]);
            }
            for ch in 0..N / 8 {
                let bv = _mm256_loadu_si256(bp.add(ch * 32) as *const __m256i);
                for i in 0..M {
                    let p = _mm256_maddubs_epi16(aa[i], _mm256_sign_epi8(bv, av[i]));
                    acc[i][ch] = _mm256_add_epi32(acc[i][ch], _mm256_madd_epi16(p, ones));
                }
            }
        }
        for (i, r) in acc.iter().enumerate() {
            for (ch, v) in r.iter().take(N / 8).enumerate() {
                _mm256_storeu_si256(c.add(i * ldc + ch * 8) as *mut __m256i, *v);
            }
        }
    }
}

/// [`i8_tile_sign`] over `m` rows, in passes of at most `64 / N` rows (8 ymm accumulators
/// per pass; the generated loop keeps everything in registers).
#[target_feature(enable = "avx2")]
pub unsafe fn i8_rows_sign<const N: usize>(
    m: usize,
    k4: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    c: *mut i32,
    ldc: usize,
) {
    let pass = 64 / N;
    let mut r = 0;
    while r < m {
        let (ar, cr) = unsafe { (a.add(r * lda), c.add(r * ldc)) };
        unsafe {
            match (m - r).min(pass) {
                1 => i8_tile_sign::<1, N>(k4, ar, lda, b, cr, ldc),
                2 => i8_tile_sign::<2, N>(k4, ar, lda, b, cr, ldc),
                3 => i8_tile_sign::<3, N>(k4, ar, lda, b, cr, ldc),
                _ => i8_tile_sign::<4, N>(k4, ar, lda, b, cr, ldc),
            }
        }
        r += pass;
    }
}
