//! CPU forms of the objective's kernels (`loss.cu`), named as they are.

use super::Rows;

const EPS_COS: f32 = 1e-8;
const EPS_NORM: f32 = 1e-12;

fn norm(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum::<f32>().sqrt()
}

/// dst row k = src row `(k / per) * n + prefix + k % per`.
pub fn gather_rows(dst: &mut [f32], src: &[f32], sel: Rows, dim: usize) {
    for (k, d) in dst.chunks_exact_mut(dim).take(sel.count()).enumerate() {
        let r = (k / sel.per) * sel.n + sel.prefix + k % sel.per;
        d.copy_from_slice(&src[r * dim..(r + 1) * dim]);
    }
}

/// The adjoint of [`gather_rows`]: dst (+=) on the selected rows.
pub fn scatter_add_rows(dst: &mut [f32], src: &[f32], sel: Rows, dim: usize) {
    for (k, s) in src.chunks_exact(dim).take(sel.count()).enumerate() {
        let r = (k / sel.per) * sel.n + sel.prefix + k % sel.per;
        dst[r * dim..(r + 1) * dim]
            .iter_mut()
            .zip(s)
            .for_each(|(a, b)| *a += b);
    }
}

/// u = rows of `x` divided by their L2 norm (at least 1e-12), as `F.normalize`; `norms` (=)
/// those norms.
pub fn normalize_rows(u: &mut [f32], norms: &mut [f32], x: &[f32], dim: usize) {
    for ((o, r), n) in u.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(norms) {
        *n = norm(r).max(EPS_NORM);
        o.iter_mut().zip(r).for_each(|(a, b)| *a = b / *n);
    }
}

/// gs (=) coef * (gs - gt); returns the sum of (gs - gt)² (in f64).
pub fn gram_difference(gs: &mut [f32], gt: &[f32], coef: f32) -> f64 {
    let mut loss = 0.0f64;
    for (s, t) in gs.iter_mut().zip(gt) {
        let diff = *s - t;
        loss += (diff as f64) * (diff as f64);
        *s = coef * diff;
    }
    loss
}

/// Through the normalisation, row by row: dp (+=) (du - u (u . du)) / norm.
pub fn normalize_rows_backward(dp: &mut [f32], u: &[f32], du: &[f32], norms: &[f32], dim: usize) {
    let rows = dp.chunks_exact_mut(dim).zip(u.chunks_exact(dim));
    for (((dpr, u), du), &n) in rows.zip(du.chunks_exact(dim)).zip(norms) {
        let ud: f32 = u.iter().zip(du).map(|(a, b)| a * b).sum();
        for j in 0..dim {
            dpr[j] += (du[j] - u[j] * ud) / n;
        }
    }
}

/// `w * (mean(1 - cos) + mean(smooth_l1))` over rows of `p` against `t`; dp (=) its
/// gradient.
pub fn cos_smooth_l1(dp: &mut [f32], p: &[f32], t: &[f32], dim: usize, w: f32) -> f64 {
    let rows = p.len() / dim;
    let (wc, wl) = (w / rows as f32, w / p.len() as f32);
    let (mut cos_sum, mut l1_sum) = (0.0f64, 0.0f64);
    for ((pr, tr), dr) in p
        .chunks_exact(dim)
        .zip(t.chunks_exact(dim))
        .zip(dp.chunks_exact_mut(dim))
    {
        let (pn, tn) = (norm(pr).max(EPS_COS), norm(tr).max(EPS_COS));
        let dot: f32 = pr.iter().zip(tr).map(|(a, b)| a * b).sum();
        let c = dot / (pn * tn);
        cos_sum += (1.0 - c) as f64;
        for j in 0..dim {
            // d(1 - c)/dp = -(t / (|p||t|) - c p / |p|^2)
            let mut g = -wc * (tr[j] / (pn * tn) - c * pr[j] / (pn * pn));
            let e = pr[j] - tr[j];
            if e.abs() < 1.0 {
                l1_sum += 0.5 * (e as f64) * (e as f64);
                g += wl * e;
            } else {
                l1_sum += (e.abs() - 0.5) as f64;
                g += wl * e.signum();
            }
            dr[j] = g;
        }
    }
    w as f64 * (cos_sum / rows as f64 + l1_sum / p.len() as f64)
}
