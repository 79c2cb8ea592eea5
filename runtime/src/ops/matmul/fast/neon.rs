//! aarch64 NEON microkernels: a 6 x 16 register tile (24 q accumulators), and an SDOT
//! int8 tile (4 signed bytes x 4 signed bytes into each i32 lane).

#![allow(clippy::missing_safety_doc)]

use std::arch::aarch64::*;

pub const MR: usize = 6;
pub const NR: usize = 16;

#[target_feature(enable = "neon")]
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
        let mut acc = [[vdupq_n_f32(0.0); 4]; M];
        if accumulate {
            for (i, r) in acc.iter_mut().enumerate() {
                for (j, v) in r.iter_mut().enumerate() {
                    *v = vld1q_f32(c.add(i * ldc + 4 * j));
                }
            }
        }
        for kk in 0..k {
            let bp = b.add(kk * ldb);
            let bv = [
                vld1q_f32(bp),
                vld1q_f32(bp.add(4)),
                vld1q_f32(bp.add(8)),
                vld1q_f32(bp.add(12)),
            ];
            for (i, r) in acc.iter_mut().enumerate() {
                let av = *a.add(i * a_rs + kk * a_cs);
                for j in 0..4 {
                    r[j] = vfmaq_n_f32(r[j], bv[j], av);
                }
            }
        }
        for (i, r) in acc.iter().enumerate() {
            for (j, v) in r.iter().enumerate() {
                vst1q_f32(c.add(i * ldc + 4 * j), *v);
            }
        }
    }
}

/// `acc += sdot(b, a)`: four i8 x i8 products summed into each i32 lane.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, b: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut r = acc;
    unsafe {
        std::arch::asm!("sdot {r:v}.4s, {b:v}.16b, {a:v}.16b", r = inout(vreg) r, b = in(vreg) b, a = in(vreg) a, options(pure, nomem, nostack));
    }
    r
}

/// int8 tile with SDOT: s8 activations, packed weights [k4][16][4] i8, i32 results.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn i8_tile<const M: usize>(
    k4: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    c: *mut i32,
    ldc: usize,
) {
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 4]; M];
        for g in 0..k4 {
            let bp = b.add(g * 4 * NR);
            let bv = [
                vld1q_s8(bp),
                vld1q_s8(bp.add(16)),
                vld1q_s8(bp.add(32)),
                vld1q_s8(bp.add(48)),
            ];
            for (i, r) in acc.iter_mut().enumerate() {
                let av = vreinterpretq_s8_s32(vdupq_n_s32(
                    (a.add(i * lda + g * 4) as *const i32).read_unaligned(),
                ));
                for j in 0..4 {
                    r[j] = sdot(r[j], bv[j], av);
                }
            }
        }
        for (i, r) in acc.iter().enumerate() {
            for (j, v) in r.iter().enumerate() {
                vst1q_s32(c.add(i * ldc + 4 * j), *v);
            }
        }
    }
}
