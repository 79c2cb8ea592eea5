//! Architectures, one folder each: its config, its parameter layout and its forward.
//!
//! A new architecture adds `models/<name>/` with those three files, implements
//! [`Architecture`], adds a [`ModelConfig`](crate::config::ModelConfig) variant with its
//! `model_type` values, and brings any op it needs as a new `ops/<op>/` folder. The session,
//! the backends and the device layers stay as they are.

pub mod convnext;
pub mod vit;

use crate::config::ModelConfig;
use crate::dispatch::{Backend, Op};
use crate::error::Result;
use crate::features::Features;
use crate::limits::InputLimits;
use crate::model::Model;

/// A unique id for a new plan (backends key recorded forwards by it).
pub(crate) fn next_plan_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Runs a forward's `ops` for plan `id`, or lets the backend replay a recording of them
/// (CUDA graphs); a recording that failed is dropped and the ops run directly.
pub(crate) fn run_recorded<B: Backend>(
    be: &B,
    id: u64,
    mut ops: impl FnMut() -> Result<()>,
) -> Result<()> {
    if be.begin_forward(id)? {
        return be.end_forward(id, true).map(|_| ());
    }
    let r = ops();
    if be.end_forward(id, r.is_ok())? {
        return r;
    }
    ops()
}

/// What a session needs from an architecture. The session owns the backend, the model and
/// a few plans; the architecture says what those plans hold and which ops fill them.
pub trait Architecture: 'static {
    /// The architecture's own config: its [`ModelConfig`] variant.
    type Config;
    /// The model's weights, converted once into backend `B`'s layout.
    type Prepared<B: Backend>: Send;
    /// Every buffer of one forward at one input shape, so that a forward allocates nothing.
    type Plan<B: Backend>: Send;
    /// The sizes of one forward, the key a session keeps its plans by.
    type Shape: Copy + Eq + Send + std::fmt::Debug;

    /// `cfg`'s variant for this architecture, or an error naming what the model is.
    fn config(cfg: &ModelConfig) -> Result<&Self::Config>;

    /// The ops a forward of `model` issues, asked of the backend before anything is converted.
    fn ops_used(model: &Model) -> Result<Vec<Op>>;

    /// Every f32 buffer of one forward at `shape` with `captures` captured blocks, as (name,
    /// elements) in allocation order: [`Architecture::plan`] allocates exactly these, and
    /// memory plans sum them.
    fn buffer_table(
        cfg: &Self::Config,
        shape: &Self::Shape,
        captures: usize,
    ) -> Vec<(&'static str, usize)>;

    /// Converts `model`'s weights for `backend`.
    fn prepare<B: Backend>(backend: &B, model: &Model) -> Result<Self::Prepared<B>>;

    /// The shape of a forward on `batch` images of `height x width` pixels, checked against
    /// the model (smallest input) and `limits` (largest). The session has already checked
    /// the tensor's rank, channels and value count (its values' finiteness comes after).
    fn shape<B: Backend>(
        m: &Self::Prepared<B>,
        batch: usize,
        height: usize,
        width: usize,
        limits: &InputLimits,
    ) -> Result<Self::Shape>;

    /// Allocates every buffer of one forward (see the architecture's buffer table), with
    /// the outputs of the blocks in `capture` kept as well.
    fn plan<B: Backend>(
        backend: &B,
        m: &Self::Prepared<B>,
        shape: Self::Shape,
        capture: &[usize],
    ) -> Result<Self::Plan<B>>;

    /// The plan's input buffer, `(B, C, H, W)`.
    fn pixels<B: Backend>(plan: &mut Self::Plan<B>) -> &mut B::Buffer;

    /// One forward from the plan's pixels to its outputs.
    fn forward<B: Backend>(
        backend: &B,
        m: &Self::Prepared<B>,
        plan: &mut Self::Plan<B>,
    ) -> Result<()>;

    /// Reads the outputs of the last forward back to the host, into `out` (its buffers
    /// reused), through `hosts` (read buffers the session keeps between runs).
    fn outputs_into<B: Backend>(
        backend: &B,
        m: &Self::Prepared<B>,
        plan: &Self::Plan<B>,
        hosts: &mut Vec<Vec<f32>>,
        out: &mut Features,
    ) -> Result<()>;
}
