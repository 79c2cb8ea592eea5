//! The DINOv3 ConvNeXt forward, written once against [`Backend`], channels-last throughout.
//!
//! ```text
//! x = layer_norm(matmul(im2col(pixels; 4x4)))        stem: conv 4x4 stride 4, then LN
//! for each stage s:
//!     if s > 0: x = matmul(im2col_nhwc(layer_norm(x); 2x2))   LN, then conv 2x2 stride 2
//!     for each block:
//!         t  = dwconv(x)                              depthwise 7x7, padding 3
//!         h  = layer_norm(t)
//!         x += gamma * pw2(gelu(pw1(h)))              the matmul epilogues (GELU; LayerScale + residual)
//!     (captured stages: token_pool(x), the raw stage output as HF's hidden_states[s + 1])
//! out = layer_norm(token_pool(x))                     [mean of the cells, cells], final norm
//! ```
//!
//! The convs are matmuls over im2col rows: the stem's weight in HF's (C, 3, 4, 4) order,
//! the downsampling weights permuted once to (C, 2, 2, C_in) for the channels-last im2col.

use super::ConvNext;
use super::config::ConvNextConfig;
use super::layout::{BlockParam as BP, DownParam as DP, Param, channels_last_conv};
use crate::dispatch::{Backend, Epilogue, HostLinear, Op};
use crate::error::{Result, RuntimeError};
use crate::model::Model;
use crate::models::Architecture;
use crate::ops::Dims;
use crate::ops::dwconv::{DwDims, weight_taps_major};

/// The ops a ConvNeXt forward issues.
pub fn ops_used() -> Vec<Op> {
    vec![
        Op::PatchEmbed,
        Op::LayerNorm,
        Op::Matmul,
        Op::Dwconv,
        Op::TokenPool,
    ]
}

/// The input of a forward: `batch` images of `height x width` pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
}

/// One block's weights on a backend.
pub struct PreparedBlock<B: Backend> {
    /// (49, C) tap-major, and bias (C).
    pub dw: (B::Buffer, B::Buffer),
    pub norm: (B::Buffer, B::Buffer),
    pub pw1: B::Linear,
    pub pw2: B::Linear,
    pub gamma: B::Buffer,
}

/// One stage's weights: its downsampling layer (the stem for stage 0) and blocks.
pub struct PreparedStage<B: Backend> {
    pub conv: B::Linear,
    pub norm: (B::Buffer, B::Buffer),
    pub blocks: Vec<PreparedBlock<B>>,
}

/// All weights of a ConvNeXt, converted once into a backend's layout.
pub struct PreparedModel<B: Backend> {
    pub config: ConvNextConfig,
    pub stages: Vec<PreparedStage<B>>,
    pub norm: (B::Buffer, B::Buffer),
}

impl<B: Backend> PreparedModel<B> {
    pub fn new(backend: &B, model: &Model) -> Result<Self> {
        let cfg = ConvNext::config(model.config())?.clone();
        let vec = |p: Param| -> Result<B::Buffer> { backend.upload(&model.tensor_f32(p)?) };
        // Each conv-as-matmul from its weight `p` and bias. The downsampling convs read
        // channels-last im2col rows: their weights (and an int8 file's stored int8 weights,
        // whose per-output-channel scales are unchanged) are put into that order once.
        let linear = |name: String, p: Param, bias: Param, o: usize, k: usize| {
            let mut int8 = model.int8(p)?;
            let mut weight = match &int8 {
                Some(q) => q.dequantize(),
                None => model.tensor_f32(p)?,
            };
            if let Param::Down(s @ 1.., _) = p {
                let cin = cfg.hidden_sizes[s - 1];
                weight = channels_last_conv(&weight, o, cin, 2);
                if let Some(q) = &mut int8 {
                    q.q = channels_last_conv(&q.q, o, cin, 2);
                }
            }
            backend.linear(HostLinear {
                name,
                out_features: o,
                in_features: k,
                weight,
                bias: Some(model.tensor_f32(bias)?),
                int8,
            })
        };
        let mut stages = Vec::with_capacity(cfg.num_stages());
        for (s, (&c, &depth)) in cfg.hidden_sizes.iter().zip(&cfg.depths).enumerate() {
            let (w, bias) = (Param::Down(s, DP::ConvWeight), Param::Down(s, DP::ConvBias));
            // The stem keeps the name the CPU backend keeps in f32 at int8 / bf16 (it sees
            // raw pixels); its im2col reads NCHW pixels in the weight's own order.
            let conv = if s == 0 {
                linear("patch_embed".into(), w, bias, c, cfg.num_channels * 16)?
            } else {
                let k = 4 * cfg.hidden_sizes[s - 1];
                linear(format!("stages.{s}.downsample"), w, bias, c, k)?
            };
            let mut blocks = Vec::with_capacity(depth);
            for b in 0..depth {
                let p = |bp| Param::Block(s, b, bp);
                let dw = weight_taps_major(&model.tensor_f32(p(BP::DwWeight))?, c);
                let name = |n: &str| format!("stages.{s}.layers.{b}.{n}");
                blocks.push(PreparedBlock {
                    dw: (backend.upload(&dw)?, vec(p(BP::DwBias))?),
                    norm: (vec(p(BP::NormWeight))?, vec(p(BP::NormBias))?),
                    pw1: linear(name("pw1"), p(BP::Pw1Weight), p(BP::Pw1Bias), 4 * c, c)?,
                    pw2: linear(name("pw2"), p(BP::Pw2Weight), p(BP::Pw2Bias), c, 4 * c)?,
                    gamma: vec(p(BP::Gamma))?,
                });
            }
            stages.push(PreparedStage {
                conv,
                norm: (
                    vec(Param::Down(s, DP::NormWeight))?,
                    vec(Param::Down(s, DP::NormBias))?,
                ),
                blocks,
            });
        }
        Ok(PreparedModel {
            stages,
            norm: (vec(Param::NormWeight)?, vec(Param::NormBias)?),
            config: cfg,
        })
    }
}

/// What a stage works on: its grid and width, and its downsampling im2col's sizes.
#[derive(Clone, Copy, Debug)]
pub struct StageDims {
    pub grid: (usize, usize),
    pub channels: usize,
    /// The im2col of the stage's conv: pixels (stage 0) or the previous stage's map.
    pub conv: Dims,
}

impl StageDims {
    pub fn cells(&self, batch: usize) -> usize {
        batch * self.grid.0 * self.grid.1
    }
}

/// Every stage's sizes for `shape`.
pub fn stage_dims(cfg: &ConvNextConfig, shape: &Shape) -> Vec<StageDims> {
    let grids = cfg.stage_grids(shape.height, shape.width);
    let mut prev = (shape.height, shape.width, cfg.num_channels);
    grids
        .iter()
        .enumerate()
        .map(|(s, &grid)| {
            let c = cfg.hidden_sizes[s];
            let patch = if s == 0 { 4 } else { 2 };
            // Dims as the im2col and the backends' scratch read them: one "token" per cell,
            // the block width and its 4x MLP, no attention.
            let conv = Dims {
                batch: shape.batch,
                channels: prev.2,
                height: prev.0,
                width: prev.1,
                patch,
                grid_h: grid.0,
                grid_w: grid.1,
                prefix: 0,
                dim: c,
                heads: 0,
                hidden: 4 * c,
            };
            prev = (grid.0, grid.1, c);
            StageDims {
                grid,
                channels: c,
                conv,
            }
        })
        .collect()
}

/// Every buffer of one forward at `shape` with `captures` captured stages, (name, f32
/// elements) in allocation order; [`Plan::new`] allocates exactly these.
pub fn buffer_table(
    cfg: &ConvNextConfig,
    shape: &Shape,
    captures: usize,
) -> Vec<(&'static str, usize)> {
    let b = shape.batch;
    let st = stage_dims(cfg, shape);
    let max = |f: &dyn Fn(&StageDims) -> usize| st.iter().map(f).max().unwrap_or(0);
    let map = max(&|s| s.cells(b) * s.channels);
    let pooled = |s: &StageDims| (s.cells(b) + b) * s.channels;
    let last = st.last().expect("one stage");
    let mut t = vec![
        ("pixels", b * cfg.num_channels * shape.height * shape.width),
        ("cols", max(&|s| s.cells(b) * s.conv.patch_len())),
        ("x", map),
        // dwconv output, and the pooled sequence before the final norm.
        ("t", map.max(pooled(last))),
        ("h", map),
        ("mlp", max(&|s| s.cells(b) * 4 * s.channels)),
        ("out", pooled(last)),
    ];
    t.extend((0..captures).map(|_| ("captured", max(&pooled))));
    t
}

/// Every buffer of one forward at one shape.
pub struct Plan<B: Backend> {
    pub id: u64,
    pub shape: Shape,
    pub stages: Vec<StageDims>,
    /// Stages whose raw output is kept, in request order.
    pub capture: Vec<usize>,
    pub pixels: B::Buffer,
    cols: B::Buffer,
    x: B::Buffer,
    t: B::Buffer,
    h: B::Buffer,
    mlp: B::Buffer,
    /// [pooled, cells] after the final norm, (B, 1 + N, C).
    pub out: B::Buffer,
    /// [mean, cells] of each captured stage's raw output.
    pub captured: Vec<B::Buffer>,
}

impl<B: Backend> Plan<B> {
    pub fn new(backend: &B, m: &PreparedModel<B>, shape: Shape, capture: &[usize]) -> Result<Self> {
        let cfg = &m.config;
        let n = cfg.num_stages();
        if let Some(&bad) = capture.iter().find(|&&s| s >= n) {
            return Err(RuntimeError::input(
                "layers",
                format!(
                    "stage {bad} requested; a ConvNeXt's --layers are its stages, 0 to {}",
                    n - 1
                ),
            ));
        }
        let stages = stage_dims(cfg, &shape);
        for s in &stages {
            backend.reserve(&s.conv)?;
        }
        let mut table = buffer_table(cfg, &shape, capture.len()).into_iter();
        let mut next = |name: &str| -> Result<B::Buffer> {
            let (n, len) = table.next().expect("the plan lists every buffer");
            debug_assert_eq!(n, name, "buffer order");
            backend.alloc(len)
        };
        let pixels = next("pixels")?;
        let (cols, x, t, h) = (next("cols")?, next("x")?, next("t")?, next("h")?);
        let (mlp, out) = (next("mlp")?, next("out")?);
        let captured = capture
            .iter()
            .map(|_| next("captured"))
            .collect::<Result<_>>()?;
        Ok(Plan {
            id: crate::models::next_plan_id(),
            shape,
            stages,
            capture: capture.to_vec(),
            pixels,
            cols,
            x,
            t,
            h,
            mlp,
            out,
            captured,
        })
    }
}

/// Runs the forward on `plan.pixels` (or replays a recorded one, on backends that record).
pub fn forward<B: Backend>(be: &B, m: &PreparedModel<B>, p: &mut Plan<B>) -> Result<()> {
    let id = p.id;
    crate::models::run_recorded(be, id, || forward_ops(be, m, p))
}

fn forward_ops<B: Backend>(be: &B, m: &PreparedModel<B>, p: &mut Plan<B>) -> Result<()> {
    let eps = m.config.layer_norm_eps as f32;
    let b = p.shape.batch;
    for (s, (stage, sd)) in m.stages.iter().zip(&p.stages).enumerate() {
        let (rows, c) = (sd.cells(b), sd.channels);
        if s == 0 {
            be.patch_embed_im2col(&mut p.cols, &p.pixels, &sd.conv)?;
            be.matmul(&mut p.t, &p.cols, &stage.conv, rows, Epilogue::Store)?;
            be.layer_norm(&mut p.x, &p.t, &stage.norm.0, &stage.norm.1, rows, c, eps)?;
        } else {
            let prev = p.stages[s - 1];
            let prev_rows = prev.cells(b);
            be.layer_norm(
                &mut p.h,
                &p.x,
                &stage.norm.0,
                &stage.norm.1,
                prev_rows,
                prev.channels,
                eps,
            )?;
            be.patch_embed_im2col_nhwc(&mut p.cols, &p.h, &sd.conv)?;
            be.matmul(&mut p.x, &p.cols, &stage.conv, rows, Epilogue::Store)?;
        }
        let dw = DwDims {
            batch: b,
            height: sd.grid.0,
            width: sd.grid.1,
            channels: c,
        };
        for block in &stage.blocks {
            be.dwconv(&mut p.t, &p.x, &block.dw.0, &block.dw.1, &dw)?;
            be.layer_norm(&mut p.h, &p.t, &block.norm.0, &block.norm.1, rows, c, eps)?;
            be.matmul(
                &mut p.mlp,
                &p.h,
                &block.pw1,
                rows,
                Epilogue::Act(m.config.act),
            )?;
            be.matmul(
                &mut p.x,
                &p.mlp,
                &block.pw2,
                rows,
                Epilogue::Residual(&block.gamma),
            )?;
        }
        let cells = sd.grid.0 * sd.grid.1;
        for (k, _) in p.capture.iter().enumerate().filter(|(_, c)| **c == s) {
            be.token_pool(&mut p.captured[k], &p.x, b, cells, c)?;
        }
    }
    let last = *p.stages.last().expect("one stage");
    let (cells, c) = (last.grid.0 * last.grid.1, last.channels);
    be.token_pool(&mut p.t, &p.x, b, cells, c)?;
    be.layer_norm(
        &mut p.out,
        &p.t,
        &m.norm.0,
        &m.norm.1,
        b * (1 + cells),
        c,
        eps,
    )?;
    be.synchronize()
}
