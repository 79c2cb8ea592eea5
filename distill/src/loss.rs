//! The distillation objective. Learned linear heads project the student's normed features
//! (width D) to the teacher's width; each head's output is matched to the teacher with
//! `cosine + smooth-L1`:
//!
//! - head 0: CLS token, weight `cls`;
//! - head 1: patch tokens, weight `patch`, plus optionally a Gram term (weight `gram`):
//!   the mean squared difference of the patch-similarity matrices `Û Ûᵀ` of the
//!   L2-normalised projected student patches and of the teacher patches, per image
//!   (DINOv3's Gram anchoring);
//! - heads 2..: intermediate blocks (final norm applied), patch tokens, weight `inter`.
//!
//! Per term with n rows of width Dt: `w * (mean_rows(1 - cos(p, t)) + mean_elems(smooth_l1(p - t)))`,
//! smooth-L1 with beta 1, exactly as `F.cosine_similarity` and `F.smooth_l1_loss` compute.

use serde::{Deserialize, Serialize};

/// Weights of the loss terms.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossWeights {
    pub cls: f32,
    pub patch: f32,
    pub gram: f32,
    pub inter: f32,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            cls: 1.0,
            patch: 1.0,
            gram: 0.0,
            inter: 0.0,
        }
    }
}

/// Teacher features for one batch, on the student's patch grid.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    /// (B, Dt)
    pub cls: Vec<f32>,
    /// (B * G, Dt), G = grid_h * grid_w, row-major grid per image.
    pub patches: Vec<f32>,
    /// One (B * G, Dt) per intermediate pair.
    pub inter: Vec<Vec<f32>>,
}

/// Loss values of one step (already weighted; `total` is their sum).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossParts {
    pub total: f64,
    pub cls: f64,
    pub patch: f64,
    pub gram: f64,
    pub inter: f64,
}
