//! Student architectures: DINOv3-style ViTs (patch 16, CLS, 4 registers, RoPE, LayerScale)
//! and DINOv3 ConvNeXts, by name or from an HF `dinov3_vit` / `dinov3_convnext` config.json.

use std::path::Path;

use dinoedge_runtime::config::{Activation, Family, MlpKind, ModelConfig, Positions, VitConfig};
use dinoedge_runtime::models::convnext::config::ConvNextConfig;

use crate::error::{DistillError, Result};

/// The named sizes: `(name, hidden, layers, heads, mlp hidden, gated)`.
pub const NAMED: [(&str, usize, usize, usize, usize, bool); 4] = [
    ("vit-ti16", 192, 12, 3, 768, false),
    ("vit-s16", 384, 12, 6, 1536, false),
    ("vit-s16plus", 384, 12, 6, 1536, true),
    ("vit-b16", 768, 12, 12, 3072, false),
];

/// The named ConvNeXt sizes (DINOv3's): `(name, stage widths, stage depths)`.
pub const NAMED_CONVNEXT: [(&str, [usize; 4], [usize; 4]); 2] = [
    ("convnext-tiny", [96, 192, 384, 768], [3, 3, 9, 3]),
    ("convnext-small", [96, 192, 384, 768], [3, 3, 27, 3]),
];

/// A DINOv3 ConvNeXt student (HF's defaults: GELU, LayerNorm eps 1e-6, 3 channels).
pub fn dinov3_convnext_student(hidden_sizes: &[usize], depths: &[usize]) -> ConvNextConfig {
    ConvNextConfig {
        hidden_sizes: hidden_sizes.to_vec(),
        depths: depths.to_vec(),
        act: Activation::Gelu,
        layer_norm_eps: 1e-6,
        layer_scale_init_value: 1e-6,
        num_channels: 3,
        image_size: 224,
        quantization: None,
    }
}

/// The names `--student` knows.
fn named() -> Vec<&'static str> {
    NAMED
        .iter()
        .map(|n| n.0)
        .chain(NAMED_CONVNEXT.iter().map(|n| n.0))
        .collect()
}

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
    if named().contains(&arg) {
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

/// `vit-ti16`, `vit-s16`, `vit-s16plus`, `vit-b16`, `convnext-tiny`, `convnext-small`, or the
/// path of a `dinov3_vit` or `dinov3_convnext` config.json.
pub fn resolve(arg: &str) -> Result<ModelConfig> {
    if let Some(&(_, d, l, h, i, g)) = NAMED.iter().find(|n| n.0 == arg) {
        return Ok(ModelConfig::Vit(dinov3_student(d, l, h, i, g)));
    }
    if let Some((_, w, d)) = NAMED_CONVNEXT.iter().find(|n| n.0 == arg) {
        return Ok(ModelConfig::ConvNext(dinov3_convnext_student(w, d)));
    }
    let path = Path::new(arg);
    if !path.is_file() {
        return Err(DistillError::Config(format!(
            "--student {arg:?}: not a named size ({}) nor a config.json file",
            named().join(", ")
        )));
    }
    let cfg = ModelConfig::from_file(path)?;
    if let ModelConfig::Vit(v) = &cfg
        && v.family != Family::Dinov3
    {
        return Err(DistillError::Config(format!(
            "{}: students are DINOv3 ViTs or ConvNeXts (model_type dinov3_vit or dinov3_convnext), not {}",
            path.display(),
            v.family.model_type()
        )));
    }
    if cfg.quantization().is_some() {
        return Err(DistillError::Config(format!(
            "{}: cannot train a quantized model",
            path.display()
        )));
    }
    Ok(cfg)
}

/// `cfg` for inputs of `size` pixels (the exported config's `image_size`).
pub fn at_size(cfg: &ModelConfig, size: usize) -> ModelConfig {
    let mut c = cfg.clone();
    match &mut c {
        ModelConfig::Vit(v) => v.image_size = size,
        ModelConfig::ConvNext(v) => v.image_size = size,
    }
    c
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
        assert_eq!(name("convnext-small"), "convnext-small");
    }

    #[test]
    fn convnexts_are_named_sizes() {
        use dinoedge_runtime::ModelConfig;
        let ModelConfig::ConvNext(c) = super::resolve("convnext-tiny").unwrap() else {
            panic!("a ConvNeXt")
        };
        assert_eq!(
            (c.hidden_sizes, c.depths),
            (vec![96, 192, 384, 768], vec![3, 3, 9, 3])
        );
        let s = super::resolve("convnext-small").unwrap();
        assert_eq!(s.num_parameters(), 49_454_688);
        let e = super::resolve("convnext-huge").unwrap_err().to_string();
        assert!(e.contains("convnext-tiny") && e.contains("vit-s16"), "{e}");
    }
}
