//! Held-out agreement with the teacher: the student's CLS and patch features, projected by
//! its distillation heads, against the teacher's, as mean cosine similarity.

use std::collections::HashMap;
use std::path::Path;

use dinoedge_runtime::ops::matmul::Epi;
use dinoedge_runtime::ops::matmul::cpu::matmul_forward;
use dinoedge_runtime::weights::store::{TensorStore, f32_entry, write_safetensors};
use serde::{Deserialize, Serialize};

use crate::error::{DistillError, Result};
use crate::loss::Targets;
use crate::params::{ParamId, ParamLayout};

pub const HEADS_FILE: &str = "distill_heads.safetensors";

/// Mean cosines over held-out images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub cls_cos: f64,
    pub patch_cos: f64,
    pub images: usize,
}

/// The CLS and patch projection heads of a distilled student.
#[derive(Clone, Debug)]
pub struct Heads {
    /// (weight (Dt, D), bias (Dt)) for CLS and for patches.
    pub cls: (Vec<f32>, Vec<f32>),
    pub patch: (Vec<f32>, Vec<f32>),
    pub student_dim: usize,
    pub teacher_dim: usize,
}

impl Heads {
    pub fn from_params(layout: &ParamLayout, v: &[f32], student_dim: usize) -> Self {
        let get = |id| layout.get(v, id).to_vec();
        let cls = (get(ParamId::HeadWeight(0)), get(ParamId::HeadBias(0)));
        let teacher_dim = cls.1.len();
        Heads {
            patch: (get(ParamId::HeadWeight(1)), get(ParamId::HeadBias(1))),
            cls,
            student_dim,
            teacher_dim,
        }
    }

    /// Reads `DIR/distill_heads.safetensors`.
    pub fn load(student_dir: &Path) -> Result<Self> {
        let path = student_dir.join(HEADS_FILE);
        if !path.is_file() {
            return Err(DistillError::Mismatch { path, reason: "missing: not a dinoedge-distilled student (the projection heads are needed to compare with the teacher)".into() });
        }
        let store = TensorStore::open_files(std::slice::from_ref(&path))?;
        let get = |name: &str| -> Result<(Vec<f32>, Vec<usize>)> {
            let t = store.get(name).ok_or_else(|| DistillError::Mismatch {
                path: path.clone(),
                reason: format!("no tensor {name}"),
            })?;
            Ok((t.to_f32()?, t.shape.to_vec()))
        };
        let (cw, cs) = get("head.0.weight")?;
        let (cb, _) = get("head.0.bias")?;
        let (pw, ps) = get("head.1.weight")?;
        let (pb, _) = get("head.1.bias")?;
        if cs.len() != 2 || ps != cs || cb.len() != cs[0] || pb.len() != cs[0] {
            return Err(DistillError::Mismatch {
                path,
                reason: format!("head shapes {cs:?} / {ps:?} do not fit together"),
            });
        }
        Ok(Heads {
            cls: (cw, cb),
            patch: (pw, pb),
            student_dim: cs[1],
            teacher_dim: cs[0],
        })
    }

    /// Writes every head of `layout` (CLS, patches, intermediate) with metadata.
    pub fn save_all(
        path: &Path,
        layout: &ParamLayout,
        v: &[f32],
        meta: HashMap<String, String>,
    ) -> Result<()> {
        let tensors: Vec<_> = layout
            .entries
            .iter()
            .filter(|e| !e.id.is_model())
            .map(|e| f32_entry(e.name.clone(), e.shape.clone(), &v[e.range.clone()]))
            .collect();
        Ok(write_safetensors(path, &tensors, Some(meta))?)
    }

    fn project(w: &(Vec<f32>, Vec<f32>), x: &[f32], d: usize) -> Vec<f32> {
        let o = w.1.len();
        let mut out = vec![0.0f32; x.len() / d * o];
        matmul_forward(&mut out, x, &w.0, Some(&w.1), d, o, Epi::Store);
        out
    }

    /// Sums of cosines (CLS, patches) and counts for student features (`cls` (B, D),
    /// `patches` (B*G, D)) against teacher targets.
    pub fn cosine_sums(
        &self,
        cls: &[f32],
        patches: &[f32],
        t: &Targets,
    ) -> ((f64, usize), (f64, usize)) {
        let d = self.student_dim;
        let pc = Self::project(&self.cls, cls, d);
        let pp = Self::project(&self.patch, patches, d);
        (
            cos_sum(&pc, &t.cls, self.teacher_dim),
            cos_sum(&pp, &t.patches, self.teacher_dim),
        )
    }
}

/// (sum of row cosines, rows).
pub fn cos_sum(a: &[f32], b: &[f32], dim: usize) -> (f64, usize) {
    let mut s = 0.0f64;
    for (x, y) in a.chunks_exact(dim).zip(b.chunks_exact(dim)) {
        let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
        let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
        let ny: f64 = y.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
        s += dot / (nx * ny).max(1e-12);
    }
    (s, a.len() / dim)
}

/// Accumulates cosine sums into an [`Agreement`].
#[derive(Default)]
pub struct AgreementSum {
    cls: (f64, usize),
    patch: (f64, usize),
    images: usize,
}

impl AgreementSum {
    pub fn add(&mut self, sums: ((f64, usize), (f64, usize)), images: usize) {
        self.cls.0 += sums.0.0;
        self.cls.1 += sums.0.1;
        self.patch.0 += sums.1.0;
        self.patch.1 += sums.1.1;
        self.images += images;
    }

    pub fn finish(&self) -> Agreement {
        Agreement {
            cls_cos: self.cls.0 / self.cls.1.max(1) as f64,
            patch_cos: self.patch.0 / self.patch.1.max(1) as f64,
            images: self.images,
        }
    }
}
