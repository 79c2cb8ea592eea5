//! `dinoedge distill bench-step`: the median time of one whole training step (forward,
//! objective, backward, gradient norm, clip, AdamW, EMA) of a student on random pixels and
//! targets, on the CPU or a device, for comparison with a PyTorch step of the same model
//! (`tools/torch_train_bench.py`, run in the same session on the same machine).

use std::time::Instant;

use dinoedge_runtime::ModelConfig;
use serde::Serialize;

use crate::checkpoint::TrainState;
use crate::cuda::Elem;
use crate::error::{DistillError, Result};
use crate::loss::{LossWeights, Targets};
use crate::optim::{AdamW, OptimConfig};
use crate::params::ParamLayout;
use crate::rng::{Stream, normal, rng};
use crate::train::TrainDevice;
use crate::trainer::{On, Shape, StepConfig, Stepped, Trainer};

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub device: TrainDevice,
    /// GEMM inputs; `None`: bf16 on a GPU, f32 on the CPU.
    pub gemm: Option<Elem>,
    pub batch: usize,
    pub size: usize,
    /// Width of the teacher features the heads project to.
    pub teacher_dim: usize,
    pub iters: usize,
    pub warmup: usize,
    pub recompute: bool,
    pub threads: Option<usize>,
    /// The GPU of a CUDA trainer (default 0).
    pub gpu: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepBench {
    pub trainer: String,
    pub student: String,
    pub student_params: usize,
    pub batch: usize,
    pub size: usize,
    pub teacher_dim: usize,
    pub iters: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub img_per_s: f64,
    pub first_loss: f64,
    pub last_loss: f64,
    /// The loss of every step, warm-up included (to compare precisions' curves).
    pub losses: Vec<f64>,
    /// The student's HF config, for the PyTorch peer.
    pub student_config: serde_json::Value,
}

/// Times `warmup + iters` steps; `on` is called after each.
pub fn bench_step(
    cfg: &ModelConfig,
    b: &BenchOptions,
    mut on: impl FnMut(usize),
) -> Result<StepBench> {
    let cfg = crate::student::at_size(cfg, b.size);
    let heads = [(cfg.hidden_size(), b.teacher_dim); 2];
    let layout = ParamLayout::new(&cfg, &heads);
    let params = layout.init(0, 0.1);
    let mut r = rng(1, Stream::Init, u64::MAX, 0);
    let mut randn = |n: usize| (0..n).map(|_| normal(&mut r)).collect::<Vec<f32>>();
    let (gh, gw) = cfg.grid(b.size, b.size);
    let pixels = randn(b.batch * 3 * b.size * b.size);
    let targets = Targets {
        cls: randn(b.batch * b.teacher_dim),
        patches: randn(b.batch * gh * gw * b.teacher_dim),
        inter: Vec::new(),
    };
    let (w, opt) = (LossWeights::default(), OptimConfig::default());
    let total = b.warmup + b.iters;
    let state = TrainState {
        step: 0,
        ema: params.clone(),
        params,
        adam: AdamW::new(layout.total),
    };
    let backend = match b.device {
        TrainDevice::Cpu => On::Cpu(crate::train::cpu_context(b.threads, b.gemm)?),
        dev => {
            let device = crate::train::open_device(dev, b.gpu)?.expect("a device");
            On::Device(device, b.gemm.unwrap_or(Elem::BF16))
        }
    };
    let shape = Shape {
        batch: b.batch,
        height: b.size,
        width: b.size,
        inter_layers: Vec::new(),
        recompute: b.recompute,
        teacher_dim: b.teacher_dim,
    };
    let t = Trainer::new(backend, &cfg, &layout, &state, &shape)?;
    let c = StepConfig {
        loss: &w,
        optim: &opt,
        heads_only: false,
        steps: total,
    };
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for step in 0..total {
        let t0 = Instant::now();
        // The copies of pixels and targets to the backend are part of a step, as in training.
        match t.step(&c, step, &pixels, &targets, None, 1)? {
            Stepped::Done(parts, _, _) => losses.push(parts.total),
            Stepped::Diverged(what) => {
                return Err(DistillError::Diverged {
                    step: step + 1,
                    value: what,
                    last_good: "none (a benchmark)".into(),
                });
            }
        }
        times.push(t0.elapsed().as_secs_f64());
        on(step);
    }
    let trainer = t.describe();
    let mut t: Vec<f64> = times[b.warmup.min(times.len() - 1)..].to_vec();
    t.sort_by(f64::total_cmp);
    let median = t[t.len() / 2];
    Ok(StepBench {
        trainer,
        student: cfg.describe(),
        student_params: layout.model_len(),
        batch: b.batch,
        size: b.size,
        teacher_dim: b.teacher_dim,
        iters: t.len(),
        median_ms: median * 1e3,
        min_ms: t[0] * 1e3,
        img_per_s: b.batch as f64 / median,
        first_loss: losses[0],
        last_loss: *losses.last().expect("at least one step"),
        losses: losses.clone(),
        student_config: cfg.to_hf_json(),
    })
}
