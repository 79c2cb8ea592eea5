//! Quantisation of a float model into a dinoedge model directory.
//!
//! - f16 / bf16: every tensor converted; HF transformers loads the result too.
//! - int8 (W8A8): Linear weights become symmetric per-output-channel int8 (a ViT's block
//!   Linears; a ConvNeXt's pointwise and downsampling convs); activations entering them are
//!   quantised per token at run time (default) or with a per-tensor scale from calibration.
//!   LayerNorm, softmax, GELU / SwiGLU, LayerScale, residuals, the attention matmuls, the
//!   depthwise convs and the patch embedding (stem) stay in float.
//! - SmoothQuant (optional, from calibration): for the Linears fed by a LayerNorm (a ViT's
//!   qkv after norm1 and MLP input after norm2; a ConvNeXt's pw1 and 2x2 downsampling convs,
//!   whose four taps share their channel's factor), input channel j is divided by
//!   `s_j = max|X_j|^a / max|W_j|^(1-a)` and the weight column multiplied by it; the division
//!   is folded into the LayerNorm's weight and bias, so the float function is unchanged. It is
//!   applied per Linear only where it lowers the int8 error on the calibration sample, with
//!   `a` chosen from a small grid.

pub mod config;
mod convnext;
pub mod observer;
mod sites;
mod vit;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::Dtype;

use crate::backend::Precision;
use crate::config::{ActivationScheme, ModelConfig};
use crate::dispatch::cpu::CpuBackend;
use crate::error::{Result, RuntimeError};
use crate::model::Model;
use crate::models::Architecture;
use crate::models::convnext::ConvNext;
use crate::models::vit::Vit;
use crate::models::vit::layout::{self, Param};
use crate::session::{RunOptions, Session};
use crate::tensor::Tensor;
use observer::{InputStats, Observer};

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
    // Each Linear's rows grow with the pixels (inputs may differ in size).
    let pixels = |t: &Tensor| t.data.len() as f64;
    let forwards = inputs.iter().map(pixels).sum::<f64>() / pixels(&inputs[0]).max(1.0);
    let backend = Observer::new(CpuBackend::new(threads, Precision::F32)?, forwards);
    let inputs_seen = match model.config() {
        ModelConfig::Vit(_) => observe::<Vit>(backend, model, inputs, &mut progress)?,
        ModelConfig::ConvNext(_) => observe::<ConvNext>(backend, model, inputs, &mut progress)?,
    };
    Ok(CalibrationStats {
        inputs: inputs_seen,
        images: inputs.len(),
        source: source.to_string(),
    })
}

/// Runs architecture `A` on every input through the observing backend.
fn observe<A: Architecture>(
    backend: Observer<CpuBackend>,
    model: &Arc<Model>,
    inputs: &[Tensor],
    progress: &mut impl FnMut(usize),
) -> Result<BTreeMap<String, InputStats>> {
    let mut session = Session::<_, A>::new(backend, model.clone())?;
    for (i, pixels) in inputs.iter().enumerate() {
        session.run(pixels, &RunOptions::default())?;
        progress(i + 1);
    }
    Ok(session.backend().take_stats())
}

/// What the quantiser decided for one Linear input site.
#[derive(Clone, Debug)]
pub struct SiteReport {
    /// `layer.3.qkv`, `layer.3.o_proj`, `layer.3.mlp_in`, `layer.3.mlp_out`; for a ConvNeXt
    /// `stages.2.downsample`, `stages.2.layers.0.pw1`, `stages.2.layers.0.pw2`.
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

/// Quantises `model` (already loaded, float) with `opts`; `calib` is needed for SmoothQuant
/// and static activations.
pub fn quantize(
    model: &Model,
    opts: &QuantizeOptions,
    calib: Option<&CalibrationStats>,
) -> Result<Quantized> {
    if model.is_quantized() {
        return Err(RuntimeError::input(
            "model",
            format!(
                "{}: the model is already quantised (int8); quantise the float original",
                model.dir().join("config.json").display()
            ),
        ));
    }
    let dtype = match opts.precision {
        Precision::F16 => Dtype::F16,
        Precision::BF16 => Dtype::BF16,
        Precision::Int8 => Dtype::I8,
        Precision::F32 => {
            return Err(RuntimeError::input(
                "precision",
                "quantize writes f16, bf16 or int8",
            ));
        }
    };
    match (model.config(), dtype) {
        (ModelConfig::ConvNext(c), Dtype::I8) => convnext::int8(model, c, opts, calib),
        (ModelConfig::ConvNext(c), _) => convnext::half(model, c, dtype),
        (ModelConfig::Vit(c), _) => {
            let mut values: HashMap<Param, Vec<f32>> = HashMap::new();
            let mut all = layout::params(c);
            all.push(Param::MaskToken);
            for p in all {
                if model.stored(p).is_some() {
                    values.insert(p, model.tensor_f32(p)?);
                }
            }
            match dtype {
                Dtype::I8 => vit::int8(c, values, opts, calib),
                _ => vit::half(c, &values, dtype),
            }
        }
    }
}

pub(crate) fn convert_f32_bytes(bytes: &[u8], dtype: Dtype) -> Vec<u8> {
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    half_bytes(values, dtype)
}

/// f32 values as little-endian f16 or bf16 bytes (round to nearest even).
pub(crate) fn half_bytes(values: impl Iterator<Item = f32>, dtype: Dtype) -> Vec<u8> {
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
