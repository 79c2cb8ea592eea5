//! `DINOv3ConvNextConfig`: what a ConvNeXt's `config.json` says, validated and bounded.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{Activation, Fields, QuantConfig};
use crate::error::Result;

/// The `model_type` HF writes for DINOv3 ConvNeXts.
pub const MODEL_TYPES: &[&str] = &["dinov3_convnext"];

/// Upper bounds on what a config may ask for (ConvNeXt-L: 4 stages, depth 27, width 1536).
pub const MAX_STAGES: usize = 8;
pub const MAX_DEPTH: usize = 1024;
pub const MAX_WIDTH: usize = 32768;
pub const MAX_IMAGE_SIZE: usize = 16384;

/// The architecture of one DINOv3 ConvNeXt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvNextConfig {
    /// Channels of each stage.
    pub hidden_sizes: Vec<usize>,
    /// Blocks of each stage.
    pub depths: Vec<usize>,
    pub act: Activation,
    pub layer_norm_eps: f64,
    /// LayerScale's initial value (training a new model; loading reads `gamma`).
    pub layer_scale_init_value: f64,
    pub num_channels: usize,
    pub image_size: usize,
    /// Present for dinoedge int8 files (`dinoedge quantize --precision int8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantConfig>,
}

impl ConvNextConfig {
    pub(crate) fn parse(f: &Fields, _model_type: &str) -> Result<Self> {
        Ok(ConvNextConfig {
            hidden_sizes: f.usize_list_or("hidden_sizes", &[96, 192, 384, 768])?,
            depths: f.usize_list_or("depths", &[3, 3, 9, 3])?,
            act: f.activation("hidden_act", "gelu")?,
            layer_norm_eps: f.f64_or("layer_norm_eps", 1e-6)?,
            layer_scale_init_value: f.f64_or("layer_scale_init_value", 1e-6)?,
            num_channels: f.usize_or("num_channels", 3)?,
            image_size: f.square_or("image_size", 224)?,
            quantization: None,
        })
    }

    /// The invariants the forward relies on, and bounds against hostile configs.
    pub fn validate(&self) -> Result<(), String> {
        let (h, d) = (&self.hidden_sizes, &self.depths);
        if h.is_empty() || h.len() != d.len() {
            return Err(format!(
                "hidden_sizes ({} values) and depths ({} values) must be non-empty and of equal length, one per stage",
                h.len(),
                d.len()
            ));
        }
        if h.len() > MAX_STAGES {
            return Err(format!(
                "{} stages exceed the limit of {MAX_STAGES}",
                h.len()
            ));
        }
        for (name, list, max) in [("hidden_sizes", h, MAX_WIDTH), ("depths", d, MAX_DEPTH)] {
            if let Some((i, v)) = list.iter().enumerate().find(|(_, v)| **v == 0 || **v > max) {
                return Err(format!("{name}[{i}] = {v} must lie in 1..={max}"));
            }
        }
        if self.num_channels != 3 {
            return Err(format!(
                "num_channels = {}: only RGB (3) is supported",
                self.num_channels
            ));
        }
        if self.image_size > MAX_IMAGE_SIZE {
            return Err(format!(
                "image_size = {} exceeds the limit of {MAX_IMAGE_SIZE}",
                self.image_size
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "layer_norm_eps = {} must be finite and positive",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    pub fn num_stages(&self) -> usize {
        self.hidden_sizes.len()
    }

    /// Channels of the last stage: the width of the output features.
    pub fn hidden_size(&self) -> usize {
        *self
            .hidden_sizes
            .last()
            .expect("validated: at least one stage")
    }

    /// Pixels per output cell: the stem's 4, halved again by each later stage.
    pub fn stride(&self) -> usize {
        4 << (self.num_stages() - 1)
    }

    /// Each stage's grid for an input of `height x width` pixels: the stem's 4x4 stride 4,
    /// then 2x2 stride 2 per stage, each dropping a remainder as the convs do (so a 70-px
    /// side gives 17, 8, 4, 2).
    pub fn stage_grids(&self, height: usize, width: usize) -> Vec<(usize, usize)> {
        let mut g = (height / 4, width / 4);
        let mut out = vec![g];
        for _ in 1..self.num_stages() {
            g = (g.0 / 2, g.1 / 2);
            out.push(g);
        }
        out
    }

    /// The last stage's grid.
    pub fn grid(&self, height: usize, width: usize) -> (usize, usize) {
        *self.stage_grids(height, width).last().expect("one stage")
    }

    /// The pooled token plus the last grid's cells (saturating).
    pub fn num_tokens(&self, height: usize, width: usize) -> usize {
        let (h, w) = self.grid(height, width);
        h.saturating_mul(w).saturating_add(1)
    }

    /// Weights of the convolutions run as matmuls (stem, downsampling, pointwise): what a
    /// GPU session keeps in its 16-bit precisions.
    pub fn linear_weight_count(&self) -> usize {
        let mut n = 0usize;
        let mut prev = self.num_channels;
        for (s, (&c, &depth)) in self.hidden_sizes.iter().zip(&self.depths).enumerate() {
            let k = if s == 0 { 4 } else { 2 };
            n = n.saturating_add(c * prev * k * k);
            n = n.saturating_add((8 * c * c).saturating_mul(depth));
            prev = c;
        }
        n
    }

    pub fn describe(&self) -> String {
        format!(
            "DINOv3 ConvNeXt (widths {:?}, depths {:?}, {} 7x7 depthwise blocks)",
            self.hidden_sizes,
            self.depths,
            self.depths.iter().sum::<usize>()
        )
    }

    pub fn to_hf_json(&self) -> Value {
        let n = self.num_stages();
        let mut v = json!({
            "architectures": ["DINOv3ConvNextModel"],
            "model_type": "dinov3_convnext",
            "hidden_sizes": self.hidden_sizes,
            "depths": self.depths,
            "hidden_act": self.act.hf_name(),
            "layer_norm_eps": self.layer_norm_eps,
            "layer_scale_init_value": self.layer_scale_init_value,
            "num_channels": self.num_channels,
            "image_size": self.image_size,
            "drop_path_rate": 0.0,
            "stage_names": std::iter::once("stem".to_string())
                .chain((1..=n).map(|i| format!("stage{i}")))
                .collect::<Vec<_>>(),
            "dtype": "float32",
        });
        if let Some(q) = &self.quantization {
            v["quantization"] = serde_json::to_value(q).expect("quantization section serialises");
        }
        v
    }

    /// Parameters held (saturating; validated configs stay far below `usize::MAX`).
    pub fn num_parameters(&self) -> usize {
        let k2 = crate::ops::dwconv::TAPS;
        let mut n = 0usize;
        let mut prev = self.num_channels;
        for (s, (&c, &depth)) in self.hidden_sizes.iter().zip(&self.depths).enumerate() {
            let (k, norm) = if s == 0 { (4, c) } else { (2, prev) };
            n = n.saturating_add(c * prev * k * k + c + 2 * norm);
            let block = c * k2 + c + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c) + c;
            n = n.saturating_add(block.saturating_mul(depth));
            prev = c;
        }
        n.saturating_add(2 * prev)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ModelConfig;
    use std::path::Path;

    fn parse(json: &str) -> std::result::Result<ModelConfig, String> {
        ModelConfig::from_json_str(json, Path::new("config.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn tiny_defaults_and_parameter_count() {
        let ModelConfig::ConvNext(c) = parse(r#"{"model_type":"dinov3_convnext"}"#).unwrap() else {
            panic!("not a ConvNeXt")
        };
        assert_eq!(c.hidden_sizes, [96, 192, 384, 768]);
        assert_eq!(c.stride(), 32);
        // ConvNeXt-T as the DINOv3 card counts it: 29M (27,820,128 in transformers).
        assert_eq!(c.num_parameters(), 27_820_128);
        assert_eq!(c.stage_grids(70, 100), [(17, 25), (8, 12), (4, 6), (2, 3)]);
    }

    #[test]
    fn inconsistent_or_unbounded_configs_name_the_field() {
        let e = parse(r#"{"model_type":"dinov3_convnext","hidden_sizes":[8,16],"depths":[1,1,1]}"#)
            .unwrap_err();
        assert!(
            e.contains("hidden_sizes (2 values) and depths (3 values)"),
            "{e}"
        );
        let e = parse(r#"{"model_type":"dinov3_convnext","hidden_sizes":[8,0],"depths":[1,1]}"#)
            .unwrap_err();
        assert!(e.contains("hidden_sizes[1] = 0"), "{e}");
        let e = parse(r#"{"model_type":"dinov3_convnext","hidden_sizes":[8],"depths":[100000]}"#)
            .unwrap_err();
        assert!(e.contains("depths[0] = 100000"), "{e}");
        let e = parse(r#"{"model_type":"dinov3_convnext","hidden_sizes":"big"}"#).unwrap_err();
        assert!(e.contains("\"hidden_sizes\""), "{e}");
    }

    #[test]
    fn hf_json_round_trips() {
        let cfg = parse(r#"{"model_type":"dinov3_convnext","hidden_sizes":[8,16],"depths":[2,1],"layer_norm_eps":1e-5}"#)
            .unwrap();
        let back = parse(&cfg.to_hf_json().to_string()).unwrap();
        assert_eq!(cfg, back);
    }
}
