//! `ModelConfig`: the model read from an HF `config.json`, dispatched on its `model_type` to
//! one architecture's config (`models::<name>::config`).

pub use crate::models::vit::config::{ConfigLimits, Family, LIMITS, MlpKind, Positions, VitConfig};
pub use crate::quant::config::{ActivationScheme, Calibration, QuantConfig, SmoothQuant};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, RuntimeError};
pub use crate::models::convnext::ConvNextConfig;
use crate::models::{convnext, vit};

/// Elementwise activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (HF `gelu`).
    Gelu,
    /// Tanh-approximated GELU (HF `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// SiLU / swish, `x sigmoid(x)`.
    Silu,
}

impl Activation {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }

    /// The code every kernel language takes for it (WGSL and CUDA: 1 gelu, 2 gelu_tanh,
    /// 3 silu; 0 is no activation, see [`Activation::code`]).
    pub fn kernel_code(self) -> i32 {
        match self {
            Activation::Gelu => 1,
            Activation::GeluTanh => 2,
            Activation::Silu => 3,
        }
    }

    /// [`Activation::kernel_code`], 0 for none.
    pub fn code(a: Option<Activation>) -> i32 {
        a.map_or(0, Activation::kernel_code)
    }

    /// The HF `hidden_act` string.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::Silu => "silu",
        }
    }
}

/// A model's architecture and hyper-parameters, one variant per architecture.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    /// A DINOv3 / DINOv2 ViT (`dinov3_vit`, `dinov2`, `dinov2_with_registers`).
    Vit(VitConfig),
    /// A DINOv3 ConvNeXt (`dinov3_convnext`).
    ConvNext(ConvNextConfig),
}

/// Every architecture: the `model_type` values it reads, and its parser.
type Parser = fn(&Fields, &str) -> Result<ModelConfig>;
const ARCHITECTURES: &[(&[&str], Parser)] = &[
    (vit::config::MODEL_TYPES, |f, t| {
        VitConfig::parse(f, t).map(ModelConfig::Vit)
    }),
    (convnext::config::MODEL_TYPES, |f, t| {
        ConvNextConfig::parse(f, t).map(ModelConfig::ConvNext)
    }),
];

/// Every `model_type` this build reads, for messages.
pub fn supported_model_types() -> Vec<&'static str> {
    ARCHITECTURES
        .iter()
        .flat_map(|(t, _)| t.iter().copied())
        .collect()
}

/// Reads typed fields out of a JSON object, naming the file and field on error.
pub(crate) struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    pub(crate) fn err(&self, reason: String) -> RuntimeError {
        RuntimeError::InvalidConfig {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => self.as_usize(key, v),
        }
    }

    pub(crate) fn as_usize(&self, key: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| {
                self.err(format!(
                    "field {key:?} must be a non-negative integer, found {v}"
                ))
            })
    }

    /// An int, or a `[a, b]` list with `a == b` (HF allows tuples for patch and image size).
    pub(crate) fn square_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Array(a)) if a.len() == 2 => {
                let (h, w) = (self.as_usize(key, &a[0])?, self.as_usize(key, &a[1])?);
                if h != w {
                    return Err(self.err(format!(
                        "field {key:?} = [{h}, {w}]: only square values are supported"
                    )));
                }
                Ok(h)
            }
            Some(v) => self.as_usize(key, v),
        }
    }

    pub(crate) fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(format!("field {key:?} must be a number, found {v}"))),
        }
    }

    /// A list of non-negative integers (ConvNeXt's `hidden_sizes`, `depths`), at most 64 long.
    pub(crate) fn usize_list_or(&self, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(a)) if a.len() <= 64 => {
                a.iter().map(|v| self.as_usize(key, v)).collect()
            }
            Some(v) => Err(self.err(format!(
                "field {key:?} must be a list of at most 64 non-negative integers, found {v}"
            ))),
        }
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("field {key:?} must be true or false, found {v}"))),
        }
    }

    pub(crate) fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(format!("field {key:?} must be a string, found {v}"))),
        }
    }

    pub(crate) fn activation(&self, key: &str, default: &str) -> Result<Activation> {
        let s = self.str_or(key, default)?;
        Activation::parse(s).ok_or_else(|| {
            self.err(format!(
                "field {key:?} = {s:?}: unsupported activation (gelu, gelu_pytorch_tanh, silu)"
            ))
        })
    }
}

impl ModelConfig {
    /// Reads `config.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(RuntimeError::MissingConfig {
                dir: dir.to_path_buf(),
            });
        }
        Self::from_file(&path)
    }

    /// Reads an HF `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses an HF config; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| RuntimeError::InvalidConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let obj = value
            .as_object()
            .ok_or_else(|| RuntimeError::InvalidConfig {
                path: path.to_path_buf(),
                reason: "not a JSON object".into(),
            })?;
        let f = Fields { path, obj };
        let model_type = f.get("model_type").and_then(Value::as_str).ok_or_else(|| {
            f.err(format!(
                "no \"model_type\" field (expected one of {})",
                supported_model_types().join(", ")
            ))
        })?;
        let (_, parse) = ARCHITECTURES
            .iter()
            .find(|(types, _)| types.contains(&model_type))
            .ok_or_else(|| RuntimeError::UnknownModelType {
                path: path.to_path_buf(),
                model_type: model_type.to_string(),
                supported: supported_model_types().join(", "),
            })?;
        let mut cfg = parse(&f, model_type)?;
        if let Some(q) = f.get("quantization") {
            let q: QuantConfig = serde_json::from_value(q.clone())
                .map_err(|e| f.err(format!("quantization section: {e}")))?;
            q.check().map_err(|r| f.err(r))?;
            match &mut cfg {
                ModelConfig::Vit(c) => c.quantization = Some(q),
                ModelConfig::ConvNext(c) => c.quantization = Some(q),
            }
        }
        cfg.validate().map_err(|reason| f.err(reason))?;
        Ok(cfg)
    }

    /// The ViT config, for what only ViTs have (ONNX import of a ViT, the CUDA memory plan).
    pub fn as_vit(&self) -> Option<&VitConfig> {
        match self {
            ModelConfig::Vit(c) => Some(c),
            ModelConfig::ConvNext(_) => None,
        }
    }

    /// [`ModelConfig::as_vit`], or an error naming what needs a ViT.
    pub fn vit_for(&self, what: &str) -> Result<&VitConfig> {
        self.as_vit()
            .ok_or_else(|| RuntimeError::WrongArchitecture {
                what: what.to_string(),
                needs: "a ViT",
                model: self.describe(),
            })
    }

    /// The HF `model_type`.
    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Vit(c) => c.family.model_type(),
            ModelConfig::ConvNext(_) => "dinov3_convnext",
        }
    }

    /// The HF image processor the model comes with.
    pub fn processor(&self) -> crate::preprocess::ProcessorKind {
        use crate::preprocess::ProcessorKind as P;
        match self {
            ModelConfig::Vit(c) => match c.family {
                Family::Dinov3 => P::Dinov3,
                Family::Dinov2 | Family::Dinov2Registers => P::Dinov2,
            },
            // facebook/dinov3-convnext-*: the same DINOv3ViTImageProcessorFast.
            ModelConfig::ConvNext(_) => P::Dinov3,
        }
    }

    /// Pixels per output-grid cell (a ViT's patch size).
    pub fn patch_size(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.patch_size,
            ModelConfig::ConvNext(c) => c.stride(),
        }
    }

    /// Width of the output features.
    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.hidden_size,
            ModelConfig::ConvNext(c) => c.hidden_size(),
        }
    }

    /// Blocks whose outputs `capture_layers` may ask for (0..n).
    pub fn num_layers(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.num_layers,
            ModelConfig::ConvNext(c) => c.num_stages(),
        }
    }

    pub fn num_channels(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.num_channels,
            ModelConfig::ConvNext(c) => c.num_channels,
        }
    }

    /// Register tokens in the output (0 for models without them).
    pub fn num_register_tokens(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.num_register_tokens,
            ModelConfig::ConvNext(_) => 0,
        }
    }

    /// Nominal input size from the config (HF `image_size`).
    pub fn image_size(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.image_size,
            ModelConfig::ConvNext(c) => c.image_size,
        }
    }

    /// Output grid `(h, w)` for an input of `height x width` pixels.
    pub fn grid(&self, height: usize, width: usize) -> (usize, usize) {
        match self {
            ModelConfig::Vit(c) => c.grid(height, width),
            ModelConfig::ConvNext(c) => c.grid(height, width),
        }
    }

    /// Tokens one image of `height x width` pixels becomes (what input limits count).
    pub fn num_tokens(&self, height: usize, width: usize) -> usize {
        match self {
            ModelConfig::Vit(c) => c.num_tokens(height, width),
            ModelConfig::ConvNext(c) => c.num_tokens(height, width),
        }
    }

    /// Present for dinoedge int8 models (`dinoedge quantize --precision int8`).
    pub fn quantization(&self) -> Option<&QuantConfig> {
        match self {
            ModelConfig::Vit(c) => c.quantization.as_ref(),
            ModelConfig::ConvNext(c) => c.quantization.as_ref(),
        }
    }

    /// A short human name such as `DINOv3 ViT/16 (384-d, 12 layers, ...)`.
    pub fn describe(&self) -> String {
        match self {
            ModelConfig::Vit(c) => c.describe(),
            ModelConfig::ConvNext(c) => c.describe(),
        }
    }

    /// An HF-compatible `config.json` value that both HF transformers and this crate load.
    pub fn to_hf_json(&self) -> Value {
        match self {
            ModelConfig::Vit(c) => c.to_hf_json(),
            ModelConfig::ConvNext(c) => c.to_hf_json(),
        }
    }

    /// Number of parameters the architecture holds.
    pub fn num_parameters(&self) -> usize {
        match self {
            ModelConfig::Vit(c) => c.num_parameters(),
            ModelConfig::ConvNext(c) => c.num_parameters(),
        }
    }

    /// The architecture's invariants and bounds.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ModelConfig::Vit(c) => c.validate(),
            ModelConfig::ConvNext(c) => c.validate(),
        }
    }
}

impl From<VitConfig> for ModelConfig {
    fn from(c: VitConfig) -> Self {
        ModelConfig::Vit(c)
    }
}

impl From<ConvNextConfig> for ModelConfig {
    fn from(c: ConvNextConfig) -> Self {
        ModelConfig::ConvNext(c)
    }
}

/// Path of `config.json` inside a model directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_type_dispatches_and_unknown_types_list_the_supported() {
        let cfg =
            ModelConfig::from_json_str(r#"{"model_type":"dinov2"}"#, Path::new("c.json")).unwrap();
        assert_eq!(cfg.model_type(), "dinov2");
        assert!(cfg.as_vit().is_some());
        let e = ModelConfig::from_json_str(r#"{"model_type":"vit"}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown model_type \"vit\"") && e.contains("dinov3_vit"),
            "{e}"
        );
    }
}
