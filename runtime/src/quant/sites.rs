//! The int8 decisions every architecture shares: per Linear input site, the int8 error on
//! the calibration sample, SmoothQuant where it helps (folded into the LayerNorm before the
//! site), and static input scales.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;

use super::{CalibrationStats, QuantizeOptions, SiteReport, Smoothing};
use crate::backend::cpu::isa::Isa;
use crate::backend::cpu::pool::Pool;
use crate::config::{ActivationScheme, Calibration, QuantConfig, SmoothQuant};
use crate::error::{Result, RuntimeError};
use crate::ops::matmul::Epi;
use crate::ops::matmul::fast::{PackedLinear, matmul_forward, quantize_rows, round_even};

/// Fake-quantises rows of `x` (n x k) as the int8 kernels do.
fn fake_quant_rows(x: &[f32], k: usize, fixed: Option<f32>) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (o, row) in out.chunks_exact_mut(k).zip(x.chunks_exact(k)) {
        let s = fixed.unwrap_or_else(|| row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0);
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        for (d, v) in o.iter_mut().zip(row) {
            *d = round_even((v * inv).clamp(-127.0, 127.0)) * s;
        }
    }
    out
}

/// Float products `X Wᵀ` with the fast kernels (the error estimates run many of them).
fn matmul(pool: &Pool, x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    let o = w.len() / k;
    let n = x.len() / k;
    let packed = PackedLinear::f32(Isa::detect(), w, None, o, k);
    let mut y = vec![0.0; n * o];
    matmul_forward(pool, &mut y, x, &packed, n, Epi::Store, &mut []);
    y
}

/// Relative squared error ||Q(X) Q(W)ᵀ - X Wᵀ||² / ||X Wᵀ||² for input scaling `s`
/// (X / s, W * s) and the activation scheme; `want` is X Wᵀ.
fn site_error(
    pool: &Pool,
    x: &[f32],
    w: &[f32],
    want: &[f32],
    k: usize,
    s: Option<&[f32]>,
    scheme: ActivationScheme,
    chan_absmax: &[f32],
) -> f64 {
    let o = w.len() / k;
    let (xs, ws) = match s {
        Some(s) => (
            x.chunks_exact(k)
                .flat_map(|r| r.iter().zip(s).map(|(v, s)| v / s))
                .collect::<Vec<_>>(),
            w.chunks_exact(k)
                .flat_map(|r| r.iter().zip(s).map(|(v, s)| v * s))
                .collect::<Vec<_>>(),
        ),
        None => (x.to_vec(), w.to_vec()),
    };
    let fixed = match scheme {
        ActivationScheme::StaticPerTensor => Some(static_scale(chan_absmax, s)),
        ActivationScheme::DynamicPerToken => None,
    };
    let xq = fake_quant_rows(&xs, k, fixed);
    let (q, scales) = quantize_rows(&ws, o, k);
    let wq: Vec<f32> = q
        .iter()
        .enumerate()
        .map(|(i, &v)| v as f32 * scales[i / k])
        .collect();
    let got = matmul(pool, &xq, &wq, k);
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = want
        .iter()
        .map(|b| (*b as f64).powi(2))
        .sum::<f64>()
        .max(1e-30);
    num / den
}

/// Per-tensor input scale: the largest (smoothed) channel maximum over 127.
fn static_scale(chan_absmax: &[f32], s: Option<&[f32]>) -> f32 {
    let m = match s {
        Some(s) => chan_absmax
            .iter()
            .zip(s)
            .fold(0.0f32, |m, (a, s)| m.max(a / s)),
        None => chan_absmax.iter().fold(0.0f32, |m, a| m.max(*a)),
    };
    m / 127.0
}

/// A Linear input site: the weights reading one input, and the LayerNorm producing it.
pub(super) struct Site<P> {
    /// The calibration key: the Linear's name (`layer.3.qkv`, `stages.2.layers.0.pw1`).
    pub name: String,
    pub members: Vec<P>,
    /// The LayerNorm (weight, bias) whose output this is, if any (SmoothQuant folds there).
    pub norm: Option<(P, P)>,
    /// The input's width: the weights' columns.
    pub k: usize,
    /// The LayerNorm's width: column `j` belongs to its channel `j % norm_width` (an im2col
    /// row repeats the channels once per tap).
    pub norm_width: usize,
}

/// What [`decide`] chose, per site and per weight.
pub(super) struct Decisions<P> {
    pub reports: Vec<SiteReport>,
    /// Sites whose smoothing was folded into their LayerNorm.
    pub smoothed: Vec<String>,
    /// Static input scales, per quantised weight.
    pub input_scales: HashMap<P, f32>,
}

/// SmoothQuant factors for strength `alpha`, one per LayerNorm channel (`width` of them).
fn smooth_factors(chan_absmax: &[f32], w: &[f32], k: usize, width: usize, alpha: f32) -> Vec<f32> {
    let (mut xmax, mut wmax) = (vec![0.0f32; width], vec![0.0f32; width]);
    for (j, a) in chan_absmax.iter().enumerate() {
        xmax[j % width] = xmax[j % width].max(*a);
    }
    for row in w.chunks_exact(k) {
        for (j, v) in row.iter().enumerate() {
            wmax[j % width] = wmax[j % width].max(v.abs());
        }
    }
    xmax.iter()
        .zip(&wmax)
        .map(|(&a, &b)| {
            let s = a.max(1e-5).powf(alpha) / b.max(1e-5).powf(1.0 - alpha);
            if s.is_finite() && s > 0.0 {
                s.clamp(1e-4, 1e4)
            } else {
                1.0
            }
        })
        .collect()
}

/// Per-channel factors spread over `k` columns.
fn per_column(s: &[f32], k: usize) -> Vec<f32> {
    (0..k).map(|j| s[j % s.len()]).collect()
}

/// For each site: its int8 error on the calibration sample, SmoothQuant where it clearly
/// lowers that error (folded into `values`: 1/s into the LayerNorm, s into the weight
/// columns), and static input scales when asked for.
pub(super) fn decide<P: Copy + Eq + Hash + Debug>(
    sites: Vec<Site<P>>,
    values: &mut HashMap<P, Vec<f32>>,
    opts: &QuantizeOptions,
    calib: Option<&CalibrationStats>,
) -> Result<Decisions<P>> {
    if opts.activations == ActivationScheme::StaticPerTensor && calib.is_none() {
        return Err(RuntimeError::input(
            "activations",
            "static activation scales need calibration images",
        ));
    }
    let pool = Pool::new(opts.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }))
    .map_err(|e| RuntimeError::input("threads", e.to_string()))?;
    let alphas: &[f32] = match opts.smoothing {
        Smoothing::Auto => &[0.25, 0.5, 0.75],
        Smoothing::Alpha(a) => &[a],
        Smoothing::Off => &[],
    };
    let mut out = Decisions {
        reports: Vec::new(),
        smoothed: Vec::new(),
        input_scales: HashMap::new(),
    };
    for site in sites {
        let value = |p: &P| {
            values
                .get(p)
                .ok_or_else(|| RuntimeError::input(format!("{p:?}"), "missing"))
        };
        let mut report = SiteReport {
            site: site.name.clone(),
            error_plain: None,
            error_smoothed: None,
            alpha: None,
            input_scale: None,
        };
        let k = site.k;
        let stats = calib.and_then(|c| c.inputs.get(&site.name));
        let mut factors: Option<Vec<f32>> = None;
        if let Some(st) = stats.filter(|st| st.channel_absmax.len() != k) {
            return Err(RuntimeError::input(
                "calibration",
                format!(
                    "{}: statistics for {} input channels, the model's weights read {k} (calibrated on another model?)",
                    site.name,
                    st.channel_absmax.len()
                ),
            ));
        }
        if let Some(st) = stats.filter(|st| !st.sample.is_empty()) {
            let mut w = Vec::new();
            for m in &site.members {
                w.extend_from_slice(value(m)?);
            }
            let want = matmul(&pool, &st.sample, &w, k);
            let err = |s: Option<&[f32]>| {
                site_error(
                    &pool,
                    &st.sample,
                    &w,
                    &want,
                    k,
                    s,
                    opts.activations,
                    &st.channel_absmax,
                )
            };
            let plain = err(None);
            report.error_plain = Some(plain);
            if site.norm.is_some() {
                let mut best: Option<(f64, f32, Vec<f32>)> = None;
                for &a in alphas {
                    let s = smooth_factors(&st.channel_absmax, &w, k, site.norm_width, a);
                    let e = err(Some(&per_column(&s, k)));
                    if best.as_ref().is_none_or(|b| e < b.0) {
                        best = Some((e, a, s));
                    }
                }
                // Applied only where it clearly helps.
                if let Some((e, a, s)) = best.filter(|b| b.0 < 0.95 * plain) {
                    report.error_smoothed = Some(e);
                    report.alpha = Some(a);
                    factors = Some(s);
                }
            }
            if opts.activations == ActivationScheme::StaticPerTensor {
                let cols = factors.as_deref().map(|s| per_column(s, k));
                let sc = static_scale(&st.channel_absmax, cols.as_deref());
                report.input_scale = Some(sc);
                for &m in &site.members {
                    out.input_scales.insert(m, sc);
                }
            }
        } else if opts.activations == ActivationScheme::StaticPerTensor {
            return Err(RuntimeError::input(
                "calibration",
                format!("no calibration data reached {}", site.name),
            ));
        }
        if let (Some(s), Some((nw, nb))) = (&factors, site.norm) {
            fold(values, s, (nw, nb), &site.members, k)?;
            out.smoothed.push(site.name.clone());
        }
        out.reports.push(report);
    }
    Ok(out)
}

/// Folds smoothing factors `s` (one per LayerNorm channel): 1/s into the LayerNorm's
/// weight and bias, s into the columns of every weight reading its output.
fn fold<P: Copy + Eq + Hash + Debug>(
    values: &mut HashMap<P, Vec<f32>>,
    s: &[f32],
    norm: (P, P),
    members: &[P],
    k: usize,
) -> Result<()> {
    fn get<P: Copy + Eq + Hash + Debug>(
        values: &mut HashMap<P, Vec<f32>>,
        p: P,
    ) -> Result<&mut Vec<f32>> {
        values
            .get_mut(&p)
            .ok_or_else(|| RuntimeError::input(format!("{p:?}"), "missing"))
    }
    for np in [norm.0, norm.1] {
        get(values, np)?
            .iter_mut()
            .zip(s)
            .for_each(|(x, s)| *x /= s);
    }
    let cols = per_column(s, k);
    for &m in members {
        for row in get(values, m)?.chunks_exact_mut(k) {
            row.iter_mut().zip(&cols).for_each(|(x, s)| *x *= s);
        }
    }
    Ok(())
}

/// The config's `quantization` section for what [`decide`] chose: `base` (the
/// architecture's modules and float ops) with the smoothing and calibration filled in.
pub(super) fn section<P>(
    mut base: QuantConfig,
    d: &Decisions<P>,
    calib: Option<&CalibrationStats>,
) -> QuantConfig {
    if !d.smoothed.is_empty() {
        let alpha = d
            .reports
            .iter()
            .filter_map(|r| r.alpha)
            .fold(0.0f32, f32::max);
        base.smoothquant = Some(SmoothQuant {
            alpha,
            applied_to: d.smoothed.clone(),
        });
    }
    if let Some(c) = calib {
        base.calibration = Some(Calibration {
            images: c.images,
            source: c.source.clone(),
        });
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::layer_norm::cpu::layer_norm_forward;

    /// Folding 1/s into the LayerNorm and s into the weight columns leaves the float
    /// function unchanged: LN(x; g/s, b/s) (W diag(s))ᵀ == LN(x; g, b) Wᵀ, for a Linear
    /// reading the LayerNorm's rows directly (1 tap) and for a 2x2 conv reading them as
    /// channels-last im2col rows (4 taps, each channel's factor shared by its taps).
    #[test]
    fn smoothing_fold_preserves_the_float_function() {
        for taps in [1, 4] {
            let (n, c, o) = (8, 24, 10);
            let k = taps * c;
            let mut seed = 5u32;
            let mut rnd = || {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            };
            let x: Vec<f32> = (0..n * c)
                .map(|i| rnd() * if i % c == 3 { 40.0 } else { 1.0 })
                .collect();
            let mut values = HashMap::from([
                (0u8, (0..c).map(|_| 1.0 + rnd()).collect::<Vec<f32>>()),
                (1, (0..c).map(|_| rnd()).collect()),
                (2, (0..o * k).map(|_| rnd()).collect()),
            ]);
            // n LayerNorm rows of c channels are n / taps matmul rows of k columns.
            let apply = |v: &HashMap<u8, Vec<f32>>| {
                let mut h = vec![0.0; n * c];
                layer_norm_forward(&mut h, None, &x, &v[&0], &v[&1], c, 1e-6);
                let mut y = vec![0.0; n / taps * o];
                crate::ops::matmul::cpu::matmul_forward(&mut y, &h, &v[&2], None, k, o, Epi::Store);
                (h, y)
            };
            let (h, y) = apply(&values);
            let absmax: Vec<f32> = (0..k)
                .map(|j| (0..n / taps).fold(0.0f32, |m, r| m.max(h[r * k + j].abs())))
                .collect();
            let s = smooth_factors(&absmax, &values[&2], k, c, 0.5);
            assert_eq!(s.len(), c);
            fold(&mut values, &s, (0, 1), &[2], k).unwrap();
            let (_, y2) = apply(&values);
            for (a, b) in y.iter().zip(&y2) {
                assert!(
                    (a - b).abs() < 1e-5 * (1.0 + a.abs()),
                    "taps {taps}: {a} vs {b}"
                );
            }
            assert!(
                s.iter().any(|&v| (v - 1.0).abs() > 0.5),
                "the outlier channel should be smoothed: {s:?}"
            );
        }
    }
}
