//! A general GEMM on the fast microkernels, for training: `c (=|+=) a · b` with any row and
//! column strides for `a` and `b` (so transposed operands cost nothing), `b` packed per call
//! into NR-wide panels. Output tiles are computed whole (full K) by one task each, so the
//! result does not depend on how tasks land on threads.

use super::{Family, MR_MAX, NR_MAX, Portable, STRIPS, SendPtr};
use crate::backend::cpu::isa::Isa;
use crate::backend::cpu::pool::Pool;

/// The kernels a GEMM runs: a family, and whether products are in bf16 (operands rounded
/// to bf16, f32 accumulation; only on families with [`Isa::bf16_dot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernels {
    pub isa: Isa,
    pub bf16: bool,
}

impl From<Isa> for Kernels {
    fn from(isa: Isa) -> Self {
        Kernels { isa, bf16: false }
    }
}

/// A strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Strided<'a> {
    /// Row-major (rows, cols).
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Strided {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major (rows, cols) matrix, viewed as (cols, rows).
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Strided {
            data,
            rs: 1,
            cs: cols,
        }
    }
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

struct Job<'a> {
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'a>,
    packed: &'a [f32],
    c: SendPtr<f32>,
    ldc: usize,
    accumulate: bool,
    row_block: usize,
    panel_group: usize,
    panels: usize,
}

/// Packs b (k, n) into panels `[n / NR][k][NR]`, zero-padded.
fn pack_b(dst: &mut Vec<f32>, b: Strided, k: usize, n: usize, nr: usize) {
    let panels = n.div_ceil(nr);
    dst.clear();
    dst.resize(panels * k * nr, 0.0);
    for p in 0..panels {
        let cols = nr.min(n - p * nr);
        for kk in 0..k {
            let row = &mut dst[(p * k + kk) * nr..(p * k + kk) * nr + cols];
            for (j, v) in row.iter_mut().enumerate() {
                *v = b.at(kk, p * nr + j);
            }
        }
    }
}

#[inline(always)]
unsafe fn task<F: Family>(job: &Job, t: usize) {
    let nr = F::NR;
    let groups = job.panels.div_ceil(job.panel_group);
    let (rb, pg) = (t / groups, t % groups);
    let (r0, r1) = (rb * job.row_block, ((rb + 1) * job.row_block).min(job.m));
    let mut tile = [0.0f32; MR_MAX * NR_MAX];
    for p in pg * job.panel_group..((pg + 1) * job.panel_group).min(job.panels) {
        let (col0, ncols) = (p * nr, nr.min(job.n - p * nr));
        let mut r = r0;
        while r < r1 {
            let m = F::MR.min(r1 - r);
            let a = job.a.data[r * job.a.rs..].as_ptr();
            unsafe {
                F::f32(
                    m,
                    job.k,
                    a,
                    job.a.rs,
                    job.a.cs,
                    job.packed[p * job.k * nr..].as_ptr(),
                    nr,
                    tile.as_mut_ptr(),
                    nr,
                    false,
                )
            };
            // SAFETY: rows r..r+m, columns col0..col0+ncols belong to this task.
            unsafe {
                let (c, acc) = (job.c.get(), job.accumulate);
                super::store_tile(c, job.ldc, (r, m), (col0, ncols), &tile, nr, acc)
            };
            r += m;
        }
    }
}

type TaskFn = unsafe fn(&Job, usize);

macro_rules! entries {
    ($( $(#[$cfg:meta])* $name:ident, $feat:literal; )*) => {
        $(
            $(#[$cfg])*
            #[target_feature(enable = $feat)]
            unsafe fn $name<F: Family>(job: &Job, t: usize) {
                unsafe { task::<F>(job, t) }
            }
        )*
    };
}

entries! {
    #[cfg(target_arch = "x86_64")] task_avx512, "avx512f,avx2,fma";
    #[cfg(target_arch = "x86_64")] task_avx2, "avx2,fma";
    #[cfg(target_arch = "aarch64")] task_neon, "neon";
}

unsafe fn task_portable(job: &Job, t: usize) {
    unsafe { task::<Portable>(job, t) }
}

fn family(isa: Isa) -> (usize, usize, TaskFn) {
    use super as mf;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 { .. } | Isa::Amx => (
            mf::avx512::MR,
            mf::avx512::NR,
            task_avx512::<mf::Avx512<false>>,
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 { .. } => (mf::avx2::MR, mf::avx2::NR, task_avx2::<mf::Avx2<false>>),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon { .. } => (mf::neon::MR, mf::neon::NR, task_neon::<mf::Neon<false>>),
        _ => (mf::portable::MR, mf::portable::NR, task_portable),
    }
}

/// `c (m, n; row stride ldc) = a (m, k) · b (k, n)`, or `+=` with `accumulate`.
/// `pool`: `Some` to spread tiles over it; `None` runs on the calling thread (use that
/// inside pool tasks). `pack` is reusable scratch for the packed operands.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    pool: Option<&Pool>,
    kernels: impl Into<Kernels>,
    m: usize,
    n: usize,
    k: usize,
    a: Strided,
    b: Strided,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    pack: &mut Vec<f32>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: output too small");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        a.data.len() > (m - 1) * a.rs + (k - 1) * a.cs,
        "gemm: a too small"
    );
    assert!(
        b.data.len() > (k - 1) * b.rs + (n - 1) * b.cs,
        "gemm: b too small"
    );
    let Kernels { isa, bf16 } = kernels.into();
    #[cfg(target_arch = "x86_64")]
    if bf16 {
        let (mnk, out) = ((m, n, k), c);
        return super::gemm_bf16::gemm_bf16(pool, isa, mnk, a, b, out, ldc, accumulate, pack);
    }
    assert!(!bf16, "bf16 GEMM on {isa}, which has no bf16 dot products");
    let (mr, nr, f) = family(isa);
    pack_b(pack, b, k, n, nr);
    let panels = n.div_ceil(nr);
    let job = Job {
        m,
        n,
        k,
        a,
        packed: pack,
        c: SendPtr(c.as_mut_ptr()),
        ldc,
        accumulate,
        row_block: mr * STRIPS,
        panel_group: 2,
        panels,
    };
    let tasks = m.div_ceil(job.row_block) * panels.div_ceil(job.panel_group);
    match pool {
        Some(p) => p.run(tasks, |t| unsafe { f(&job, t) }),
        None => (0..tasks).for_each(|t| unsafe { f(&job, t) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_stride_combinations_on_every_isa() {
        let mut seed = 3u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let pool = Pool::new(2).unwrap();
        // f32 on every family; bf16 (operands rounded, f32 sums) where the family has bf16
        // dot products, against the reference on rounded operands.
        let brain = |x: f32| half::bf16::from_f32(x).to_f32();
        let kinds = Isa::all_supported().into_iter().flat_map(|isa| {
            let bf16 = [false, true]
                .into_iter()
                .filter(move |&b| !b || isa.bf16_dot());
            bf16.map(move |bf16| Kernels { isa, bf16 })
        });
        for kernels in kinds.collect::<Vec<_>>() {
            let isa = kernels;
            for (m, n, k) in [
                (1, 1, 1),
                (5, 3, 7),
                (49, 33, 17),
                (13, 70, 129),
                (70, 65, 64),
            ] {
                let round = |x: f32| if kernels.bf16 { brain(x) } else { x };
                let a: Vec<f32> = (0..m * k).map(|_| round(rnd())).collect();
                let b: Vec<f32> = (0..k * n).map(|_| round(rnd())).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    // a stored (m, k) or (k, m); b stored (k, n) or (n, k).
                    let av = if ta {
                        Strided::transposed(&a, m)
                    } else {
                        Strided::rows(&a, k)
                    };
                    let bv = if tb {
                        Strided::transposed(&b, k)
                    } else {
                        Strided::rows(&b, n)
                    };
                    for acc in [false, true] {
                        let mut c = c0.clone();
                        gemm(
                            Some(&pool),
                            isa,
                            m,
                            n,
                            k,
                            av,
                            bv,
                            &mut c,
                            n,
                            acc,
                            &mut Vec::new(),
                        );
                        for i in 0..m {
                            for j in 0..n {
                                let want: f64 = (0..k)
                                    .map(|t| av.at(i, t) as f64 * bv.at(t, j) as f64)
                                    .sum::<f64>()
                                    + if acc { c0[i * n + j] as f64 } else { 0.0 };
                                let got = c[i * n + j] as f64;
                                assert!(
                                    (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                                    "{isa:?} ({m},{n},{k}) ta {ta} tb {tb} acc {acc}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
