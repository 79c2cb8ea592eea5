//! The student's training graph, written once per architecture for every backend: a forward
//! that keeps what the backward needs, and the backward that turns gradients of the outputs
//! into parameter gradients. Each is its runtime forward op by op ([`vit`]: a DINOv3 ViT,
//! [`convnext`]: a DINOv3 ConvNeXt), so an exported student computes in the runtime exactly
//! what it computed here. The trainer and the objective see a graph through
//! [`StudentGraph`] only.

pub mod convnext;
pub mod vit;

use dinoedge_runtime::config::ModelConfig;
use dinoedge_runtime::models::convnext::layout::Param as CParam;
use dinoedge_runtime::models::vit::layout::{LayerParam as L, Param};
use dinoedge_runtime::ops::Dims;

use super::plan::Plan;
use crate::error::Result;
use crate::params::{ParamId, ParamLayout};
use dinoedge_runtime::dispatch::train::{Buf, Stats, TrainBackend};

/// Parameter values (or their gradients) by name: one span of `total` values in layout order.
#[derive(Clone, Copy)]
pub struct ParamBufs<'a> {
    pub layout: &'a ParamLayout,
    pub base: Buf,
}

impl ParamBufs<'_> {
    pub fn id(&self, id: ParamId) -> Buf {
        let r = self.layout.range(id);
        self.base.part(r.start, r.len())
    }
    pub fn opt_id(&self, id: ParamId) -> Option<Buf> {
        self.layout.has(id).then(|| self.id(id))
    }
    pub fn get(&self, p: Param) -> Buf {
        self.id(ParamId::Model(p))
    }
    pub fn opt(&self, p: Param) -> Option<Buf> {
        self.opt_id(ParamId::Model(p))
    }
    /// A ConvNeXt parameter.
    pub fn c(&self, p: CParam) -> Buf {
        self.id(ParamId::ConvNext(p))
    }
    fn l(&self, l: usize, lp: L) -> Buf {
        self.get(Param::Layer(l, lp))
    }
    fn lo(&self, l: usize, lp: L) -> Option<Buf> {
        self.opt(Param::Layer(l, lp))
    }
}

/// A student's forward and backward at one input shape, its buffers planned once.
pub trait StudentGraph {
    /// The outputs' sizes (batch, prefix tokens, grid, width) and the pixels' (channels,
    /// height, width): what the objective and the held-out evaluation read.
    fn dims(&self) -> &Dims;
    /// The input, (B, C, H, W).
    fn pixels(&self) -> Buf;
    /// The normed output tokens, (B * tokens, D).
    fn out(&self) -> Buf;
    /// The normed intermediate outputs, each (B * tokens, D).
    fn inter(&self) -> &[Buf];
    /// Uploads what the graph reads but never writes.
    fn init(&self, be: &dyn TrainBackend) -> Result<()>;
    /// Runs the forward on [`StudentGraph::pixels`] with parameters `p`, keeping what the
    /// backward needs.
    fn forward(&self, be: &dyn TrainBackend, p: ParamBufs) -> Result<()>;
    /// Accumulates (`+=`) every parameter gradient into `g`, given the gradients of the
    /// output and of each intermediate output. Call after [`StudentGraph::forward`].
    fn backward(
        &self,
        be: &dyn TrainBackend,
        p: ParamBufs,
        g: ParamBufs,
        dout: Buf,
        dinter: &[Buf],
    ) -> Result<()>;
    /// The widest row any column sum of a step sees (the CUDA trainer's scratch), after
    /// checking that the CUDA trainer has kernels for this student.
    fn cuda_widest(&self, teacher_dim: usize) -> Result<usize>;
}

/// Plans the graph of student `cfg` for `batch` images of `height x width` pixels, with the
/// normed outputs of the blocks in `inter_layers` as well.
pub fn plan(
    plan: &mut Plan,
    cfg: &ModelConfig,
    batch: usize,
    hw: (usize, usize),
    inter_layers: &[usize],
    recompute: bool,
) -> Result<Box<dyn StudentGraph>> {
    Ok(match cfg {
        ModelConfig::Vit(c) => Box::new(vit::VitGraph::new(
            plan,
            c,
            batch,
            hw,
            inter_layers,
            recompute,
        )?),
        ModelConfig::ConvNext(c) => Box::new(convnext::ConvNextGraph::new(
            plan,
            c,
            batch,
            hw,
            inter_layers,
            recompute,
        )?),
    })
}

/// Bytes of activation memory the graph of this student plans: what it keeps for the
/// backward (every block's activations, or one block's when recomputing; the residual
/// stream; outputs), its inputs and the backward's scratch. Parameters, gradients, optimizer
/// state and the objective are not included.
pub fn activation_bytes(
    cfg: &ModelConfig,
    batch: usize,
    hw: (usize, usize),
    inter: usize,
    recompute: bool,
) -> Result<u64> {
    let mut p = Plan::default();
    plan(&mut p, cfg, batch, hw, &vec![0; inter], recompute)?;
    Ok(p.bytes())
}

fn stats(plan: &mut Plan, rows: usize) -> Stats {
    Stats(plan.take("norm statistics", 2 * rows))
}
