//! x86_64 AMX microkernel: a 32 x 32 f32 block as four 16 x 16 accumulator tiles
//! (tmm0-3), two 16-row tiles of activations (tmm4-5) and two 16-column tiles of packed
//! weights (tmm6-7) per K step; one `tdpbf16ps` is 16 x 16 x 32 multiply-adds.
//!
//! Layouts: activations are bf16 rows (row stride `lda` bytes, K padded to 32, rows readable
//! up to a multiple of 32); weights are the bf16 dot layout `[k / 2][32][2]` of one NR = 32
//! panel (see `PackedWeights::Bf16`), so a weight tile is 16 pair-rows of 64 bytes at a
//! stride of 128. The tile registers are not allocatable by the compiler, so the asm
//! blocks below name them and nothing else touches them between blocks.

use std::arch::asm;

/// Rows and columns of one block.
pub const ROWS: usize = 32;
pub const NR: usize = 32;
/// bf16 values of K per tile step (one 64-byte tile row).
pub const K_STEP: usize = 32;

/// `ldtilecfg` operand: palette 1, eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16 little-endian)
        c[48 + t] = 16; // rows
        t += 1;
    }
    TileConfig(c)
};

/// Configures this thread's tiles; pair with [`release`] when the task ends.
///
/// # Safety
/// The CPU has AMX and the process was granted the tile state
/// (`backend::cpu::amx::tiles_granted`).
#[inline(always)]
pub unsafe fn configure() {
    unsafe { asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
}

/// Returns the tile state to init (so a context switch saves no tile data).
///
/// # Safety
/// As [`configure`].
#[inline(always)]
pub unsafe fn release() {
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// This thread's tiles, configured until dropped (released on every path, a caught task
/// panic included).
pub struct Tiles(());

impl Tiles {
    /// # Safety
    /// As [`configure`].
    #[inline(always)]
    pub unsafe fn configure() -> Tiles {
        unsafe { configure() };
        Tiles(())
    }
}

impl Drop for Tiles {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: only made by `Tiles::configure`, whose contract covers this.
        unsafe { release() }
    }
}

/// `c[0..32][0..32] = a[0..32][0..k] · panel` in f32, `c` of row stride `ldc` floats.
///
/// # Safety
/// [`configure`] ran on this thread; `k` is a multiple of [`K_STEP`]; `a` has 32 readable
/// rows of `k` bf16 at a stride of `lda` bytes; `b` holds `k / 2` pair-rows of the panel;
/// `c` has 32 writable rows of 32 floats at a stride of `ldc`.
#[inline(always)]
pub unsafe fn bf16_block(
    k: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
) {
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        let a1 = a.byte_add(16 * lda);
        for k0 in (0..k).step_by(K_STEP) {
            // Pair-row k0 / 2 of the panel: 32 columns x 2 bf16 = 128 bytes.
            let b0 = b.add(k0 / 2 * 2 * NR);
            asm!(
                // Each load just before its first use: the tiles are not renamed, so
                // this lets the next loads start while earlier products run (~10%
                // faster than four loads first, measured in L1).
                "tileloadd tmm4, [{a0} + {lda} * 1]",
                "tileloadd tmm6, [{b0} + {ldb} * 1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {ldb} * 1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {lda} * 1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a.add(k0),
                a1 = in(reg) a1.add(k0),
                b0 = in(reg) b0,
                b1 = in(reg) b0.add(NR),
                lda = in(reg) lda,
                ldb = in(reg) 4 * NR,
                options(nostack, readonly)
            );
        }
        store(c, ldc);
    }
}

/// Writes tmm0-3 to the 32 x 32 block `c` (row stride `ldc` 4-byte elements).
#[inline(always)]
unsafe fn store(c: *mut f32, ldc: usize) {
    unsafe {
        asm!(
            "tilestored [{c0} + {ldc} * 1], tmm0",
            "tilestored [{c1} + {ldc} * 1], tmm1",
            "tilestored [{c2} + {ldc} * 1], tmm2",
            "tilestored [{c3} + {ldc} * 1], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(16),
            c2 = in(reg) c.add(16 * ldc),
            c3 = in(reg) c.add(16 * ldc + 16),
            ldc = in(reg) 4 * ldc,
            options(nostack)
        );
    }
}

/// `c[0..32][0..32] = a · panel` in i32 for u8 activations (K padded to 64, row stride
/// `lda` bytes) and the int8 weight layout `[k / 4][32][4]`: `tdpbusd`, u8 x i8 as
/// `vpdpbusd` computes it.
///
/// # Safety
/// As [`bf16_block`], with `k` a multiple of 64 bytes and `c` 1024 writable i32.
#[inline(always)]
pub unsafe fn i8_block(k: usize, a: *const u8, lda: usize, b: *const i8, c: *mut i32) {
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        let a1 = a.add(16 * lda);
        for k0 in (0..k).step_by(64) {
            // Group-row k0 / 4 of the panel: 32 columns x 4 bytes = 128 bytes.
            let b0 = b.add(k0 / 4 * 4 * NR);
            asm!(
                // Each load just before its first use: the tiles are not renamed, so
                // this lets the next loads start while earlier products run (~10%
                // faster than four loads first, measured in L1).
                "tileloadd tmm4, [{a0} + {lda} * 1]",
                "tileloadd tmm6, [{b0} + {ldb} * 1]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {ldb} * 1]",
                "tdpbusd tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {lda} * 1]",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                a0 = in(reg) a.add(k0),
                a1 = in(reg) a1.add(k0),
                b0 = in(reg) b0,
                b1 = in(reg) b0.add(2 * NR),
                lda = in(reg) lda,
                ldb = in(reg) 4 * NR,
                options(nostack, readonly)
            );
        }
        store(c as *mut f32, NR);
    }
}
