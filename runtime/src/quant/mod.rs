//! Quantisation of a float model into a dinoedge model directory.
//!
//! - f16 / bf16: every tensor converted; HF transformers loads the result too.
//! - int8 (W8A8): Linear weights of the blocks become symmetric per-output-channel int8;
//!   activations entering them are quantised per token at run time (default) or with a
//!   per-tensor scale from calibration. LayerNorm, softmax, GELU / SwiGLU, LayerScale,
//!   residuals, the attention matmuls and the patch embedding stay in float.
//! - SmoothQuant (optional, from calibration): for the Linears fed by a LayerNorm (qkv from
//!   norm1, the MLP input from norm2), input channel j is divided by
//!   `s_j = max|X_j|^a / max|W_j|^(1-a)` and the weight column multiplied by it; the division
//!   is folded into the LayerNorm's weight and bias, so the float function is unchanged. It is
//!   applied per Linear only where it lowers the int8 error on the calibration sample, with
//!   `a` chosen from a small grid.

pub mod config;
pub mod observer;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::Dtype;

use crate::backend::Precision;
use crate::backend::cpu::isa::Isa;
use crate::backend::cpu::pool::Pool;
use crate::config::{
    ActivationScheme, Calibration, MlpKind, ModelConfig, QuantConfig, SmoothQuant, VitConfig,
};
use crate::dispatch::cpu::CpuBackend;
use crate::error::{Result, RuntimeError};
use crate::model::Model;
use crate::models::vit::Vit;
use crate::models::vit::layout::{self, LayerParam as L, Param, ParamData};
use crate::ops::matmul::Epi;
use crate::ops::matmul::fast::{PackedLinear, matmul_forward, quantize_rows, round_even};
use crate::session::{RunOptions, Session};
use crate::tensor::Tensor;
use observer::{InputStats, Observer, SAMPLE_ROWS};

/// How to choose SmoothQuant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Smoothing {
    /// Per Linear, the best of a few strengths, only where it lowers the error.
    Auto,
    Off,
    /// This strength everywhere it lowers the error.
    Alpha(f32),
}

#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// F16, BF16 or Int8.
    pub precision: Precision,
    pub activations: ActivationScheme,
    pub smoothing: Smoothing,
    /// CPU threads for the error estimates (default: all cores).
    pub threads: Option<usize>,
}

/// Calibration statistics: what entered each Linear on real images (keyed by the Linear's
/// name; the patch embedding's too, although only the blocks' Linears are quantised).
#[derive(Clone, Debug, Default)]
pub struct CalibrationStats {
    pub inputs: BTreeMap<String, InputStats>,
    pub images: usize,
    pub source: String,
}

/// Runs the float model on calibration inputs (preprocessed pixel tensors) and records what
/// enters each Linear. `progress(i)` is called after each input.
pub fn calibrate(
    model: &Arc<Model>,
    inputs: &[Tensor],
    threads: Option<usize>,
    source: &str,
    mut progress: impl FnMut(usize),
) -> Result<CalibrationStats> {
    if inputs.is_empty() {
        return Err(RuntimeError::input(
            "calibration",
            format!("{source}: no usable calibration images"),
        ));
    }
    // Spread the row sample evenly over every token of every input.
    let tokens: usize = inputs
        .iter()
        .map(|t| t.shape[0] * model.config().num_tokens(t.shape[2], t.shape[3]))
        .sum();
    let backend = Observer::new(
        CpuBackend::new(threads, Precision::F32)?,
        tokens.div_ceil(SAMPLE_ROWS),
    );
    let mut session = Session::<_, Vit>::new(backend, model.clone())?;
    for (i, pixels) in inputs.iter().enumerate() {
        session.run(pixels, &RunOptions::default())?;
        progress(i + 1);
    }
    Ok(CalibrationStats {
        inputs: session.backend().take_stats(),
        images: inputs.len(),
        source: source.to_string(),
    })
}

/// What the quantiser decided for one Linear input site.
#[derive(Clone, Debug)]
pub struct SiteReport {
    /// `layer.3.qkv`, `layer.3.o_proj`, `layer.3.mlp_in`, `layer.3.mlp_out`.
    pub site: String,
    /// Relative squared error of the int8 matmul on the calibration sample, without smoothing.
    pub error_plain: Option<f64>,
    /// With the chosen smoothing (when applied).
    pub error_smoothed: Option<f64>,
    pub alpha: Option<f32>,
    /// Static input scale (static activations).
    pub input_scale: Option<f32>,
}

/// A quantised model ready to write.
pub struct Quantized {
    pub config: ModelConfig,
    pub tensors: Vec<layout::HubTensor>,
    pub sites: Vec<SiteReport>,
}

/// A Linear input site: its name, the weights reading that input, and the LayerNorm
/// (weight, bias) producing it, if any.
type Site = (String, Vec<L>, Option<(L, L)>);

/// The Linear input sites of layer `l`.
fn sites(cfg: &VitConfig, l: usize) -> Vec<Site> {
    let mlp_in = match cfg.mlp {
        MlpKind::Plain(_) => vec![L::UpWeight],
        MlpKind::Gated(_) => vec![L::GateWeight, L::UpWeight],
    };
    vec![
        (
            format!("layer.{l}.qkv"),
            vec![L::QWeight, L::KWeight, L::VWeight],
            Some((L::Norm1Weight, L::Norm1Bias)),
        ),
        (format!("layer.{l}.o_proj"), vec![L::OWeight], None),
        (
            format!("layer.{l}.mlp_in"),
            mlp_in,
            Some((L::Norm2Weight, L::Norm2Bias)),
        ),
        (format!("layer.{l}.mlp_out"), vec![L::DownWeight], None),
    ]
}

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

/// SmoothQuant factors for strength `alpha`.
fn smooth_factors(chan_absmax: &[f32], w: &[f32], k: usize, alpha: f32) -> Vec<f32> {
    let mut wmax = vec![0.0f32; k];
    for row in w.chunks_exact(k) {
        for (m, v) in wmax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    chan_absmax
        .iter()
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

/// Quantises `model` (already loaded, float) with `opts`; `calib` is needed for SmoothQuant
/// and static activations.
pub fn quantize(
    model: &Model,
    opts: &QuantizeOptions,
    calib: Option<&CalibrationStats>,
) -> Result<Quantized> {
    if let crate::config::ModelConfig::ConvNext(c) = model.config() {
        return quantize_convnext(model, c, opts.precision);
    }
    let cfg = model.config().vit_for("quantize")?;
    let path = model.dir().join("config.json");
    if cfg.quantization.is_some() {
        return Err(RuntimeError::input(
            "model",
            format!(
                "{}: the model is already quantised (int8); quantise the float original",
                path.display()
            ),
        ));
    }
    let mut values: HashMap<Param, Vec<f32>> = HashMap::new();
    let mut all = layout::params(cfg);
    all.push(Param::MaskToken);
    for p in all {
        if model.stored(p).is_some() {
            values.insert(p, model.tensor_f32(p)?);
        }
    }
    match opts.precision {
        Precision::F16 | Precision::BF16 => {
            let dtype = if opts.precision == Precision::F16 {
                Dtype::F16
            } else {
                Dtype::BF16
            };
            let tensors = layout::hub_tensors(cfg, |p| {
                values
                    .get(&p)
                    .cloned()
                    .ok_or_else(|| RuntimeError::input(format!("{p:?}"), "missing"))
            })?
            .into_iter()
            .map(|(k, shp, _, bytes)| (k, shp, dtype, convert_f32_bytes(&bytes, dtype)))
            .collect();
            Ok(Quantized {
                config: cfg.clone().into(),
                tensors,
                sites: Vec::new(),
            })
        }
        Precision::Int8 => quantize_int8(cfg, values, opts, calib),
        Precision::F32 => Err(RuntimeError::input(
            "precision",
            "quantize writes f16, bf16 or int8",
        )),
    }
}

/// A ConvNeXt in f16 or bf16: every tensor converted, under its hub name. int8 files are
/// written for ViTs only; a ConvNeXt runs int8 from its float weights (`--precision int8`).
fn quantize_convnext(
    model: &Model,
    cfg: &crate::config::ConvNextConfig,
    precision: Precision,
) -> Result<Quantized> {
    use crate::models::convnext::layout as cl;
    let dtype = match precision {
        Precision::F16 => Dtype::F16,
        Precision::BF16 => Dtype::BF16,
        other => {
            return Err(RuntimeError::input(
                "precision",
                format!(
                    "{other}: a ConvNeXt is written in f16 or bf16; for int8, run the float model with --precision int8 (per-channel int8 weights and per-token int8 activations at load time)"
                ),
            ));
        }
    };
    let tensors = cl::params(cfg)
        .into_iter()
        .map(|p| {
            let bytes = half_bytes(model.tensor_f32(p)?.into_iter(), dtype);
            Ok((cl::hub_name(p), cl::shape(cfg, p), dtype, bytes))
        })
        .collect::<Result<_>>()?;
    Ok(Quantized {
        config: model.config().clone(),
        tensors,
        sites: Vec::new(),
    })
}

fn convert_f32_bytes(bytes: &[u8], dtype: Dtype) -> Vec<u8> {
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    half_bytes(values, dtype)
}

/// f32 values as little-endian f16 or bf16 bytes (round to nearest even).
fn half_bytes(values: impl Iterator<Item = f32>, dtype: Dtype) -> Vec<u8> {
    values
        .flat_map(|v| {
            let bits = if dtype == Dtype::F16 {
                half::f16::from_f32(v).to_bits()
            } else {
                half::bf16::from_f32(v).to_bits()
            };
            bits.to_le_bytes()
        })
        .collect()
}

fn quantize_int8(
    cfg: &VitConfig,
    mut values: HashMap<Param, Vec<f32>>,
    opts: &QuantizeOptions,
    calib: Option<&CalibrationStats>,
) -> Result<Quantized> {
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
    let mut reports = Vec::new();
    let mut smoothed = Vec::new();
    let mut input_scales: HashMap<Param, f32> = HashMap::new();
    let alphas: &[f32] = match opts.smoothing {
        Smoothing::Auto => &[0.25, 0.5, 0.75],
        Smoothing::Alpha(a) => &[a],
        Smoothing::Off => &[],
    };
    for l in 0..cfg.num_layers {
        for (site, members, norm) in sites(cfg, l) {
            let k = if members == [L::DownWeight] {
                cfg.intermediate_size
            } else {
                cfg.hidden_size
            };
            let stats = calib.and_then(|c| c.inputs.get(&site));
            let mut report = SiteReport {
                site: site.clone(),
                error_plain: None,
                error_smoothed: None,
                alpha: None,
                input_scale: None,
            };
            let mut factors: Option<Vec<f32>> = None;
            if let Some(st) = stats.filter(|st| !st.sample.is_empty()) {
                let w: Vec<f32> = members
                    .iter()
                    .flat_map(|&m| values[&Param::Layer(l, m)].clone())
                    .collect();
                let want = matmul(&pool, &st.sample, &w, k);
                let plain = site_error(
                    &pool,
                    &st.sample,
                    &w,
                    &want,
                    k,
                    None,
                    opts.activations,
                    &st.channel_absmax,
                );
                report.error_plain = Some(plain);
                if norm.is_some() {
                    let mut best: Option<(f64, f32, Vec<f32>)> = None;
                    for &a in alphas {
                        let s = smooth_factors(&st.channel_absmax, &w, k, a);
                        let e = site_error(
                            &pool,
                            &st.sample,
                            &w,
                            &want,
                            k,
                            Some(&s),
                            opts.activations,
                            &st.channel_absmax,
                        );
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
                    let sc = static_scale(&st.channel_absmax, factors.as_deref());
                    report.input_scale = Some(sc);
                    for &m in &members {
                        input_scales.insert(Param::Layer(l, m), sc);
                    }
                }
            } else if opts.activations == ActivationScheme::StaticPerTensor {
                return Err(RuntimeError::input(
                    "calibration",
                    format!("no calibration data reached {site}"),
                ));
            }
            if let (Some(s), Some((nw, nb))) = (&factors, norm) {
                // Fold 1/s into the LayerNorm, s into the weight columns.
                for np in [nw, nb] {
                    let v = values
                        .get_mut(&Param::Layer(l, np))
                        .expect("norm params present");
                    v.iter_mut().zip(s).for_each(|(x, s)| *x /= s);
                }
                for &m in &members {
                    let v = values
                        .get_mut(&Param::Layer(l, m))
                        .expect("weights present");
                    for row in v.chunks_exact_mut(k) {
                        row.iter_mut().zip(s).for_each(|(x, s)| *x *= s);
                    }
                }
                smoothed.push(site.clone());
            }
            reports.push(report);
        }
    }
    let mut qcfg = QuantConfig::w8a8(opts.activations);
    if !smoothed.is_empty() {
        let alpha = reports
            .iter()
            .filter_map(|r| r.alpha)
            .fold(0.0f32, f32::max);
        qcfg.smoothquant = Some(SmoothQuant {
            alpha,
            applied_to: smoothed,
        });
    }
    if let Some(c) = calib {
        qcfg.calibration = Some(Calibration {
            images: c.images,
            source: c.source.clone(),
        });
    }
    let mut config = cfg.clone();
    config.quantization = Some(qcfg);
    let tensors = layout::hub_tensors_with(&config, |p| {
        let v = values
            .get(&p)
            .cloned()
            .ok_or_else(|| RuntimeError::input(format!("{p:?}"), "missing"))?;
        if layout::is_quantized_linear(p) {
            let (o, k) = (layout::shape(&config, p)[0], layout::shape(&config, p)[1]);
            let (q, scales) = quantize_rows(&v, o, k);
            Ok(ParamData::Int8 {
                q,
                scales,
                input_scale: input_scales.get(&p).copied(),
            })
        } else {
            Ok(ParamData::F32(v))
        }
    })?;
    Ok(Quantized {
        config: config.into(),
        tensors,
        sites: reports,
    })
}

/// Writes a quantised model directory (`config.json` + `model.safetensors`), atomically.
pub fn write(q: &Quantized, out_dir: &Path, source: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| RuntimeError::io(out_dir, e))?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("dinoedge_source".to_string(), source.display().to_string());
    crate::weights::store::write_safetensors(
        &out_dir.join("model.safetensors"),
        &q.tensors,
        Some(meta),
    )?;
    let mut json = q.config.to_hf_json();
    let dtype = match q
        .tensors
        .iter()
        .find(|t| t.0.ends_with("norm.weight") || t.0.ends_with("layernorm.weight"))
        .map(|t| t.2)
    {
        Some(Dtype::F16) => "float16",
        Some(Dtype::BF16) => "bfloat16",
        _ => "float32",
    };
    json["dtype"] = serde_json::json!(dtype);
    let text = serde_json::to_string_pretty(&json).expect("json");
    crate::fsutil::write_atomic(&out_dir.join("config.json"), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::layer_norm::cpu::layer_norm_forward;

    /// Folding 1/s into the LayerNorm and s into the weight columns leaves the float
    /// function unchanged: LN(x; g/s, b/s) (W diag(s))ᵀ == LN(x; g, b) Wᵀ.
    #[test]
    fn smoothing_fold_preserves_the_float_function() {
        let (n, k, o) = (7, 24, 10);
        let mut seed = 5u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let x: Vec<f32> = (0..n * k)
            .map(|i| rnd() * if i % k == 3 { 40.0 } else { 1.0 })
            .collect();
        let (g, b): (Vec<f32>, Vec<f32>) = (
            (0..k).map(|_| 1.0 + rnd()).collect(),
            (0..k).map(|_| rnd()).collect(),
        );
        let w: Vec<f32> = (0..o * k).map(|_| rnd()).collect();
        let mut h = vec![0.0; n * k];
        layer_norm_forward(&mut h, None, &x, &g, &b, k, 1e-6);
        let absmax: Vec<f32> = (0..k)
            .map(|j| (0..n).fold(0.0f32, |m, r| m.max(h[r * k + j].abs())))
            .collect();
        let s = smooth_factors(&absmax, &w, k, 0.5);
        let (g2, b2): (Vec<f32>, Vec<f32>) = (
            g.iter().zip(&s).map(|(a, s)| a / s).collect(),
            b.iter().zip(&s).map(|(a, s)| a / s).collect(),
        );
        let w2: Vec<f32> = w
            .chunks_exact(k)
            .flat_map(|r| r.iter().zip(&s).map(|(a, s)| a * s))
            .collect();
        let mut h2 = vec![0.0; n * k];
        layer_norm_forward(&mut h2, None, &x, &g2, &b2, k, 1e-6);
        let (mut y, mut y2) = (vec![0.0; n * o], vec![0.0; n * o]);
        crate::ops::matmul::cpu::matmul_forward(&mut y, &h, &w, None, k, o, Epi::Store);
        crate::ops::matmul::cpu::matmul_forward(&mut y2, &h2, &w2, None, k, o, Epi::Store);
        for (a, b) in y.iter().zip(&y2) {
            assert!((a - b).abs() < 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
        }
        assert!(
            s.iter().any(|&v| (v - 1.0).abs() > 0.5),
            "the outlier channel should be smoothed: {s:?}"
        );
    }
}
