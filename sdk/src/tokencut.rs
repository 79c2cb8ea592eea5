//! Unsupervised object discovery with TokenCut (Wang et al. 2022), on output patch features
//! as DINOv3 evaluates it: a normalised cut of the patch-affinity graph.
//!
//! 1. `A = F Fᵀ` over L2-normalised patch features; `A = 1` where `A > tau`, else `eps`.
//! 2. `D = diag(rowsum A)`; solve `(D - A) y = λ D y` and take the eigenvector of the
//!    second-smallest eigenvalue (through the symmetric form `D^-1/2 (D - A) D^-1/2`).
//! 3. Foreground = `y > mean(y)`, oriented so that the seed `argmax |y|` is foreground; the
//!    4-connected component holding the seed is the object; its box scaled by the patch size.

use nalgebra::{DMatrix, SymmetricEigen};
use serde::Serialize;

use crate::dense::normalized;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug)]
pub struct TokenCutConfig {
    pub tau: f32,
    pub eps: f32,
    /// Binarise the affinities (TokenCut's default); otherwise keep similarities above tau.
    pub binary: bool,
}

impl Default for TokenCutConfig {
    fn default() -> Self {
        TokenCutConfig {
            tau: 0.2,
            eps: 1e-5,
            binary: true,
        }
    }
}

/// The discovered object.
#[derive(Clone, Debug, Serialize)]
pub struct Discovery {
    pub grid: (usize, usize),
    /// Foreground patches of the seed's component (row-major grid).
    pub mask: Vec<bool>,
    /// The raw bipartition (all foreground patches, before keeping the seed's component).
    pub bipartition: Vec<bool>,
    pub seed: usize,
    /// Box in pixels of the model input: x0, y0, x1, y1 (exclusive), clipped to the image.
    pub bbox: [usize; 4],
    /// The second-smallest generalised eigenvector, oriented so the seed is positive.
    pub eigenvector: Vec<f32>,
    pub eigenvalue: f64,
}

/// Runs TokenCut on patch features `(h*w, dim)` of a `grid` with patch size `patch` on an
/// input of `size` (w, h) pixels.
pub fn tokencut(
    patches: &[f32],
    dim: usize,
    grid: (usize, usize),
    patch: usize,
    size: (usize, usize),
    cfg: &TokenCutConfig,
) -> Result<Discovery> {
    let n = grid.0 * grid.1;
    if n < 3 || patches.len() != n * dim {
        return Err(Error::InvalidArgument(format!(
            "TokenCut needs at least 3 patches and (h*w, dim) features, got grid {grid:?} and {} values",
            patches.len()
        )));
    }
    let f = normalized(patches, dim);
    let mut a = DMatrix::<f64>::zeros(n, n);
    for i in 0..n {
        for j in i..n {
            let s: f32 = f[i * dim..(i + 1) * dim]
                .iter()
                .zip(&f[j * dim..(j + 1) * dim])
                .map(|(x, y)| x * y)
                .sum();
            let v = if s > cfg.tau {
                if cfg.binary { 1.0 } else { s as f64 }
            } else {
                cfg.eps as f64
            };
            a[(i, j)] = v;
            a[(j, i)] = v;
        }
    }
    let d: Vec<f64> = (0..n).map(|i| a.row(i).sum()).collect();
    let dis: Vec<f64> = d.iter().map(|v| 1.0 / v.sqrt()).collect();
    // L = I - D^-1/2 A D^-1/2
    let l = DMatrix::from_fn(
        n,
        n,
        |i, j| if i == j { 1.0 } else { 0.0 } - dis[i] * a[(i, j)] * dis[j],
    );
    let e = SymmetricEigen::new(l);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| e.eigenvalues[x].total_cmp(&e.eigenvalues[y]));
    let k = order[1];
    let mut y: Vec<f64> = (0..n).map(|i| e.eigenvectors[(i, k)] * dis[i]).collect();
    let mean = y.iter().sum::<f64>() / n as f64;
    let mut bip: Vec<bool> = y.iter().map(|&v| v > mean).collect();
    let seed = (0..n)
        .max_by(|&i, &j| y[i].abs().total_cmp(&y[j].abs()))
        .unwrap_or(0);
    if !bip[seed] {
        y.iter_mut().for_each(|v| *v = -*v);
        bip.iter_mut().for_each(|b| *b = !*b);
    }
    let mask = component(&bip, grid, seed);
    let (gh, gw) = grid;
    let (mut r0, mut r1, mut c0, mut c1) = (gh, 0, gw, 0);
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (r, c) = (i / gw, i % gw);
        r0 = r0.min(r);
        r1 = r1.max(r);
        c0 = c0.min(c);
        c1 = c1.max(c);
    }
    let bbox = [
        (c0 * patch).min(size.0),
        (r0 * patch).min(size.1),
        ((c1 + 1) * patch).min(size.0),
        ((r1 + 1) * patch).min(size.1),
    ];
    Ok(Discovery {
        grid,
        mask,
        bipartition: bip,
        seed,
        bbox,
        eigenvector: y.iter().map(|&v| v as f32).collect(),
        eigenvalue: e.eigenvalues[k],
    })
}

/// The 4-connected component of `m` holding `seed` (scipy.ndimage.label's default).
pub fn component(m: &[bool], grid: (usize, usize), seed: usize) -> Vec<bool> {
    let (gh, gw) = grid;
    let mut out = vec![false; m.len()];
    if !m[seed] {
        return out;
    }
    let mut stack = vec![seed];
    out[seed] = true;
    while let Some(i) = stack.pop() {
        let (r, c) = (i / gw, i % gw);
        let mut visit = |j: usize| {
            if m[j] && !out[j] {
                out[j] = true;
                stack.push(j);
            }
        };
        if r > 0 {
            visit(i - gw);
        }
        if r + 1 < gh {
            visit(i + gw);
        }
        if c > 0 {
            visit(i - 1);
        }
        if c + 1 < gw {
            visit(i + 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_object_block_and_its_box() {
        // 10x12 grid: background features near e0 (two shades), an object near e1 at rows 3..6,
        // columns 4..9, and a separate small object patch at (8, 1) not connected to it.
        let (gh, gw, dim) = (10, 12, 8);
        let mut f = Vec::new();
        for i in 0..gh * gw {
            let (r, c) = (i / gw, i % gw);
            let obj = ((3..6).contains(&r) && (4..9).contains(&c)) || (r == 8 && c == 1);
            for j in 0..dim {
                let base = if obj {
                    (j == 1) as u8 as f32
                } else {
                    (j == 0) as u8 as f32
                };
                f.push(base + 0.05 * (((i * 7 + j * 13) % 11) as f32 / 11.0));
            }
        }
        let d = tokencut(
            &f,
            dim,
            (gh, gw),
            16,
            (gw * 16, gh * 16),
            &TokenCutConfig::default(),
        )
        .unwrap();
        let (r, c) = (d.seed / gw, d.seed % gw);
        assert!(d.bipartition[d.seed] && d.mask[d.seed], "seed ({r}, {c})");
        // Either the object or the background is the "foreground" side; the object is the
        // smaller side of the cut, which TokenCut's seed (largest |y|) picks.
        let count = d.mask.iter().filter(|&&m| m).count();
        assert_eq!(count, 15, "{:?}", d.mask);
        assert!(
            d.bipartition[8 * gw + 1] && !d.mask[8 * gw + 1],
            "the detached patch is cut off by the component"
        );
        assert_eq!(d.bbox, [4 * 16, 3 * 16, 9 * 16, 6 * 16]);
    }
}
