//! One student's side of a run ([`StudentRun`]): its configuration, trainer, checkpoints and
//! metrics file; opening (fresh, `--init-from` or resumed), a step, a held-out evaluation.

use std::io::Write;
use std::path::{Path, PathBuf};

use dinoedge_runtime::fsutil::write_atomic;
use dinoedge_runtime::{Model, ModelConfig};

use crate::checkpoint::{self, TrainState};
use crate::data::Dataset;
use crate::error::{DistillError, Result};
use crate::eval::Heads;
use crate::loss::{LossParts, Targets};
use crate::optim::AdamW;
use crate::parallel::Collective;
use crate::params::ParamLayout;
use crate::teacher::{Alignment, TeacherId};
use crate::trainer::{On, Shape, StepConfig, Stepped, Trainer};

use super::options::{
    HoldoutLog, RUN_FORMAT, RunConfig, StepLog, StudentSpec, TrainOptions, differences,
};

use super::holdout::HoldoutSet;

/// One student's side of a run: its parameters and optimizer, graph, buffers and files.
pub(super) struct StudentRun {
    /// `student "vit-s16"` when several train together (named in errors).
    pub(super) label: Option<String>,
    pub(super) name: String,
    pub(super) out: PathBuf,
    pub(super) cfg: ModelConfig,
    pub(super) run: RunConfig,
    pub(super) run_json: String,
    pub(super) layout: ParamLayout,
    /// Completed steps.
    pub(super) step: usize,
    /// The student on its backend, which holds its training state.
    pub(super) trainer: Trainer,
    /// Data-parallel ranks (1: a single process).
    pub(super) world_size: usize,
    pub(super) ckpt_root: PathBuf,
    pub(super) metrics_path: PathBuf,
    /// None on ranks other than 0.
    pub(super) metrics: Option<std::fs::File>,
    pub(super) resumed_from: Option<PathBuf>,
    pub(super) skipped_checkpoints: Vec<String>,
    pub(super) last_ckpt: Option<PathBuf>,
    pub(super) last_log: Option<StepLog>,
    pub(super) holdout_start: Option<HoldoutLog>,
}

impl StudentRun {
    /// Fresh parameters, `--init-from` weights, or (with `--resume`) the latest checkpoint.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        o: &TrainOptions,
        spec: &StudentSpec,
        cfg: ModelConfig,
        teacher: &Model,
        align: &Alignment,
        data: &Dataset,
        (cache_views, teacher_compute): (Option<usize>, Option<String>),
        student_layers: &[usize],
        label: Option<String>,
        on: On,
        (batch, writer): (usize, bool),
    ) -> Result<StudentRun> {
        let tcfg = teacher.config();
        let run = RunConfig {
            format: RUN_FORMAT.into(),
            student: cfg.to_hf_json(),
            teacher: TeacherId::of(teacher),
            align: align.clone(),
            data_fingerprint: data.fingerprint(),
            train_images: data.train.len(),
            holdout: o.holdout,
            steps: o.steps,
            batch: o.batch,
            seed: o.seed,
            optim: o.optim,
            loss: o.loss,
            aug: o.aug,
            inter: o.inter.clone(),
            ls_init: o.ls_init,
            heads_only: o.heads_only,
            cache_views,
            teacher_compute,
        };
        let run_json =
            serde_json::to_string_pretty(&run).map_err(|e| DistillError::Config(e.to_string()))?;
        let heads: Vec<(usize, usize)> =
            std::iter::repeat_n((cfg.hidden_size(), tcfg.hidden_size()), 2 + o.inter.len())
                .collect();
        let layout = ParamLayout::new(&cfg, &heads);
        let out = &spec.out;
        std::fs::create_dir_all(out).map_err(|e| DistillError::io(out, e))?;
        let ckpt_root = out.join("checkpoints");
        let existing = checkpoint::latest(&ckpt_root)?;
        let metrics_path = out.join("metrics.jsonl");
        let mut skipped_checkpoints = Vec::new();
        let (state, resumed_from) = match (&existing, o.resume) {
            (Some(_), true) => {
                let loaded = checkpoint::load_newest(&ckpt_root, layout.total)?
                    .expect("a checkpoint exists");
                skipped_checkpoints = loaded.skipped;
                let (st, old, dir) = (loaded.state, loaded.run_json, &loaded.dir);
                if st.step > o.steps {
                    return Err(DistillError::Mismatch {
                        path: dir.join("state.safetensors"),
                        reason: format!(
                            "the checkpoint is at step {}, past this run's --steps {}",
                            st.step, o.steps
                        ),
                    });
                }
                let old: RunConfig =
                    serde_json::from_str(&old).map_err(|e| DistillError::Mismatch {
                        path: dir.join("run.json"),
                        reason: e.to_string(),
                    })?;
                let diff = differences(&old, &run);
                if !diff.is_empty() {
                    return Err(DistillError::Mismatch {
                        path: dir.join("run.json"),
                        reason: format!(
                            "cannot resume: this run's configuration differs from the checkpoint's ({})",
                            diff.join("; ")
                        ),
                    });
                }
                if writer {
                    truncate_metrics(&metrics_path, st.step)?;
                }
                (st, Some(dir.clone()))
            }
            (None, true) => {
                return Err(DistillError::Config(format!(
                    "--resume: no checkpoint under {}",
                    ckpt_root.display()
                )));
            }
            (Some(dir), false) => {
                return Err(DistillError::Config(format!(
                    "{} already holds a run (checkpoint {}); pass --resume to continue it, or choose another --out",
                    out.display(),
                    dir.display()
                )));
            }
            (None, false) => {
                let mut params = layout.init(o.seed, o.ls_init);
                if let Some(dir) = &o.init_from {
                    let m = Model::load(dir)?;
                    if !same_architecture(m.config(), &cfg) {
                        return Err(DistillError::Mismatch {
                            path: dir.clone(),
                            reason: format!(
                                "--init-from has another architecture than {}",
                                label.as_deref().unwrap_or("--student")
                            ),
                        });
                    }
                    layout.load_model(&m, &mut params)?;
                }
                if writer {
                    let _ = std::fs::remove_file(&metrics_path);
                }
                (
                    TrainState {
                        step: 0,
                        ema: params.clone(),
                        params,
                        adam: AdamW::new(layout.total),
                    },
                    None,
                )
            }
        };
        // Only rank 0 of a data-parallel run writes files.
        let metrics = if writer {
            write_atomic(&out.join("run.json"), run_json.as_bytes())?;
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&metrics_path)
                    .map_err(|e| DistillError::io(&metrics_path, e))?,
            )
        } else {
            None
        };
        let shape = Shape {
            batch,
            height: o.size,
            width: o.size,
            inter_layers: student_layers.to_vec(),
            recompute: o.recompute,
            teacher_dim: tcfg.hidden_size(),
        };
        let trainer =
            Trainer::new(on, &cfg, &layout, &state, &shape).map_err(|e| match (&label, e) {
                (Some(l), DistillError::Config(m)) => DistillError::Config(format!("{l}: {m}")),
                (Some(l), e) => DistillError::Student {
                    name: l.clone(),
                    source: Box::new(e),
                },
                (_, e) => e,
            })?;
        Ok(StudentRun {
            label,
            name: spec.name.clone(),
            out: out.clone(),
            cfg,
            run,
            run_json,
            layout,
            step: state.step,
            trainer,
            world_size: o.batch / batch,
            ckpt_root,
            metrics_path,
            metrics,
            last_ckpt: resumed_from.clone(),
            resumed_from,
            skipped_checkpoints,
            last_log: None,
            holdout_start: None,
        })
    }

    pub(super) fn log_line(&mut self, v: &dyn erased::Json) -> Result<()> {
        match &mut self.metrics {
            Some(m) => writeln!(m, "{}", v.json())
                .and_then(|_| m.flush())
                .map_err(|e| DistillError::io(&self.metrics_path, e)),
            None => Ok(()),
        }
    }

    /// Held-out agreement of the EMA weights, logged.
    pub(super) fn holdout(&mut self, h: &HoldoutSet, step: usize) -> Result<HoldoutLog> {
        let (layout, dim) = (&self.layout, self.cfg.hidden_size());
        let t = &self.trainer;
        let heads = t.with_state(self.step, |s| Ok(Heads::from_params(layout, s.ema, dim)))?;
        let a = h.evaluate(t.graph.dims(), &heads, &mut |px| {
            t.forward(px, true)?;
            t.outputs()
        })?;
        let l = HoldoutLog {
            step,
            holdout_cls_cos: a.cls_cos,
            holdout_patch_cos: a.patch_cos,
            holdout_images: a.images,
        };
        self.log_line(&l)?;
        Ok(l)
    }

    /// Forward, objective, backward, clip, AdamW and EMA for one batch; returns the loss
    /// parts, the gradient norm before clipping and the learning rate.
    pub(super) fn step(
        &mut self,
        o: &TrainOptions,
        step: usize,
        pixels: &[f32],
        targets: &Targets,
        coll: Option<&mut (dyn Collective + 'static)>,
    ) -> Result<(LossParts, f64, f32)> {
        let c = StepConfig {
            loss: &o.loss,
            optim: &o.optim,
            heads_only: o.heads_only,
            steps: o.steps,
        };
        let ranks = self.world_size;
        match self.trainer.step(&c, step, pixels, targets, coll, ranks)? {
            Stepped::Done(parts, gn, lr) => {
                self.step = step + 1;
                Ok((parts, gn, lr))
            }
            Stepped::Diverged(what) => Err(self.diverged(step, what)),
        }
    }

    /// The training stopped at 0-based `step`: the loss was `value`.
    pub(super) fn diverged(&self, step: usize, value: String) -> DistillError {
        DistillError::Diverged {
            step: step + 1,
            value: match &self.label {
                Some(l) => format!("{value} for {l}"),
                None => value,
            },
            last_good: self
                .last_ckpt
                .as_ref()
                .map_or("none written yet".into(), |d| d.display().to_string()),
        }
    }
}

/// `a` and `b` have the same parameters (an `--init-from` model for a student): the same
/// model type, width, depth and parameter count.
fn same_architecture(a: &ModelConfig, b: &ModelConfig) -> bool {
    a.model_type() == b.model_type()
        && a.hidden_size() == b.hidden_size()
        && a.num_layers() == b.num_layers()
        && a.num_parameters() == b.num_parameters()
}

mod erased {
    /// Lines of metrics.jsonl.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// Drops metrics lines logged after `step` (they belong to the abandoned part of the run).
pub(super) fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(write_atomic(path, kept.as_bytes())?)
}
