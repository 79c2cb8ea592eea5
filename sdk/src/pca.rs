//! The classic DINO picture: the first three principal components of the patch features
//! mapped to RGB.
//!
//! [`PcaBasis::fit`] computes the components on one or more frames (eigenvectors of the
//! covariance, or of the Gram matrix when there are fewer patches than dimensions) and the
//! 1st/99th percentile of each projection; [`PcaBasis::render`] maps new patches with that
//! fixed basis, so colours stay stable across frames of a video.

use dinoedge_runtime::RgbImage;
use nalgebra::{DMatrix, SymmetricEigen};

use crate::error::{Error, Result};

/// Three principal directions of patch features and their display range.
#[derive(Clone, Debug)]
pub struct PcaBasis {
    pub mean: Vec<f32>,
    /// Three unit vectors of length D, strongest first.
    pub components: [Vec<f32>; 3],
    /// Fraction of the variance each component explains.
    pub explained: [f32; 3],
    /// Per-component low and high display bounds (1st and 99th percentile when fitted).
    pub lo: [f32; 3],
    pub hi: [f32; 3],
}

impl PcaBasis {
    /// Fits on patch rows `(n, dim)` (several frames may be concatenated).
    pub fn fit(patches: &[f32], dim: usize) -> Result<Self> {
        let n = patches.len() / dim;
        if n < 2 || dim < 3 {
            return Err(Error::InvalidArgument(format!(
                "PCA needs at least 2 patches of dimension >= 3, got {n} x {dim}"
            )));
        }
        let mut mean = vec![0.0f64; dim];
        for row in patches.chunks_exact(dim) {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += *x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let x = DMatrix::from_fn(n, dim, |i, j| patches[i * dim + j] as f64 - mean[j]);
        // Eigenvectors of XᵀX (dim x dim), or of X Xᵀ (n x n) mapped back through Xᵀ.
        let (vectors, values) = if dim <= n {
            let e = SymmetricEigen::new(x.transpose() * &x);
            (e.eigenvectors, e.eigenvalues)
        } else {
            let e = SymmetricEigen::new(&x * x.transpose());
            (x.transpose() * e.eigenvectors, e.eigenvalues)
        };
        let total: f64 = values.iter().map(|v| v.max(0.0)).sum::<f64>().max(1e-30);
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| {
            values[b]
                .partial_cmp(&values[a])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let mut components: [Vec<f32>; 3] = Default::default();
        let mut explained = [0.0f32; 3];
        for k in 0..3 {
            let col = vectors.column(order[k]);
            let norm = col.norm().max(1e-30);
            let mut v: Vec<f64> = col.iter().map(|c| c / norm).collect();
            // Fix the sign: the projection's third moment is positive (deterministic colours).
            let proj: Vec<f64> = (0..n)
                .map(|i| (0..dim).map(|j| x[(i, j)] * v[j]).sum())
                .collect();
            if proj.iter().map(|p| p * p * p).sum::<f64>() < 0.0 {
                v.iter_mut().for_each(|c| *c = -*c);
            }
            components[k] = v.iter().map(|&c| c as f32).collect();
            explained[k] = (values[order[k]].max(0.0) / total) as f32;
        }
        let mut basis = PcaBasis {
            mean: mean.iter().map(|&m| m as f32).collect(),
            components,
            explained,
            lo: [0.0; 3],
            hi: [1.0; 3],
        };
        let proj = basis.project(patches);
        for k in 0..3 {
            let mut v: Vec<f32> = proj.iter().map(|p| p[k]).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            basis.lo[k] = at(0.01);
            basis.hi[k] = at(0.99);
        }
        Ok(basis)
    }

    /// Projections of patch rows onto the three components.
    pub fn project(&self, patches: &[f32]) -> Vec<[f32; 3]> {
        let dim = self.mean.len();
        patches
            .chunks_exact(dim)
            .map(|row| {
                let mut p = [0.0f32; 3];
                for (k, comp) in self.components.iter().enumerate() {
                    p[k] = row
                        .iter()
                        .zip(&self.mean)
                        .zip(comp)
                        .map(|((x, m), c)| (x - m) * c)
                        .sum();
                }
                p
            })
            .collect()
    }

    /// A `grid_w x grid_h` RGB image, one pixel per patch, scaled to the display range.
    pub fn render(&self, patches: &[f32], grid: (usize, usize)) -> RgbImage {
        let proj = self.project(patches);
        let mut data = Vec::with_capacity(proj.len() * 3);
        for p in &proj {
            for ((v, lo), hi) in p.iter().zip(&self.lo).zip(&self.hi) {
                let t = (v - lo) / (hi - lo).max(1e-12);
                data.push((t.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        RgbImage {
            width: grid.1,
            height: grid.0,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_planted_directions() {
        // Patches = a * e0 * 5 + b * e1 * 2 + small noise along other axes; PCA must find e0, e1.
        let dim = 8;
        let mut seed = 3u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let mut patches = Vec::new();
        for _ in 0..200 {
            let (a, b) = (rnd(), rnd());
            for j in 0..dim {
                let v = match j {
                    2 => 5.0 * a,
                    5 => 2.0 * b,
                    _ => 0.1 * rnd(),
                };
                patches.push(v + 1.0);
            }
        }
        let basis = PcaBasis::fit(&patches, dim).unwrap();
        assert!(
            basis.components[0][2].abs() > 0.99,
            "{:?}",
            basis.components[0]
        );
        assert!(
            basis.components[1][5].abs() > 0.99,
            "{:?}",
            basis.components[1]
        );
        assert!(basis.explained[0] > basis.explained[1] && basis.explained[1] > basis.explained[2]);
        // Same answer through the Gram path (fewer patches than dims).
        let few = &patches[..dim * 6];
        let b2 = PcaBasis::fit(few, dim).unwrap();
        assert!((b2.components[0].iter().map(|c| c * c).sum::<f32>() - 1.0).abs() < 1e-4);
        let img = basis.render(&patches[..dim * 20], (4, 5));
        assert_eq!((img.width, img.height, img.data.len()), (5, 4, 60));
    }
}
