//! Portable microkernels (any CPU): plain loops over small fixed-size arrays, which the
//! compiler vectorises for the build's baseline. Also the int8 fallback of NEON without SDOT.

#![allow(clippy::missing_safety_doc)]

pub const MR: usize = 4;
pub const NR: usize = 16;

pub unsafe fn f32_tile<const M: usize, const N: usize>(
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
        let mut acc = [[0.0f32; N]; M];
        if accumulate {
            for (i, r) in acc.iter_mut().enumerate() {
                r.copy_from_slice(std::slice::from_raw_parts(c.add(i * ldc), N));
            }
        }
        for kk in 0..k {
            let bv: &[f32; N] = &*(b.add(kk * ldb) as *const [f32; N]);
            for (i, r) in acc.iter_mut().enumerate() {
                let av = *a.add(i * a_rs + kk * a_cs);
                for j in 0..N {
                    r[j] += av * bv[j];
                }
            }
        }
        for (i, r) in acc.iter().enumerate() {
            std::slice::from_raw_parts_mut(c.add(i * ldc), N).copy_from_slice(r);
        }
    }
}

/// int8 tile over signed activations (`a` is i8 stored as u8 bits) and packed
/// weights [k4][N][4].
pub unsafe fn i8_tile<const M: usize, const N: usize>(
    k4: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    c: *mut i32,
    ldc: usize,
) {
    unsafe {
        let mut acc = [[0i32; N]; M];
        for g in 0..k4 {
            let bg: &[i8] = std::slice::from_raw_parts(b.add(g * 4 * N), 4 * N);
            for (i, r) in acc.iter_mut().enumerate() {
                let ap = a.add(i * lda + g * 4) as *const i8;
                let av = [
                    *ap as i32,
                    *ap.add(1) as i32,
                    *ap.add(2) as i32,
                    *ap.add(3) as i32,
                ];
                for j in 0..N {
                    r[j] += av[0] * bg[4 * j] as i32
                        + av[1] * bg[4 * j + 1] as i32
                        + av[2] * bg[4 * j + 2] as i32
                        + av[3] * bg[4 * j + 3] as i32;
                }
            }
        }
        for (i, r) in acc.iter().enumerate() {
            std::slice::from_raw_parts_mut(c.add(i * ldc), N).copy_from_slice(r);
        }
    }
}
