//! One trainer for every device. The student's graph ([`graph`]), the objective
//! ([`objective`]) and the step (gradients, norm, clip, AdamW + EMA; [`Trainer`]) are
//! written once over the runtime's training seam ([`TrainBackend`], in
//! `dinoedge_runtime::dispatch::train`), whose dispatchers are the CPU ([`Cpu`]) and a CUDA
//! device ([`Cuda`]: a GPU or the emulator). Every buffer of a step is a span of one arena,
//! planned once ([`plan`]).
//!
//! | file | job |
//! |---|---|
//! | [`plan`] | the arena's named spans, and the memory a run reports |
//! | [`graph`] | forward that keeps activations, backward, `--recompute` |
//! | [`objective`] | the distillation loss on the graph's outputs |

pub mod graph;
pub mod objective;
pub mod plan;

use std::rc::Rc;
use std::sync::Arc;

use dinoedge_runtime::ModelConfig;

use crate::checkpoint::{StateRef, TrainState};
use crate::cuda::{Device, Elem};
use crate::error::{DistillError, Result};
use crate::loss::{LossParts, LossWeights, Targets};
use crate::optim::{OptimConfig, adamw_ema_args};
use crate::parallel::{Collective, Ranks};
use crate::params::ParamLayout;
use dinoedge_runtime::dispatch::train::cpu::{Cpu, Ctx};
use dinoedge_runtime::dispatch::train::cuda::Cuda;
use dinoedge_runtime::dispatch::train::{Buf, StateBufs, TrainBackend};
use graph::{ParamBufs, StudentGraph};
use objective::Objective;
use plan::Plan;

/// Where a trainer runs.
#[derive(Clone)]
pub enum On {
    Cpu(Rc<Ctx>),
    /// A CUDA device with the trainer's kernels loaded ([`crate::cuda::open`]) and the type
    /// of its GEMM inputs.
    Device(Arc<dyn Device>, Elem),
}

/// The input shape of a step and what it computes besides the final outputs.
#[derive(Clone, Debug)]
pub struct Shape {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    /// Student blocks whose (normed) outputs get a head.
    pub inter_layers: Vec<usize>,
    pub recompute: bool,
    /// Width of the teacher features the heads project to.
    pub teacher_dim: usize,
}

/// The outcome of one [`Trainer::step`].
pub enum Stepped {
    /// Loss parts (averaged over ranks), gradient norm before clipping, learning rate.
    Done(LossParts, f64, f32),
    /// The step stopped: what was not finite.
    Diverged(String),
}

/// What one step does besides the batch: the run's objective and optimizer settings.
pub struct StepConfig<'a> {
    pub loss: &'a LossWeights,
    pub optim: &'a OptimConfig,
    pub heads_only: bool,
    /// The run's total steps (for the learning-rate schedule).
    pub steps: usize,
}

/// A student's training state, graph and objective on one backend.
pub struct Trainer {
    be: Box<dyn TrainBackend>,
    pub graph: Box<dyn StudentGraph>,
    obj: Objective,
    layout: ParamLayout,
    st: StateBufs,
    /// Bytes of the graph's activations (see [`graph::activation_bytes`]).
    pub activation_bytes: u64,
}

impl Trainer {
    /// Plans every buffer of a step of `cfg` at `shape`, allocates them on `on` and loads
    /// `state`.
    pub fn new(
        on: On,
        cfg: &ModelConfig,
        layout: &ParamLayout,
        state: &TrainState,
        shape: &Shape,
    ) -> Result<Trainer> {
        let mut plan = Plan::default();
        let mut state_span = || plan.take("training state", layout.total);
        let st = StateBufs {
            params: state_span(),
            ema: state_span(),
            m: state_span(),
            v: state_span(),
            g: state_span(),
        };
        let before = plan.bytes();
        let hw = (shape.height, shape.width);
        let (batch, inter) = (shape.batch, &shape.inter_layers);
        let graph = graph::plan(&mut plan, cfg, batch, hw, inter, shape.recompute)?;
        let activation_bytes = plan.bytes() - before;
        let obj = Objective::new(&mut plan, &*graph, shape.teacher_dim);
        let decay = layout.decay_flags();
        let (len, parts) = (plan.len, plan.summary());
        let be: Box<dyn TrainBackend> = match on {
            On::Cpu(ctx) => Box::new(Cpu::new(ctx, len, &parts, decay)?),
            On::Device(dev, ty) => {
                let widest = graph.cuda_widest(shape.teacher_dim)?;
                Box::new(Cuda::new(dev, ty, len, &parts, st.params, &decay, widest)?)
            }
        };
        graph.init(&*be)?;
        let t = Trainer {
            be,
            graph,
            obj,
            layout: layout.clone(),
            st,
            activation_bytes,
        };
        t.load(state)?;
        Ok(t)
    }

    /// What trains ("cpu, 2 threads", "nvidia h100 (bf16 gemms)").
    pub fn describe(&self) -> String {
        self.be.describe()
    }

    fn params(&self) -> ParamBufs<'_> {
        ParamBufs {
            layout: &self.layout,
            base: self.st.params,
        }
    }

    fn grads(&self) -> ParamBufs<'_> {
        ParamBufs {
            layout: &self.layout,
            base: self.st.g,
        }
    }

    /// `st` holds one value per parameter of this trainer's layout in each of its vectors.
    fn check_state(&self, st: &TrainState) -> Result<()> {
        let n = self.layout.total;
        let lens = [
            st.params.len(),
            st.ema.len(),
            st.adam.m.len(),
            st.adam.v.len(),
        ];
        if lens == [n; 4] {
            return Ok(());
        }
        Err(DistillError::Config(format!(
            "a training state of {lens:?} values (params, ema, m, v) for a layout of {n}"
        )))
    }

    /// Copies parameters, EMA and AdamW moments to the backend.
    pub fn load(&self, st: &TrainState) -> Result<()> {
        self.check_state(st)?;
        self.be.upload(self.st.params, &st.params)?;
        self.be.upload(self.st.ema, &st.ema)?;
        self.be.upload(self.st.m, &st.adam.m)?;
        Ok(self.be.upload(self.st.v, &st.adam.v)?)
    }

    /// Runs `f` on the training state at `step` where it lives (no copy on the CPU): for
    /// checkpoints, exports and the heads of evaluations.
    pub fn with_state<T>(&self, step: usize, f: impl FnOnce(StateRef) -> Result<T>) -> Result<T> {
        let (mut f, mut out) = (Some(f), None);
        let s = self.st;
        // `f`'s own result is kept apart from the backend's (they are errors of two crates).
        self.be.with_host(&[s.params, s.ema, s.m, s.v], &mut |v| {
            if let Some(f) = f.take() {
                let (params, ema, m, v) = (v[0], v[1], v[2], v[3]);
                out = Some(f(StateRef {
                    step,
                    params,
                    ema,
                    m,
                    v,
                }));
            }
            Ok(())
        })?;
        out.ok_or_else(|| DistillError::Config("the training state was not reachable".into()))?
    }

    /// Copies parameters, EMA and AdamW moments back into `st`.
    pub fn save(&self, st: &mut TrainState) -> Result<()> {
        self.check_state(st)?;
        self.with_state(st.step, |s| {
            st.params.copy_from_slice(s.params);
            st.ema.copy_from_slice(s.ema);
            st.adam.m.copy_from_slice(s.m);
            st.adam.v.copy_from_slice(s.v);
            Ok(())
        })
    }

    /// The forward on `pixels` (B, C, H, W) with the parameters, or with the EMA weights.
    pub fn forward(&self, pixels: &[f32], ema: bool) -> Result<()> {
        self.check_pixels(pixels)?;
        self.be.upload(self.graph.pixels(), pixels)?;
        let base = if ema { self.st.ema } else { self.st.params };
        let p = ParamBufs {
            layout: &self.layout,
            base,
        };
        self.graph.forward(&*self.be, p)?;
        Ok(self.be.check()?)
    }

    fn check_pixels(&self, pixels: &[f32]) -> Result<()> {
        if pixels.len() == self.graph.pixels().len {
            return Ok(());
        }
        let d = self.graph.dims();
        Err(DistillError::Config(format!(
            "{} pixel values for a step of {} images of {}x{}x{}",
            pixels.len(),
            d.batch,
            d.channels,
            d.height,
            d.width
        )))
    }

    /// The normed outputs of the last forward (B*N, D).
    pub fn outputs(&self) -> Result<Vec<f32>> {
        self.read(self.graph.out())
    }

    fn read(&self, b: Buf) -> Result<Vec<f32>> {
        let mut v = vec![0.0f32; b.len];
        self.be.download(b, &mut v)?;
        Ok(v)
    }

    /// Gradients (=) of every parameter given the gradient of the outputs `dout` (and none of
    /// the intermediate ones). Call after [`Trainer::forward`].
    pub fn backward_from(&self, dout: &[f32]) -> Result<()> {
        if dout.len() != self.obj.dout.len {
            return Err(DistillError::Config(format!(
                "output gradient of {} values for outputs of {}",
                dout.len(),
                self.obj.dout.len
            )));
        }
        self.be.zero(self.st.g)?;
        self.be.upload(self.obj.dout, dout)?;
        for &d in &self.obj.dinter {
            self.be.zero(d)?;
        }
        let (p, g) = (self.params(), self.grads());
        let (dout, dinter) = (self.obj.dout, &self.obj.dinter);
        self.graph.backward(&*self.be, p, g, dout, dinter)?;
        Ok(self.be.check()?)
    }

    /// Forward, objective and backward on one batch: gradients (=) in the gradient buffer
    /// (the model's only unless `heads_only`); returns the loss. The backward is skipped when
    /// the loss is not finite.
    pub fn gradients_of(
        &self,
        pixels: &[f32],
        t: &Targets,
        w: &LossWeights,
        heads_only: bool,
    ) -> Result<LossParts> {
        self.obj.upload_targets(&*self.be, t)?;
        self.forward(pixels, false)?;
        self.be.zero(self.st.g)?;
        let (be, p, g) = (&*self.be, self.params(), self.grads());
        let parts = self.obj.compute(be, &*self.graph, p, g, w)?;
        if parts.total.is_finite() && !heads_only {
            let (dout, dinter) = (self.obj.dout, &self.obj.dinter);
            self.graph.backward(be, p, g, dout, dinter)?;
        }
        be.check()?;
        Ok(parts)
    }

    /// The gradients of the last step (before clipping), for checks.
    pub fn gradients(&self) -> Result<Vec<f32>> {
        self.read(self.st.g)
    }

    /// The L2 norm of the gradient buffer.
    pub fn grad_norm(&self) -> Result<f64> {
        Ok(self.be.sum_squares(self.st.g)?.sqrt())
    }

    /// Sums the gradient buffer over the data-parallel ranks.
    pub fn sum_gradients(&self, c: &mut dyn Collective) -> Result<()> {
        let mut ranks = Ranks::new(c);
        let r = self.be.sum_over_ranks(&mut ranks, self.st.g);
        ranks.result(r)
    }

    /// Clip (by `gscale`) + AdamW + EMA at 1-based step `t`; values before `frozen` keep their
    /// weights. Returns false when a weight became non-finite.
    pub fn update(
        &self,
        c: &OptimConfig,
        lr: f32,
        t: usize,
        gscale: f32,
        frozen: usize,
    ) -> Result<bool> {
        let a = adamw_ema_args(c, lr, t, gscale, frozen);
        Ok(self.be.adamw_ema(&self.st, &a)?)
    }

    /// One training step at 0-based `step` over `ranks` data-parallel ranks (`coll` when
    /// more than one): gradients, the loss and gradient mean over ranks, clipping, AdamW and
    /// EMA. Nothing is updated when the step diverges.
    pub fn step(
        &self,
        c: &StepConfig,
        step: usize,
        pixels: &[f32],
        targets: &Targets,
        mut coll: Option<&mut (dyn Collective + 'static)>,
        ranks: usize,
    ) -> Result<Stepped> {
        let parts = self.gradients_of(pixels, targets, c.loss, c.heads_only)?;
        let parts = reduce_parts(parts, coll.as_deref_mut())?;
        if !parts.total.is_finite() {
            return Ok(Stepped::Diverged(format!("{}", parts.total)));
        }
        if let Some(coll) = coll {
            self.sum_gradients(coll)?;
        }
        // Gradients hold the ranks' sum: their mean is 1/n of it.
        let n = ranks as f64;
        let gn = self.grad_norm()? / n;
        if !gn.is_finite() {
            return Ok(Stepped::Diverged(format!(
                "finite but its gradient norm is {gn}"
            )));
        }
        let clip = if c.optim.clip > 0.0 && gn > c.optim.clip as f64 {
            c.optim.clip as f64 / gn
        } else {
            1.0
        };
        let lr = crate::optim::lr_at(c.optim, step, c.steps);
        // Heads only: the model's weights go through the step unchanged.
        let frozen = if c.heads_only {
            self.layout.model_len()
        } else {
            0
        };
        if !self.update(c.optim, lr, step + 1, (clip / n) as f32, frozen)? {
            return Ok(Stepped::Diverged(
                "finite but the update made a weight non-finite".into(),
            ));
        }
        Ok(Stepped::Done(parts, gn, lr))
    }
}

/// Loss parts averaged over the data-parallel ranks (each the mean over its share).
fn reduce_parts(p: LossParts, coll: Option<&mut (dyn Collective + 'static)>) -> Result<LossParts> {
    let Some(c) = coll else { return Ok(p) };
    let mut v = [p.total, p.cls, p.patch, p.gram, p.inter, 1.0];
    c.sum_f64(&mut v)?;
    let n = v[5];
    Ok(LossParts {
        total: v[0] / n,
        cls: v[1] / n,
        patch: v[2] / n,
        gram: v[3] / n,
        inter: v[4] / n,
    })
}
