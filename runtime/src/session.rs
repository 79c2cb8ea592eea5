//! Sessions: a model's weights prepared on one backend, plus per-shape plans.
//!
//! [`Session`] is generic over the backend; [`InferenceSession`] is its object-safe face,
//! and [`create_session`] picks a backend by name.

use std::sync::Arc;

use crate::backend::{BackendInfo, BackendKind, Precision};
use crate::config::ModelConfig;
use crate::dispatch::Backend;
use crate::dispatch::cpu::CpuBackend;
use crate::dispatch::reference::ReferenceBackend;
use crate::error::{Result, RuntimeError};
use crate::features::Features;
use crate::limits::InputLimits;
use crate::model::Model;
use crate::models::Architecture;
use crate::models::convnext::ConvNext;
use crate::models::vit::Vit;
use crate::tensor::Tensor;

/// Per-run options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Blocks (0-based) whose outputs to return as well, final norm applied.
    pub capture_layers: Vec<usize>,
}

/// How to build a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    pub backend: BackendKind,
    /// `None` = the model's own: int8 for dinoedge int8 models on the CPU, f32 otherwise.
    pub precision: Option<Precision>,
    /// CPU worker threads (default: all cores).
    pub threads: Option<usize>,
    /// GPU adapter (name substring or index) for the wgpu backend.
    pub adapter: Option<String>,
    /// Largest input a run accepts (tokens per image; pixels are checked by the callers that
    /// decode images).
    pub limits: InputLimits,
    /// cuda: record each forward shape as a CUDA graph and replay it (default on).
    pub cuda_graphs: bool,
    /// cuda: tensor-core attention for f16 / bf16 on sm_80+ (default on; off runs the
    /// CUDA-core kernel).
    pub cuda_tensor_core_attention: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            backend: BackendKind::Cpu,
            precision: None,
            threads: None,
            adapter: None,
            limits: InputLimits::default(),
            cuda_graphs: true,
            cuda_tensor_core_attention: true,
        }
    }
}

/// Object-safe interface of a session on any backend.
pub trait InferenceSession: Send {
    fn info(&self) -> BackendInfo;
    fn model(&self) -> &Arc<Model>;
    /// Runs `pixel_values` (B, 3, H, W), already preprocessed.
    fn run(&mut self, pixels: &Tensor, opts: &RunOptions) -> Result<Features> {
        let mut out = Features::empty();
        self.run_into(pixels, opts, &mut out)?;
        Ok(out)
    }
    /// [`InferenceSession::run`] into `out`, reusing its buffers: once they have grown to
    /// the input's size, a run allocates nothing (video and live use).
    fn run_into(&mut self, pixels: &Tensor, opts: &RunOptions, out: &mut Features) -> Result<()>;
}

/// Plans kept per session (one per recent input shape).
const MAX_PLANS: usize = 4;

/// A plan with the key it was built for.
struct Keyed<P, S> {
    shape: S,
    capture: Vec<usize>,
    plan: P,
}

/// A model of architecture `A` prepared on backend `B`.
pub struct Session<B: Backend, A: Architecture = Vit> {
    backend: B,
    model: Arc<Model>,
    prepared: A::Prepared<B>,
    /// Most recently used last.
    plans: Vec<Keyed<A::Plan<B>, A::Shape>>,
    limits: InputLimits,
    /// Host buffers the outputs are read into, kept between runs.
    hosts: Vec<Vec<f32>>,
}

impl<B: Backend, A: Architecture> Session<B, A> {
    /// Prepares `model` on `backend`, after asking the backend whether it can run every op
    /// the model uses (a head dim beyond its attention kernel is refused here, by name).
    pub fn new(backend: B, model: Arc<Model>) -> Result<Self> {
        for op in A::ops_used(&model)? {
            backend
                .supports(op)
                .map_err(|reason| RuntimeError::Unsupported {
                    backend: backend.info().kind.to_string(),
                    reason: format!("{} ({})", reason, model.config().describe()),
                })?;
        }
        let prepared = A::prepare(&backend, &model)?;
        Ok(Session {
            backend,
            model,
            prepared,
            plans: Vec::new(),
            hosts: Vec::new(),
            limits: InputLimits::default(),
        })
    }

    /// Sets the input limits checked by every run.
    pub fn with_limits(mut self, limits: InputLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Validates `pixel_values` and returns the forward's shape.
    fn check_input(&self, pixels: &Tensor) -> Result<A::Shape> {
        let channels = self.model.config().num_channels();
        let s = &pixels.shape;
        if s.len() != 4 || s[1] != channels || s[0] == 0 {
            return Err(RuntimeError::input(
                "pixel_values",
                format!("expected shape (B, {channels}, H, W) with B >= 1, got {s:?}"),
            ));
        }
        if s.iter().try_fold(1usize, |a, &b| a.checked_mul(b)) != Some(pixels.data.len()) {
            return Err(RuntimeError::input(
                "pixel_values",
                format!("{} values for shape {s:?}", pixels.data.len()),
            ));
        }
        let shape = A::shape(&self.prepared, s[0], s[2], s[3], &self.limits)?;
        if let Some(i) = pixels.data.iter().position(|v| !v.is_finite()) {
            return Err(RuntimeError::input(
                "pixel_values",
                format!(
                    "value {} at index {i} is not finite (NaN or infinite pixels give meaningless features)",
                    pixels.data[i]
                ),
            ));
        }
        Ok(shape)
    }

    /// Index of the plan for this shape, building it if needed.
    fn plan_for(&mut self, shape: A::Shape, capture: &[usize]) -> Result<usize> {
        if let Some(i) = self
            .plans
            .iter()
            .position(|p| p.shape == shape && p.capture == capture)
        {
            let plan = self.plans.remove(i);
            self.plans.push(plan);
        } else {
            if self.plans.len() == MAX_PLANS {
                self.plans.remove(0);
            }
            let plan = A::plan(&self.backend, &self.prepared, shape, capture)?;
            self.plans.push(Keyed {
                shape,
                capture: capture.to_vec(),
                plan,
            });
        }
        Ok(self.plans.len() - 1)
    }

    /// Runs one forward and returns the features.
    pub fn run(&mut self, pixels: &Tensor, opts: &RunOptions) -> Result<Features> {
        let mut out = Features::empty();
        self.run_into(pixels, opts, &mut out)?;
        Ok(out)
    }

    /// Runs one forward into `out`, reusing its buffers.
    pub fn run_into(
        &mut self,
        pixels: &Tensor,
        opts: &RunOptions,
        out: &mut Features,
    ) -> Result<()> {
        let shape = self.check_input(pixels)?;
        let idx = self.plan_for(shape, &opts.capture_layers)?;
        let plan = &mut self.plans[idx].plan;
        self.backend.write(A::pixels(plan), &pixels.data)?;
        A::forward(&self.backend, &self.prepared, plan)?;
        A::outputs_into(&self.backend, &self.prepared, plan, &mut self.hosts, out)
    }
}

impl<B: Backend + 'static, A: Architecture> InferenceSession for Session<B, A> {
    fn info(&self) -> BackendInfo {
        self.backend.info()
    }
    fn model(&self) -> &Arc<Model> {
        &self.model
    }
    fn run_into(&mut self, pixels: &Tensor, opts: &RunOptions, out: &mut Features) -> Result<()> {
        Session::run_into(self, pixels, opts, out)
    }
}

/// Builds a session on the requested backend, for the model's architecture.
pub fn create_session(
    model: Arc<Model>,
    opts: &SessionOptions,
) -> Result<Box<dyn InferenceSession>> {
    match model.config() {
        ModelConfig::Vit(_) => session_of::<Vit>(model, opts),
        ModelConfig::ConvNext(_) => session_of::<ConvNext>(model, opts),
    }
}

/// [`create_session`] for architecture `A`.
fn session_of<A: Architecture>(
    model: Arc<Model>,
    opts: &SessionOptions,
) -> Result<Box<dyn InferenceSession>> {
    let precision = opts.precision.unwrap_or(
        if model.is_quantized() && opts.backend == BackendKind::Cpu {
            Precision::Int8
        } else {
            Precision::F32
        },
    );
    match opts.backend {
        BackendKind::Cpu => Ok(Box::new(
            Session::<_, A>::new(CpuBackend::new(opts.threads, precision)?, model)?
                .with_limits(opts.limits),
        )),
        BackendKind::CpuReference => {
            if precision != Precision::F32 {
                return Err(RuntimeError::BackendUnavailable {
                    backend: "cpu-ref".into(),
                    reason: format!("the reference computes in f32 only, not {precision}"),
                });
            }
            Ok(Box::new(
                Session::<_, A>::new(ReferenceBackend::new(opts.threads)?, model)?
                    .with_limits(opts.limits),
            ))
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(Box::new(
            Session::<_, A>::new(
                crate::dispatch::wgpu::WgpuBackend::new(precision, opts.adapter.as_deref())?,
                model,
            )?
            .with_limits(opts.limits),
        )),
        BackendKind::Cuda | BackendKind::CudaEmulated => cuda_session::<A>(model, opts, precision),
        #[allow(unreachable_patterns)]
        other => Err(RuntimeError::BackendUnavailable {
            backend: other.to_string(),
            reason: format!(
                "not compiled into this build (available: {}); rebuild with --features {other}",
                compiled_backends().join(", ")
            ),
        }),
    }
}

/// A session on the CUDA backend (a GPU, or the emulator for `cuda-emulated`), after checking
/// that the whole model fits before any weight is uploaded.
fn cuda_session<A: Architecture>(
    model: Arc<Model>,
    opts: &SessionOptions,
    precision: Precision,
) -> Result<Box<dyn InferenceSession>> {
    use crate::dispatch::cuda::{CudaBackend, CudaOptions, plan};
    // On cuda the adapter option is a GPU index.
    let ordinal = match opts.adapter.as_deref() {
        Some(a) => Some(a.parse::<usize>().map_err(|_| {
            RuntimeError::input(
                "adapter",
                format!("{a:?}: on cuda, the adapter is a GPU index (0, 1, ...)"),
            )
        })?),
        None => None,
    };
    let backend = CudaBackend::new(&CudaOptions {
        precision,
        ordinal,
        emulated: opts.backend == BackendKind::CudaEmulated,
        graphs: opts.cuda_graphs,
        tensor_core_attention: opts.cuda_tensor_core_attention,
    })?;
    let params = model.num_parameters() as u64;
    let weights = match model.config() {
        ModelConfig::Vit(cfg) => plan::memory_plan(cfg, params, precision, 1, 224, 224).weights,
        ModelConfig::ConvNext(c) => {
            let linear = (c.linear_weight_count() as u64).min(params);
            let wbytes = if matches!(precision, Precision::F16 | Precision::BF16) {
                2
            } else {
                4
            };
            linear * wbytes + (params - linear) * 4
        }
    };
    let (free, total) = backend.memory()?;
    if weights > free as u64 {
        return Err(plan::out_of_memory(
            &format!(
                "the weights of {} ({params} parameters in {precision})",
                model.dir().display()
            ),
            weights,
            free as u64,
            total as u64,
        ));
    }
    Ok(Box::new(
        Session::<_, A>::new(backend, model)?.with_limits(opts.limits),
    ))
}

pub use crate::backend::compiled_backends;
