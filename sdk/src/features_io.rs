//! Features on disk: safetensors with `cls (B, D)`, `registers (B, R, D)`,
//! `patches (B, h, w, D)` in f32, plus `layer{k}.cls|registers|patches` for captured blocks.

use std::collections::HashMap;
use std::path::Path;

use dinoedge_runtime::weights::TensorStore;
use dinoedge_runtime::weights::store::{f32_entry, write_safetensors};
use dinoedge_runtime::{Features, LayerFeatures, Tensor};

use crate::error::{Error, Result};

/// Stacks per-image features along the batch axis. All must share the patch grid.
pub fn concat(parts: &[Features]) -> Result<Features> {
    let first = parts
        .first()
        .ok_or_else(|| Error::InvalidArgument("no features to stack".into()))?;
    for f in parts {
        if f.grid != first.grid {
            return Err(Error::InvalidArgument(format!(
                "images give different patch grids ({}x{} and {}x{}); embed them separately or use a fixed --size",
                first.grid.0, first.grid.1, f.grid.0, f.grid.1
            )));
        }
    }
    let cat = |get: &dyn Fn(&Features) -> &LayerFeatures, layer: usize| -> LayerFeatures {
        let stack = |t: &dyn Fn(&LayerFeatures) -> &Tensor| -> Tensor {
            let mut shape = t(get(first)).shape.clone();
            shape[0] = parts.iter().map(|f| t(get(f)).shape[0]).sum();
            Tensor {
                shape,
                data: parts
                    .iter()
                    .flat_map(|f| t(get(f)).data.iter().copied())
                    .collect(),
            }
        };
        LayerFeatures {
            layer,
            cls: stack(&|l| &l.cls),
            registers: stack(&|l| &l.registers),
            patches: stack(&|l| &l.patches),
        }
    };
    let last = cat(&|f| &f.last, first.last.layer);
    let intermediate = (0..first.intermediate.len())
        .map(|k| cat(&|f| &f.intermediate[k], first.intermediate[k].layer))
        .collect();
    Ok(Features {
        grid: first.grid,
        last,
        intermediate,
    })
}

/// Writes features atomically; `meta` goes into the safetensors metadata.
pub fn write_features(path: &Path, f: &Features, meta: HashMap<String, String>) -> Result<()> {
    let mut tensors = Vec::new();
    let mut push = |prefix: &str, l: &LayerFeatures| {
        tensors.push(f32_entry(
            format!("{prefix}cls"),
            l.cls.shape.clone(),
            &l.cls.data,
        ));
        tensors.push(f32_entry(
            format!("{prefix}registers"),
            l.registers.shape.clone(),
            &l.registers.data,
        ));
        tensors.push(f32_entry(
            format!("{prefix}patches"),
            l.patches.shape.clone(),
            &l.patches.data,
        ));
    };
    push("", &f.last);
    for l in &f.intermediate {
        push(&format!("layer{}.", l.layer), l);
    }
    write_safetensors(path, &tensors, Some(meta))?;
    Ok(())
}

/// Reads `pixel_values (B, 3, H, W)` from a safetensors file (F32, F16 or BF16).
pub fn read_pixels(path: &Path) -> Result<Tensor> {
    let store = TensorStore::open_files(&[path.to_path_buf()])?;
    let t = store
        .get("pixel_values")
        .ok_or_else(|| Error::InvalidFile {
            path: path.to_path_buf(),
            reason: format!(
                "no tensor named \"pixel_values\" (found: {:?})",
                store.names()
            ),
        })?;
    if t.shape.len() != 4 || t.shape[1] != 3 {
        return Err(Error::InvalidFile {
            path: path.to_path_buf(),
            reason: format!(
                "pixel_values has shape {:?}, expected (B, 3, H, W)",
                t.shape
            ),
        });
    }
    Ok(Tensor::new(t.shape.to_vec(), t.to_f32()?)?)
}
