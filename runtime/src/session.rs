//! Sessions: a model's weights prepared on one backend, plus per-shape plans.
//!
//! [`Session`] is generic over the backend; [`InferenceSession`] is its object-safe face,
//! and [`create_session`] picks a backend by name.

use std::sync::Arc;

use crate::backend::{BackendInfo, BackendKind, Precision};
use crate::dispatch::Backend;
use crate::dispatch::cpu::CpuBackend;
use crate::dispatch::reference::ReferenceBackend;
use crate::error::{Result, RuntimeError};
use crate::features::{Features, split_tokens};
use crate::forward::{self, Plan, PreparedModel};
use crate::limits::InputLimits;
use crate::model::Model;
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
    fn run(&mut self, pixels: &Tensor, opts: &RunOptions) -> Result<Features>;
}

/// Plans kept per session (one per recent input shape).
const MAX_PLANS: usize = 4;

/// A model prepared on backend `B`.
pub struct Session<B: Backend> {
    backend: B,
    model: Arc<Model>,
    prepared: PreparedModel<B>,
    /// Most recently used last.
    plans: Vec<Plan<B>>,
    limits: InputLimits,
}

impl<B: Backend> Session<B> {
    /// Prepares `model` on `backend`, after asking the backend whether it can run every op
    /// the model uses (a head dim beyond its attention kernel is refused here, by name).
    pub fn new(backend: B, model: Arc<Model>) -> Result<Self> {
        for op in forward::ops_used(model.config()) {
            backend
                .supports(op, model.config())
                .map_err(|reason| RuntimeError::Unsupported {
                    backend: backend.info().kind.to_string(),
                    reason: format!("{} ({})", reason, model.config().describe()),
                })?;
        }
        let prepared = PreparedModel::new(&backend, &model)?;
        Ok(Session {
            backend,
            model,
            prepared,
            plans: Vec::new(),
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

    /// Validates `pixel_values` and returns the forward's dims.
    fn check_input(&self, pixels: &Tensor) -> Result<crate::ops::Dims> {
        let cfg = self.model.config();
        let s = &pixels.shape;
        if s.len() != 4 || s[1] != cfg.num_channels || s[0] == 0 {
            return Err(RuntimeError::input(
                "pixel_values",
                format!(
                    "expected shape (B, {}, H, W) with B >= 1, got {s:?}",
                    cfg.num_channels
                ),
            ));
        }
        if s[2] < cfg.patch_size || s[3] < cfg.patch_size {
            return Err(RuntimeError::ImageTooSmall {
                height: s[2],
                width: s[3],
                patch: cfg.patch_size,
            });
        }
        if s.iter().try_fold(1usize, |a, &b| a.checked_mul(b)) != Some(pixels.data.len()) {
            return Err(RuntimeError::input(
                "pixel_values",
                format!("{} values for shape {s:?}", pixels.data.len()),
            ));
        }
        let grid = cfg.grid(s[2], s[3]);
        self.limits
            .check_tokens("pixel_values", cfg.num_tokens(s[2], s[3]), grid)?;
        if let Some(i) = pixels.data.iter().position(|v| !v.is_finite()) {
            return Err(RuntimeError::input(
                "pixel_values",
                format!(
                    "value {} at index {i} is not finite (NaN or infinite pixels give meaningless features)",
                    pixels.data[i]
                ),
            ));
        }
        Ok(forward::dims(cfg, s[0], s[2], s[3]))
    }

    /// Index of the plan for these dims, building it if needed.
    fn plan_for(&mut self, dims: crate::ops::Dims, capture: &[usize]) -> Result<usize> {
        if let Some(i) = self
            .plans
            .iter()
            .position(|p| p.dims == dims && p.capture == capture)
        {
            let plan = self.plans.remove(i);
            self.plans.push(plan);
        } else {
            if self.plans.len() == MAX_PLANS {
                self.plans.remove(0);
            }
            let plan = Plan::new(&self.backend, &self.prepared, dims, capture)?;
            self.plans.push(plan);
        }
        Ok(self.plans.len() - 1)
    }

    /// Runs one forward and returns the features.
    pub fn run(&mut self, pixels: &Tensor, opts: &RunOptions) -> Result<Features> {
        let dims = self.check_input(pixels)?;
        let idx = self.plan_for(dims, &opts.capture_layers)?;
        let plan = &mut self.plans[idx];
        self.backend.write(&mut plan.pixels, &pixels.data)?;
        forward::forward(&self.backend, &self.prepared, plan)?;
        let rows = dims.rows() * dims.dim;
        let grid = (dims.grid_h, dims.grid_w);
        let regs = self.model.config().num_register_tokens;
        // Every output in one read (one mapped copy on GPU backends).
        let mut hosts: Vec<Vec<f32>> = (0..1 + plan.captured.len())
            .map(|_| vec![0.0f32; rows])
            .collect();
        {
            let mut reads: Vec<(&B::Buffer, &mut [f32])> = std::iter::once(&plan.out)
                .chain(plan.captured.iter())
                .zip(hosts.iter_mut())
                .map(|(b, h)| (b, h.as_mut_slice()))
                .collect();
            self.backend.read_many(&mut reads)?;
        }
        let mut hosts = hosts.into_iter();
        let last = split_tokens(
            self.model.config().num_layers - 1,
            &hosts.next().expect("output"),
            dims.batch,
            regs,
            grid,
            dims.dim,
        );
        let intermediate = plan
            .capture
            .iter()
            .zip(hosts)
            .map(|(&l, h)| split_tokens(l, &h, dims.batch, regs, grid, dims.dim))
            .collect();
        Ok(Features {
            grid,
            last,
            intermediate,
        })
    }
}

impl<B: Backend + 'static> InferenceSession for Session<B>
where
    B::Buffer: Send,
    B::Linear: Send,
{
    fn info(&self) -> BackendInfo {
        self.backend.info()
    }
    fn model(&self) -> &Arc<Model> {
        &self.model
    }
    fn run(&mut self, pixels: &Tensor, opts: &RunOptions) -> Result<Features> {
        Session::run(self, pixels, opts)
    }
}

/// Builds a session on the requested backend.
pub fn create_session(
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
            Session::new(CpuBackend::new(opts.threads, precision)?, model)?
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
                Session::new(ReferenceBackend::new(opts.threads)?, model)?.with_limits(opts.limits),
            ))
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(Box::new(
            Session::new(
                crate::dispatch::wgpu::WgpuBackend::new(precision, opts.adapter.as_deref())?,
                model,
            )?
            .with_limits(opts.limits),
        )),
        BackendKind::Cuda | BackendKind::CudaEmulated => cuda_session(model, opts, precision),
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
fn cuda_session(
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
    let weights = plan::memory_plan(model.config(), params, precision, 1, 224, 224).weights;
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
        Session::new(backend, model)?.with_limits(opts.limits),
    ))
}

pub use crate::backend::compiled_backends;
