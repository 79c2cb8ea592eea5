//! What a run is given and what it reports: its options, the configuration a checkpoint
//! resumes under, and the events and logs it emits.

use std::path::{Path, PathBuf};

use dinoedge_runtime::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::cuda::Elem;
use crate::data::AugConfig;
use crate::loss::LossWeights;
use crate::optim::OptimConfig;
use crate::teacher::{Alignment, TeacherId};

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
    /// Initial student weights (an HF dinov3_vit or dinov3_convnext directory of the same
    /// architecture).
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
    /// GEMM inputs: bf16 (f32 master weights and accumulation) or f32. `None`: bf16 on a
    /// GPU, f32 on the CPU (bit-reproducible; bf16 there needs AMX or AVX512_BF16).
    pub gemm: Option<Elem>,
    /// The GPU of this process, for the students and a CUDA teacher (default: its local
    /// rank in a data-parallel run, else 0).
    pub gpu: Option<usize>,
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
    pub fn new(
        teacher: PathBuf,
        student: impl Into<ModelConfig>,
        data: PathBuf,
        out: PathBuf,
    ) -> Self {
        TrainOptions {
            teacher,
            teacher_backend: dinoedge_runtime::BackendKind::Cpu,
            teacher_precision: None,
            student: student.into(),
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
            gemm: None,
            gpu: None,
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
    /// (with / without `recompute`; `None` for a ConvNeXt, which always keeps them).
    pub activation_bytes: u64,
    pub activation_bytes_other: Option<u64>,
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

/// Default intermediate pair: the middle blocks of both.
pub fn default_inter(student_layers: usize, teacher_layers: usize) -> [usize; 2] {
    [student_layers / 2 - 1, teacher_layers / 2 - 1]
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

/// Fields of two run configs that differ, as "field: checkpoint X, now Y".
pub fn differences(old: &RunConfig, new: &RunConfig) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    crate::error::json_differences(&a, &b, "checkpoint", "now")
}
