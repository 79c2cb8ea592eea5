//! Feature agreement between two models on the same input (float vs quantised, teacher vs
//! student): cosine similarity of CLS and of patch features, per layer.

use dinoedge_runtime::tensor::mean_row_cosine;
use serde::Serialize;

use crate::{Features, LayerFeatures};

#[derive(Clone, Debug, Serialize)]
pub struct LayerCosine {
    /// Block index (0-based); the last entry is the final output.
    pub layer: usize,
    pub cls: f64,
    /// Mean over patches (and images) of the per-patch cosine.
    pub patches: f64,
}

fn one(a: &LayerFeatures, b: &LayerFeatures) -> LayerCosine {
    let d = *a.cls.shape.last().expect("cls is (B, D)");
    LayerCosine {
        layer: a.layer,
        cls: mean_row_cosine(&a.cls.data, &b.cls.data, d),
        patches: mean_row_cosine(&a.patches.data, &b.patches.data, d),
    }
}

/// Cosines of every captured layer, then of the last output.
pub fn layer_cosines(a: &Features, b: &Features) -> Vec<LayerCosine> {
    let mut v: Vec<LayerCosine> = a
        .intermediate
        .iter()
        .zip(&b.intermediate)
        .map(|(x, y)| one(x, y))
        .collect();
    let last = one(&a.last, &b.last);
    if v.last().is_none_or(|l| l.layer != last.layer) {
        v.push(last);
    }
    v
}

/// Averages per-image cosines (same layers in the same order).
pub fn average(per_image: &[Vec<LayerCosine>]) -> Vec<LayerCosine> {
    let n = per_image.len().max(1) as f64;
    let Some(first) = per_image.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| LayerCosine {
            layer: first[i].layer,
            cls: per_image.iter().map(|v| v[i].cls).sum::<f64>() / n,
            patches: per_image.iter().map(|v| v[i].patches).sum::<f64>() / n,
        })
        .collect()
}
