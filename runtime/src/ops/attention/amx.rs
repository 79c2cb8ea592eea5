//! Attention on the AMX tiles (the CPU's bf16 precision): the flash-style walk of
//! [`super::fast`] with both products on the tiles.
//!
//! 1. Per (batch, head), K and V are rounded to bf16 and packed in the tiles' pair layout:
//!    K as panels of 32 keys (`[hd / 2][32][2]`), V as panels of 32 head columns
//!    (`[n_pad / 2][32][2]`), keys zero-padded to a multiple of 32.
//! 2. A task takes 32 queries of one head and walks the keys in blocks of [`KB`]:
//!    `S = Q Kᵀ` on the tiles (f32), online softmax in f32, `P` rounded to bf16,
//!    `O = O * corr + P V` (tiles, then f32).
//! 3. `out = O / l`. Each of the pool's threads has its own region of the scratch for its
//!    tasks' buffers (a few KB per 32 queries): no N x N matrix at any size, and no
//!    allocation.

use crate::backend::cpu::pool::Pool;
use crate::ops::Dims;
use crate::ops::activation::fast::exp;
use crate::ops::attention::MAX_HEAD_DIM;
use crate::ops::attention::fast::{lane_max, lane_sum};
use crate::ops::matmul::fast::{SendPtr as Ptr, amx};

/// Queries per task (one AMX block of rows).
const QB: usize = amx::ROWS;
/// Keys per softmax block.
const KB: usize = 256;
/// Keys and head columns per packed panel.
const P: usize = amx::NR;

/// Whether the tiles run attention of these dims (the head dim a whole number of steps).
pub fn supported(d: &Dims) -> bool {
    let hd = d.head_dim();
    hd.is_multiple_of(amx::K_STEP) && hd <= MAX_HEAD_DIM
}

/// u16 of packed K and V per head.
fn head_len(d: &Dims) -> usize {
    2 * d.tokens().div_ceil(P) * P * d.head_dim()
}

/// Floats of scratch for dims `d` on a pool of `threads`: packed bf16 K and V of every
/// head, then one set of task buffers per thread.
pub fn scratch_len(d: &Dims, threads: usize) -> usize {
    packed_floats(d) + threads * buffer_floats(d.head_dim())
}

fn packed_floats(d: &Dims) -> usize {
    (d.batch * d.heads * head_len(d)).div_ceil(2)
}

/// Floats of one set of task buffers (q and p hold bf16, two per float).
fn buffer_floats(hd: usize) -> usize {
    QB * hd / 2 + QB * KB + QB * KB / 2 + 2 * QB * hd
}

/// One thread's task buffers, carved from its scratch region.
struct Buffers<'a> {
    q: &'a mut [u16],
    s: &'a mut [f32],
    p: &'a mut [u16],
    pv: &'a mut [f32],
    o: &'a mut [f32],
}

impl<'a> Buffers<'a> {
    fn new(region: &'a mut [f32], hd: usize) -> Self {
        let (q, rest) = region.split_at_mut(QB * hd / 2);
        let (s, rest) = rest.split_at_mut(QB * KB);
        let (p, rest) = rest.split_at_mut(QB * KB / 2);
        let (pv, o) = rest.split_at_mut(QB * hd);
        // SAFETY: f32 storage viewed as u16 (alignment 4 >= 2), same bytes, disjoint.
        let half = |x: &'a mut [f32]| unsafe {
            std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u16, 2 * x.len())
        };
        Buffers {
            q: half(q),
            s,
            p: half(p),
            pv,
            o: &mut o[..QB * hd],
        }
    }
}

/// f32 -> bf16 bits (nearest even), 16 lanes at a time.
#[inline(always)]
fn to_bf16(x: &[f32], dst: &mut [u16]) {
    // SAFETY: this module runs only where AMX (and so AVX512_BF16) is present.
    unsafe { crate::ops::matmul::fast::avx512::to_bf16(x, dst) }
}

/// Packs K (panels of keys) and V (panels of head columns) of head (b, h) into `dst`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_head(dst: &mut [u16], qkv: &[f32], d: &Dims, b: usize, h: usize) {
    let (n, hd, dim) = (d.tokens(), d.head_dim(), d.dim);
    let n_pad = n.div_ceil(P) * P;
    let (kp, vp) = dst.split_at_mut(n_pad * hd);
    let (mut k2, mut v2) = ([[0u16; MAX_HEAD_DIM]; 2], [[0u16; MAX_HEAD_DIM]; 2]);
    for key0 in (0..n_pad).step_by(2) {
        // Keys key0 and key0 + 1 (zeros past n) as bf16 rows.
        for (t, (kr, vr)) in k2.iter_mut().zip(v2.iter_mut()).enumerate() {
            let key = key0 + t;
            if key < n {
                let row = &qkv[(b * n + key) * 3 * dim..][..3 * dim];
                to_bf16(&row[dim + h * hd..][..hd], &mut kr[..hd]);
                to_bf16(&row[2 * dim + h * hd..][..hd], &mut vr[..hd]);
            } else {
                kr[..hd].fill(0);
                vr[..hd].fill(0);
            }
        }
        // K: pair-row dd / 2 of the key's panel holds (k[dd], k[dd + 1]) at column key % P.
        for (t, kr) in k2.iter().enumerate() {
            let (panel, j) = ((key0 + t) / P, (key0 + t) % P);
            for dp in 0..hd / 2 {
                let at = ((panel * hd / 2 + dp) * P + j) * 2;
                kp[at] = kr[2 * dp];
                kp[at + 1] = kr[2 * dp + 1];
            }
        }
        // V: pair-row key0 / 2 of each column panel interleaves the two keys' values.
        for vpanel in 0..hd / P {
            let at = (vpanel * n_pad + key0) * P;
            let out = &mut vp[at..at + 2 * P];
            for c in 0..P {
                out[2 * c] = v2[0][vpanel * P + c];
                out[2 * c + 1] = v2[1][vpanel * P + c];
            }
        }
    }
}

struct Job<'a> {
    out: Ptr<f32>,
    qkv: &'a [f32],
    packed: &'a [u16],
    d: Dims,
    scale: f32,
}

/// One task: queries q0..q0+m of head (b, h).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn task(job: &Job, t: usize, bufs: &mut Buffers) {
    let d = &job.d;
    let (n, hd, dim) = (d.tokens(), d.head_dim(), d.dim);
    let n_pad = n.div_ceil(P) * P;
    let blocks = n.div_ceil(QB);
    let (bh, qb) = (t / blocks, t % blocks);
    let (b, h) = (bh / d.heads, bh % d.heads);
    let (q0, m) = (qb * QB, QB.min(n - qb * QB));
    let (kp, vp) = job.packed[bh * head_len(d)..][..head_len(d)].split_at(n_pad * hd);

    let Buffers { q, s, p, pv, o } = bufs;
    // Rows past m are zero: the tiles read 32 rows, and those results are dropped.
    for i in 0..QB {
        let qi = &mut q[i * hd..(i + 1) * hd];
        if i < m {
            to_bf16(&job.qkv[(b * n + q0 + i) * 3 * dim + h * hd..][..hd], qi);
        } else {
            qi.fill(0);
        }
    }
    p[m * KB..].fill(0);
    o[..m * hd].fill(0.0);
    unsafe { block_walk(job, (b, h, q0, m), (kp, vp), q, s, p, pv, o) };
}

/// The key-block walk of one task (see the module docs).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn block_walk(
    job: &Job,
    (b, h, q0, m): (usize, usize, usize, usize),
    (kp, vp): (&[u16], &[u16]),
    q: &[u16],
    s: &mut [f32],
    p: &mut [u16],
    pv: &mut [f32],
    o: &mut [f32],
) {
    let d = &job.d;
    let (n, hd, dim) = (d.tokens(), d.head_dim(), d.dim);
    let n_pad = n.div_ceil(P) * P;
    let mut mx = [f32::NEG_INFINITY; QB];
    let mut l = [0.0f32; QB];
    for k0 in (0..n).step_by(KB) {
        let valid = KB.min(n - k0);
        let panels = valid.div_ceil(P);
        for pj in 0..panels {
            let kpanel = kp[(k0 / P + pj) * hd * P..].as_ptr();
            // SAFETY: tiles configured by the caller; every pointer covers its block.
            unsafe {
                amx::bf16_block(hd, q.as_ptr(), hd * 2, kpanel, s[pj * P..].as_mut_ptr(), KB)
            };
        }
        let width = panels * P;
        for i in 0..m {
            let srow = &mut s[i * KB..i * KB + valid];
            let block_max = lane_max(srow) * job.scale;
            let new_max = mx[i].max(block_max);
            let corr = exp(mx[i] - new_max);
            srow.iter_mut()
                .for_each(|x| *x = exp(*x * job.scale - new_max));
            l[i] = l[i] * corr + lane_sum(srow);
            mx[i] = new_max;
            let prow = &mut p[i * KB..i * KB + width];
            to_bf16(srow, &mut prow[..valid]);
            prow[valid..].fill(0);
            if k0 > 0 && corr != 1.0 {
                o[i * hd..(i + 1) * hd].iter_mut().for_each(|x| *x *= corr);
            }
        }
        for dp in 0..hd / P {
            // Pair-row k0 / 2 of V panel dp.
            let vpanel = vp[(dp * n_pad + k0) * P..].as_ptr();
            // SAFETY: as above; p has 32 rows of KB at a stride of 2 KB bytes.
            unsafe {
                amx::bf16_block(
                    width,
                    p.as_ptr(),
                    KB * 2,
                    vpanel,
                    pv[dp * P..].as_mut_ptr(),
                    hd,
                )
            };
        }
        for i in 0..m {
            let (oi, pvi) = (&mut o[i * hd..(i + 1) * hd], &pv[i * hd..(i + 1) * hd]);
            oi.iter_mut().zip(pvi).for_each(|(x, y)| *x += y);
        }
    }
    for i in 0..m {
        let inv = 1.0 / l[i];
        // SAFETY: row (b, q0 + i), head h: written by this task only.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(job.out.get().add((b * n + q0 + i) * dim + h * hd), hd)
        };
        for (x, y) in dst.iter_mut().zip(&o[i * hd..(i + 1) * hd]) {
            *x = y * inv;
        }
    }
}

/// out (B, N, D) = attention(qkv (B, N, 3D)) on the AMX tiles, in bf16 with f32
/// accumulation and softmax. `scratch` holds [`scratch_len`] floats.
///
/// # Panics
/// If the dims are not [`supported`] or the scratch is short (the backend checks both).
pub fn attention_forward(pool: &Pool, out: &mut [f32], qkv: &[f32], d: &Dims, scratch: &mut [f32]) {
    assert!(supported(d), "head dim {} on the AMX tiles", d.head_dim());
    let threads = pool.threads();
    assert!(
        scratch.len() >= scratch_len(d, threads),
        "attention scratch too small"
    );
    assert!(
        crate::backend::cpu::amx::tiles_granted(),
        "attention on the AMX tiles without the tile state"
    );
    let len = d.batch * d.heads * head_len(d);
    let (packed, regions) = scratch.split_at_mut(packed_floats(d));
    // SAFETY: f32 storage viewed as u16 (alignment 4 >= 2), in bounds.
    let packed = unsafe { std::slice::from_raw_parts_mut(packed.as_mut_ptr() as *mut u16, len) };
    let ptr = Ptr(packed.as_mut_ptr());
    let per_head = head_len(d);
    pool.run(d.batch * d.heads, |bh| {
        // SAFETY: each head packs its own disjoint region.
        let dst = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(bh * per_head), per_head) };
        // SAFETY: AMX implies AVX-512 BW and BF16.
        unsafe { pack_head(dst, qkv, d, bh / d.heads, bh % d.heads) };
    });
    let job = Job {
        out: Ptr(out.as_mut_ptr()),
        qkv,
        packed,
        d: *d,
        scale: 1.0 / (d.head_dim() as f32).sqrt(),
    };
    // One pool task per thread, each with its own buffer region, claiming the attention
    // tasks from a shared counter (so a descheduled thread's share moves to the others).
    let tasks = d.batch * d.heads * d.tokens().div_ceil(QB);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let per = buffer_floats(d.head_dim());
    let regions = Ptr(regions.as_mut_ptr());
    pool.run(threads, |w| {
        // SAFETY: slot w's region is used by this call alone.
        let region = unsafe { std::slice::from_raw_parts_mut(regions.get().add(w * per), per) };
        let mut bufs = Buffers::new(region, d.head_dim());
        // SAFETY: AMX present and granted (asserted above).
        let _tiles = unsafe { amx::Tiles::configure() };
        loop {
            let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if t >= tasks {
                break;
            }
            // SAFETY: as above; AVX-512 comes with AMX.
            unsafe { task(&job, t, &mut bufs) };
        }
    });
}
