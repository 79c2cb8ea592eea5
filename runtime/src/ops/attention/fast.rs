//! Fast CPU form of `attention`: flash-style, on the matmul microkernels.
//!
//! 1. Per (batch, head), K is packed transposed into NR-wide key panels and V into rows
//!    padded to a multiple of NR (scratch sized at plan time).
//! 2. A task takes MR queries of one head and walks the keys in blocks of 2 x NR:
//!    `S = Q Kᵀ` (microkernel), online softmax on the block (running max `m`, running sum
//!    `l`, rescale of the partial output), `O += P V` (microkernel, accumulating).
//! 3. `out = O / l`. Memory per task is an MR x (2 NR) score tile and an MR x hd output tile
//!    on the stack: no N x N matrix at any size.

use crate::backend::cpu::isa::{Isa, multiversion};
use crate::backend::cpu::pool::Pool;
use crate::ops::Dims;
use crate::ops::activation::fast::exp;
use crate::ops::attention::MAX_HEAD_DIM;
use crate::ops::matmul::fast::{Family, MR_MAX, NR_MAX, Portable, tile};

/// Key panels (of NR keys) per softmax block.
const KEY_PANELS: usize = 2;

/// Floats of scratch for dims `d` on `isa`: packed Kᵀ and padded V of every head.
pub fn scratch_len(isa: Isa, d: &Dims) -> usize {
    let (_, nr) = tile(isa);
    let (n, hd) = (d.tokens(), d.head_dim());
    d.batch * d.heads * (n.div_ceil(nr) * nr * hd + n * hd.div_ceil(nr) * nr)
}

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: tasks write disjoint regions.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// Through a method, so closures capture the `Sync` wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

struct Job<'a> {
    out: Ptr,
    qkv: &'a [f32],
    packed: &'a [f32],
    d: Dims,
    scale: f32,
}

/// Sizes of the packed area of one head.
fn head_sizes(nr: usize, n: usize, hd: usize) -> (usize, usize, usize) {
    let kt = n.div_ceil(nr) * nr * hd;
    let hd_pad = hd.div_ceil(nr) * nr;
    (kt, n * hd_pad, hd_pad)
}

/// Packs Kᵀ panels `[panel][d][NR]` and V rows `[key][hd_pad]` of head (b, h).
#[inline(always)]
fn pack_head(dst: &mut [f32], qkv: &[f32], d: &Dims, b: usize, h: usize, nr: usize) {
    let (n, hd, dim) = (d.tokens(), d.head_dim(), d.dim);
    let (kt_len, _, hd_pad) = head_sizes(nr, n, hd);
    let (kt, v) = dst.split_at_mut(kt_len);
    kt.fill(0.0);
    for key in 0..n {
        let row = &qkv[(b * n + key) * 3 * dim..(b * n + key + 1) * 3 * dim];
        let (p, j) = (key / nr, key % nr);
        let k = &row[dim + h * hd..dim + (h + 1) * hd];
        for (dd, &x) in k.iter().enumerate() {
            kt[(p * hd + dd) * nr + j] = x;
        }
        let vr = &mut v[key * hd_pad..(key + 1) * hd_pad];
        vr[..hd].copy_from_slice(&row[2 * dim + h * hd..2 * dim + (h + 1) * hd]);
        vr[hd..].fill(0.0);
    }
}

/// Max over a slice with 16 independent lanes (vectorisable).
#[inline(always)]
pub(super) fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let body = x.len() / 16 * 16;
    for c in x[..body].chunks_exact(16) {
        for l in 0..16 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &v in &x[body..] {
        m = m.max(v);
    }
    m
}

/// Sum over a slice with 16 independent lanes (vectorisable).
#[inline(always)]
pub(super) fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let body = x.len() / 16 * 16;
    for c in x[..body].chunks_exact(16) {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + x[body..].iter().sum::<f32>()
}

/// One task: queries q0..q0+m of head (b, h).
#[inline(always)]
unsafe fn task<F: Family>(job: &Job, t: usize) {
    let d = &job.d;
    let (n, hd, dim) = (d.tokens(), d.head_dim(), d.dim);
    let nr = F::NR;
    let strips = n.div_ceil(F::MR);
    let (bh, s) = (t / strips, t % strips);
    let (b, h) = (bh / d.heads, bh % d.heads);
    let q0 = s * F::MR;
    let m = F::MR.min(n - q0);
    let (kt_len, v_len, hd_pad) = head_sizes(nr, n, hd);
    let packed = &job.packed[bh * (kt_len + v_len)..(bh + 1) * (kt_len + v_len)];
    let (kt, v) = packed.split_at(kt_len);
    let bk = KEY_PANELS * nr;

    let mut scores = [0.0f32; MR_MAX * KEY_PANELS * NR_MAX];
    let mut o = [0.0f32; MR_MAX * MAX_HEAD_DIM];
    let mut mx = [f32::NEG_INFINITY; MR_MAX];
    let mut l = [0.0f32; MR_MAX];
    let q = job.qkv[(b * n + q0) * 3 * dim + h * hd..].as_ptr();
    for k0 in (0..n).step_by(bk) {
        let valid = bk.min(n - k0);
        // S (m x bk) = Q (m x hd) · Kᵀ (hd x bk), one NR panel at a time.
        for pj in 0..valid.div_ceil(nr) {
            let panel = k0 / nr + pj;
            unsafe {
                F::f32(
                    m,
                    hd,
                    q,
                    3 * dim,
                    1,
                    kt[panel * hd * nr..].as_ptr(),
                    nr,
                    scores[pj * nr..].as_mut_ptr(),
                    bk,
                    false,
                )
            };
        }
        // Online softmax on the block; scores become probabilities. Max, exp and sum are
        // separate lane-parallel loops so each one vectorises.
        for i in 0..m {
            let srow = &mut scores[i * bk..i * bk + valid];
            let block_max = lane_max(srow) * job.scale;
            let new_max = mx[i].max(block_max);
            let corr = exp(mx[i] - new_max);
            let scale = job.scale;
            srow.iter_mut().for_each(|x| *x = exp(*x * scale - new_max));
            let sum = lane_sum(srow);
            l[i] = l[i] * corr + sum;
            mx[i] = new_max;
            if k0 > 0 && corr != 1.0 {
                o[i * hd_pad..(i + 1) * hd_pad]
                    .iter_mut()
                    .for_each(|x| *x *= corr);
            }
        }
        // O (m x hd_pad) += P (m x valid) · V (valid x hd_pad).
        for dp in 0..hd_pad / nr {
            unsafe {
                F::f32(
                    m,
                    valid,
                    scores.as_ptr(),
                    bk,
                    1,
                    v[k0 * hd_pad + dp * nr..].as_ptr(),
                    hd_pad,
                    o[dp * nr..].as_mut_ptr(),
                    hd_pad,
                    k0 > 0,
                )
            };
        }
    }
    for i in 0..m {
        let inv = 1.0 / l[i];
        // SAFETY: row (b, q0 + i), head h: written by this task only.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(job.out.get().add((b * n + q0 + i) * dim + h * hd), hd)
        };
        for (x, y) in dst.iter_mut().zip(&o[i * hd_pad..i * hd_pad + hd]) {
            *x = y * inv;
        }
    }
}

type TaskFn = unsafe fn(&Job, usize);
type PackFn = unsafe fn(&mut [f32], &[f32], &Dims, usize, usize);

#[inline(always)]
unsafe fn run<F: Family>(pool: &Pool, job: &Job, task_fn: TaskFn, pack_fn: PackFn) {
    let d = &job.d;
    let (n, hd) = (d.tokens(), d.head_dim());
    let (kt_len, v_len, _) = head_sizes(F::NR, n, hd);
    let packed = Ptr(job.packed.as_ptr() as *mut f32);
    pool.run(d.batch * d.heads, |bh| {
        // SAFETY: each head packs its own disjoint region.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(packed.get().add(bh * (kt_len + v_len)), kt_len + v_len)
        };
        unsafe { pack_fn(dst, job.qkv, d, bh / d.heads, bh % d.heads) };
    });
    pool.run(d.batch * d.heads * n.div_ceil(F::MR), |t| unsafe {
        task_fn(job, t)
    });
}

/// A task body and a packer compiled for one family's target features.
macro_rules! entries {
    ($( $(#[$cfg:meta])* $name:ident, $pack:ident, $feat:literal; )*) => {
        $(
            $(#[$cfg])*
            #[target_feature(enable = $feat)]
            unsafe fn $name<F: Family>(job: &Job, t: usize) {
                unsafe { task::<F>(job, t) }
            }
            $(#[$cfg])*
            #[target_feature(enable = $feat)]
            unsafe fn $pack<F: Family>(dst: &mut [f32], qkv: &[f32], d: &Dims, b: usize, h: usize) {
                pack_head(dst, qkv, d, b, h, F::NR)
            }
        )*
    };
}

entries! {
    #[cfg(target_arch = "x86_64")] task_avx512, pack_avx512, "avx512f,avx2,fma";
    #[cfg(target_arch = "x86_64")] task_avx2, pack_avx2, "avx2,fma";
    #[cfg(target_arch = "aarch64")] task_neon, pack_neon, "neon";
}

unsafe fn task_portable(job: &Job, t: usize) {
    unsafe { task::<Portable>(job, t) }
}

unsafe fn pack_portable(dst: &mut [f32], qkv: &[f32], d: &Dims, b: usize, h: usize) {
    pack_head(dst, qkv, d, b, h, Portable::NR)
}

/// out (B, N, D) = attention(qkv (B, N, 3D)) with the kernels of `isa`;
/// `scratch` holds [`scratch_len`] floats.
pub fn attention_forward(
    pool: &Pool,
    isa: Isa,
    out: &mut [f32],
    qkv: &[f32],
    d: &Dims,
    scratch: &mut [f32],
) {
    assert!(
        d.head_dim() <= MAX_HEAD_DIM,
        "head dim {} > {MAX_HEAD_DIM}",
        d.head_dim()
    );
    assert!(
        scratch.len() >= scratch_len(isa, d),
        "attention scratch too small"
    );
    let job = Job {
        out: Ptr(out.as_mut_ptr()),
        qkv,
        packed: scratch,
        d: *d,
        scale: 1.0 / (d.head_dim() as f32).sqrt(),
    };
    use crate::ops::matmul::fast as mf;
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 { .. } | Isa::Amx => {
                type F = mf::Avx512<false>;
                run::<F>(pool, &job, task_avx512::<F>, pack_avx512::<F>)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 { .. } => {
                type F = mf::Avx2<false>;
                run::<F>(pool, &job, task_avx2::<F>, pack_avx2::<F>)
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon { .. } => {
                type F = mf::Neon<false>;
                run::<F>(pool, &job, task_neon::<F>, pack_neon::<F>)
            }
            _ => run::<Portable>(pool, &job, task_portable, pack_portable),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Training forms: one task per (batch, head) with the N x N scores materialised per task
// (N is a few hundred tokens in training crops), every product on the general GEMM.

use crate::ops::matmul::fast::gemm::{Strided, gemm};

/// Row softmax in place over `s` (n x n, already scaled), returning log-normalisers.
#[inline(always)]
fn max16(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let body = x.len() / 16 * 16;
    for c in x[..body].chunks_exact(16) {
        for l in 0..16 {
            acc[l] = acc[l].max(c[l]);
        }
    }
    x[body..]
        .iter()
        .chain(acc.iter())
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `x = exp(x * scale - shift)` in place, returning the sum (16 lanes).
#[inline(always)]
fn exp_shift_sum(x: &mut [f32], scale: f32, shift: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let body = x.len() / 16 * 16;
    for c in x[..body].chunks_exact_mut(16) {
        for l in 0..16 {
            c[l] = exp(c[l] * scale - shift);
            acc[l] += c[l];
        }
    }
    let mut z: f32 = acc.iter().sum();
    for v in &mut x[body..] {
        *v = exp(*v * scale - shift);
        z += *v;
    }
    z
}

multiversion! {
    /// Rows of raw scores `s` (n x n) -> softmax(s * scale), and `lse` = log normaliser of
    /// the scaled scores.
    fn softmax_rows(s: &mut [f32], n: usize, lse: &mut [f32], scale: f32) {
        for (row, l) in s.chunks_exact_mut(n).zip(lse.iter_mut()) {
            let m = max16(row) * scale;
            let z = exp_shift_sum(row, scale, m);
            let inv = 1.0 / z;
            row.iter_mut().for_each(|v| *v *= inv);
            *l = m + z.ln();
        }
    }
}

multiversion! {
    /// Backward helpers per head: `p = exp(s * scale - lse)` row-wise, then
    /// `ds = p (dp - D_i) scale` with `dp` given in `ds`.
    fn probs_and_dscores(p: &mut [f32], ds: &mut [f32], n: usize, lse: &[f32], di: &[f32], scale: f32) {
        for (((pr, dr), &l), &d) in p.chunks_exact_mut(n).zip(ds.chunks_exact_mut(n)).zip(lse).zip(di) {
            exp_shift_sum(pr, scale, l);
            for j in 0..n {
                dr[j] = pr[j] * (dr[j] - d) * scale;
            }
        }
    }
}

thread_local! {
    /// Per-thread n x n buffers of the training kernels (pool threads are persistent, so
    /// these are allocated once per shape).
    static TRAIN_SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Training forward: out (B, N, D) and `lse` (B * heads * N), as
/// [`super::cpu::attention_forward_lse`].
pub fn attention_forward_lse(
    pool: &Pool,
    isa: Isa,
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    d: &Dims,
) {
    let (dim, hd, n, heads) = (d.dim, d.head_dim(), d.tokens(), d.heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let (out_p, lse_p) = (Ptr(out.as_mut_ptr()), Ptr(lse.as_mut_ptr()));
    pool.run(d.batch * heads, |bh| {
        let (b, h) = (bh / heads, bh % heads);
        let base = b * n * 3 * dim + h * hd;
        let q = Strided {
            data: &qkv[base..],
            rs: 3 * dim,
            cs: 1,
        };
        let kt = Strided {
            data: &qkv[base + dim..],
            rs: 1,
            cs: 3 * dim,
        };
        let v = Strided {
            data: &qkv[base + 2 * dim..],
            rs: 3 * dim,
            cs: 1,
        };
        TRAIN_SCRATCH.with_borrow_mut(|[s, pack, _]| {
            s.resize(n * n, 0.0);
            gemm(None, isa, n, n, hd, q, kt, s, n, false, pack);
            // SAFETY: head (b, h) owns lse[bh*n..] and columns h*hd..(h+1)*hd of its rows of out.
            let l = unsafe { std::slice::from_raw_parts_mut(lse_p.get().add(bh * n), n) };
            softmax_rows(isa, s, n, l, scale);
            let o = unsafe {
                std::slice::from_raw_parts_mut(
                    out_p.get().add(b * n * dim + h * hd),
                    (n - 1) * dim + hd,
                )
            };
            gemm(
                None,
                isa,
                n,
                hd,
                n,
                Strided::rows(s, n),
                v,
                o,
                dim,
                false,
                pack,
            );
        });
    });
}

/// Backward of attention, as [`super::cpu::attention_backward`]: dqkv (=).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    pool: &Pool,
    isa: Isa,
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    d: &Dims,
) {
    let (dim, hd, n, heads) = (d.dim, d.head_dim(), d.tokens(), d.heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let dq_p = Ptr(dqkv.as_mut_ptr());
    pool.run(d.batch * heads, |bh| {
        let (b, h) = (bh / heads, bh % heads);
        let base = b * n * 3 * dim + h * hd;
        let obase = b * n * dim + h * hd;
        let q = Strided {
            data: &qkv[base..],
            rs: 3 * dim,
            cs: 1,
        };
        let kt = Strided {
            data: &qkv[base + dim..],
            rs: 1,
            cs: 3 * dim,
        };
        let k = Strided {
            data: &qkv[base + dim..],
            rs: 3 * dim,
            cs: 1,
        };
        let vt = Strided {
            data: &qkv[base + 2 * dim..],
            rs: 1,
            cs: 3 * dim,
        };
        let dy = Strided {
            data: &dout[obase..],
            rs: dim,
            cs: 1,
        };
        TRAIN_SCRATCH.with_borrow_mut(|[p, ds, pack]| {
            p.resize(n * n, 0.0);
            ds.resize(n * n, 0.0);
            // P = exp(q kᵀ s - lse); dP = dout vᵀ; dS = P (dP - D) s with D_i = dout_i . out_i.
            gemm(None, isa, n, n, hd, q, kt, p, n, false, pack);
            gemm(None, isa, n, n, hd, dy, vt, ds, n, false, pack);
            let di: Vec<f32> = (0..n)
                .map(|i| {
                    (0..hd)
                        .map(|t| dout[obase + i * dim + t] * out[obase + i * dim + t])
                        .sum()
                })
                .collect();
            probs_and_dscores(isa, p, ds, n, &lse[bh * n..(bh + 1) * n], &di, scale);
            // SAFETY: head (b, h) owns its q, k and v columns of its batch's rows of dqkv.
            let dst = |part: usize| unsafe {
                std::slice::from_raw_parts_mut(
                    dq_p.get().add(base + part * dim),
                    (n - 1) * 3 * dim + hd,
                )
            };
            gemm(
                None,
                isa,
                n,
                hd,
                n,
                Strided::rows(ds, n),
                k,
                dst(0),
                3 * dim,
                false,
                pack,
            ); // dq = dS k
            gemm(
                None,
                isa,
                n,
                hd,
                n,
                Strided::transposed(ds, n),
                q,
                dst(1),
                3 * dim,
                false,
                pack,
            ); // dk = dSᵀ q
            gemm(
                None,
                isa,
                n,
                hd,
                n,
                Strided::transposed(p, n),
                dy,
                dst(2),
                3 * dim,
                false,
                pack,
            ); // dv = Pᵀ dout
        });
    });
}
