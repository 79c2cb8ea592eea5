//! `VitConfig`: a DINOv3 / DINOv2 ViT, read from an HF `config.json`.
//!
//! Three HF model types are understood, with the defaults HF transformers uses:
//! - `dinov3_vit`: RoPE positions, optional registers, plain or gated MLP (`use_gated_mlp`,
//!   older name `use_swiglu_ffn`), per-projection bias flags.
//! - `dinov2`: learned position embedding, bicubic interpolation (no antialias).
//! - `dinov2_with_registers`: as dinov2, antialiased bicubic, registers after the position add.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use std::path::Path;

use crate::config::{Activation, Fields, ModelConfig, QuantConfig};
use crate::error::Result;

/// The `model_type` values this architecture reads.
pub const MODEL_TYPES: &[&str] = &["dinov3_vit", "dinov2", "dinov2_with_registers"];

/// Which HF implementation the model follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// `dinov3_vit`
    Dinov3,
    /// `dinov2`
    Dinov2,
    /// `dinov2_with_registers`
    Dinov2Registers,
}

impl Family {
    /// The HF `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Dinov3 => "dinov3_vit",
            Family::Dinov2 => "dinov2",
            Family::Dinov2Registers => "dinov2_with_registers",
        }
    }

    /// The HF class name written to `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Dinov3 => "DINOv3ViTModel",
            Family::Dinov2 => "Dinov2Model",
            Family::Dinov2Registers => "Dinov2WithRegistersModel",
        }
    }
}

/// The feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MlpKind {
    /// `down(act(up(x)))`
    Plain(Activation),
    /// `down(act(gate(x)) * up(x))` (SwiGLU when the activation is SiLU).
    Gated(Activation),
}

/// How token positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Positions {
    /// DINOv3: rotary embedding on the patch tokens' q and k, periods `theta^(4k/head_dim)`.
    Rope { theta: f64 },
    /// DINOv2: a learned `[1 + g*g, D]` table for a `g x g` grid, bicubic-resized to the
    /// input grid; `antialias` is set for `dinov2_with_registers`.
    Learned { grid: usize, antialias: bool },
}

/// Upper bounds on what a `config.json` may ask for. Each is far above every released model
/// (the largest, DINOv3 ViT-7B, has 40 layers of width 4096 and MLP width 8192), so they only
/// refuse files that would make the loader size buffers from absurd numbers.
#[derive(Clone, Copy, Debug)]
pub struct ConfigLimits {
    pub layers: usize,
    pub hidden_size: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    pub patch_size: usize,
    pub registers: usize,
    /// `image_size`, and the side of a learned position grid.
    pub image_size: usize,
}

pub const LIMITS: ConfigLimits = ConfigLimits {
    layers: 1024,
    hidden_size: 32768,
    heads: 1024,
    intermediate_size: 262_144,
    patch_size: 256,
    registers: 256,
    image_size: 16384,
};

/// The architecture of one DINOv3 / DINOv2 ViT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub family: Family,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Hidden width of the MLP (for gated MLPs, the width of each of gate and up).
    pub intermediate_size: usize,
    pub mlp: MlpKind,
    pub patch_size: usize,
    pub num_channels: usize,
    pub num_register_tokens: usize,
    pub layer_norm_eps: f64,
    pub query_bias: bool,
    pub key_bias: bool,
    pub value_bias: bool,
    pub proj_bias: bool,
    pub mlp_bias: bool,
    pub positions: Positions,
    /// Nominal input size from the config (HF `image_size`).
    pub image_size: usize,
    /// Present for dinoedge int8 models (`dinoedge quantize --precision int8`).
    pub quantization: Option<QuantConfig>,
}

impl VitConfig {
    /// Parses an HF config that must describe a ViT; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        Self::only_vit(ModelConfig::from_json_str(text, path)?)
    }

    fn only_vit(cfg: ModelConfig) -> Result<Self> {
        match cfg {
            ModelConfig::Vit(c) => Ok(c),
            other => Err(crate::error::RuntimeError::WrongArchitecture {
                what: "this config".into(),
                needs: "a ViT",
                model: other.describe(),
            }),
        }
    }

    /// Reads an HF `config.json` that must describe a ViT.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::only_vit(ModelConfig::from_file(path)?)
    }

    /// Parses the fields of a ViT `model_type` (one of [`MODEL_TYPES`]).
    pub(crate) fn parse(f: &Fields, model_type: &str) -> Result<Self> {
        match model_type {
            "dinov3_vit" => Self::dinov3(f),
            "dinov2" => Self::dinov2(f, Family::Dinov2),
            "dinov2_with_registers" => Self::dinov2(f, Family::Dinov2Registers),
            other => Err(f.err(format!(
                "model_type {other:?} is not a ViT ({})",
                MODEL_TYPES.join(", ")
            ))),
        }
    }

    fn dinov3(f: &Fields) -> Result<Self> {
        // `use_gated_mlp` in current transformers; an older revision called it `use_swiglu_ffn`.
        let gated = match f.get("use_gated_mlp") {
            Some(_) => f.bool_or("use_gated_mlp", false)?,
            None => f.bool_or("use_swiglu_ffn", false)?,
        };
        let act = f.activation("hidden_act", "gelu")?;
        // transformers >= 5 may nest RoPE settings under `rope_parameters`.
        let theta = match f
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
        {
            Some(t) => t,
            None => f.f64_or("rope_theta", 100.0)?,
        };
        Ok(VitConfig {
            family: Family::Dinov3,
            hidden_size: f.usize_or("hidden_size", 384)?,
            num_layers: f.usize_or("num_hidden_layers", 12)?,
            num_heads: f.usize_or("num_attention_heads", 6)?,
            intermediate_size: f.usize_or("intermediate_size", 1536)?,
            mlp: if gated {
                MlpKind::Gated(act)
            } else {
                MlpKind::Plain(act)
            },
            patch_size: f.square_or("patch_size", 16)?,
            num_channels: f.usize_or("num_channels", 3)?,
            num_register_tokens: f.usize_or("num_register_tokens", 0)?,
            layer_norm_eps: f.f64_or("layer_norm_eps", 1e-5)?,
            query_bias: f.bool_or("query_bias", true)?,
            key_bias: f.bool_or("key_bias", false)?,
            value_bias: f.bool_or("value_bias", true)?,
            proj_bias: f.bool_or("proj_bias", true)?,
            mlp_bias: f.bool_or("mlp_bias", true)?,
            positions: Positions::Rope { theta },
            image_size: f.square_or("image_size", 224)?,
            quantization: None,
        })
    }

    fn dinov2(f: &Fields, family: Family) -> Result<Self> {
        let hidden = f.usize_or("hidden_size", 768)?;
        let ratio = f.f64_or("mlp_ratio", 4.0)?;
        let plain_hidden = (hidden as f64 * ratio) as usize;
        let swiglu = f.bool_or("use_swiglu_ffn", false)?;
        // HF Dinov2SwiGLUFFN: two thirds of the MLP width, rounded up to a multiple of 8; always SiLU.
        let (mlp, intermediate) = if swiglu {
            (
                MlpKind::Gated(Activation::Silu),
                (plain_hidden * 2 / 3).div_ceil(8) * 8,
            )
        } else {
            (
                MlpKind::Plain(f.activation("hidden_act", "gelu")?),
                plain_hidden,
            )
        };
        let patch = f.square_or("patch_size", 14)?;
        let image_size = f.square_or("image_size", 224)?;
        let qkv_bias = f.bool_or("qkv_bias", true)?;
        let registers = match family {
            Family::Dinov2Registers => f.usize_or("num_register_tokens", 4)?,
            _ => 0,
        };
        if patch == 0 {
            return Err(f.err("patch_size must be positive".into()));
        }
        Ok(VitConfig {
            family,
            hidden_size: hidden,
            num_layers: f.usize_or("num_hidden_layers", 12)?,
            num_heads: f.usize_or("num_attention_heads", 12)?,
            intermediate_size: intermediate,
            mlp,
            patch_size: patch,
            num_channels: f.usize_or("num_channels", 3)?,
            num_register_tokens: registers,
            layer_norm_eps: f.f64_or("layer_norm_eps", 1e-6)?,
            query_bias: qkv_bias,
            key_bias: qkv_bias,
            value_bias: qkv_bias,
            proj_bias: true,
            mlp_bias: true,
            positions: Positions::Learned {
                grid: image_size / patch,
                antialias: family == Family::Dinov2Registers,
            },
            image_size,
            quantization: None,
        })
    }

    /// Checks the invariants the forward pass relies on, and the upper bounds that keep a
    /// hostile config from asking for more memory than any real model (see [`LIMITS`]).
    pub fn validate(&self) -> Result<(), String> {
        let bounded = [
            ("hidden_size", self.hidden_size, LIMITS.hidden_size),
            ("num_hidden_layers", self.num_layers, LIMITS.layers),
            ("num_attention_heads", self.num_heads, LIMITS.heads),
            (
                "intermediate_size",
                self.intermediate_size,
                LIMITS.intermediate_size,
            ),
            ("patch_size", self.patch_size, LIMITS.patch_size),
        ];
        for (name, v, max) in bounded {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
            if v > max {
                return Err(format!(
                    "{name} = {v} exceeds the limit of {max} (the largest released models are far below it)"
                ));
            }
        }
        let at_most = [
            (
                "num_register_tokens",
                self.num_register_tokens,
                LIMITS.registers,
            ),
            ("image_size", self.image_size, LIMITS.image_size),
        ];
        for (name, v, max) in at_most {
            if v > max {
                return Err(format!("{name} = {v} exceeds the limit of {max}"));
            }
        }
        if self.num_channels != 3 {
            return Err(format!(
                "num_channels = {}: only RGB (3) is supported",
                self.num_channels
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if let Positions::Rope { theta } = self.positions {
            if !self.head_dim().is_multiple_of(4) {
                return Err(format!(
                    "RoPE needs head_dim divisible by 4, got {}",
                    self.head_dim()
                ));
            }
            if !(theta > 0.0 && theta.is_finite()) {
                return Err(format!(
                    "rope_theta must be positive and finite, got {theta}"
                ));
            }
        }
        if let Positions::Learned { grid, .. } = self.positions {
            if grid == 0 {
                return Err(format!(
                    "image_size {} is smaller than patch_size {}",
                    self.image_size, self.patch_size
                ));
            }
            if grid > LIMITS.image_size {
                return Err(format!(
                    "a {grid}x{grid} position grid exceeds the limit of {0}x{0}",
                    LIMITS.image_size
                ));
            }
        }
        if self.num_parameters_checked().is_none() {
            return Err("the parameter count overflows".into());
        }
        if !(self.layer_norm_eps >= 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(format!(
                "layer_norm_eps must be non-negative and finite, got {}",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// `hidden_size / num_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// CLS plus register tokens, the tokens before the patches.
    pub fn num_prefix_tokens(&self) -> usize {
        1 + self.num_register_tokens
    }

    /// Patch grid `(h, w)` for an input of `height x width` pixels (remainders are dropped).
    pub fn grid(&self, height: usize, width: usize) -> (usize, usize) {
        (height / self.patch_size, width / self.patch_size)
    }

    /// Tokens in the sequence for an input of `height x width` pixels (saturating, so that
    /// limit checks on absurd sizes cannot wrap).
    pub fn num_tokens(&self, height: usize, width: usize) -> usize {
        let (h, w) = self.grid(height, width);
        h.saturating_mul(w).saturating_add(self.num_prefix_tokens())
    }

    /// A short human name such as `DINOv3 ViT (384-d, 12 layers, 6 heads, gated SiLU MLP)`.
    pub fn describe(&self) -> String {
        let fam = match self.family {
            Family::Dinov3 => "DINOv3 ViT",
            Family::Dinov2 => "DINOv2 ViT",
            Family::Dinov2Registers => "DINOv2 ViT with registers",
        };
        let mlp = match self.mlp {
            MlpKind::Plain(a) => format!("{} MLP", a.hf_name()),
            MlpKind::Gated(a) => format!("gated {} MLP", a.hf_name()),
        };
        format!(
            "{fam}/{} ({}-d, {} layers, {} heads, {mlp} {}, {} registers)",
            self.patch_size,
            self.hidden_size,
            self.num_layers,
            self.num_heads,
            self.intermediate_size,
            self.num_register_tokens
        )
    }

    /// An HF-compatible `config.json` value that both HF transformers and this crate load.
    pub fn to_hf_json(&self) -> Value {
        let mut v = json!({
            "architectures": [self.family.architecture()],
            "model_type": self.family.model_type(),
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "layer_norm_eps": self.layer_norm_eps,
            "image_size": self.image_size,
            "layerscale_value": 1.0,
            "dtype": "float32",
        });
        let o = v.as_object_mut().expect("object literal");
        if let Some(q) = &self.quantization {
            o.insert(
                "quantization".into(),
                serde_json::to_value(q).expect("quantization section serialises"),
            );
        }
        match self.family {
            Family::Dinov3 => {
                let (gated, act) = match self.mlp {
                    MlpKind::Plain(a) => (false, a),
                    MlpKind::Gated(a) => (true, a),
                };
                let theta = match self.positions {
                    Positions::Rope { theta } => theta,
                    Positions::Learned { .. } => 100.0,
                };
                o.insert("intermediate_size".into(), json!(self.intermediate_size));
                o.insert("hidden_act".into(), json!(act.hf_name()));
                o.insert("use_gated_mlp".into(), json!(gated));
                o.insert(
                    "num_register_tokens".into(),
                    json!(self.num_register_tokens),
                );
                o.insert("rope_theta".into(), json!(theta));
                o.insert("query_bias".into(), json!(self.query_bias));
                o.insert("key_bias".into(), json!(self.key_bias));
                o.insert("value_bias".into(), json!(self.value_bias));
                o.insert("proj_bias".into(), json!(self.proj_bias));
                o.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            Family::Dinov2 | Family::Dinov2Registers => {
                let (swiglu, act) = match self.mlp {
                    MlpKind::Plain(a) => (false, a),
                    MlpKind::Gated(a) => (true, a),
                };
                let ratio = if swiglu {
                    // Inverse of the SwiGLU width rule; exact for the released giant (1536 -> 4096).
                    (self.intermediate_size as f64 * 3.0 / 2.0 / self.hidden_size as f64).round()
                } else {
                    self.intermediate_size as f64 / self.hidden_size as f64
                };
                o.insert("mlp_ratio".into(), json!(ratio));
                o.insert("use_swiglu_ffn".into(), json!(swiglu));
                o.insert("hidden_act".into(), json!(act.hf_name()));
                o.insert("qkv_bias".into(), json!(self.query_bias));
                if self.family == Family::Dinov2Registers {
                    o.insert(
                        "num_register_tokens".into(),
                        json!(self.num_register_tokens),
                    );
                }
            }
        }
        v
    }

    /// Number of parameters the architecture holds (the mask token included, as HF counts it).
    /// Validated configs never overflow (see [`VitConfig::validate`]).
    pub fn num_parameters(&self) -> usize {
        self.num_parameters_checked().unwrap_or(usize::MAX)
    }

    /// [`VitConfig::num_parameters`] in checked arithmetic: `None` on overflow.
    fn num_parameters_checked(&self) -> Option<usize> {
        let d = self.hidden_size;
        let i = self.intermediate_size;
        let p = self.patch_size;
        let mul = |a: usize, b: usize| a.checked_mul(b);
        let linear =
            |o: usize, n: usize, bias: bool| mul(o, n)?.checked_add(if bias { o } else { 0 });
        let mlp = match self.mlp {
            MlpKind::Plain(_) => {
                linear(i, d, self.mlp_bias)?.checked_add(linear(d, i, self.mlp_bias)?)?
            }
            MlpKind::Gated(_) => {
                mul(2, linear(i, d, self.mlp_bias)?)?.checked_add(linear(d, i, self.mlp_bias)?)?
            }
        };
        let layer = [
            mul(4, d)?, // two LayerNorms
            linear(d, d, self.query_bias)?,
            linear(d, d, self.key_bias)?,
            linear(d, d, self.value_bias)?,
            linear(d, d, self.proj_bias)?,
            mul(2, d)?, // LayerScale
            mlp,
        ];
        let pos = match self.positions {
            Positions::Learned { grid, .. } => mul(mul(grid, grid)?.checked_add(1)?, d)?,
            Positions::Rope { .. } => 0,
        };
        let embed = [
            mul(mul(d, self.num_channels)?, mul(p, p)?)?,
            mul(3, d)?, // patch bias, CLS, mask token
            mul(self.num_register_tokens, d)?,
            pos,
            mul(2, d)?, // final norm
        ];
        let layer = layer.iter().try_fold(0usize, |a, &b| a.checked_add(b))?;
        let embed = embed.iter().try_fold(0usize, |a, &b| a.checked_add(b))?;
        embed.checked_add(mul(self.num_layers, layer)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<VitConfig> {
        VitConfig::from_json_str(s, Path::new("config.json"))
    }

    #[test]
    fn released_dinov3_sizes_parse_with_expected_parameter_counts() {
        // (hidden, layers, heads, intermediate, gated, q/v bias, params in millions as published)
        let sizes = [
            (384, 12, 6, 1536, false, true, 21.6),
            (384, 12, 6, 1536, true, true, 28.7),
            (768, 12, 12, 3072, false, true, 85.7),
            (1024, 24, 16, 4096, false, true, 303.1),
            (1280, 32, 20, 5120, true, true, 840.6),
            (4096, 40, 32, 8192, true, false, 6716.0),
        ];
        for (d, l, h, i, gated, qv, millions) in sizes {
            let cfg = parse(&format!(
                r#"{{"model_type":"dinov3_vit","hidden_size":{d},"num_hidden_layers":{l},"num_attention_heads":{h},
                "intermediate_size":{i},"use_gated_mlp":{gated},"hidden_act":"{}","query_bias":{qv},"value_bias":{qv},
                "num_register_tokens":4,"rope_theta":100.0,"layer_norm_eps":1e-5}}"#,
                if gated { "silu" } else { "gelu" }
            ))
            .unwrap();
            let m = cfg.num_parameters() as f64 / 1e6;
            assert!(
                (m - millions).abs() / millions < 0.01,
                "{d}-d: {m}M vs {millions}M"
            );
            assert_eq!(cfg.num_tokens(224, 224), 1 + 4 + 196);
        }
    }

    #[test]
    fn old_swiglu_name_and_nested_rope_are_accepted() {
        let cfg = parse(
            r#"{"model_type":"dinov3_vit","use_swiglu_ffn":true,"hidden_act":"silu","rope_parameters":{"rope_theta":50.0}}"#,
        )
        .unwrap();
        assert_eq!(cfg.mlp, MlpKind::Gated(Activation::Silu));
        assert_eq!(cfg.positions, Positions::Rope { theta: 50.0 });
    }

    #[test]
    fn dinov2_giant_swiglu_width() {
        let cfg = parse(
            r#"{"model_type":"dinov2","hidden_size":1536,"num_hidden_layers":40,"num_attention_heads":24,
            "mlp_ratio":4,"use_swiglu_ffn":true,"patch_size":14,"image_size":518}"#,
        )
        .unwrap();
        assert_eq!(cfg.intermediate_size, 4096);
        assert_eq!(
            cfg.positions,
            Positions::Learned {
                grid: 37,
                antialias: false
            }
        );
        let back = parse(&cfg.to_hf_json().to_string()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn round_trip_through_hf_json() {
        let cfg = parse(
            r#"{"model_type":"dinov3_vit","hidden_size":64,"num_attention_heads":4,"intermediate_size":96,
            "num_hidden_layers":2,"num_register_tokens":4,"use_gated_mlp":true,"hidden_act":"silu","query_bias":false}"#,
        )
        .unwrap();
        let back = parse(&cfg.to_hf_json().to_string()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let e = parse(r#"{"model_type":"vit"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown model_type \"vit\""), "{e}");
        let e = parse(r#"{"hidden_size":3}"#).unwrap_err().to_string();
        assert!(e.contains("model_type"), "{e}");
        let e = parse(r#"{"model_type":"dinov3_vit","hidden_size":"big"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size") && e.contains("integer"), "{e}");
        let e = parse(r#"{"model_type":"dinov3_vit","hidden_size":30,"num_attention_heads":4}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not divisible"), "{e}");
        let e = parse(r#"{"model_type":"dinov3_vit","hidden_act":"relu6"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported activation"), "{e}");
        let e = parse("{not json").unwrap_err().to_string();
        assert!(e.contains("invalid config"), "{e}");
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_sized_from_them() {
        let cases = [
            (r#""num_hidden_layers":100000000000"#, "num_hidden_layers"),
            (
                r#""hidden_size":1000000,"num_attention_heads":1"#,
                "hidden_size",
            ),
            (r#""intermediate_size":10000000000"#, "intermediate_size"),
            (
                r#""num_attention_heads":4096,"hidden_size":4096"#,
                "num_attention_heads",
            ),
            (r#""num_register_tokens":99999999"#, "num_register_tokens"),
            (r#""patch_size":100000"#, "patch_size"),
        ];
        for (field, name) in cases {
            let e = parse(&format!(r#"{{"model_type":"dinov3_vit",{field}}}"#))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(name) && e.contains("config.json"),
                "{field}: {e}"
            );
        }
        // 2^32 * 14 wrapped grid^2 to 0 before the bound.
        let e = parse(r#"{"model_type":"dinov2","image_size":60129542144}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("image_size") && e.contains("limit"), "{e}");
    }
}
