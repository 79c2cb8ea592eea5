//! The held-out set of a run: centre views rendered once, with the teacher's targets, and
//! the student's agreement with them through its heads.

use std::path::PathBuf;

use crate::error::Result;
use crate::eval::{Agreement, AgreementSum, Heads};
use crate::loader::{Key, Loader, LoaderSpec, RenderSpec};
use crate::loss::Targets;
use crate::teacher::OnlineTeacher;

use super::options::TrainOptions;

/// Held-out images rendered once, with their teacher targets.
pub(super) struct HoldoutSet {
    /// Per chunk of `batch` images (the last padded by repeating): student pixels, targets
    /// and the number of real images.
    pub(super) chunks: Vec<(Vec<f32>, Targets, usize)>,
}

impl HoldoutSet {
    pub(super) fn new(
        images: &[(PathBuf, u32, u32)],
        o: &TrainOptions,
        b: usize,
        s: RenderSpec,
        t: RenderSpec,
        teacher: &mut OnlineTeacher,
    ) -> Result<Self> {
        let n = images.len();
        let loader = Loader::start(LoaderSpec {
            images: images.to_vec(),
            aug: o.aug,
            seed: o.seed,
            renders: vec![s, t],
            keys: Box::new(move |c| {
                (0..b)
                    .map(|j| Key {
                        image: (c * b + j).min(n - 1),
                        view: 0,
                        center: true,
                    })
                    .collect()
            }),
            first_step: 0,
            end_step: n.div_ceil(b),
            workers: o.workers,
            prefetch: 2,
        })?;
        let mut chunks = Vec::new();
        for c in 0..n.div_ceil(b) {
            let batch = loader.next()?;
            let real = (n - c * b).min(b);
            let targets = teacher.targets(&batch.pixels[1], b)?;
            chunks.push((
                batch.pixels.into_iter().next().unwrap_or_default(),
                targets,
                real,
            ));
        }
        Ok(HoldoutSet { chunks })
    }

    /// Agreement of a student with the teacher through `heads`; `forward` runs the student
    /// on a batch of pixels and returns its normed outputs (B*N, D).
    pub(super) fn evaluate(
        &self,
        d: &dinoedge_runtime::ops::Dims,
        heads: &Heads,
        forward: &mut dyn FnMut(&[f32]) -> Result<Vec<f32>>,
    ) -> Result<Agreement> {
        let (n, hw, dim) = (d.tokens(), d.patches(), d.dim);
        let mut sum = AgreementSum::default();
        for (pixels, t, real) in &self.chunks {
            let out = forward(pixels)?;
            let cls: Vec<f32> = (0..*real)
                .flat_map(|b| out[b * n * dim..(b * n + 1) * dim].iter().copied())
                .collect();
            let patches: Vec<f32> = (0..*real)
                .flat_map(|b| {
                    out[(b * n + d.prefix) * dim..(b * n + d.prefix + hw) * dim]
                        .iter()
                        .copied()
                })
                .collect();
            let dt = heads.teacher_dim;
            let tt = Targets {
                cls: t.cls[..real * dt].to_vec(),
                patches: t.patches[..real * hw * dt].to_vec(),
                inter: Vec::new(),
            };
            sum.add(heads.cosine_sums(&cls, &patches, &tt), *real);
        }
        Ok(sum.finish())
    }
}
