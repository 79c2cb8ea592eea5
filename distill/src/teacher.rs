//! The teacher: any runtime model, run online through a runtime session, with its patch grid
//! aligned to the student's. The same crop is fed to both at sizes that give equal grids
//! (e.g. student /16 at 256, teacher /14 at 224); when the user fixes a teacher size that
//! gives another grid, the teacher's patch features are resampled (bilinear) to the
//! student's grid.

use std::path::Path;
use std::sync::Arc;

use dinoedge_runtime::resample::{Filter, resize_aa};
use dinoedge_runtime::{
    Features, InferenceSession, Model, ModelConfig, Preprocessor, RunOptions, SessionOptions,
    Tensor, create_session,
};
use serde::{Deserialize, Serialize};

use crate::error::{DistillError, Result};
use crate::loader::RenderSpec;
use crate::loss::Targets;

/// What identifies a teacher model (for caches and checkpoints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeacherId {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub patch_size: usize,
    /// FNV-1a of config.json and the weight files' tensor names, shapes and sizes.
    pub fingerprint: String,
}

impl TeacherId {
    pub fn of(model: &Model) -> Self {
        let cfg = model.config();
        let text = std::fs::read(model.dir().join("config.json")).unwrap_or_default();
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |b: &[u8]| {
            b.iter()
                .for_each(|&x| h = (h ^ x as u64).wrapping_mul(0x100_0000_01b3))
        };
        eat(&text);
        let store = model.store();
        let mut names = store.names();
        names.sort();
        for n in names {
            eat(n.as_bytes());
            if let Some(t) = store.get(n) {
                t.shape.iter().for_each(|d| eat(&d.to_le_bytes()));
            }
        }
        eat(&store.data_bytes().to_le_bytes());
        TeacherId {
            model_type: cfg.model_type().to_string(),
            hidden_size: cfg.hidden_size(),
            num_layers: cfg.num_layers(),
            patch_size: cfg.patch_size(),
            fingerprint: format!("{h:016x}"),
        }
    }
}

/// Sizes and grids of a teacher/student pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alignment {
    pub student_size: usize,
    pub teacher_size: usize,
    /// The student's patch grid (side), which targets are expressed on.
    pub grid: usize,
    /// The teacher's own grid at `teacher_size`.
    pub teacher_grid: usize,
}

impl Alignment {
    /// Checks sizes against both patch sizes. Without `teacher_size`, the teacher gets the
    /// size that gives the student's grid.
    pub fn new(
        student: &ModelConfig,
        student_size: usize,
        teacher: &ModelConfig,
        teacher_size: Option<usize>,
    ) -> Result<Self> {
        let (ps, pt) = (student.patch_size(), teacher.patch_size());
        if student.num_channels() != teacher.num_channels() {
            return Err(DistillError::Config(format!(
                "the student reads {} channels, the teacher {}",
                student.num_channels(),
                teacher.num_channels()
            )));
        }
        if student_size < ps || !student_size.is_multiple_of(ps) {
            let lo = (student_size / ps).max(1) * ps;
            return Err(DistillError::Config(format!(
                "--size {student_size} does not give an integer patch grid for the student's patch {ps}: grids cannot be aligned (try {lo} or {})",
                lo + ps
            )));
        }
        let grid = student_size / ps;
        let teacher_size = teacher_size.unwrap_or(grid * pt);
        if teacher_size < pt || !teacher_size.is_multiple_of(pt) {
            let lo = (teacher_size / pt).max(1) * pt;
            return Err(DistillError::Config(format!(
                "--teacher-size {teacher_size} does not give an integer patch grid for the teacher's patch {pt}: grids cannot be aligned (try {} for the student's {grid}x{grid} grid, or {lo})",
                grid * pt
            )));
        }
        let teacher_grid = teacher_size / pt;
        if teacher_grid * 4 < grid || grid * 4 < teacher_grid {
            return Err(DistillError::Config(format!(
                "teacher grid {teacher_grid}x{teacher_grid} (size {teacher_size}) and student grid {grid}x{grid} (size {student_size}) differ by more than 4x: grids cannot be aligned usefully (use --teacher-size {})",
                grid * pt
            )));
        }
        Ok(Alignment {
            student_size,
            teacher_size,
            grid,
            teacher_grid,
        })
    }

    pub fn resampled(&self) -> bool {
        self.grid != self.teacher_grid
    }
}

/// How the teacher's input is rendered (its normalisation, at the aligned size).
pub fn teacher_render(model: &Model, a: &Alignment) -> Result<RenderSpec> {
    let p = Preprocessor::for_model(model.config(), Some(model.dir()), a.teacher_size)?;
    Ok(RenderSpec {
        size: a.teacher_size,
        mean: p.mean,
        std: p.std,
    })
}

/// Teacher features of a batch as targets on the student's grid: last-layer CLS and patches,
/// plus the patches of `layers` (final norm applied).
pub fn features_to_targets(f: &Features, a: &Alignment) -> Targets {
    let dim = f.dim();
    let resample = |patches: &Tensor| -> Vec<f32> {
        if !a.resampled() {
            return patches.data.clone();
        }
        let (tg, g) = (a.teacher_grid, a.grid);
        let mut out = Vec::with_capacity(f.batch() * g * g * dim);
        for img in patches.data.chunks_exact(tg * tg * dim) {
            // (G, D) -> planes (D, tg, tg) -> resize -> back to (g*g, D).
            let mut planes = vec![0.0f32; dim * tg * tg];
            for (p, row) in img.chunks_exact(dim).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    planes[c * tg * tg + p] = *v;
                }
            }
            let r = resize_aa(&planes, dim, tg, tg, g, g, Filter::Bilinear);
            for p in 0..g * g {
                out.extend((0..dim).map(|c| r[c * g * g + p]));
            }
        }
        out
    };
    Targets {
        cls: f.last.cls.data.clone(),
        patches: resample(&f.last.patches),
        inter: f
            .intermediate
            .iter()
            .map(|l| resample(&l.patches))
            .collect(),
    }
}

/// A teacher run through a runtime session.
pub struct OnlineTeacher {
    pub model: Arc<Model>,
    session: Box<dyn InferenceSession>,
    /// A backend or precision was asked for (not the CPU default, which runs a quantized
    /// teacher in int8 as runs did before the option existed).
    chosen: bool,
    run: RunOptions,
    pub align: Alignment,
}

impl OnlineTeacher {
    pub fn load(
        dir: &Path,
        align: Alignment,
        layers: &[usize],
        opts: &SessionOptions,
    ) -> Result<Self> {
        let model = Arc::new(Model::load(dir)?);
        Self::new(model, align, layers, opts)
    }

    pub fn new(
        model: Arc<Model>,
        align: Alignment,
        layers: &[usize],
        opts: &SessionOptions,
    ) -> Result<Self> {
        let nl = model.config().num_layers();
        if let Some(&bad) = layers.iter().find(|&&l| l >= nl) {
            return Err(DistillError::Config(format!(
                "teacher layer {bad} does not exist (the teacher has {nl} blocks, 0..{})",
                nl - 1
            )));
        }
        let session = create_session(model.clone(), opts)?;
        Ok(OnlineTeacher {
            model,
            session,
            chosen: opts.backend != dinoedge_runtime::BackendKind::Cpu || opts.precision.is_some(),
            run: RunOptions {
                capture_layers: layers.to_vec(),
            },
            align,
        })
    }

    pub fn dim(&self) -> usize {
        self.model.config().hidden_size()
    }

    /// Where the teacher computes, when a backend or precision other than the CPU default
    /// was chosen and that is not the f32 CPU path (e.g. "cuda bf16"): recorded with runs
    /// and caches, since a 16-bit teacher gives slightly other targets.
    pub fn compute(&self) -> Option<String> {
        if !self.chosen {
            return None;
        }
        compute_label(&self.session.info())
    }

    /// Targets for `batch` images rendered at the teacher size, (B, 3, T, T).
    pub fn targets(&mut self, pixels: &[f32], batch: usize) -> Result<Targets> {
        let t = self.align.teacher_size;
        let x = Tensor::new(vec![batch, 3, t, t], pixels.to_vec())?;
        let f = self.session.run(&x, &self.run)?;
        Ok(features_to_targets(&f, &self.align))
    }
}

/// "cuda bf16" for a teacher off the f32 CPU path, `None` on it (the CPU reference included).
pub fn compute_label(info: &dinoedge_runtime::BackendInfo) -> Option<String> {
    use dinoedge_runtime::{BackendKind, Precision};
    let cpu = matches!(info.kind, BackendKind::Cpu | BackendKind::CpuReference);
    (!cpu || info.precision != Precision::F32).then(|| format!("{} {}", info.kind, info.precision))
}
