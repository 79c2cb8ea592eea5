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

use dinoedge_runtime::backend::cpu::isa::Isa;
use dinoedge_runtime::backend::cpu::pool::Pool;
use dinoedge_runtime::ops::matmul::fast::gemm::{Strided, gemm};

use crate::davis::Mask;
use crate::dense::{normalized, upsample_planes};
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

/// Label propagation state over a video.
pub struct LabelPropagator {
    cfg: PropagationConfig,
    grid: (usize, usize),
    dim: usize,
    /// Object id of each label channel (0 first).
    pub ids: Vec<u8>,
    first: (Vec<f32>, SoftLabels),
    recent: VecDeque<(Vec<f32>, SoftLabels)>,
    pool: Pool,
    isa: Isa,
    sim: Vec<f32>,
    pack: Vec<f32>,
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
        let pool = Pool::new(threads)
            .map_err(|e| Error::resource(format!("{threads} worker threads"), e))?;
        Ok(LabelPropagator {
            cfg,
            grid,
            dim,
            ids,
            first: (normalized(first_patches, dim), soft),
            recent: VecDeque::new(),
            pool,
            isa: Isa::detect(),
            sim: Vec::new(),
            pack: Vec::new(),
        })
    }

    pub fn grid(&self) -> (usize, usize) {
        self.grid
    }

    /// Soft labels of the next frame from its patch features `(h*w, dim)` (same grid).
    pub fn step(&mut self, patches: &[f32]) -> Result<SoftLabels> {
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
        let f = normalized(patches, self.dim);
        let ctx: Vec<&(Vec<f32>, SoftLabels)> = std::iter::once(&self.first)
            .chain(self.recent.iter())
            .collect();
        let nctx = ctx.len();
        // sim[k] (hw_tar x hw_src) = f_tar · f_kᵀ
        self.sim.resize(nctx * hw * hw, 0.0);
        for (k, (fk, _)) in ctx.iter().enumerate() {
            gemm(
                Some(&self.pool),
                self.isa,
                hw,
                hw,
                self.dim,
                Strided::rows(&f, self.dim),
                Strided::transposed(fk, self.dim),
                &mut self.sim[k * hw * hw..(k + 1) * hw * hw],
                hw,
                false,
                &mut self.pack,
            );
        }
        let c = self.ids.len();
        let mut out = vec![0.0f32; c * hw];
        let r = self
            .cfg
            .neighborhood
            .map(|n| n as isize)
            .unwrap_or(isize::MAX);
        let k_top = self.cfg.topk;
        let inv_t = 1.0 / self.cfg.temperature;
        let mut best: Vec<(f32, usize, usize)> = Vec::with_capacity(k_top + 1);
        for t in 0..hw {
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
            for k in 0..nctx {
                let row = &self.sim[(k * hw + t) * hw..(k * hw + t + 1) * hw];
                for sr in r0..=r1 {
                    for sc in c0..=c1 {
                        let s = sr * gw + sc;
                        let v = row[s];
                        if best.len() < k_top || v > best[best.len() - 1].0 {
                            let pos = best.partition_point(|b| b.0 >= v);
                            best.insert(pos, (v, k, s));
                            best.truncate(k_top);
                        }
                    }
                }
            }
            // Weights exp(cos / T), normalised (shifted by the max for range).
            let m = best[0].0;
            let ws: Vec<f32> = best.iter().map(|b| ((b.0 - m) * inv_t).exp()).collect();
            let z: f32 = ws.iter().sum();
            for ((_, k, s), w) in best.iter().zip(&ws) {
                let seg = &ctx[*k].1;
                for ch in 0..c {
                    out[ch * hw + t] += w / z * seg[ch * hw + s];
                }
            }
        }
        if self.recent.len() == self.cfg.n_last {
            self.recent.pop_front();
        }
        if self.cfg.n_last > 0 {
            self.recent.push_back((f, out.clone()));
        }
        Ok(out)
    }

    /// Hard labels at `(width, height)`: bilinear upsampling of the soft labels, per-channel
    /// min-max normalisation, argmax (as DINO's `norm_mask` + argmax).
    pub fn to_mask(&self, soft: &[f32], width: usize, height: usize) -> Mask {
        let c = self.ids.len();
        let mut up = upsample_planes(soft, c, self.grid, height, width);
        let n = width * height;
        for ch in up.chunks_exact_mut(n) {
            let (lo, hi) = ch
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            if hi > 0.0 {
                ch.iter_mut()
                    .for_each(|v| *v = (*v - lo) / (hi - lo).max(1e-12));
            }
        }
        let labels = (0..n)
            .map(|i| {
                let k = (0..c)
                    .max_by(|&a, &b| up[a * n + i].total_cmp(&up[b * n + i]))
                    .unwrap_or(0);
                self.ids[k]
            })
            .collect();
        Mask {
            width,
            height,
            labels,
        }
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
