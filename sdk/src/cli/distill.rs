//! `dinoedge distill`: train a student on a teacher's features; `distill cache-teacher`
//! precomputes the teacher's features; `distill eval` compares a student with its teacher.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use dinoedge::distill::{self as sdk_distill, EvalOptions};
use dinoedge::runtime::{Model, ModelConfig, SessionOptions};
use dinoedge::{Error, Result};
use dinoedge_distill::cache::{self, BuildOptions};
use dinoedge_distill::data::{AugConfig, Dataset};
use dinoedge_distill::loss::LossWeights;
use dinoedge_distill::optim::OptimConfig;
use dinoedge_distill::parallel::launch::Ranks;
use dinoedge_distill::teacher::{Alignment, OnlineTeacher};
use dinoedge_distill::train::{self, Event, TrainOptions};
use serde_json::json;

use super::progress;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DistillArgs {
    #[command(subcommand)]
    cmd: Option<DistillCmd>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand)]
enum DistillCmd {
    /// Run the teacher once over K augmented views of every training image and store its
    /// features (f16, sharded safetensors) for `distill --cache`.
    CacheTeacher(CacheArgs),
    /// Held-out CLS / patch cosine of a distilled student to its teacher, and both models'
    /// stereo-correspondence accuracy.
    Eval(EvalArgs),
    /// Median time of one training step (forward, loss, backward, AdamW, EMA) of a student
    /// on random data, on the CPU or the GPU; prints one JSON line (compare with
    /// tools/torch_train_bench.py on the same machine).
    BenchStep(BenchStepArgs),
    /// Redraw DIR/loss.png and DIR/loss.svg from DIR/metrics.jsonl.
    Plot {
        /// A distillation --out directory.
        dir: PathBuf,
    },
}

/// What the teacher sees: shared by training and cache-teacher (a cache is usable only by
/// runs with the same values).
#[derive(Args, Clone)]
struct SetupArgs {
    /// Teacher model directory (any runtime model: DINOv3, DINOv2, imported ONNX).
    #[arg(long, required = true)]
    teacher: Option<PathBuf>,
    /// Backend of the teacher's forward: cpu, or cuda (a big teacher on the GPU, e.g. a
    /// ViT-7B in bf16) where this build has it.
    #[arg(long, default_value = "cpu", value_parser = super::parse_backend)]
    teacher_backend: dinoedge::BackendKind,
    /// Precision of the teacher's forward (default f32; bf16 / f16 on cuda; f16 / bf16 /
    /// int8 on cpu, bf16 fast where the CPU has AMX tiles). Recorded in run.json and the
    /// cache index.
    #[arg(long, value_parser = super::parse_precision)]
    teacher_precision: Option<dinoedge::Precision>,
    /// Image folder, scanned recursively (jpg, png, pgm, ppm).
    #[arg(long, required = true)]
    data: Option<PathBuf>,
    /// Student input size (a multiple of the student's patch: 16 for the ViTs, the stride for
    /// a ConvNeXt, 32 with four stages, whose targets are its final cells).
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Teacher input size. Default: the size giving the student's patch grid (e.g. 196 for
    /// a /14 teacher and a 224 student); another grid is resampled to the student's.
    #[arg(long)]
    teacher_size: Option<usize>,
    /// Seed of the initialisation, data order and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of the images held out for evaluation.
    #[arg(long, default_value_t = 0.05, value_parser = super::fraction)]
    holdout: f64,
    /// Smallest crop area of the random resized crop (fraction of the image).
    #[arg(long, default_value_t = 0.32, value_parser = super::positive)]
    crop_min: f32,
    /// Probability of colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1).
    #[arg(long, default_value_t = 0.8, value_parser = super::probability)]
    jitter: f32,
    /// Probability of converting a view to grayscale.
    #[arg(long, default_value_t = 0.2, value_parser = super::probability)]
    grayscale: f32,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Image-decoding worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The GPU of --backend cuda and --teacher-backend cuda (default: a data-parallel
    /// rank's index on its machine, else 0).
    #[arg(long)]
    gpu: Option<usize>,
}

impl SetupArgs {
    /// The teacher's session options.
    fn teacher_session(&self) -> SessionOptions {
        SessionOptions {
            backend: self.teacher_backend,
            precision: self.teacher_precision,
            threads: self.threads,
            adapter: (self.teacher_backend == dinoedge::BackendKind::Cuda)
                .then(|| self.gpu.unwrap_or(0).to_string()),
            ..Default::default()
        }
    }
    fn aug(&self) -> AugConfig {
        AugConfig {
            scale: [self.crop_min, 1.0],
            jitter: self.jitter,
            grayscale: self.grayscale,
            ..Default::default()
        }
    }
    fn teacher(&self) -> PathBuf {
        self.teacher.clone().expect("required by clap")
    }
    fn data(&self) -> PathBuf {
        self.data.clone().expect("required by clap")
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    setup: SetupArgs,
    /// vit-ti16, vit-s16, vit-s16plus, vit-b16, convnext-tiny, convnext-small, or an HF
    /// dinov3_vit / dinov3_convnext config.json. Repeat it to train several students from one
    /// teacher forward per batch; each then gets its own run in OUT/<name> (e.g.
    /// OUT/vit-ti16). A ConvNeXt's targets are its final cells (stride 32 with four
    /// stages): --size 448 gives a 14x14 grid.
    #[arg(long, required = true)]
    student: Vec<String>,
    /// Output directory: the student (HF layout), metrics.jsonl, loss.png, checkpoints/.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Teacher features from `distill cache-teacher` instead of running the teacher.
    #[arg(long)]
    cache: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 5e-4, value_parser = super::positive)]
    lr: f32,
    #[arg(long, default_value_t = 1e-6, value_parser = super::non_negative)]
    min_lr: f32,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    #[arg(long, default_value_t = 0.04, value_parser = super::non_negative)]
    weight_decay: f32,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 3.0, value_parser = super::non_negative)]
    clip: f32,
    /// EMA decay of the exported weights.
    #[arg(long, default_value_t = 0.999, value_parser = super::probability)]
    ema: f32,
    /// Loss weights: CLS, patches, Gram (patch similarity), intermediate blocks.
    #[arg(long, default_value_t = 1.0, value_parser = super::non_negative)]
    w_cls: f32,
    #[arg(long, default_value_t = 1.0, value_parser = super::non_negative)]
    w_patch: f32,
    #[arg(long, default_value_t = 0.0, value_parser = super::non_negative)]
    w_gram: f32,
    #[arg(long, default_value_t = 0.0, value_parser = super::non_negative)]
    w_inter: f32,
    /// Intermediate targets STUDENT_BLOCK:TEACHER_BLOCK (0-based, repeatable; ViT students).
    /// Default with --w-inter > 0: the middle blocks of both.
    #[arg(long, value_parser = parse_pair)]
    inter: Vec<[usize; 2]>,
    /// Initial LayerScale value.
    #[arg(long, default_value_t = 0.1, value_parser = super::finite)]
    ls_init: f32,
    /// Train the projection heads only (a linear-probe baseline of the initial student).
    #[arg(long)]
    heads_only: bool,
    /// Start from these student weights (an HF dinov3_vit or dinov3_convnext directory of the
    /// same shape).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint (same configuration).
    #[arg(long)]
    resume: bool,
    /// Recompute each block's activations in the backward instead of keeping them: the
    /// same weights bit for bit with about a fifth of the activation memory, for one more
    /// forward per step (for small boards, or large batches). ViT students only.
    #[arg(long)]
    recompute: bool,
    /// Stop after this many steps (with a checkpoint); continue later with --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 2)]
    keep: usize,
    /// Held-out evaluation every N steps (0: only at the start and the end).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Held-out images used for evaluation during training.
    #[arg(long, default_value_t = 64)]
    eval_images: usize,
    /// Where the students train: cpu (SIMD kernels, bit-reproducible), or cuda (the CUDA
    /// trainer: NVRTC kernels and cuBLASLt GEMMs; builds with --features cuda).
    /// Checkpoints are the same, so a run can resume on the other. (cuda-emulated runs the
    /// CUDA trainer's kernels on the CPU: for tests, tiny students only.)
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda", "cuda-emulated"])]
    backend: String,
    /// GEMM inputs: bf16 (f32 master weights and accumulation) or f32. Default: bf16 on
    /// cuda, f32 on the CPU (bit-reproducible); bf16 on the CPU runs the linears on the AMX
    /// tiles or AVX512_BF16 and is refused on CPUs without them.
    #[arg(long, value_parser = ["bf16", "f32"])]
    precision: Option<String>,
    /// Data parallel: N processes, each with --batch / N images of every batch and (with
    /// --backend cuda) its own GPU, gradients summed with NCCL (TCP on the CPU). Cluster
    /// launchers set DINOEDGE_RANK, DINOEDGE_WORLD_SIZE and DINOEDGE_RENDEZVOUS instead.
    #[arg(long, default_value_t = 1)]
    nproc: usize,
}

#[derive(Args)]
struct BenchStepArgs {
    /// Student: a named size (vit-ti16, vit-s16, ..., convnext-tiny, convnext-small) or an HF
    /// config.json.
    #[arg(long, default_value = "vit-s16")]
    student: String,
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda", "cuda-emulated"])]
    backend: String,
    /// GEMM inputs: bf16 or f32 (default: bf16 on cuda, f32 on the CPU).
    #[arg(long, value_parser = ["bf16", "f32"])]
    precision: Option<String>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Width of the teacher features (384 for a ViT-S teacher, 4096 for the 7B).
    #[arg(long, default_value_t = 384)]
    teacher_dim: usize,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long)]
    recompute: bool,
    #[arg(long)]
    threads: Option<usize>,
    /// The GPU of --backend cuda (default 0).
    #[arg(long)]
    gpu: Option<usize>,
}

fn bench_step(a: BenchStepArgs) -> Result<()> {
    use dinoedge_distill::bench::{BenchOptions, bench_step};
    if a.batch == 0 || a.iters == 0 || a.size == 0 {
        return Err(Error::InvalidArgument(
            "--batch, --size and --iters must be at least 1".into(),
        ));
    }
    let cfg = dinoedge_distill::student::resolve(&a.student)?;
    let o = BenchOptions {
        device: device_of(&a.backend),
        gemm: gemm_of(a.precision.as_deref()),
        batch: a.batch,
        size: a.size,
        teacher_dim: a.teacher_dim,
        iters: a.iters,
        warmup: a.warmup,
        recompute: a.recompute,
        threads: a.threads,
        gpu: a.gpu,
    };
    let pb = progress((a.iters + a.warmup) as u64, "bench-step");
    let r = bench_step(&cfg, &o, |_| pb.inc(1))?;
    pb.finish_and_clear();
    eprintln!(
        "{} on {}: batch {} at {}px, median step {:.2} ms ({:.1} img/s), loss {:.4} -> {:.4}",
        r.student, r.trainer, r.batch, r.size, r.median_ms, r.img_per_s, r.first_loss, r.last_loss
    );
    println!(
        "{}",
        serde_json::to_string(&r).map_err(|e| Error::InvalidArgument(e.to_string()))?
    );
    Ok(())
}

/// `--nproc N`: this command N times, as ranks 0..N of one data-parallel run
/// ([`dinoedge_distill::parallel::launch::launch_ranks`]).
fn launch_ranks(a: &TrainArgs) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::resource("ranks (cannot find this program)", e))?;
    // The same arguments without --nproc.
    let mut args = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(x) = it.next() {
        if x == "--nproc" {
            it.next();
        } else if !x.to_string_lossy().starts_with("--nproc=") {
            args.push(x);
        }
    }
    let out = a.out.clone().expect("required by clap");
    let ranks = Ranks {
        n: a.nproc,
        batch: a.batch,
        exe,
        args,
        out,
    };
    Ok(dinoedge_distill::parallel::launch::launch_ranks(&ranks)?)
}

fn device_of(backend: &str) -> train::TrainDevice {
    match backend {
        "cuda" => train::TrainDevice::Cuda,
        "cuda-emulated" => train::TrainDevice::Emulated,
        _ => train::TrainDevice::Cpu,
    }
}

/// `None`: the device's default (bf16 on a GPU, f32 on the CPU).
fn gemm_of(precision: Option<&str>) -> Option<dinoedge_distill::cuda::Elem> {
    precision.map(|p| match p {
        "f32" => dinoedge_distill::cuda::Elem::F32,
        _ => dinoedge_distill::cuda::Elem::BF16,
    })
}

fn parse_pair(s: &str) -> std::result::Result<[usize; 2], String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected STUDENT_BLOCK:TEACHER_BLOCK, e.g. 5:5"))?;
    let p = |x: &str| x.trim().parse::<usize>().map_err(|e| format!("{s:?}: {e}"));
    Ok([p(a)?, p(b)?])
}

#[derive(Args)]
struct CacheArgs {
    #[command(flatten)]
    setup: SetupArgs,
    /// Output cache directory.
    #[arg(long)]
    out: PathBuf,
    /// Augmented views per image.
    #[arg(long, default_value_t = 4)]
    views: usize,
    /// Teacher blocks (0-based, comma-separated) whose patch features to store as well, for
    /// --w-inter.
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// Images per teacher forward.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Training images per shard file.
    #[arg(long, default_value_t = 256)]
    images_per_shard: usize,
    /// The student the cache is for: only its patch stride matters (16 for the ViTs, 32 for
    /// a four-stage ConvNeXt), which sets the grid the teacher's features are stored on.
    #[arg(long, default_value = "vit-ti16")]
    student: String,
}

#[derive(Args)]
struct EvalArgs {
    /// Teacher model directory.
    #[arg(long)]
    teacher: PathBuf,
    /// Distilled student directory (with distill_heads.safetensors).
    #[arg(long)]
    student: PathBuf,
    /// Held-out images or folders.
    #[arg(required_unless_present = "holdout_of")]
    images: Vec<PathBuf>,
    /// Also evaluate on the held-out split of this training folder (the images `distill
    /// --data DIR --holdout F` never trained on).
    #[arg(long)]
    holdout_of: Option<PathBuf>,
    /// The --holdout fraction the run used (with --holdout-of).
    #[arg(long, default_value_t = 0.05, value_parser = super::fraction)]
    holdout: f64,
    /// Student input size (default: the size it was trained at).
    #[arg(long)]
    size: Option<usize>,
    #[arg(long)]
    teacher_size: Option<usize>,
    /// Student short side for the stereo pairs (0: skip); the teacher gets the same grid.
    #[arg(long, default_value_t = 448)]
    stereo_size: usize,
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(a: DistillArgs) -> Result<()> {
    match a.cmd {
        Some(DistillCmd::CacheTeacher(c)) => cache_teacher(c),
        Some(DistillCmd::Eval(e)) => eval(e),
        Some(DistillCmd::BenchStep(b)) => bench_step(b),
        Some(DistillCmd::Plot { dir }) => {
            let png = dir.join("loss.png");
            sdk_distill::loss_plot(&dir.join("metrics.jsonl"), &png)?;
            eprintln!(
                "wrote {} and {}",
                png.display(),
                png.with_extension("svg").display()
            );
            Ok(())
        }
        None => train_cmd(a.train),
    }
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    if a.nproc > 1 && std::env::var_os("DINOEDGE_RANK").is_none() {
        return launch_ranks(&a);
    }
    if a.nproc == 0 {
        return Err(Error::InvalidArgument("--nproc must be at least 1".into()));
    }
    let s = &a.setup;
    let out = a.out.clone().expect("required by clap");
    let many = a.student.len() > 1;
    let mut students = Vec::new();
    for arg in &a.student {
        let name = dinoedge_distill::student::name(arg);
        students.push(train::StudentSpec {
            out: if many { out.join(&name) } else { out.clone() },
            config: dinoedge_distill::student::resolve(arg)?,
            name,
        });
    }
    let student = students[0].config.clone();
    let mut inter = a.inter.clone();
    // A ConvNeXt has no blocks to pair: the trainer refuses --w-inter for it, naming it.
    let all_vits = students
        .iter()
        .all(|s| matches!(s.config, ModelConfig::Vit(_)));
    if a.w_inter > 0.0 && inter.is_empty() && all_vits {
        // The default pair is each student's middle block: students of different depths
        // would each need their own, so the pair must be given.
        if let Some(s2) = students
            .iter()
            .find(|t| t.config.num_layers() != student.num_layers())
        {
            return Err(Error::InvalidArgument(format!(
                "--w-inter with students of different depths ({} has {} blocks, {} has {}): give the pair with --inter STUDENT_BLOCK:TEACHER_BLOCK",
                students[0].name,
                student.num_layers(),
                s2.name,
                s2.config.num_layers()
            )));
        }
        let t = Model::load(s.teacher())?;
        inter.push(train::default_inter(
            student.num_layers(),
            t.config().num_layers(),
        ));
    }
    let mut o = TrainOptions::new(s.teacher(), student, s.data(), out.clone());
    o.teacher_backend = s.teacher_backend;
    o.teacher_precision = s.teacher_precision;
    o.device = device_of(&a.backend);
    o.gemm = gemm_of(a.precision.as_deref());
    o.gpu = s.gpu;
    o.cache = a.cache.clone();
    o.size = s.size;
    o.teacher_size = s.teacher_size;
    o.steps = a.steps;
    o.batch = a.batch;
    o.seed = s.seed;
    o.holdout = s.holdout;
    o.optim = OptimConfig {
        lr: a.lr,
        min_lr: a.min_lr,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        clip: a.clip,
        ema: a.ema,
        ..Default::default()
    };
    o.loss = LossWeights {
        cls: a.w_cls,
        patch: a.w_patch,
        gram: a.w_gram,
        inter: a.w_inter,
    };
    o.aug = s.aug();
    o.inter = inter;
    o.ls_init = a.ls_init;
    o.heads_only = a.heads_only;
    o.init_from = a.init_from.clone();
    o.threads = s.threads;
    o.workers = s.workers;
    o.log_every = a.log_every;
    o.checkpoint_every = a.checkpoint_every;
    o.keep = a.keep;
    o.eval_every = a.eval_every;
    o.eval_images = a.eval_images;
    o.resume = a.resume;
    o.stop_after = a.stop_after;
    o.recompute = a.recompute;

    let pb = progress(a.steps as u64, "distill");
    let mut beat = std::time::Instant::now();
    // "vit-ti16: " before per-student lines when several train together.
    let tag = |i: usize| {
        if many {
            format!("{}: ", students[i].name)
        } else {
            String::new()
        }
    };
    let mut losses = vec![f64::NAN; students.len()];
    let reports = train::train_many(&o, &students, |i, e| match e {
        Event::Started(info) => {
            for skip in &info.skipped_checkpoints {
                super::note(
                    &pb,
                    format!(
                        "{}warning: skipped an unreadable checkpoint, resuming from an older one: {skip}",
                        tag(i)
                    ),
                );
            }
            super::note(
                &pb,
                format!(
                    "{}student {} ({:.2} M parameters) at {}px; teacher {} at {}px ({}x{} grid{}); {} training images, {} held out{}{}",
                    tag(i),
                    students[i].config.describe(),
                    info.student_params as f64 / 1e6,
                    info.align.student_size,
                    info.teacher,
                    info.align.teacher_size,
                    info.align.grid,
                    info.align.grid,
                    if info.align.resampled() {
                        ", teacher resampled"
                    } else {
                        ""
                    },
                    info.train_images,
                    info.holdout_images,
                    if info.cached {
                        "; cached teacher features"
                    } else {
                        ""
                    },
                    info.resumed_from
                        .as_ref()
                        .map(|p| format!("; resumed from {}", p.display()))
                        .unwrap_or_default(),
                ),
            );
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            super::note(
                &pb,
                match (info.recompute, info.activation_bytes_other) {
                    (_, None) => format!(
                        "{}activation memory {:.2} GiB",
                        tag(i),
                        gib(info.activation_bytes)
                    ),
                    (true, Some(other)) => format!(
                        "{}activation memory {:.2} GiB recomputing ({:.2} GiB without --recompute)",
                        tag(i),
                        gib(info.activation_bytes),
                        gib(other)
                    ),
                    (false, Some(other)) => format!(
                        "{}activation memory {:.2} GiB (--recompute: {:.2} GiB, for one more forward per step)",
                        tag(i),
                        gib(info.activation_bytes),
                        gib(other)
                    ),
                },
            );
            if i == 0 {
                super::note(&pb, format!("training on {}", info.trainer));
                for (p, why) in &info.skipped {
                    super::note(&pb, format!("warning: skipped {}: {why}", p.display()));
                }
                if !info.skipped.is_empty() {
                    super::note(
                        &pb,
                        format!("warning: {} files skipped", info.skipped.len()),
                    );
                }
                pb.set_position(info.first_step as u64);
                pb.reset_eta();
            }
        }
        Event::Step(l) => {
            losses[i] = l.loss;
            if i + 1 < students.len() {
                return;
            }
            let loss_text = if many {
                students
                    .iter()
                    .zip(&losses)
                    .map(|(s, v)| format!("{} {v:.4}", s.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                format!("{:.4}", l.loss)
            };
            pb.set_position(l.step as u64);
            pb.set_message(format!(
                "loss {loss_text} lr {:.2e} {:.1} img/s",
                l.lr, l.img_per_s
            ));
            super::heartbeat(&pb, &mut beat, || {
                format!(
                    "step {}/{}: loss {loss_text} lr {:.2e} {:.1} img/s ({:.0} s)",
                    l.step, a.steps, l.lr, l.img_per_s, l.elapsed_s
                )
            });
        }
        Event::Holdout(h) => super::note(
            &pb,
            format!(
                "{}step {}: held-out cosine to the teacher: CLS {:.4}, patches {:.4} ({} images)",
                tag(i),
                h.step,
                h.holdout_cls_cos,
                h.holdout_patch_cos,
                h.holdout_images
            ),
        ),
        Event::Checkpoint { step, path } => super::note(
            &pb,
            format!("{}step {step}: checkpoint {}", tag(i), path.display()),
        ),
        Event::BadImage { path, reason } => super::note(
            &pb,
            format!(
                "warning: cannot decode {} ({reason}); using the next image",
                path.display()
            ),
        ),
        Event::Exported { path } => super::note(
            &pb,
            format!("{}exported the EMA student to {}", tag(i), path.display()),
        ),
    })?;
    pb.finish_and_clear();
    for (spec, report) in students.iter().zip(&reports) {
        let metrics = spec.out.join("metrics.jsonl");
        let png = spec.out.join("loss.png");
        sdk_distill::loss_plot(&metrics, &png)?;
        eprintln!(
            "{}{} steps {}..{} in {:.1} s; metrics {}, curves {}",
            tag(students
                .iter()
                .position(|s| s.name == spec.name)
                .unwrap_or(0)),
            if report.finished {
                "finished"
            } else {
                "stopped after"
            },
            report.first_step,
            report.last_step,
            report.seconds,
            metrics.display(),
            png.display()
        );
        println!("{}", serde_json::to_string(report).unwrap_or_default());
    }
    Ok(())
}

fn cache_teacher(c: CacheArgs) -> Result<()> {
    let s = &c.setup;
    // Only the student's patch stride matters: the grid follows from it and --size.
    let student = dinoedge_distill::student::resolve(&c.student)?;
    let teacher = Arc::new(Model::load(s.teacher())?);
    let align = Alignment::new(&student, s.size, teacher.config(), s.teacher_size)?;
    let data = Dataset::scan(
        &s.data(),
        s.holdout,
        student.patch_size().max(teacher.config().patch_size()) as u32,
    )?;
    for (p, why) in &data.skipped {
        eprintln!("warning: skipped {}: {why}", p.display());
    }
    let mut o = TrainOptions::new(s.teacher(), student, s.data(), c.out.clone());
    o.seed = s.seed;
    o.holdout = s.holdout;
    o.aug = s.aug();
    let key = train::cache_key(&teacher, &align, &data, &o, c.layers.clone());
    let mut t = OnlineTeacher::new(
        teacher.clone(),
        align.clone(),
        &c.layers,
        &s.teacher_session(),
    )?;
    eprintln!(
        "caching {} views of {} training images ({} held out) from {} ({}) at {}px ({}x{} grid) into {}",
        c.views,
        data.train.len(),
        data.holdout.len(),
        s.teacher().display(),
        t.compute().unwrap_or_else(|| "cpu f32".into()),
        align.teacher_size,
        align.grid,
        align.grid,
        c.out.display()
    );
    let pb = progress(data.train.len() as u64, "cache");
    let t0 = std::time::Instant::now();
    let mut beat = t0;
    let index = cache::build(
        &c.out,
        &mut t,
        &data,
        key,
        &BuildOptions {
            views: c.views,
            images_per_shard: c.images_per_shard,
            batch: c.batch,
            workers: s.workers,
        },
        |p, _| {
            pb.set_position(p.done_images as u64);
            if p.reused {
                pb.set_message("reusing complete shards");
            } else {
                pb.set_message(format!("shard {}", p.shard));
            }
            super::heartbeat(&pb, &mut beat, || {
                format!(
                    "cached {}/{} images ({:.0} s)",
                    p.done_images,
                    p.total_images,
                    t0.elapsed().as_secs_f64()
                )
            });
        },
    )?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let bytes: u64 = index
        .shards
        .iter()
        .filter_map(|f| std::fs::metadata(c.out.join(f)).ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "cached {} views in {:.1} s ({:.1} views/s), {:.1} MiB",
        data.train.len() * c.views,
        secs,
        (data.train.len() * c.views) as f64 / secs,
        bytes as f64 / 1048576.0
    );
    println!(
        "{}",
        json!({"cache": c.out, "views": index.views, "train_images": data.train.len(), "shards": index.shards.len(), "bytes": bytes, "seconds": secs})
    );
    Ok(())
}

fn eval(e: EvalArgs) -> Result<()> {
    let mut images = sdk_distill::expand_images(&e.images)?;
    if let Some(dir) = &e.holdout_of {
        // The same split and minimum side as training: a hash of each relative path, images
        // at least a patch of both models.
        let patch = |d: &Path| ModelConfig::from_dir(d).map(|c| c.patch_size());
        let min_side = patch(&e.student)?.max(patch(&e.teacher)?);
        let data = Dataset::scan(dir, e.holdout, min_side as u32)?;
        if data.holdout.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "--holdout-of {}: no held-out images at --holdout {}",
                dir.display(),
                e.holdout
            )));
        }
        images.extend(data.holdout.iter().map(|x| data.path(x)));
    }
    let opts = EvalOptions {
        size: e.size,
        teacher_size: e.teacher_size,
        stereo_size: (e.stereo_size > 0).then_some(e.stereo_size),
        threads: e.threads,
    };
    let r = sdk_distill::evaluate(&e.teacher, &e.student, &images, &opts)?;
    for u in &r.unreadable {
        eprintln!("warning: skipped {u}");
    }
    println!(
        "held-out cosine to the teacher ({} images, student {}px, teacher {}px): CLS {:.4}, patches {:.4}",
        r.agreement.images,
        r.align.student_size,
        r.align.teacher_size,
        r.agreement.cls_cos,
        r.agreement.patch_cos
    );
    if let Some((ss, ts)) = r.stereo_sizes {
        if r.stereo.is_empty() {
            println!("stereo: no pairs found (run scripts/fetch-assets.sh)");
        }
        for (name, s, t) in &r.stereo {
            println!(
                "stereo {name:<10} accuracy student {:.2}% ({ss}px, grid {}x{}), teacher {:.2}% ({ts}px, grid {}x{}); median error {:.2} / {:.2} patches",
                s.accuracy * 100.0,
                s.grid.0,
                s.grid.1,
                t.accuracy * 100.0,
                t.grid.0,
                t.grid.1,
                s.median_error,
                t.median_error
            );
        }
    }
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
    Ok(())
}
