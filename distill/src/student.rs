//! Student architectures: DINOv3-style ViTs (patch 16, CLS, 4 registers, RoPE, LayerScale),
//! by name or from an HF `dinov3_vit` config.json.

use std::path::Path;

use dinoedge_runtime::config::{Activation, Family, MlpKind, Positions, VitConfig};

use crate::error::{DistillError, Result};

/// The named sizes: `(name, hidden, layers, heads, mlp hidden, gated)`.
pub const NAMED: [(&str, usize, usize, usize, usize, bool); 4] = [
    ("vit-ti16", 192, 12, 3, 768, false),
    ("vit-s16", 384, 12, 6, 1536, false),
    ("vit-s16plus", 384, 12, 6, 1536, true),
    ("vit-b16", 768, 12, 12, 3072, false),
];

/// A DINOv3 student config of the given shape (DINOv3 defaults: 4 registers, RoPE theta 100,
/// q and v biases, LayerNorm eps 1e-5).
pub fn dinov3_student(
    hidden: usize,
    layers: usize,
    heads: usize,
    mlp: usize,
    gated: bool,
) -> VitConfig {
    VitConfig {
        family: Family::Dinov3,
        hidden_size: hidden,
        num_layers: layers,
        num_heads: heads,
        intermediate_size: mlp,
        mlp: if gated {
            MlpKind::Gated(Activation::Silu)
        } else {
            MlpKind::Plain(Activation::Gelu)
        },
        patch_size: 16,
        num_channels: 3,
        num_register_tokens: 4,
        layer_norm_eps: 1e-5,
        query_bias: true,
        key_bias: false,
        value_bias: true,
        proj_bias: true,
        mlp_bias: true,
        positions: Positions::Rope { theta: 100.0 },
        image_size: 224,
        quantization: None,
    }
}

/// The name a `--student` argument goes by (its run directory in a multi-student run): a
/// named size as given, a config file by its stem, or by its folder for `config.json`.
pub fn name(arg: &str) -> String {
    if NAMED.iter().any(|n| n.0 == arg) {
        return arg.to_string();
    }
    let path = Path::new(arg);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    match stem.as_deref() {
        Some("config") | None => path
            .parent()
            .and_then(|p| p.file_name())
            .map_or_else(|| "student".into(), |n| n.to_string_lossy().into_owned()),
        Some(s) => s.to_string(),
    }
}

/// `vit-ti16`, `vit-s16`, `vit-s16plus`, `vit-b16`, or the path of a `dinov3_vit` config.json.
pub fn resolve(arg: &str) -> Result<VitConfig> {
    if let Some(&(_, d, l, h, i, g)) = NAMED.iter().find(|n| n.0 == arg) {
        return Ok(dinov3_student(d, l, h, i, g));
    }
    let path = Path::new(arg);
    if !path.is_file() {
        let names: Vec<&str> = NAMED.iter().map(|n| n.0).collect();
        return Err(DistillError::Config(format!(
            "--student {arg:?}: not a named size ({}) nor a config.json file",
            names.join(", ")
        )));
    }
    let cfg = VitConfig::from_file(path)?;
    if cfg.family != Family::Dinov3 {
        return Err(DistillError::Config(format!(
            "{}: students are DINOv3 ViTs (model_type dinov3_vit), not {}",
            path.display(),
            cfg.family.model_type()
        )));
    }
    if cfg.quantization.is_some() {
        return Err(DistillError::Config(format!(
            "{}: cannot train a quantized model",
            path.display()
        )));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::name;

    #[test]
    fn students_are_named_by_size_or_file() {
        assert_eq!(name("vit-ti16"), "vit-ti16");
        assert_eq!(name("/x/tiny.json"), "tiny");
        assert_eq!(name("/runs/my-student/config.json"), "my-student");
        assert_eq!(name("config.json"), "student");
    }
}
