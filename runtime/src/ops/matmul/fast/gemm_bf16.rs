//! The strided GEMM of [`super::gemm`] in bf16, for the trainer's bf16 precision: operands
//! rounded to bf16 and packed per call (A as rows with K padded to 32, B in the pair layout
//! of 32-column panels, as `PackedWeights::Bf16`), products on the AMX tiles or AVX-512
//! `vdpbf16ps`, f32 accumulation. Each output tile is one task over the full K, so results
//! do not depend on the thread count.

use super::gemm::Strided;
use super::{Avx512, Family, SendPtr as Ptr, bf16_k_pad, store_tile};
use crate::backend::cpu::isa::Isa;
use crate::backend::cpu::pool::Pool;

/// Columns per panel (the AVX-512 and AMX tile width).
const NR: usize = super::avx512::NR;
/// Rows per AMX block; rows of A are padded to it.
const ROWS: usize = super::amx::ROWS;
/// Rows per task (two AMX blocks, or four 12-row strips).
const ROW_BLOCK: usize = 2 * ROWS;

/// f32 -> bf16 bits, nearest even (as `half` rounds; denormals kept), NaN kept NaN;
/// branch-free so the packing loops vectorise.
#[inline(always)]
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let nan = (b >> 16) as u16 | 0x40;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

struct Job<'a> {
    isa: Isa,
    m: usize,
    n: usize,
    k_pad: usize,
    a16: &'a [u16],
    b16: &'a [u16],
    c: Ptr<f32>,
    ldc: usize,
    accumulate: bool,
}

/// `c (=|+=) a · b` in bf16 with f32 accumulation; `isa` has bf16 dot products
/// ([`Isa::bf16_dot`]). `pack` is reusable scratch (the packed operands, as u16 pairs).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_bf16(
    pool: Option<&Pool>,
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    a: Strided,
    b: Strided,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    pack: &mut Vec<f32>,
) {
    assert!(
        isa.bf16_dot(),
        "bf16 GEMM on {isa}, which has no bf16 dot products"
    );
    assert!(
        isa != Isa::Amx || crate::backend::cpu::amx::tiles_granted(),
        "AMX kernels without the tile state (an Isa::Amx not from detection)"
    );
    let (k_pad, panels) = (bf16_k_pad(k), n.div_ceil(NR));
    let a_len = m.div_ceil(ROWS) * ROWS * k_pad;
    let b_len = panels * k_pad * NR;
    pack.clear();
    pack.resize((a_len + b_len).div_ceil(2), 0.0);
    // SAFETY: f32 storage viewed as u16 (alignment 4 >= 2), in bounds; zeros are +0 bf16.
    let all =
        unsafe { std::slice::from_raw_parts_mut(pack.as_mut_ptr() as *mut u16, a_len + b_len) };
    let (a16, b16) = all.split_at_mut(a_len);
    pack_operands(pool, (m, n, k), k_pad, a, b, a16, b16);
    let job = Job {
        isa,
        m,
        n,
        k_pad,
        a16,
        b16,
        c: Ptr(c.as_mut_ptr()),
        ldc,
        accumulate,
    };
    let groups = panels.div_ceil(2);
    let tasks = m.div_ceil(ROW_BLOCK) * groups;
    let run = |t: usize| {
        let (rb, pg) = (t / groups, t % groups);
        // SAFETY: bf16 dot products checked above; tiles configured around AMX tasks.
        unsafe {
            if isa == Isa::Amx {
                let _tiles = super::amx::Tiles::configure();
                task(&job, rb, pg);
            } else {
                task(&job, rb, pg);
            }
        }
    };
    match pool {
        Some(p) => p.run(tasks, run),
        None => (0..tasks).for_each(run),
    }
}

/// Rounds and packs A (rows of `k_pad`; K padding already zero) and B (pair layout per
/// panel), spread over the pool.
fn pack_operands(
    pool: Option<&Pool>,
    (m, n, k): (usize, usize, usize),
    k_pad: usize,
    a: Strided,
    b: Strided,
    a16: &mut [u16],
    b16: &mut [u16],
) {
    let a_tasks = m.div_ceil(A_CHUNK);
    let panels = n.div_ceil(NR);
    let (ap, bp) = (Ptr(a16.as_mut_ptr()), Ptr(b16.as_mut_ptr()));
    let run = |t: usize| {
        // SAFETY: AVX-512 is present (bf16 dot products imply it); rows t * A_CHUNK.. of A
        // or panel t - a_tasks of B belong to this task.
        unsafe {
            if t < a_tasks {
                let rows = t * A_CHUNK..((t + 1) * A_CHUNK).min(m);
                let dst = std::slice::from_raw_parts_mut(
                    ap.get().add(rows.start * k_pad),
                    rows.len() * k_pad,
                );
                pack_a_rows(dst, a, rows, k, k_pad);
            } else {
                let p = t - a_tasks;
                let panel =
                    std::slice::from_raw_parts_mut(bp.get().add(p * k_pad * NR), k_pad * NR);
                pack_b_panel(panel, b, p, n, k);
            }
        }
    };
    match pool {
        Some(p) => p.run(a_tasks + panels, run),
        None => (0..a_tasks + panels).for_each(run),
    }
}

/// Rows of A per packing task.
const A_CHUNK: usize = 16;

/// Rows `rows` of A into `dst` (row stride `k_pad`), reading along A's contiguous axis.
#[target_feature(enable = "avx512f,avx512bw")]
fn pack_a_rows(dst: &mut [u16], a: Strided, rows: std::ops::Range<usize>, k: usize, k_pad: usize) {
    if a.cs == 1 {
        for (i, d) in rows.clone().zip(dst.chunks_exact_mut(k_pad)) {
            let src = &a.data[i * a.rs..i * a.rs + k];
            d[..k].iter_mut().zip(src).for_each(|(x, &v)| *x = bf16(v));
        }
    } else {
        // Column-major A (a transposed operand): a block of K at a time is transposed in
        // an L1-resident buffer (contiguous reads across the chunk's rows), then copied out
        // as whole row segments.
        const KB: usize = 64;
        let mut tmp = [[0u16; KB]; A_CHUNK];
        for k0 in (0..k).step_by(KB) {
            let kn = KB.min(k - k0);
            for kk in 0..kn {
                let col = (k0 + kk) * a.cs;
                for (t, i) in tmp.iter_mut().zip(rows.clone()) {
                    t[kk] = bf16(a.data[i * a.rs + col]);
                }
            }
            for (r, t) in tmp.iter().take(rows.len()).enumerate() {
                dst[r * k_pad + k0..r * k_pad + k0 + kn].copy_from_slice(&t[..kn]);
            }
        }
    }
}

/// Panel `p` of B (32 columns, pair layout), reading along B's contiguous axis.
#[target_feature(enable = "avx512f,avx512bw")]
fn pack_b_panel(panel: &mut [u16], b: Strided, p: usize, n: usize, k: usize) {
    let cols = NR.min(n - p * NR);
    let col0 = p * NR;
    if b.cs == 1 {
        for kk in 0..k {
            let src = &b.data[kk * b.rs + col0..kk * b.rs + col0 + cols];
            let row = &mut panel[kk / 2 * 2 * NR..(kk / 2 + 1) * 2 * NR];
            for (j, &v) in src.iter().enumerate() {
                row[2 * j + kk % 2] = bf16(v);
            }
        }
    } else {
        // Column-major B (a transposed operand): each column is contiguous in K, and a
        // pair of K values is one u32 of the panel.
        for j in 0..cols {
            let col = &b.data[(col0 + j) * b.cs..];
            for t in 0..k / 2 {
                let (lo, hi) = (bf16(col[2 * t * b.rs]), bf16(col[(2 * t + 1) * b.rs]));
                panel[(t * NR + j) * 2] = lo;
                panel[(t * NR + j) * 2 + 1] = hi;
            }
            if k % 2 == 1 {
                panel[(k / 2 * NR + j) * 2] = bf16(col[(k - 1) * b.rs]);
            }
        }
    }
}

/// Row block `rb` times panels `2 pg, 2 pg + 1`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn task(job: &Job, rb: usize, pg: usize) {
    let mut tile = [0.0f32; ROWS * NR];
    let (r0, r1) = (rb * ROW_BLOCK, ((rb + 1) * ROW_BLOCK).min(job.m));
    let (amx, step) = if job.isa == Isa::Amx {
        (true, ROWS)
    } else {
        (false, Avx512::<true>::MR)
    };
    for p in 2 * pg..(2 * pg + 2).min(job.n.div_ceil(NR)) {
        let (col0, ncols) = (p * NR, NR.min(job.n - p * NR));
        let b = job.b16[p * job.k_pad * NR..].as_ptr();
        for r in (r0..r1).step_by(step) {
            let rows = step.min(r1 - r);
            let a = job.a16[r * job.k_pad..].as_ptr();
            // SAFETY: A has rows up to a multiple of 32 and `k_pad` columns; B the panel.
            unsafe {
                if amx {
                    super::amx::bf16_block(job.k_pad, a, job.k_pad * 2, b, tile.as_mut_ptr(), NR);
                } else {
                    Avx512::<true>::bf16(
                        rows,
                        job.k_pad / 2,
                        a,
                        job.k_pad,
                        b,
                        tile.as_mut_ptr(),
                        NR,
                    );
                }
            }
            // SAFETY: rows r..r+rows, columns col0..col0+ncols belong to this task.
            unsafe {
                let (c, acc) = (job.c.get(), job.accumulate);
                store_tile(c, job.ldc, (r, rows), (col0, ncols), &tile, NR, acc)
            };
        }
    }
}
