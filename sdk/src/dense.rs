//! Dense-feature views: similarity maps, map upsampling, colour maps, the PCA foreground
//! mask, and overlays on the input image.

use dinoedge_runtime::RgbImage;
use dinoedge_runtime::resample::{AxisTaps, Filter, resize_aa};

use crate::pca::PcaBasis;

/// L2-normalised copies of patch rows `(n, dim)`.
pub fn normalized(patches: &[f32], dim: usize) -> Vec<f32> {
    let mut out = patches.to_vec();
    for r in out.chunks_exact_mut(dim) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|v| *v /= n);
    }
    out
}

/// The patch under pixel (x, y) of an image of `size` (w, h) seen as a `grid` (rows, cols).
pub fn patch_at(x: f32, y: f32, size: (usize, usize), grid: (usize, usize)) -> usize {
    let c = ((x / size.0 as f32) * grid.1 as f32)
        .floor()
        .clamp(0.0, grid.1 as f32 - 1.0) as usize;
    let r = ((y / size.1 as f32) * grid.0 as f32)
        .floor()
        .clamp(0.0, grid.0 as f32 - 1.0) as usize;
    r * grid.1 + c
}

/// Cosine similarity of every patch to patch `query` (values in [-1, 1], row-major grid).
pub fn similarity_map(patches: &[f32], dim: usize, query: usize) -> Vec<f32> {
    let q = &patches[query * dim..(query + 1) * dim];
    let qn = q.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    patches
        .chunks_exact(dim)
        .map(|r| {
            let rn = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            r.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() / (rn * qn)
        })
        .collect()
}

/// Bilinear upsampling (align_corners = False) of `channels` planes of `grid` to (h, w).
pub fn upsample_planes(
    planes: &[f32],
    channels: usize,
    grid: (usize, usize),
    h: usize,
    w: usize,
) -> Vec<f32> {
    resize_aa(planes, channels, grid.0, grid.1, h, w, Filter::Bilinear)
}

/// Turbo-like colour map for t in [0, 1] (dark blue, cyan, green, yellow, red).
pub fn colormap(t: f32) -> [u8; 3] {
    const STOPS: [(f32, [f32; 3]); 6] = [
        (0.0, [48.0, 18.0, 59.0]),
        (0.2, [50.0, 125.0, 240.0]),
        (0.4, [27.0, 229.0, 181.0]),
        (0.6, [164.0, 252.0, 60.0]),
        (0.8, [250.0, 170.0, 40.0]),
        (1.0, [122.0, 4.0, 3.0]),
    ];
    let t = t.clamp(0.0, 1.0);
    let i = STOPS.iter().position(|s| s.0 >= t).unwrap_or(5).max(1);
    let ((t0, a), (t1, b)) = (STOPS[i - 1], STOPS[i]);
    let f = (t - t0) / (t1 - t0);
    [0, 1, 2].map(|c| (a[c] + (b[c] - a[c]) * f).round() as u8)
}

/// A map of `grid` values in [lo, hi] drawn with [`colormap`] at (w, h), bilinear.
pub fn render_map(
    values: &[f32],
    grid: (usize, usize),
    lo: f32,
    hi: f32,
    w: usize,
    h: usize,
) -> RgbImage {
    let up = upsample_planes(values, 1, grid, h, w);
    let mut data = Vec::with_capacity(w * h * 3);
    for v in up {
        data.extend_from_slice(&colormap((v - lo) / (hi - lo).max(1e-12)));
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

/// Foreground mask from the first PCA component: patches whose projection is above the
/// threshold, with the sign chosen so that the image border is mostly background.
pub fn pca_foreground(
    basis: &PcaBasis,
    patches: &[f32],
    grid: (usize, usize),
    threshold: f32,
) -> Vec<bool> {
    let proj: Vec<f32> = basis.project(patches).iter().map(|p| p[0]).collect();
    let (h, w) = grid;
    let border: Vec<usize> = (0..h * w)
        .filter(|&i| i / w == 0 || i / w == h - 1 || i % w == 0 || i % w == w - 1)
        .collect();
    let pos_border = border.iter().filter(|&&i| proj[i] > threshold).count();
    let flip = pos_border * 2 > border.len();
    proj.iter()
        .map(|&v| if flip { -v > threshold } else { v > threshold })
        .collect()
}

/// `img` blended with `over` (same size) at `alpha`.
pub fn blend(img: &RgbImage, over: &RgbImage, alpha: f32) -> RgbImage {
    let data = img
        .data
        .iter()
        .zip(&over.data)
        .map(|(&a, &b)| (a as f32 * (1.0 - alpha) + b as f32 * alpha).round() as u8)
        .collect();
    RgbImage {
        width: img.width,
        height: img.height,
        data,
    }
}

/// Resizes an RGB image to (w, h), bilinear (align_corners = False) with antialiasing when
/// shrinking: the one resize of 8-bit pictures (PCA maps up to the frame, frames down to a view).
pub fn resize_rgb(img: &RgbImage, w: usize, h: usize) -> RgbImage {
    let (iw, ih) = (img.width, img.height);
    let mut planar = vec![0.0f32; 3 * iw * ih];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planar[c * iw * ih + i] = px[c] as f32;
        }
    }
    let up = resize_aa(&planar, 3, ih, iw, h, w, Filter::Bilinear);
    let n = w * h;
    let mut data = vec![0u8; 3 * n];
    for i in 0..n {
        for c in 0..3 {
            data[3 * i + c] = up[c * n + i].round().clamp(0.0, 255.0) as u8;
        }
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

/// (input w, h, output w, h) and the width and height taps.
type SizeTaps = ((usize, usize, usize, usize), AxisTaps, AxisTaps);

/// [`resize_rgb`] for pictures at repeating sizes (the live views): the taps are kept per
/// size pair and the passes run on interleaved 8-bit RGB in f32, so a picture is within one
/// level of [`resize_rgb`]'s (f32 taps where it uses f64, rounding included; tested).
#[derive(Default)]
pub struct RgbResizer {
    /// Taps per size pair, most recent last.
    taps: Vec<SizeTaps>,
    /// Width pass: (ih, w, 3).
    rows: Vec<f32>,
}

impl RgbResizer {
    /// Size pairs kept (a live page resizes the frame and the PCA map).
    const KEEP: usize = 4;

    pub fn resize(&mut self, img: &RgbImage, w: usize, h: usize) -> RgbImage {
        let (iw, ih) = (img.width, img.height);
        let key = (iw, ih, w, h);
        let i = match self.taps.iter().position(|t| t.0 == key) {
            Some(i) => i,
            None => {
                if self.taps.len() == Self::KEEP {
                    self.taps.remove(0);
                }
                let (tx, ty) = (
                    AxisTaps::new(iw, w, Filter::Bilinear),
                    AxisTaps::new(ih, h, Filter::Bilinear),
                );
                self.taps.push((key, tx, ty));
                self.taps.len() - 1
            }
        };
        let (_, tx, ty) = &self.taps[i];
        self.rows.resize(ih * w * 3, 0.0);
        for (src, dst) in img
            .data
            .chunks_exact(iw * 3)
            .zip(self.rows.chunks_exact_mut(w * 3))
        {
            for (x, d) in dst.chunks_exact_mut(3).enumerate() {
                let (start, wts) = tx.of(x);
                let mut acc = [0.0f32; 3];
                for (p, &wt) in src[start * 3..].chunks_exact(3).zip(wts) {
                    acc[0] += wt * p[0] as f32;
                    acc[1] += wt * p[1] as f32;
                    acc[2] += wt * p[2] as f32;
                }
                d.copy_from_slice(&acc);
            }
        }
        let mut data = vec![0u8; h * w * 3];
        let mut acc = vec![0.0f32; w * 3];
        for (y, out) in data.chunks_exact_mut(w * 3).enumerate() {
            let (start, wts) = ty.of(y);
            acc.iter_mut().for_each(|v| *v = 0.0);
            for (j, &wt) in wts.iter().enumerate() {
                let r = &self.rows[(start + j) * w * 3..][..w * 3];
                acc.iter_mut().zip(r).for_each(|(a, &v)| *a += wt * v);
            }
            // Round half up on the clamped value: what `round` gives on these non-negatives.
            out.iter_mut()
                .zip(&acc)
                .for_each(|(o, &v)| *o = (v.clamp(0.0, 255.0) + 0.5) as u8);
        }
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_peaks_at_the_query() {
        let dim = 4;
        let patches: Vec<f32> = (0..6 * dim)
            .map(|i| ((i * 7919) % 13) as f32 - 6.0)
            .collect();
        let s = similarity_map(&patches, dim, 3);
        assert!((s[3] - 1.0).abs() < 1e-6);
        assert!(s.iter().all(|&v| v <= 1.0 + 1e-6));
        assert_eq!(patch_at(15.9, 0.0, (32, 16), (2, 4)), 1);
        assert_eq!(patch_at(31.0, 15.0, (32, 16), (2, 4)), 7);
    }

    #[test]
    fn the_reusable_resizer_is_within_one_level_of_resize_rgb() {
        let mut seed = 11u32;
        let mut r = RgbResizer::default();
        for (iw, ih, w, h) in [
            (97, 61, 40, 25),
            (14, 20, 160, 230),
            (97, 61, 40, 25),
            (8, 8, 8, 8),
        ] {
            let data = (0..iw * ih * 3)
                .map(|_| {
                    seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                    (seed >> 24) as u8
                })
                .collect();
            let img = RgbImage::new(iw, ih, data).unwrap();
            let (want, got) = (resize_rgb(&img, w, h), r.resize(&img, w, h));
            assert_eq!((got.width, got.height), (w, h));
            let worst = want
                .data
                .iter()
                .zip(&got.data)
                .map(|(a, b)| a.abs_diff(*b))
                .max();
            assert!(worst <= Some(1), "{iw}x{ih} -> {w}x{h}: {worst:?}");
        }
    }

    #[test]
    fn colormap_ends() {
        assert_eq!(colormap(0.0), [48, 18, 59]);
        assert_eq!(colormap(1.0), [122, 4, 3]);
        let m = render_map(&[0.0, 1.0, 1.0, 0.0], (2, 2), 0.0, 1.0, 8, 8);
        assert_eq!(m.data.len(), 8 * 8 * 3);
    }
}
