//! The training run: data, teacher targets (online or cached), forward, objective,
//! backward, AdamW + EMA, logs, checkpoints, held-out evaluation and the export of the EMA
//! student in HF `dinov3_vit` layout.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use dinoedge_runtime::fsutil::write_atomic;
use dinoedge_runtime::weights::store::write_safetensors;
use dinoedge_runtime::{Model, ModelConfig, SessionOptions};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheKey, CachedTeacher};
use crate::checkpoint::{self, TrainState};
use crate::cuda::{Device, Elem};
use crate::data::{AugConfig, Dataset, Sampler};
use crate::error::{DistillError, Result};
use crate::eval::{Agreement, AgreementSum, HEADS_FILE, Heads};
use crate::loader::{Key, Loader, LoaderSpec, RenderSpec};
use crate::loss::{LossParts, LossWeights, Targets};
use crate::optim::{AdamW, OptimConfig};
use crate::parallel::{Collective, World};
use crate::params::ParamLayout;
use crate::teacher::{Alignment, OnlineTeacher, TeacherId, teacher_render};
use crate::trainer::cpu::Ctx;
use crate::trainer::graph::Graph;
use crate::trainer::{On, Shape, StepConfig, Stepped, Trainer};

pub const RUN_FORMAT: &str = "dinoedge-distill-run-1";

/// Everything that decides what a run computes. A checkpoint resumes only under an equal one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub format: String,
    /// The student's HF config.json.
    pub student: serde_json::Value,
    pub teacher: TeacherId,
    pub align: Alignment,
    pub data_fingerprint: String,
    pub train_images: usize,
    pub holdout: f64,
    pub steps: usize,
    pub batch: usize,
    pub seed: u64,
    pub optim: OptimConfig,
    pub loss: LossWeights,
    pub aug: AugConfig,
    /// (student block, teacher block) pairs for intermediate targets.
    pub inter: Vec<[usize; 2]>,
    pub ls_init: f32,
    /// Train the heads only (a linear-probe baseline on the initial student).
    pub heads_only: bool,
    /// Views per image of the teacher cache used (None: online teacher).
    pub cache_views: Option<usize>,
    /// Where the teacher's targets were computed when not on the f32 CPU path ("cuda bf16").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_compute: Option<String>,
}

/// Everything [`train`] needs.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub teacher: PathBuf,
    /// Backend and precision of the online teacher (and of the held-out targets): e.g. the
    /// CUDA backend in bf16 for a large teacher. Default: the CPU in f32.
    pub teacher_backend: dinoedge_runtime::BackendKind,
    pub teacher_precision: Option<dinoedge_runtime::Precision>,
    pub student: ModelConfig,
    pub data: PathBuf,
    pub out: PathBuf,
    pub cache: Option<PathBuf>,
    pub size: usize,
    pub teacher_size: Option<usize>,
    pub steps: usize,
    pub batch: usize,
    pub seed: u64,
    pub holdout: f64,
    pub optim: OptimConfig,
    pub loss: LossWeights,
    pub aug: AugConfig,
    pub inter: Vec<[usize; 2]>,
    pub ls_init: f32,
    pub heads_only: bool,
    /// Initial student weights (an HF dinov3_vit directory of the same architecture).
    pub init_from: Option<PathBuf>,
    pub threads: Option<usize>,
    pub workers: usize,
    pub prefetch: usize,
    pub log_every: usize,
    pub checkpoint_every: usize,
    pub keep: usize,
    pub eval_every: usize,
    pub eval_images: usize,
    pub resume: bool,
    /// Stop after this many steps of this invocation (with a checkpoint); resume later.
    pub stop_after: Option<usize>,
    /// Recompute each block's activations in the backward instead of keeping them (same
    /// results bit for bit; about a fifth of the activation memory for one more forward).
    pub recompute: bool,
    /// Where the students train: the CPU (default), or a GPU through the CUDA trainer
    /// ([`crate::cuda`]). Checkpoints are the same either way, so a run resumes on the other.
    pub device: TrainDevice,
    /// GEMM inputs of a device trainer: bf16 (default; f32 master weights and accumulation)
    /// or f32.
    pub gemm: Elem,
}

/// Where students train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainDevice {
    Cpu,
    /// The CUDA trainer on a GPU (feature `cuda`).
    Cuda,
    /// The CUDA trainer's kernels emulated on the CPU (tests; tiny students only).
    Emulated,
}

impl TrainOptions {
    /// Defaults for everything but the paths, student and size.
    pub fn new(teacher: PathBuf, student: ModelConfig, data: PathBuf, out: PathBuf) -> Self {
        TrainOptions {
            teacher,
            teacher_backend: dinoedge_runtime::BackendKind::Cpu,
            teacher_precision: None,
            student,
            data,
            out,
            cache: None,
            size: 224,
            teacher_size: None,
            steps: 1000,
            batch: 32,
            seed: 0,
            holdout: 0.05,
            optim: OptimConfig::default(),
            loss: LossWeights::default(),
            aug: AugConfig::default(),
            inter: Vec::new(),
            ls_init: 1e-1,
            heads_only: false,
            init_from: None,
            threads: None,
            workers: 2,
            prefetch: 3,
            log_every: 10,
            checkpoint_every: 500,
            keep: 2,
            eval_every: 0,
            eval_images: 64,
            resume: false,
            stop_after: None,
            recompute: false,
            device: TrainDevice::Cpu,
            gemm: Elem::BF16,
        }
    }
}

/// One logged step (a line of metrics.jsonl).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub loss_cls: f64,
    pub loss_patch: f64,
    pub loss_gram: f64,
    pub loss_inter: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub img_per_s: f64,
    pub elapsed_s: f64,
}

/// A held-out evaluation (a line of metrics.jsonl).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HoldoutLog {
    pub step: usize,
    pub holdout_cls_cos: f64,
    pub holdout_patch_cos: f64,
    pub holdout_images: usize,
}

/// What the run did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub out: PathBuf,
    pub first_step: usize,
    pub last_step: usize,
    pub steps: usize,
    pub finished: bool,
    pub last: Option<StepLog>,
    pub holdout_start: Option<HoldoutLog>,
    pub holdout_end: Option<HoldoutLog>,
    pub unreadable_images: usize,
    pub seconds: f64,
}

/// Facts announced when a run starts.
#[derive(Clone, Debug)]
pub struct StartInfo {
    pub first_step: usize,
    pub steps: usize,
    pub train_images: usize,
    pub holdout_images: usize,
    pub skipped: Vec<(PathBuf, String)>,
    pub student_params: usize,
    pub teacher: String,
    pub align: Alignment,
    pub cached: bool,
    pub resumed_from: Option<PathBuf>,
    /// Newer checkpoints skipped on resume because they could not be read, with the reason.
    pub skipped_checkpoints: Vec<String>,
    /// Activation memory of this student's training graph, as run and the other way
    /// (with / without `recompute`).
    pub activation_bytes: u64,
    pub activation_bytes_other: u64,
    pub recompute: bool,
    /// Where the students train ("cpu", or the GPU and GEMM type).
    pub trainer: String,
}

/// Progress notifications (the CLI draws a progress bar from these).
pub enum Event<'a> {
    Started(&'a StartInfo),
    Step(&'a StepLog),
    Holdout(&'a HoldoutLog),
    Checkpoint { step: usize, path: &'a Path },
    BadImage { path: &'a Path, reason: &'a str },
    Exported { path: &'a Path },
}

enum TeacherSource {
    Online(OnlineTeacher),
    Cached(Box<CachedTeacher>),
}

/// Default intermediate pair: the middle blocks of both.
pub fn default_inter(student_layers: usize, teacher_layers: usize) -> [usize; 2] {
    [student_layers / 2 - 1, teacher_layers / 2 - 1]
}

/// The cache key a run with these options needs.
pub fn cache_key(
    teacher: &Model,
    align: &Alignment,
    data: &Dataset,
    o: &TrainOptions,
    layers: Vec<usize>,
) -> CacheKey {
    CacheKey {
        teacher: TeacherId::of(teacher),
        align: align.clone(),
        layers,
        seed: o.seed,
        aug: o.aug,
        holdout: o.holdout,
        data_fingerprint: data.fingerprint(),
        train_images: data.train.len(),
    }
}

/// One student of a multi-student run.
#[derive(Clone, Debug)]
pub struct StudentSpec {
    /// Names the student in messages (`--student` argument: `vit-ti16`, or a config's stem).
    pub name: String,
    pub config: ModelConfig,
    /// The student's run directory (run.json, metrics.jsonl, checkpoints/, the export).
    pub out: PathBuf,
}

/// Runs (or resumes) a distillation of `o.student` into `o.out`.
pub fn train(o: &TrainOptions, mut on: impl FnMut(Event)) -> Result<TrainReport> {
    let spec = StudentSpec {
        name: "student".into(),
        config: o.student.clone(),
        out: o.out.clone(),
    };
    let mut reports = train_many(o, &[spec], |_, e| on(e))?;
    Ok(reports.remove(0))
}

/// Trains several students from one teacher forward (or one cache read) per batch, as DINOv3
/// distils its family: every student sees the same images, augmentations and targets, and
/// each one's run (its directory, checkpoints, resume, export) is exactly the run `train`
/// makes for it alone. `o.student` and `o.out` are not used; events carry the student's index.
pub fn train_many(
    o: &TrainOptions,
    students: &[StudentSpec],
    mut on_all: impl FnMut(usize, Event),
) -> Result<Vec<TrainReport>> {
    let t0 = Instant::now();
    if o.batch == 0 {
        return Err(DistillError::Config("--batch must be at least 1".into()));
    }
    // Data parallel: this rank trains on `per` images of every batch; rank 0 reports.
    let world = World::from_env()?;
    let (rank, ranks) = world.as_ref().map_or((0, 1), |w| (w.rank, w.size));
    if !o.batch.is_multiple_of(ranks) {
        return Err(DistillError::Config(format!(
            "--batch {} does not split over {ranks} processes: give a multiple of {ranks}",
            o.batch
        )));
    }
    let per = o.batch / ranks;
    let writer = rank == 0;
    let mut on = |i: usize, e: Event| {
        if writer {
            on_all(i, e)
        }
    };
    if students.is_empty() {
        return Err(DistillError::Config("no --student given".into()));
    }
    for (i, s) in students.iter().enumerate() {
        if students[..i]
            .iter()
            .any(|t| t.name == s.name || t.out == s.out)
        {
            return Err(DistillError::Config(format!(
                "student {:?} is given twice (each student needs its own name and directory; config files are named by their file name, so copy one under another name)",
                s.name
            )));
        }
    }
    // "the student" alone, `student "vit-s16"` among several.
    let label = |s: &StudentSpec| {
        if students.len() == 1 {
            "the student".to_string()
        } else {
            format!("student {:?}", s.name)
        }
    };
    let teacher_model = Arc::new(Model::load(&o.teacher)?);
    let tcfg = teacher_model.config().clone();
    let configs: Vec<ModelConfig> = students
        .iter()
        .map(|s| {
            let mut c = s.config.clone();
            c.image_size = o.size;
            c
        })
        .collect();
    // One teacher render serves every student: their patch grids must agree.
    let align = Alignment::new(&configs[0], o.size, &tcfg, o.teacher_size)?;
    for (s, c) in students.iter().zip(&configs).skip(1) {
        let a = Alignment::new(c, o.size, &tcfg, o.teacher_size)?;
        if a != align {
            return Err(DistillError::Config(format!(
                "student {:?} sees a {}x{} patch grid at {}px, student {:?} {}x{}: students trained together need the same patch size",
                students[0].name, align.grid, align.grid, o.size, s.name, a.grid, a.grid
            )));
        }
    }
    for (s, c) in students.iter().zip(&configs) {
        for [sb, tb] in &o.inter {
            if *sb >= c.num_layers || *tb >= tcfg.num_layers {
                return Err(DistillError::Config(format!(
                    "intermediate pair {sb}:{tb} is out of range for {} (student blocks 0..{}, teacher blocks 0..{})",
                    label(s),
                    c.num_layers - 1,
                    tcfg.num_layers - 1
                )));
            }
        }
    }
    let data = Dataset::scan(
        &o.data,
        o.holdout,
        configs[0].patch_size.max(tcfg.patch_size) as u32,
    )?;
    let teacher_layers: Vec<usize> = o.inter.iter().map(|p| p[1]).collect();
    let student_layers: Vec<usize> = o.inter.iter().map(|p| p[0]).collect();

    // Teacher source.
    let session_opts = SessionOptions {
        backend: o.teacher_backend,
        precision: o.teacher_precision,
        threads: o.threads,
        ..Default::default()
    };
    let mut online = OnlineTeacher::new(
        teacher_model.clone(),
        align.clone(),
        &teacher_layers,
        &session_opts,
    )?;
    let cached = match &o.cache {
        Some(dir) => Some(CachedTeacher::open(
            dir,
            &cache_key(&teacher_model, &align, &data, o, teacher_layers.clone()),
        )?),
        None => None,
    };

    let teacher_compute = match &cached {
        Some(c) => c.index.teacher_compute.clone(),
        None => online.compute(),
    };
    let device = open_device(o.device)?;
    let mut collective = match &world {
        Some(w) => Some(open_collective(
            w,
            device.as_ref(),
            o.device == TrainDevice::Cuda,
        )?),
        None => None,
    };
    let ctx = Ctx::new(o.threads)?;
    let backend = match &device {
        None => On::Cpu(ctx.clone()),
        Some(d) => On::Device(d.clone(), o.gemm),
    };
    let mut runs = Vec::new();
    for (spec, cfg) in students.iter().zip(configs) {
        runs.push(StudentRun::open(
            o,
            spec,
            cfg,
            &teacher_model,
            &align,
            &data,
            (
                cached.as_ref().map(|c| c.index.views),
                teacher_compute.clone(),
            ),
            &student_layers,
            (students.len() > 1).then(|| label(spec)),
            backend.clone(),
            (per, writer),
        )?);
    }
    let first_step = runs.iter().map(|r| r.step).min().unwrap_or(0);
    if let Some(ahead) = runs.iter().find(|r| r.step != first_step) {
        // A stop between two students' checkpoints: bring the others level first.
        let behind: Vec<String> = runs
            .iter()
            .filter(|r| r.step == first_step)
            .map(|r| {
                format!(
                    "{}: --out {} --resume --stop-after {}",
                    r.name,
                    r.out.display(),
                    ahead.step - first_step
                )
            })
            .collect();
        return Err(DistillError::Config(format!(
            "cannot resume together: {:?} is at step {}, {:?} at step {first_step}; bring the students behind level alone, each with its own --student and otherwise the same options ({}), then resume the group",
            ahead.name,
            ahead.step,
            runs.iter()
                .find(|r| r.step == first_step)
                .map_or("", |r| &r.name),
            behind.join("; ")
        )));
    }
    let end_step = o
        .stop_after
        .map_or(o.steps, |n| (first_step + n).min(o.steps));
    for (i, r) in runs.iter().enumerate() {
        let plan = |re: bool| {
            Graph::activation_bytes(&r.cfg, o.batch, (o.size, o.size), o.inter.len(), re)
        };
        let info = StartInfo {
            first_step,
            steps: o.steps,
            train_images: data.train.len(),
            holdout_images: data.holdout.len().min(o.eval_images),
            skipped: data.skipped.clone(),
            student_params: r.layout.model_len(),
            teacher: format!("{} ({})", o.teacher.display(), tcfg.describe()),
            align: align.clone(),
            cached: cached.is_some(),
            resumed_from: r.resumed_from.clone(),
            skipped_checkpoints: r.skipped_checkpoints.clone(),
            activation_bytes: plan(o.recompute)?,
            activation_bytes_other: plan(!o.recompute)?,
            recompute: o.recompute,
            trainer: r.trainer.describe()
                + &collective.as_ref().map_or(String::new(), |c| {
                    format!("; data parallel, {per} images per rank ({})", c.describe())
                }),
        };
        on(i, Event::Started(&info));
    }

    let student_render = RenderSpec {
        size: o.size,
        mean: dinoedge_runtime::preprocess::IMAGENET_MEAN,
        std: dinoedge_runtime::preprocess::IMAGENET_STD,
    };
    let trender = teacher_render(&teacher_model, &align)?;

    // Held-out targets: centre views, teacher run once for every student.
    let holdout: Vec<(PathBuf, u32, u32)> = data
        .holdout
        .iter()
        .take(o.eval_images)
        .map(|e| (data.path(e), e.width, e.height))
        .collect();
    let holdout_set = if holdout.is_empty() || !writer {
        None
    } else {
        Some(HoldoutSet::new(
            &holdout,
            o,
            per,
            student_render,
            trender,
            &mut online,
        )?)
    };
    if let Some(h) = &holdout_set
        && first_step == 0
    {
        for (i, r) in runs.iter_mut().enumerate() {
            let l = r.holdout(h, 0)?;
            on(i, Event::Holdout(&l));
            r.holdout_start = Some(l);
        }
    }

    // The sample stream.
    let sampler = Arc::new(Sampler::new(o.seed, data.train.len()));
    let views = cached.as_ref().map(|c| c.index.views as u64);
    let batch = o.batch;
    let first = rank * per;
    let keys_sampler = sampler.clone();
    let images: Vec<(PathBuf, u32, u32)> = data
        .train
        .iter()
        .map(|e| (data.path(e), e.width, e.height))
        .collect();
    let source = match cached {
        Some(c) => TeacherSource::Cached(Box::new(c)),
        None => TeacherSource::Online(online),
    };
    let renders = match source {
        TeacherSource::Online(_) => vec![student_render, trender],
        TeacherSource::Cached(_) => vec![student_render],
    };
    let loader = Loader::start(LoaderSpec {
        images,
        aug: o.aug,
        seed: o.seed,
        renders,
        keys: Box::new(move |s| {
            (first..first + per)
                .map(|j| {
                    let (image, epoch) = keys_sampler.sample((s * batch + j) as u64);
                    Key {
                        image,
                        view: views.map_or(epoch, |k| epoch % k),
                        center: false,
                    }
                })
                .collect()
        }),
        first_step,
        end_step,
        workers: o.workers,
        prefetch: o.prefetch,
    })?;
    let mut source = source;

    let fault_exit = fault_exit_step(rank);
    let mut reported: HashSet<PathBuf> = HashSet::new();
    let (mut window_t, mut window_steps) = (Instant::now(), 0usize);
    for step in first_step..end_step {
        let b = loader.next()?;
        for (p, e) in &b.failed {
            if reported.insert(p.clone()) {
                on(0, Event::BadImage { path: p, reason: e });
            }
        }
        let targets: Targets = match &mut source {
            TeacherSource::Online(t) => t.targets(&b.pixels[1], per)?,
            TeacherSource::Cached(c) => c.targets(&b.keys, &teacher_layers)?,
        };
        let mut parts = Vec::with_capacity(runs.len());
        for r in runs.iter_mut() {
            parts.push(r.step(o, step, &b.pixels[0], &targets, collective.as_deref_mut())?);
        }
        if fault_exit == Some(step + 1) {
            eprintln!(
                "DINOEDGE_FAULT_EXIT: rank {rank} exits after step {}",
                step + 1
            );
            std::process::exit(3);
        }
        window_steps += 1;
        let done = step + 1;
        if done.is_multiple_of(o.log_every.max(1)) || done == end_step {
            let secs = window_t.elapsed().as_secs_f64();
            for (i, (r, (parts, gn, lr))) in runs.iter_mut().zip(parts).enumerate() {
                let l = StepLog {
                    step: done,
                    loss: parts.total,
                    loss_cls: parts.cls,
                    loss_patch: parts.patch,
                    loss_gram: parts.gram,
                    loss_inter: parts.inter,
                    lr: lr as f64,
                    grad_norm: gn,
                    // Images through the whole step (teacher and every student).
                    img_per_s: (window_steps * batch) as f64 / secs.max(1e-9),
                    elapsed_s: t0.elapsed().as_secs_f64(),
                };
                r.log_line(&l)?;
                on(i, Event::Step(&l));
                r.last_log = Some(l);
            }
            (window_t, window_steps) = (Instant::now(), 0);
        }
        if let Some(h) = &holdout_set
            && o.eval_every > 0
            && done.is_multiple_of(o.eval_every)
            && done != o.steps
        {
            for (i, r) in runs.iter_mut().enumerate() {
                let l = r.holdout(h, done)?;
                on(i, Event::Holdout(&l));
            }
        }
        if writer && (done.is_multiple_of(o.checkpoint_every.max(1)) || done == end_step) {
            for (i, r) in runs.iter_mut().enumerate() {
                let (root, run_json) = (&r.ckpt_root, &r.run_json);
                let dir = r
                    .trainer
                    .with_state(r.step, |s| checkpoint::save(root, s, run_json, o.keep))?;
                on(
                    i,
                    Event::Checkpoint {
                        step: done,
                        path: &dir,
                    },
                );
                r.last_ckpt = Some(dir);
            }
        }
    }
    drop(loader);
    let mut reports = Vec::new();
    for (i, mut r) in runs.into_iter().enumerate() {
        let finished = r.step == o.steps;
        let mut holdout_end = None;
        if finished && writer {
            let (out, cfg, layout, run) = (&r.out, &r.cfg, &r.layout, &r.run);
            r.trainer
                .with_state(r.step, |s| export(out, cfg, layout, s.ema, run, o))?;
            on(i, Event::Exported { path: &r.out });
            if let Some(h) = &holdout_set {
                let l = r.holdout(h, r.step)?;
                on(i, Event::Holdout(&l));
                holdout_end = Some(l);
            }
        }
        reports.push(TrainReport {
            out: r.out.clone(),
            first_step,
            last_step: r.step,
            steps: o.steps,
            finished,
            last: r.last_log.take(),
            holdout_start: r.holdout_start.take(),
            holdout_end,
            unreadable_images: data.skipped.len() + reported.len(),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    Ok(reports)
}

/// One student's side of a run: its parameters and optimizer, graph, buffers and files.
struct StudentRun {
    /// `student "vit-s16"` when several train together (named in errors).
    label: Option<String>,
    name: String,
    out: PathBuf,
    cfg: ModelConfig,
    run: RunConfig,
    run_json: String,
    layout: ParamLayout,
    /// Completed steps.
    step: usize,
    /// The student on its backend, which holds its training state.
    trainer: Trainer,
    /// Data-parallel ranks (1: a single process).
    world_size: usize,
    ckpt_root: PathBuf,
    metrics_path: PathBuf,
    /// None on ranks other than 0.
    metrics: Option<std::fs::File>,
    resumed_from: Option<PathBuf>,
    skipped_checkpoints: Vec<String>,
    last_ckpt: Option<PathBuf>,
    last_log: Option<StepLog>,
    holdout_start: Option<HoldoutLog>,
}

impl StudentRun {
    /// Fresh parameters, `--init-from` weights, or (with `--resume`) the latest checkpoint.
    #[allow(clippy::too_many_arguments)]
    fn open(
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
            std::iter::repeat_n((cfg.hidden_size, tcfg.hidden_size), 2 + o.inter.len()).collect();
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
                    if m.config().to_hf_json()["hidden_size"] != cfg.to_hf_json()["hidden_size"]
                        || m.config().num_layers != cfg.num_layers
                    {
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
            teacher_dim: tcfg.hidden_size,
        };
        let trainer =
            Trainer::new(on, &cfg, &layout, &state, &shape).map_err(|e| match (&label, e) {
                (Some(l), DistillError::Config(m)) => DistillError::Config(format!("{l}: {m}")),
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

    fn log_line(&mut self, v: &dyn erased::Json) -> Result<()> {
        match &mut self.metrics {
            Some(m) => writeln!(m, "{}", v.json())
                .and_then(|_| m.flush())
                .map_err(|e| DistillError::io(&self.metrics_path, e)),
            None => Ok(()),
        }
    }

    /// Held-out agreement of the EMA weights, logged.
    fn holdout(&mut self, h: &HoldoutSet, step: usize) -> Result<HoldoutLog> {
        let (layout, dim) = (&self.layout, self.cfg.hidden_size);
        let t = &self.trainer;
        let heads = t.with_state(self.step, |s| Ok(Heads::from_params(layout, s.ema, dim)))?;
        let a = h.evaluate(&t.graph.dims, &heads, &mut |px| {
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
    fn step(
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
    fn diverged(&self, step: usize, value: String) -> DistillError {
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

/// Fields of two run configs that differ, as "field: checkpoint X, now Y".
pub fn differences(old: &RunConfig, new: &RunConfig) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    crate::error::json_differences(&a, &b, "checkpoint", "now")
}

/// Drops metrics lines logged after `step` (they belong to the abandoned part of the run).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
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

/// Writes the EMA student (`config.json`, `model.safetensors`, `preprocessor_config.json`)
/// and its heads (`distill_heads.safetensors`).
fn export(
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

/// Held-out images rendered once, with their teacher targets.
struct HoldoutSet {
    /// Per chunk of `batch` images (the last padded by repeating): student pixels, targets
    /// and the number of real images.
    chunks: Vec<(Vec<f32>, Targets, usize)>,
}

impl HoldoutSet {
    fn new(
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
    fn evaluate(
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

/// The device students train on (`None`: the CPU), shared by every student of the run.
pub(crate) fn open_device(d: TrainDevice) -> Result<Option<Arc<dyn Device>>> {
    match d {
        TrainDevice::Cpu => Ok(None),
        TrainDevice::Emulated => Ok(Some(crate::cuda::open(true, None)?)),
        TrainDevice::Cuda => Ok(Some(crate::cuda::open(false, None)?)),
    }
}

/// The collective of a data-parallel rank: NCCL for the CUDA trainer, TCP otherwise.
fn open_collective(
    w: &World,
    device: Option<&Arc<dyn Device>>,
    on_gpu: bool,
) -> Result<Box<dyn Collective>> {
    #[cfg(feature = "cuda")]
    if on_gpu && let Some(d) = device {
        return Ok(Box::new(crate::parallel::nccl::NcclOn {
            nccl: crate::parallel::nccl::Nccl::join(w)?,
            dev: d.clone(),
        }));
    }
    let _ = (device, on_gpu);
    Ok(Box::new(crate::parallel::Tcp::join(w)?))
}

/// `DINOEDGE_FAULT_EXIT=RANK:STEP`: the step after which this rank ends, as a crash would
/// (how the data-parallel failure path is tested).
fn fault_exit_step(rank: usize) -> Option<usize> {
    let v = std::env::var("DINOEDGE_FAULT_EXIT").ok()?;
    let (r, s) = v.split_once(':')?;
    (r.parse() == Ok(rank)).then(|| s.parse().ok())?
}
