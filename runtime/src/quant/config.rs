//! The `quantization` section of a dinoedge int8 model's `config.json`: the format of the
//! weights and activations, and what calibration and smoothing were applied.

use serde::{Deserialize, Serialize};

/// How activations entering a quantised Linear become int8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationScheme {
    /// A scale per token (row), computed at run time: no calibration needed.
    DynamicPerToken,
    /// One scale per Linear input, from calibration (stored as `<linear>.input_scale`).
    StaticPerTensor,
}

/// SmoothQuant outlier migration that was folded into the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmoothQuant {
    pub alpha: f32,
    /// Linear groups smoothed (e.g. `layer.3.qkv`), folded into the LayerNorm before them.
    pub applied_to: Vec<String>,
}

/// Where calibration statistics came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub images: usize,
    pub source: String,
}

/// The `quantization` section of a dinoedge int8 model's config.json.
///
/// Quantised Linear weights are stored as I8 tensors under their HF names and shapes (`(out,
/// in)`; a ConvNeXt's downsampling conv `(out, in, 2, 2)`), with
/// f32 per-output-channel scales next to them (`<name>.weight_scale`, `w = q * scale`); for
/// static activations, `<name>.input_scale` holds the per-tensor input scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantConfig {
    /// `dinoedge-w8a8`.
    pub method: String,
    pub format_version: u32,
    /// Symmetric int8 weights, one scale per output channel.
    pub weights: String,
    pub activations: ActivationScheme,
    #[serde(default)]
    pub smoothquant: Option<SmoothQuant>,
    /// Which Linear layers are int8.
    pub quantized_modules: Vec<String>,
    /// What stays in floating point.
    pub float_ops: Vec<String>,
    #[serde(default)]
    pub calibration: Option<Calibration>,
}

impl QuantConfig {
    pub const METHOD: &'static str = "dinoedge-w8a8";
    pub const FORMAT_VERSION: u32 = 1;
    pub const WEIGHTS: &'static str = "int8_symmetric_per_output_channel";

    /// A W8A8 section with the given activation scheme (the fields every dinoedge int8 model has).
    pub fn w8a8(activations: ActivationScheme) -> Self {
        QuantConfig {
            method: Self::METHOD.into(),
            format_version: Self::FORMAT_VERSION,
            weights: Self::WEIGHTS.into(),
            activations,
            smoothquant: None,
            quantized_modules: vec![
                "layer.*.attention.{q,k,v,o}_proj".into(),
                "layer.*.mlp.{gate,up,down}_proj (fc1, fc2 for DINOv2)".into(),
            ],
            float_ops: [
                "patch_embeddings",
                "layer_norm",
                "rope",
                "softmax",
                "gelu",
                "swiglu",
                "layer_scale",
                "residual",
                "attention_matmuls",
            ]
            .map(String::from)
            .to_vec(),
            calibration: None,
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.method != Self::METHOD {
            return Err(format!(
                "quantization.method {:?} is not supported (expected {:?})",
                self.method,
                Self::METHOD
            ));
        }
        if self.format_version != Self::FORMAT_VERSION {
            return Err(format!(
                "quantization.format_version {} is not supported (expected {})",
                self.format_version,
                Self::FORMAT_VERSION
            ));
        }
        if self.weights != Self::WEIGHTS {
            return Err(format!(
                "quantization.weights {:?} is not supported (expected {:?})",
                self.weights,
                Self::WEIGHTS
            ));
        }
        Ok(())
    }
}
