//! `dinoedge distill bench-step`: the median time of one whole training step (forward,
//! objective, backward, gradient norm, clip, AdamW, EMA) of a student on random pixels and
//! targets, on the CPU or a device, for comparison with a PyTorch step of the same model
//! (`tools/torch_train_bench.py`, run in the same session on the same machine).

use std::sync::Arc;
use std::time::Instant;

use dinoedge_runtime::ModelConfig;
use serde::Serialize;

use crate::checkpoint::TrainState;
use crate::cuda::Elem;
use crate::cuda::step::DeviceStudent;
use crate::error::Result;
use crate::graph::{Graph, Params};
use crate::loss::{LossWeights, Objective, Targets};
use crate::ops::Ctx;
use crate::optim::{AdamW, OptimConfig, ema_update, global_norm, lr_at};
use crate::params::ParamLayout;
use crate::rng::{Stream, normal, rng};
use crate::train::TrainDevice;

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub device: TrainDevice,
    pub gemm: Elem,
    pub batch: usize,
    pub size: usize,
    /// Width of the teacher features the heads project to.
    pub teacher_dim: usize,
    pub iters: usize,
    pub warmup: usize,
    pub recompute: bool,
    pub threads: Option<usize>,
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
    /// The student's HF config, for the PyTorch peer.
    pub student_config: serde_json::Value,
}

/// Times `warmup + iters` steps; `on` is called after each.
pub fn bench_step(
    cfg: &ModelConfig,
    b: &BenchOptions,
    mut on: impl FnMut(usize),
) -> Result<StepBench> {
    let mut cfg = cfg.clone();
    cfg.image_size = b.size;
    let heads = [(cfg.hidden_size, b.teacher_dim); 2];
    let layout = ParamLayout::new(&cfg, &heads);
    let params = layout.init(0, 0.1);
    let mut r = rng(1, Stream::Init, u64::MAX, 0);
    let mut randn = |n: usize| (0..n).map(|_| normal(&mut r)).collect::<Vec<f32>>();
    let d = dinoedge_runtime::forward::dims(&cfg, b.batch, b.size, b.size);
    let pixels = randn(b.batch * 3 * b.size * b.size);
    let targets = Targets {
        cls: randn(b.batch * b.teacher_dim),
        patches: randn(b.batch * d.patches() * b.teacher_dim),
        inter: Vec::new(),
    };
    let (w, opt) = (LossWeights::default(), OptimConfig::default());
    let total = b.warmup + b.iters;
    let mut state = TrainState {
        step: 0,
        ema: params.clone(),
        params,
        adam: AdamW::new(layout.total),
    };
    let mut times = Vec::new();
    let mut losses = Vec::new();
    let trainer;
    match b.device {
        TrainDevice::Cpu => {
            let ctx = Ctx::new(b.threads)?;
            trainer = format!("cpu, {} threads", ctx.pool.threads());
            let mut graph = Graph::with_recompute(&cfg, b.batch, b.size, b.size, &[], b.recompute);
            let mut obj = Objective::default();
            let (mut g, mut dout) = (vec![0.0f32; layout.total], vec![0.0f32; graph.out.len()]);
            for step in 0..total {
                let t0 = Instant::now();
                let p = Params {
                    layout: &layout,
                    v: &state.params,
                };
                graph.forward(&ctx, p, &pixels);
                g.fill(0.0);
                let parts = obj.compute(
                    &ctx,
                    p,
                    &mut g,
                    &graph.dims,
                    &graph.out,
                    &graph.inter,
                    &targets,
                    &w,
                    &mut dout,
                    &mut [],
                );
                graph.backward(&ctx, p, &mut g, &dout, &[]);
                let gn = global_norm(&g);
                if gn > opt.clip as f64 {
                    let s = (opt.clip as f64 / gn) as f32;
                    g.iter_mut().for_each(|v| *v *= s);
                }
                let lr = lr_at(&opt, step, total);
                state
                    .adam
                    .step(&opt, &layout, &mut state.params, &g, lr, step + 1);
                ema_update(&mut state.ema, &state.params, opt.ema, step + 1);
                times.push(t0.elapsed().as_secs_f64());
                losses.push(parts.total);
                on(step);
            }
        }
        dev => {
            let device = crate::train::open_device(dev)?.expect("a device");
            trainer = format!("{} ({:?} GEMMs)", device.name(), b.gemm).to_lowercase();
            let mut s = DeviceStudent::new(
                Arc::clone(&device),
                b.gemm,
                &cfg,
                &layout,
                &state,
                b.batch,
                (b.size, b.size),
                &[],
                b.recompute,
                b.teacher_dim,
            )?;
            for step in 0..total {
                let t0 = Instant::now();
                // The host copies of pixels and targets are part of a step, as in training.
                let parts = s.gradients_of(&pixels, &targets, &w, false)?;
                let gn = s.grad_norm()?;
                let gscale = if gn > opt.clip as f64 {
                    (opt.clip as f64 / gn) as f32
                } else {
                    1.0
                };
                s.update(&opt, lr_at(&opt, step, total), step + 1, gscale, 0)?;
                times.push(t0.elapsed().as_secs_f64());
                losses.push(parts.total);
                on(step);
            }
        }
    }
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
        student_config: cfg.to_hf_json(),
    })
}
