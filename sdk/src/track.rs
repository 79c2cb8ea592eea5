//! Tracking with patch features alone.
//!
//! [`LabelPropagator`]: semi-supervised video object segmentation by label propagation, the
//! DINO / DINOv3 protocol (`eval_video_segmentation.py`): each new frame's patches take a
//! weighted vote of the labels of their top-k most similar patches among the first frame
//! (given mask) and the last n frames (soft predictions), within a square neighbourhood,
//! with weights `exp(cos / temperature)`.
//!
//! [`PointTracker`]: query points follow their best-matching patch inside a local window,
//! with a forward-backward check that marks a point lost when the match does not map back.

use std::collections::VecDeque;

use dinoedge_runtime::RuntimeError;
use dinoedge_runtime::backend::cpu::isa::Isa;
use dinoedge_runtime::backend::cpu::pool::{Pool, RowsMut};
use dinoedge_runtime::ops::matmul::fast::gemm::{Strided, gemm};
use dinoedge_runtime::resample::{AxisTaps, Filter};

use crate::davis::Mask;
use crate::dense::normalized;
use crate::error::{Error, Result};

/// Label-propagation settings (DINO's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PropagationConfig {
    pub topk: usize,
    /// Past frames in the context, besides the first.
    pub n_last: usize,
    /// Half-size of the square neighbourhood in patches (None: the whole frame).
    pub neighborhood: Option<usize>,
    pub temperature: f32,
}

impl PropagationConfig {
    /// Refuses settings the propagation cannot use: `topk` 0, or a temperature that is not a
    /// finite positive number (`NaN <= 0` is false, so a NaN would pass a plain comparison
    /// and label every pixel as the object).
    pub fn validate(&self) -> Result<()> {
        if self.topk == 0 {
            return Err(Error::InvalidArgument(
                "label propagation needs --topk >= 1".into(),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "label propagation needs a finite --temperature > 0, got {}",
                self.temperature
            )));
        }
        Ok(())
    }
}

impl Default for PropagationConfig {
    fn default() -> Self {
        PropagationConfig {
            topk: 5,
            n_last: 7,
            neighborhood: Some(12),
            temperature: 0.1,
        }
    }
}

/// Soft labels `(C, h*w)` of one frame on the patch grid; label 0 is background.
pub type SoftLabels = Vec<f32>;

/// The object ids of a mask and its one-hot labels sampled at patch centres.
pub fn labels_on_grid(mask: &Mask, grid: (usize, usize)) -> (Vec<u8>, SoftLabels) {
    let mut ids = vec![0u8];
    ids.extend(mask.objects());
    let (gh, gw) = grid;
    let mut soft = vec![0.0f32; ids.len() * gh * gw];
    for r in 0..gh {
        for c in 0..gw {
            // PIL nearest: the source pixel at the patch centre.
            let y =
                (((r as f64 + 0.5) * mask.height as f64 / gh as f64) as usize).min(mask.height - 1);
            let x =
                (((c as f64 + 0.5) * mask.width as f64 / gw as f64) as usize).min(mask.width - 1);
            let l = mask.labels[y * mask.width + x];
            let k = ids.iter().position(|&i| i == l).unwrap_or(0);
            soft[k * gh * gw + r * gw + c] = 1.0;
        }
    }
    (ids, soft)
}

/// Label propagation state over a video. The large buffers (features, similarities, soft
/// labels) are kept between frames; a step allocates only a few small vectors.
pub struct LabelPropagator {
    cfg: PropagationConfig,
    grid: (usize, usize),
    dim: usize,
    /// Object id of each label channel (0 first).
    pub ids: Vec<u8>,
    first: Context,
    recent: VecDeque<Context>,
    /// The next frame's buffers (the oldest context's, once the context is full); after a
    /// step with `n_last` 0, the step's result.
    spare: Context,
    pool: Pool,
    isa: Isa,
    sim: Vec<f32>,
    pack: Vec<f32>,
    /// Votes per target patch `(hw, C)`, written by the pool, then transposed.
    votes: Vec<f32>,
}

/// One context frame: normalised patch features `(hw, dim)` and soft labels `(C, hw)`.
#[derive(Default)]
struct Context {
    feats: Vec<f32>,
    soft: SoftLabels,
}

impl LabelPropagator {
    /// Starts from the first frame's patch features `(h*w, dim)` and its mask (any size).
    pub fn new(
        cfg: PropagationConfig,
        first_patches: &[f32],
        dim: usize,
        grid: (usize, usize),
        mask: &Mask,
        threads: Option<usize>,
    ) -> Result<Self> {
        cfg.validate()?;
        let (ids, soft) = labels_on_grid(mask, grid);
        if ids.len() < 2 {
            return Err(Error::InvalidArgument(
                "the first-frame mask has no objects (every pixel is background)".into(),
            ));
        }
        let threads = threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let pool = Pool::sleeping(threads)
            .map_err(|e| Error::resource(format!("{threads} worker threads"), e))?;
        Ok(LabelPropagator {
            cfg,
            grid,
            dim,
            ids,
            first: Context {
                feats: normalized(first_patches, dim),
                soft,
            },
            recent: VecDeque::new(),
            spare: Context::default(),
            pool,
            isa: Isa::detect(),
            sim: Vec::new(),
            pack: Vec::new(),
            votes: Vec::new(),
        })
    }

    pub fn grid(&self) -> (usize, usize) {
        self.grid
    }

    /// Soft labels of the next frame from its patch features `(h*w, dim)` (same grid).
    pub fn step(&mut self, patches: &[f32]) -> Result<SoftLabels> {
        self.advance(patches).map(<[f32]>::to_vec)
    }

    /// [`LabelPropagator::step`] without a copy: the soft labels `(C, h*w)` stay valid until
    /// the next step.
    pub fn advance(&mut self, patches: &[f32]) -> Result<&[f32]> {
        let (gh, gw) = self.grid;
        let hw = gh * gw;
        if patches.len() != hw * self.dim {
            return Err(Error::InvalidArgument(format!(
                "frame features have {} values, the tracker's grid {gh}x{gw} x {} needs {}",
                patches.len(),
                self.dim,
                hw * self.dim
            )));
        }
        let mut next = std::mem::take(&mut self.spare);
        normalize_into(patches, self.dim, &mut next.feats);
        let nctx = 1 + self.recent.len();
        self.affinities(&next.feats, nctx);
        let c = self.ids.len();
        self.votes.clear();
        self.votes.resize(hw * c, 0.0);
        {
            let ctx: Vec<&SoftLabels> = std::iter::once(&self.first.soft)
                .chain(self.recent.iter().map(|x| &x.soft))
                .collect();
            let votes = RowsMut::new(&mut self.votes, c);
            let (sim, cfg, grid) = (&self.sim, &self.cfg, self.grid);
            self.pool.run_rows(hw, 16, |t0, t1| {
                // SAFETY: run_rows hands out disjoint target ranges.
                let out = unsafe { votes.rows(t0, t1) };
                vote(sim, &ctx, cfg, grid, t0..t1, out);
            });
        }
        // A task that panicked (a bug) left its votes unwritten: an error, not a mask.
        if let Some(reason) = self.pool.take_panic() {
            return Err(RuntimeError::TaskPanicked {
                backend: "label propagation".into(),
                reason,
            }
            .into());
        }
        next.soft.clear();
        next.soft.resize(c * hw, 0.0);
        for (t, v) in self.votes.chunks_exact(c).enumerate() {
            for (ch, &x) in v.iter().enumerate() {
                next.soft[ch * hw + t] = x;
            }
        }
        if self.cfg.n_last == 0 {
            self.spare = next;
            return Ok(&self.spare.soft);
        }
        if self.recent.len() == self.cfg.n_last {
            self.spare = self.recent.pop_front().expect("full context");
        }
        self.recent.push_back(next);
        Ok(&self.recent.back().expect("pushed").soft)
    }

    /// `sim[k]` (hw_target x hw_source) = f_target · f_kᵀ for each context frame k, computed
    /// only where the vote reads it: a band of target rows against the source rows within
    /// the neighbourhood of any of them (the rest of `sim` is left stale). On grids taller
    /// than twice the neighbourhood that skips a third of the products, though the smaller
    /// products run slower (7-11% saved at 480, docs/perf.md); on smaller grids it is one
    /// product per context.
    fn affinities(&mut self, f: &[f32], nctx: usize) {
        let (gh, gw) = self.grid;
        let hw = gh * gw;
        self.sim.resize(nctx * hw * hw, 0.0);
        let r = self.cfg.neighborhood.unwrap_or(usize::MAX);
        // About 256 target patches per band: a product still large enough to run at speed.
        let band = if r.saturating_mul(2) >= gh {
            gh
        } else {
            (256 / gw).clamp(1, gh)
        };
        let ctx = std::iter::once(&self.first).chain(self.recent.iter());
        for (k, fk) in ctx.enumerate() {
            for t0 in (0..gh).step_by(band) {
                let t1 = (t0 + band).min(gh);
                let (s0, s1) = (t0.saturating_sub(r), t1.saturating_add(r).min(gh));
                let (m, n) = ((t1 - t0) * gw, (s1 - s0) * gw);
                gemm(
                    Some(&self.pool),
                    self.isa,
                    m,
                    n,
                    self.dim,
                    Strided::rows(&f[t0 * gw * self.dim..], self.dim),
                    Strided::transposed(&fk.feats[s0 * gw * self.dim..], self.dim),
                    &mut self.sim[k * hw * hw + t0 * gw * hw + s0 * gw..],
                    hw,
                    false,
                    &mut self.pack,
                );
            }
        }
    }

    /// Hard labels at `(width, height)`: bilinear upsampling of the soft labels, per-channel
    /// min-max normalisation, argmax (as DINO's `norm_mask` + argmax).
    pub fn to_mask(&self, soft: &[f32], width: usize, height: usize) -> Mask {
        let mut mask = Mask {
            width,
            height,
            labels: Vec::new(),
        };
        let mut up = Upsampler::default();
        up.mask_into(soft, &self.ids, self.grid, &mut mask);
        mask
    }

    /// [`LabelPropagator::to_mask`] into `mask` (its size is the target), reusing `up`'s
    /// buffers and `mask`'s.
    pub fn mask_into(&self, soft: &[f32], up: &mut Upsampler, mask: &mut Mask) {
        up.mask_into(soft, &self.ids, self.grid, mask);
    }

    /// The mask of the last step's soft labels (the first frame's before any step), as
    /// [`LabelPropagator::mask_into`] without copying them out of the propagator.
    pub fn last_mask_into(&self, up: &mut Upsampler, mask: &mut Mask) {
        let last = match self.recent.back() {
            _ if self.cfg.n_last == 0 && !self.spare.soft.is_empty() => &self.spare.soft,
            Some(c) => &c.soft,
            None => &self.first.soft,
        };
        up.mask_into(last, &self.ids, self.grid, mask);
    }
}

/// The top-k vote of targets `ts` (rows of `out`, `C` values each): each target's `topk`
/// most similar source patches among the context frames within the neighbourhood, weighted
/// by `exp(cos / T)` normalised (shifted by the max for range).
fn vote(
    sim: &[f32],
    ctx: &[&SoftLabels],
    cfg: &PropagationConfig,
    (gh, gw): (usize, usize),
    ts: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let hw = gh * gw;
    let c = out.len() / ts.len().max(1);
    let r = cfg.neighborhood.map(|n| n as isize).unwrap_or(isize::MAX);
    let (k_top, inv_t) = (cfg.topk, 1.0 / cfg.temperature);
    let mut best: Vec<(f32, usize, usize)> = Vec::with_capacity(k_top + 1);
    let mut ws: Vec<f32> = Vec::with_capacity(k_top);
    for (t, o) in ts.zip(out.chunks_exact_mut(c)) {
        let (tr, tc) = ((t / gw) as isize, (t % gw) as isize);
        best.clear();
        let (r0, r1) = (
            (tr - r).max(0) as usize,
            (tr.saturating_add(r)).min(gh as isize - 1) as usize,
        );
        let (c0, c1) = (
            (tc - r).max(0) as usize,
            (tc.saturating_add(r)).min(gw as isize - 1) as usize,
        );
        let mut floor = f32::NEG_INFINITY;
        for k in 0..ctx.len() {
            let row = &sim[(k * hw + t) * hw..(k * hw + t + 1) * hw];
            for sr in r0..=r1 {
                let base = sr * gw;
                for (sc, &v) in row[base + c0..=base + c1].iter().enumerate() {
                    // Most values fail this one comparison once `best` is full.
                    if best.len() < k_top || v > floor {
                        let pos = best.partition_point(|b| b.0 >= v);
                        best.insert(pos, (v, k, base + c0 + sc));
                        best.truncate(k_top);
                        if best.len() == k_top {
                            floor = best[k_top - 1].0;
                        }
                    }
                }
            }
        }
        let m = best[0].0;
        ws.clear();
        ws.extend(best.iter().map(|b| ((b.0 - m) * inv_t).exp()));
        let z: f32 = ws.iter().sum();
        o.iter_mut().for_each(|v| *v = 0.0);
        for ((_, k, s), w) in best.iter().zip(&ws) {
            let seg = ctx[*k];
            for (ch, v) in o.iter_mut().enumerate() {
                *v += w / z * seg[ch * hw + s];
            }
        }
    }
}

/// Writes `patches` with each row L2-normalised into `out` (its buffer reused).
fn normalize_into(patches: &[f32], dim: usize, out: &mut Vec<f32>) {
    out.clear();
    out.extend_from_slice(patches);
    for r in out.chunks_exact_mut(dim) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|v| *v /= n);
    }
}

/// (grid h, grid w, out h, out w), and the width and height taps.
type UpsampleTaps = ((usize, usize, usize, usize), AxisTaps, AxisTaps);

/// Soft labels on the patch grid to a hard mask at any size, with the taps and buffers
/// kept between frames of one size. The bilinear taps are [`dinoedge_runtime::resample`]'s
/// antialiased ones in f32 (torch's in f64): the soft values differ by about 1e-7, which
/// moves a label only at an exact tie.
#[derive(Default)]
pub struct Upsampler {
    /// Taps for one grid and output size.
    taps: Option<UpsampleTaps>,
    /// Width pass: (C, gh, W).
    rows: Vec<f32>,
    /// Height pass: (C, H, W).
    up: Vec<f32>,
}

impl Upsampler {
    fn mask_into(&mut self, soft: &[f32], ids: &[u8], (gh, gw): (usize, usize), mask: &mut Mask) {
        let (w, h, c) = (mask.width, mask.height, ids.len());
        let key = (gh, gw, h, w);
        if self.taps.as_ref().is_none_or(|t| t.0 != key) {
            let (tx, ty) = (
                AxisTaps::new(gw, w, Filter::Bilinear),
                AxisTaps::new(gh, h, Filter::Bilinear),
            );
            self.taps = Some((key, tx, ty));
        }
        let (_, tx, ty) = self.taps.as_ref().expect("set above");
        self.rows.resize(c * gh * w, 0.0);
        for (src, dst) in soft.chunks_exact(gw).zip(self.rows.chunks_exact_mut(w)) {
            for (x, d) in dst.iter_mut().enumerate() {
                let (start, wts) = tx.of(x);
                *d = wts.iter().zip(&src[start..]).map(|(a, b)| a * b).sum();
            }
        }
        self.up.resize(c * h * w, 0.0);
        for (ch, plane) in self.up.chunks_exact_mut(h * w).enumerate() {
            for (y, d) in plane.chunks_exact_mut(w).enumerate() {
                let (start, wts) = ty.of(y);
                d.iter_mut().for_each(|v| *v = 0.0);
                for (j, &wt) in wts.iter().enumerate() {
                    let r = &self.rows[(ch * gh + start + j) * w..][..w];
                    d.iter_mut().zip(r).for_each(|(v, &x)| *v += wt * x);
                }
            }
        }
        let n = w * h;
        let mut scale = vec![(0.0f32, 1.0f32); c];
        for (ch, plane) in self.up.chunks_exact(n).enumerate() {
            let (lo, hi) = plane
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            if hi > 0.0 {
                scale[ch] = (lo, (hi - lo).max(1e-12));
            }
        }
        mask.labels.clear();
        mask.labels.extend((0..n).map(|i| {
            let mut best = (f32::NEG_INFINITY, 0);
            for (ch, &(lo, span)) in scale.iter().enumerate() {
                let v = (self.up[ch * n + i] - lo) / span;
                // Ties go to the later channel, as `max_by` does.
                if v >= best.0 {
                    best = (v, ch);
                }
            }
            ids[best.1]
        }));
    }
}

/// A point followed from frame to frame.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackedPoint {
    pub id: usize,
    /// Position in patch units (x = column, y = row; patch centres at k + 0.5).
    pub x: f32,
    pub y: f32,
    pub lost: bool,
    /// Cosine similarity of the last match.
    pub score: f32,
}

/// Point tracking on patch features.
pub struct PointTracker {
    grid: (usize, usize),
    dim: usize,
    /// Search radius in patches.
    pub radius: usize,
    /// Lost when the backward match lands farther than this (patches).
    pub fb_tolerance: f32,
    /// Lost when the best match's cosine similarity is below this.
    pub min_score: f32,
    pub points: Vec<TrackedPoint>,
    refs: Vec<Vec<f32>>,
    prev: Vec<f32>,
}

impl PointTracker {
    /// Starts points at pixel positions `(x, y)` of a `size` (w, h) frame.
    pub fn new(
        patches: &[f32],
        dim: usize,
        grid: (usize, usize),
        size: (usize, usize),
        points: &[(f32, f32)],
    ) -> Self {
        let f = normalized(patches, dim);
        let (gh, gw) = grid;
        let pts: Vec<TrackedPoint> = points
            .iter()
            .enumerate()
            .map(|(id, &(x, y))| TrackedPoint {
                id,
                x: (x / size.0 as f32 * gw as f32).clamp(0.0, gw as f32 - 1e-3),
                y: (y / size.1 as f32 * gh as f32).clamp(0.0, gh as f32 - 1e-3),
                lost: false,
                score: 1.0,
            })
            .collect();
        let refs = pts
            .iter()
            .map(|p| f[Self::cell(p.x, p.y, grid) * dim..][..dim].to_vec())
            .collect();
        PointTracker {
            grid,
            dim,
            radius: 3,
            fb_tolerance: 1.0,
            min_score: 0.2,
            points: pts,
            refs,
            prev: f,
        }
    }

    fn cell(x: f32, y: f32, grid: (usize, usize)) -> usize {
        (y.floor().clamp(0.0, grid.0 as f32 - 1.0) as usize) * grid.1
            + x.floor().clamp(0.0, grid.1 as f32 - 1.0) as usize
    }

    /// Best match of `q` in `f` within `radius` of cell `at`: (cell, cosine).
    fn search(&self, f: &[f32], q: &[f32], at: usize) -> (usize, f32) {
        let (gh, gw) = self.grid;
        let (r, c) = ((at / gw) as isize, (at % gw) as isize);
        let rad = self.radius as isize;
        let mut best = (at, f32::MIN);
        for rr in (r - rad).max(0)..=(r + rad).min(gh as isize - 1) {
            for cc in (c - rad).max(0)..=(c + rad).min(gw as isize - 1) {
                let s = rr as usize * gw + cc as usize;
                let v: f32 = f[s * self.dim..(s + 1) * self.dim]
                    .iter()
                    .zip(q)
                    .map(|(a, b)| a * b)
                    .sum();
                if v > best.1 {
                    best = (s, v);
                }
            }
        }
        best
    }

    /// Moves every live point to its match in the next frame.
    pub fn step(&mut self, patches: &[f32]) {
        let f = normalized(patches, self.dim);
        let (dim, gw) = (self.dim, self.grid.1);
        for i in 0..self.points.len() {
            if self.points[i].lost {
                continue;
            }
            let p = self.points[i].clone();
            let from = Self::cell(p.x, p.y, self.grid);
            // Query: the first appearance blended with the last one.
            let mut q: Vec<f32> = self.refs[i]
                .iter()
                .zip(&self.prev[from * dim..(from + 1) * dim])
                .map(|(a, b)| a + b)
                .collect();
            let n = q.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            q.iter_mut().for_each(|v| *v /= n);
            let (to, score) = self.search(&f, &q, from);
            // Forward-backward: the match must map back near where the point was.
            let (back, _) = self.search(&self.prev, &f[to * dim..(to + 1) * dim], to);
            let (bx, by) = ((back % gw) as f32 + 0.5, (back / gw) as f32 + 0.5);
            let (fx, fy) = ((from % gw) as f32 + 0.5, (from / gw) as f32 + 0.5);
            let pt = &mut self.points[i];
            if score < self.min_score
                || (bx - fx).abs() > self.fb_tolerance
                || (by - fy).abs() > self.fb_tolerance
            {
                pt.lost = true;
                pt.score = score;
                continue;
            }
            // Keep the sub-patch offset of the point inside its patch.
            let (ox, oy) = (p.x - p.x.floor(), p.y - p.y.floor());
            pt.x = (to % gw) as f32 + ox;
            pt.y = (to / gw) as f32 + oy;
            pt.score = score;
        }
        self.prev = f;
    }

    /// Point positions in pixels of a `size` (w, h) frame.
    pub fn pixels(&self, size: (usize, usize)) -> Vec<(f32, f32, bool)> {
        let (gh, gw) = self.grid;
        self.points
            .iter()
            .map(|p| {
                (
                    p.x / gw as f32 * size.0 as f32,
                    p.y / gh as f32 * size.1 as f32,
                    p.lost,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Features: content k is direction k (mod dim) plus a little deterministic noise.
    fn feats(content: &[usize], dim: usize) -> Vec<f32> {
        content
            .iter()
            .flat_map(|&k| {
                (0..dim).map(move |j| {
                    if j == k % dim {
                        10.0
                    } else {
                        ((k * 31 + j * 17) % 7) as f32 * 0.05
                    }
                })
            })
            .collect()
    }

    /// The DINO vote written the plain way: every similarity, sorted.
    fn reference_vote(
        target: &[f32],
        ctx: &[(Vec<f32>, Vec<f32>)],
        dim: usize,
        (gh, gw): (usize, usize),
        cfg: &PropagationConfig,
        c: usize,
    ) -> Vec<f32> {
        let hw = gh * gw;
        let r = cfg.neighborhood.map_or(isize::MAX, |n| n as isize);
        let mut out = vec![0.0f32; c * hw];
        for t in 0..hw {
            let (tr, tc) = ((t / gw) as isize, (t % gw) as isize);
            let mut cand: Vec<(f32, usize, usize)> = Vec::new();
            for (k, (f, _)) in ctx.iter().enumerate() {
                for s in 0..hw {
                    let (sr, sc) = ((s / gw) as isize, (s % gw) as isize);
                    if (sr - tr).abs() <= r && (sc - tc).abs() <= r {
                        let d = (0..dim).map(|i| target[t * dim + i] * f[s * dim + i]).sum();
                        cand.push((d, k, s));
                    }
                }
            }
            cand.sort_by(|a, b| b.0.total_cmp(&a.0));
            cand.truncate(cfg.topk);
            let ws: Vec<f32> = cand
                .iter()
                .map(|x| ((x.0 - cand[0].0) / cfg.temperature).exp())
                .collect();
            let z: f32 = ws.iter().sum();
            for ((_, k, s), w) in cand.iter().zip(&ws) {
                for ch in 0..c {
                    out[ch * hw + t] += w / z * ctx[*k].1[ch * hw + s];
                }
            }
        }
        out
    }

    #[test]
    fn banded_affinities_vote_as_the_full_matrix_does() {
        // A grid far taller than the neighbourhood (bands of 256 / 3 = 85 rows: two), a
        // short one (one band), and no neighbourhood at all.
        for (grid, hood, n_last) in [
            ((110, 3), Some(4), 2),
            ((6, 5), Some(1), 2),
            ((9, 4), None, 2),
            ((9, 4), Some(2), 0),
        ] {
            let (dim, hw) = (8, grid.0 * grid.1);
            let mut seed = 7u32;
            let mut frame = || -> Vec<f32> {
                (0..hw * dim)
                    .map(|_| {
                        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                        (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
                    })
                    .collect()
            };
            let mask = Mask {
                width: grid.1 * 4,
                height: grid.0 * 4,
                labels: (0..grid.0 * grid.1 * 16)
                    .map(|i| u8::from((i / (grid.1 * 4)) % 7 < 3))
                    .collect(),
            };
            let cfg = PropagationConfig {
                topk: 5,
                n_last,
                neighborhood: hood,
                temperature: 0.1,
            };
            let first = frame();
            let mut lp = LabelPropagator::new(cfg, &first, dim, grid, &mask, Some(2)).unwrap();
            let mut ctx = vec![(normalized(&first, dim), lp.first.soft.clone())];
            for _ in 0..4 {
                let f = frame();
                let got = lp.advance(&f).unwrap().to_vec();
                let fnorm = normalized(&f, dim);
                let want = reference_vote(&fnorm, &ctx, dim, grid, &cfg, 2);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(worst < 1e-4, "{grid:?} {hood:?}: {worst}");
                // The last step's mask, read in place, is the mask of what the step returned.
                let mut m = Mask {
                    width: 13,
                    height: 29,
                    labels: Vec::new(),
                };
                lp.last_mask_into(&mut Upsampler::default(), &mut m);
                assert_eq!(m, lp.to_mask(&got, 13, 29));
                ctx.push((fnorm, got));
                if ctx.len() > 1 + cfg.n_last {
                    ctx.remove(1);
                }
            }
        }
    }

    #[test]
    fn propagation_follows_a_moving_object() {
        // 8x8 grid, background content 0..; an object of content 100+ moves one cell right per frame.
        let (gh, gw, dim) = (8, 8, 128);
        let frame = |shift: usize| -> Vec<usize> {
            (0..gh * gw)
                .map(|i| {
                    let (r, c) = (i / gw, i % gw);
                    if (2..5).contains(&r) && (1 + shift..4 + shift).contains(&c) {
                        100 + (r - 2) * 3 + (c - 1 - shift)
                    } else {
                        i % 7
                    }
                })
                .collect()
        };
        let mask = Mask {
            width: 64,
            height: 64,
            labels: (0..64 * 64)
                .map(|i| {
                    ((2 * 8..5 * 8).contains(&(i / 64)) && (8..4 * 8).contains(&(i % 64))) as u8 * 3
                })
                .collect(),
        };
        let mut lp = LabelPropagator::new(
            PropagationConfig::default(),
            &feats(&frame(0), dim),
            dim,
            (gh, gw),
            &mask,
            Some(1),
        )
        .unwrap();
        assert_eq!(lp.ids, vec![0, 3]);
        for shift in 1..4 {
            let soft = lp.step(&feats(&frame(shift), dim)).unwrap();
            let m = lp.to_mask(&soft, 8, 8);
            for (i, &l) in m.labels.iter().enumerate() {
                let (r, c) = (i / 8, i % 8);
                let inside = (2..5).contains(&r) && (1 + shift..4 + shift).contains(&c);
                assert_eq!(l == 3, inside, "frame {shift}, cell ({r}, {c})");
            }
        }
        let empty = Mask {
            width: 8,
            height: 8,
            labels: vec![0; 64],
        };
        assert!(
            LabelPropagator::new(
                PropagationConfig::default(),
                &feats(&frame(0), dim),
                dim,
                (gh, gw),
                &empty,
                Some(1)
            )
            .is_err()
        );
    }

    #[test]
    fn points_follow_and_get_lost() {
        let (g, dim) = (10, 128);
        let frame = |shift: usize, with_object: bool| -> Vec<usize> {
            (0..g * g)
                .map(|i| {
                    if with_object && i / g == 5 && i % g == 2 + shift {
                        127
                    } else {
                        i
                    }
                })
                .collect()
        };
        let mut pt = PointTracker::new(
            &feats(&frame(0, true), dim),
            dim,
            (g, g),
            (160, 160),
            &[(2.5 * 16.0, 5.5 * 16.0)],
        );
        pt.step(&feats(&frame(2, true), dim));
        let p = &pt.points[0];
        assert!(
            !p.lost && (p.x - 4.5).abs() < 1e-4 && (p.y - 5.5).abs() < 1e-4,
            "{p:?}"
        );
        // The object vanishes: the best match in the window does not map back.
        pt.step(&feats(&frame(0, false), dim));
        assert!(pt.points[0].lost, "{:?}", pt.points[0]);
    }
}
