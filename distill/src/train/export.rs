//! The export of a finished run: the EMA student in HF layout (`dinov3_vit` or
//! `dinov3_convnext`), its image processor, and the heads.

use std::collections::HashMap;
use std::path::Path;

use dinoedge_runtime::ModelConfig;
use dinoedge_runtime::fsutil::write_atomic;
use dinoedge_runtime::weights::store::write_safetensors;

use crate::error::{DistillError, Result};
use crate::eval::{HEADS_FILE, Heads};
use crate::params::ParamLayout;

use super::options::{RunConfig, TrainOptions};

/// Writes the EMA student (`config.json`, `model.safetensors`, `preprocessor_config.json`)
/// and its heads (`distill_heads.safetensors`).
pub(super) fn export(
    out: &Path,
    student: &ModelConfig,
    layout: &ParamLayout,
    ema: &[f32],
    run: &RunConfig,
    o: &TrainOptions,
) -> Result<()> {
    let cfg_text = serde_json::to_string_pretty(&student.to_hf_json())
        .map_err(|e| DistillError::Config(e.to_string()))?;
    write_atomic(&out.join("config.json"), cfg_text.as_bytes())?;
    let meta = HashMap::from([
        // transformers refuses safetensors files without format = pt.
        ("format".to_string(), "pt".to_string()),
        (
            "dinoedge_distill".to_string(),
            serde_json::to_string(run).unwrap_or_default(),
        ),
    ]);
    write_safetensors(
        &out.join("model.safetensors"),
        &layout.hub_tensors(student, ema)?,
        Some(meta),
    )?;
    let pre = serde_json::json!({
        "image_processor_type": "DINOv3ViTImageProcessorFast",
        "do_resize": true,
        "size": {"height": o.size, "width": o.size},
        "resample": 2,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": dinoedge_runtime::preprocess::IMAGENET_MEAN,
        "image_std": dinoedge_runtime::preprocess::IMAGENET_STD,
    });
    write_atomic(
        &out.join("preprocessor_config.json"),
        serde_json::to_string_pretty(&pre)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let head_meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "teacher".to_string(),
            serde_json::to_string(&run.teacher).unwrap_or_default(),
        ),
        (
            "inter".to_string(),
            serde_json::to_string(&run.inter).unwrap_or_default(),
        ),
        (
            "align".to_string(),
            serde_json::to_string(&run.align).unwrap_or_default(),
        ),
    ]);
    Heads::save_all(&out.join(HEADS_FILE), layout, ema, head_meta)
}
