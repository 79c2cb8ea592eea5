//! A ConvNeXt student's training graph: the runtime's forward
//! (`runtime/src/models/convnext/forward.rs`) op by op, channels-last, keeping every
//! block's activations.
//!
//! ```text
//! x = layer_norm(stem_conv(pixels))                     stage 0's input
//! x = down_conv(layer_norm(x))                          stage s > 0's input
//! per block: x += gamma * pw2(gelu(pw1(layer_norm(dwconv(x)))))
//! out = layer_norm(token_pool(x))                       [pooled, cells], the outputs
//! ```
//!
//! The depthwise weights are kept (49, C) and the downsampling conv weights (O, 2, 2, C_in),
//! the orders the ops read (`params.rs` transposes them from and to HF's).

use dinoedge_runtime::config::Activation;
use dinoedge_runtime::dispatch::train::{Buf, Stats, TrainBackend};
use dinoedge_runtime::models::convnext::config::ConvNextConfig;
use dinoedge_runtime::models::convnext::forward::{Shape, StageDims, stage_dims};
use dinoedge_runtime::models::convnext::layout::{BlockParam as BP, DownParam as DP, Param};
use dinoedge_runtime::ops::Dims;
use dinoedge_runtime::ops::dwconv::DwDims;

use super::{ParamBufs, StudentGraph, stats};
use crate::error::{DistillError, Result};
use crate::trainer::plan::Plan;

/// What one block keeps for its backward (its input is the stage's previous map).
struct BlockActs {
    /// dwconv output.
    t: Buf,
    ln: Buf,
    ln_stats: Stats,
    /// pw1 output (R, 4C), before the activation.
    h: Buf,
    /// The activation's output (R, 4C).
    a: Buf,
    /// pw2 output, before LayerScale.
    y: Buf,
}

/// One stage's kept activations.
struct StageActs {
    dims: StageDims,
    /// The im2col rows of its conv (the stem's, or the downsampling's).
    cols: Buf,
    /// Stage 0: the stem conv's output before its norm. Later stages: the normed previous
    /// map the downsampling conv reads.
    pre: Buf,
    pre_stats: Stats,
    /// The map before block b (xs[0]: the stage's input) and after the last block.
    xs: Vec<Buf>,
    blocks: Vec<BlockActs>,
}

impl StageActs {
    fn rows(&self) -> usize {
        self.dims.cells(self.dims.conv.batch)
    }

    fn dw(&self) -> DwDims {
        DwDims {
            batch: self.dims.conv.batch,
            height: self.dims.grid.0,
            width: self.dims.grid.1,
            channels: self.dims.channels,
        }
    }
}

/// A ConvNeXt student's forward and backward at one input shape.
pub struct ConvNextGraph {
    cfg: ConvNextConfig,
    /// The outputs' sizes: one pooled token, then the stride-32 cells.
    dims: Dims,
    pixels: Buf,
    stages: Vec<StageActs>,
    /// token_pool of the last map, (B, 1 + N, C).
    pooled: Buf,
    out: Buf,
    out_stats: Stats,
    // Backward scratch, each as wide as the widest stage needs.
    dx: Buf,
    dtmp: Buf,
    dy: Buf,
    dh: Buf,
    da: Buf,
    dcols: Buf,
    dpool: Buf,
}

impl ConvNextGraph {
    /// Plans the buffers for `batch` images of `height x width` pixels.
    pub fn new(
        plan: &mut Plan,
        cfg: &ConvNextConfig,
        batch: usize,
        (height, width): (usize, usize),
        inter_layers: &[usize],
        recompute: bool,
    ) -> Result<ConvNextGraph> {
        if !inter_layers.is_empty() {
            return Err(DistillError::Config(
                "intermediate targets (--inter) pair ViT blocks: a ConvNeXt student has stages, not blocks; train it without --inter".into(),
            ));
        }
        if recompute {
            return Err(DistillError::Config(
                "--recompute recomputes ViT blocks; a ConvNeXt student keeps its activations (use a smaller --batch)".into(),
            ));
        }
        let stride = cfg.stride();
        if height < stride || width < stride {
            return Err(DistillError::Config(format!(
                "a {height}x{width} input is smaller than the ConvNeXt student's stride {stride}: use --size {stride} or more"
            )));
        }
        let shape = Shape {
            batch,
            height,
            width,
        };
        let sd = stage_dims(cfg, &shape);
        let pixels = plan.take("pixels", batch * cfg.num_channels * height * width);
        let mut prev_map = 0;
        let mut stages = Vec::with_capacity(sd.len());
        for (s, d) in sd.iter().enumerate() {
            let (rows, c) = (d.cells(batch), d.channels);
            let cols = plan.take("patch rows", rows * d.conv.patch_len());
            let pre_rows = if s == 0 { rows } else { prev_map };
            let pre_width = if s == 0 { c } else { d.conv.channels };
            let pre = plan.take("block activations", pre_rows * pre_width);
            let pre_stats = stats(plan, pre_rows);
            let depth = cfg.depths[s];
            let xs = (0..=depth)
                .map(|_| plan.take("residual stream", rows * c))
                .collect();
            let blocks = (0..depth)
                .map(|_| {
                    let mut t = |n| plan.take("block activations", n);
                    BlockActs {
                        t: t(rows * c),
                        ln: t(rows * c),
                        ln_stats: Stats(t(2 * rows)),
                        h: t(rows * 4 * c),
                        a: t(rows * 4 * c),
                        y: t(rows * c),
                    }
                })
                .collect();
            stages.push(StageActs {
                dims: *d,
                cols,
                pre,
                pre_stats,
                xs,
                blocks,
            });
            prev_map = rows;
        }
        let last = *sd.last().expect("a ConvNeXt has a stage");
        let (cells, c) = (last.grid.0 * last.grid.1, last.channels);
        let tokens = batch * (1 + cells);
        let pooled = plan.take("outputs", tokens * c);
        let out = plan.take("outputs", tokens * c);
        let out_stats = stats(plan, tokens);
        let widest = |f: &dyn Fn(&StageDims) -> usize| sd.iter().map(f).max().unwrap_or(0);
        let map = widest(&|d| d.cells(batch) * d.channels);
        let mut s = |n| plan.take("backward scratch", n);
        let scratch = (
            s(map),
            s(map),
            s(map),
            s(widest(&|d| d.cells(batch) * 4 * d.channels)),
            s(widest(&|d| d.cells(batch) * 4 * d.channels)),
            s(widest(&|d| d.cells(batch) * d.conv.patch_len())),
            s(tokens * c),
        );
        Ok(ConvNextGraph {
            cfg: cfg.clone(),
            dims: Dims {
                batch,
                channels: cfg.num_channels,
                height,
                width,
                patch: stride,
                grid_h: last.grid.0,
                grid_w: last.grid.1,
                prefix: 1,
                dim: c,
                heads: 0,
                hidden: 4 * c,
            },
            pixels,
            stages,
            pooled,
            out,
            out_stats,
            dx: scratch.0,
            dtmp: scratch.1,
            dy: scratch.2,
            dh: scratch.3,
            da: scratch.4,
            dcols: scratch.5,
            dpool: scratch.6,
        })
    }

    fn eps(&self) -> f32 {
        self.cfg.layer_norm_eps as f32
    }

    fn act(&self) -> Activation {
        self.cfg.act
    }

    /// Stage `s`'s input, xs[0], from the pixels (the stem) or the previous stage's map.
    fn stage_input_forward(&self, be: &dyn TrainBackend, p: ParamBufs, s: usize) -> Result<()> {
        let st = &self.stages[s];
        let (rows, c, conv) = (st.rows(), st.dims.channels, &st.dims.conv);
        let (w, b) = (
            p.c(Param::Down(s, DP::ConvWeight)),
            p.c(Param::Down(s, DP::ConvBias)),
        );
        let (nw, nb) = (
            p.c(Param::Down(s, DP::NormWeight)),
            p.c(Param::Down(s, DP::NormBias)),
        );
        let rko = (rows, conv.patch_len(), c);
        if s == 0 {
            be.patch_embed_forward_im2col(st.cols, self.pixels, conv)?;
            be.matmul_forward_train(st.pre, c, st.cols, w, Some(b), rko)?;
            let eps = self.eps();
            return Ok(be.layer_norm_forward(
                st.xs[0],
                st.pre_stats,
                st.pre,
                nw,
                nb,
                (rows, c),
                eps,
            )?);
        }
        let prev = &self.stages[s - 1];
        let (prev_rows, prev_c) = (prev.rows(), prev.dims.channels);
        let x = *prev.xs.last().expect("a stage's output");
        let rc = (prev_rows, prev_c);
        be.layer_norm_forward(st.pre, st.pre_stats, x, nw, nb, rc, self.eps())?;
        be.patch_embed_forward_im2col_nhwc(st.cols, st.pre, conv)?;
        Ok(be.matmul_forward_train(st.xs[0], c, st.cols, w, Some(b), rko)?)
    }

    /// Block `b` of stage `s`: xs[b + 1] = block(xs[b]), keeping what its backward needs.
    fn block_forward(&self, be: &dyn TrainBackend, p: ParamBufs, s: usize, b: usize) -> Result<()> {
        let st = &self.stages[s];
        let (rows, c) = (st.rows(), st.dims.channels);
        let (x, x_out, k) = (st.xs[b], st.xs[b + 1], &st.blocks[b]);
        let q = |bp| p.c(Param::Block(s, b, bp));
        be.dwconv_forward(k.t, x, q(BP::DwWeight), q(BP::DwBias), &st.dw())?;
        let (nw, nb) = (q(BP::NormWeight), q(BP::NormBias));
        be.layer_norm_forward(k.ln, k.ln_stats, k.t, nw, nb, (rows, c), self.eps())?;
        let (w1, b1) = (q(BP::Pw1Weight), Some(q(BP::Pw1Bias)));
        be.matmul_forward_train(k.h, 4 * c, k.ln, w1, b1, (rows, c, 4 * c))?;
        be.activation_forward(k.a, k.h, self.act())?;
        let (w2, b2) = (q(BP::Pw2Weight), Some(q(BP::Pw2Bias)));
        be.matmul_forward_train(k.y, c, k.a, w2, b2, (rows, 4 * c, c))?;
        be.copy(x_out, x)?;
        Ok(be.residual_forward(x_out, k.y, Some(q(BP::Gamma)), c)?)
    }

    /// Block `b` of stage `s` backward: dx holds d xs[b + 1] and becomes d xs[b].
    fn block_backward(
        &self,
        be: &dyn TrainBackend,
        p: ParamBufs,
        g: ParamBufs,
        (s, b): (usize, usize),
    ) -> Result<()> {
        let st = &self.stages[s];
        let (rows, c) = (st.rows(), st.dims.channels);
        let k = &st.blocks[b];
        let q = |bp| p.c(Param::Block(s, b, bp));
        let gq = |bp| g.c(Param::Block(s, b, bp));
        let map = |x: Buf| x.part(0, rows * c);
        let wide = |x: Buf| x.part(0, rows * 4 * c);
        let (dx, dy, dtmp) = (map(self.dx), map(self.dy), map(self.dtmp));
        let (dh, da) = (wide(self.dh), wide(self.da));
        be.residual_backward(dy, gq(BP::Gamma), dx, k.y, q(BP::Gamma), c)?;
        let (gw, gb) = (gq(BP::Pw2Weight), Some(gq(BP::Pw2Bias)));
        let w = q(BP::Pw2Weight);
        be.matmul_backward(Some((da, false)), gw, gb, dy, c, k.a, w, (rows, 4 * c, c))?;
        be.activation_backward(dh, da, k.h, self.act())?;
        let (gw, gb) = (gq(BP::Pw1Weight), Some(gq(BP::Pw1Bias)));
        let w = q(BP::Pw1Weight);
        be.matmul_backward(
            Some((dtmp, false)),
            gw,
            gb,
            dh,
            4 * c,
            k.ln,
            w,
            (rows, c, 4 * c),
        )?;
        let (gw, gb, w) = (gq(BP::NormWeight), gq(BP::NormBias), q(BP::NormWeight));
        be.layer_norm_backward(dy, gw, gb, dtmp, k.t, w, k.ln_stats, (rows, c))?;
        let (gw, gb, w) = (gq(BP::DwWeight), gq(BP::DwBias), q(BP::DwWeight));
        be.dwconv_backward(dtmp, gw, gb, dy, st.xs[b], w, &st.dw())?;
        Ok(be.residual_forward(dx, dtmp, None, c)?)
    }

    /// Stage `s`'s input backward: dx holds d xs[0]; for s > 0 it becomes the gradient of the
    /// previous stage's output.
    fn stage_input_backward(
        &self,
        be: &dyn TrainBackend,
        p: ParamBufs,
        g: ParamBufs,
        s: usize,
    ) -> Result<()> {
        let st = &self.stages[s];
        let (rows, c, conv) = (st.rows(), st.dims.channels, &st.dims.conv);
        let rko = (rows, conv.patch_len(), c);
        let (w, gw, gb) = (
            p.c(Param::Down(s, DP::ConvWeight)),
            g.c(Param::Down(s, DP::ConvWeight)),
            Some(g.c(Param::Down(s, DP::ConvBias))),
        );
        let (nw, gnw, gnb) = (
            p.c(Param::Down(s, DP::NormWeight)),
            g.c(Param::Down(s, DP::NormWeight)),
            g.c(Param::Down(s, DP::NormBias)),
        );
        let dx = self.dx.part(0, rows * c);
        if s == 0 {
            let dy = self.dy.part(0, rows * c);
            be.layer_norm_backward(dy, gnw, gnb, dx, st.pre, nw, st.pre_stats, (rows, c))?;
            return Ok(be.matmul_backward(None, gw, gb, dy, c, st.cols, w, rko)?);
        }
        let dcols = self.dcols.part(0, rows * conv.patch_len());
        be.matmul_backward(Some((dcols, false)), gw, gb, dx, c, st.cols, w, rko)?;
        let prev = &self.stages[s - 1];
        let (prev_rows, prev_c) = (prev.rows(), prev.dims.channels);
        let dpre = self.dtmp.part(0, prev_rows * prev_c);
        be.patch_embed_backward_im2col_nhwc(dpre, dcols, conv)?;
        let x = *prev.xs.last().expect("a stage's output");
        let dprev = self.dx.part(0, prev_rows * prev_c);
        let rc = (prev_rows, prev_c);
        Ok(be.layer_norm_backward(dprev, gnw, gnb, dpre, x, nw, st.pre_stats, rc)?)
    }

    /// (batch, cells, channels) of the last stage.
    fn pooled_shape(&self) -> (usize, usize, usize) {
        let d = &self.dims;
        (d.batch, d.patches(), d.dim)
    }
}

impl StudentGraph for ConvNextGraph {
    fn dims(&self) -> &Dims {
        &self.dims
    }

    fn pixels(&self) -> Buf {
        self.pixels
    }

    fn out(&self) -> Buf {
        self.out
    }

    fn inter(&self) -> &[Buf] {
        &[]
    }

    fn init(&self, _be: &dyn TrainBackend) -> Result<()> {
        Ok(())
    }

    fn forward(&self, be: &dyn TrainBackend, p: ParamBufs) -> Result<()> {
        for (s, st) in self.stages.iter().enumerate() {
            self.stage_input_forward(be, p, s)?;
            for b in 0..st.blocks.len() {
                self.block_forward(be, p, s, b)?;
            }
        }
        let last = *self
            .stages
            .last()
            .expect("a stage")
            .xs
            .last()
            .expect("a map");
        be.token_pool_forward(self.pooled, last, self.pooled_shape())?;
        let (nw, nb) = (p.c(Param::NormWeight), p.c(Param::NormBias));
        let rc = (self.dims.rows(), self.dims.dim);
        Ok(be.layer_norm_forward(
            self.out,
            self.out_stats,
            self.pooled,
            nw,
            nb,
            rc,
            self.eps(),
        )?)
    }

    fn backward(
        &self,
        be: &dyn TrainBackend,
        p: ParamBufs,
        g: ParamBufs,
        dout: Buf,
        _dinter: &[Buf],
    ) -> Result<()> {
        let (nw, gnw, gnb) = (
            p.c(Param::NormWeight),
            g.c(Param::NormWeight),
            g.c(Param::NormBias),
        );
        let rc = (self.dims.rows(), self.dims.dim);
        let (pooled, stats) = (self.pooled, self.out_stats);
        be.layer_norm_backward(self.dpool, gnw, gnb, dout, pooled, nw, stats, rc)?;
        let (b, n, c) = self.pooled_shape();
        be.token_pool_backward(self.dx.part(0, b * n * c), self.dpool, (b, n, c))?;
        for s in (0..self.stages.len()).rev() {
            for b in (0..self.stages[s].blocks.len()).rev() {
                self.block_backward(be, p, g, (s, b))?;
            }
            self.stage_input_backward(be, p, g, s)?;
        }
        Ok(())
    }

    fn cuda_widest(&self, teacher_dim: usize) -> Result<usize> {
        let widest = self.cfg.hidden_sizes.iter().max().copied().unwrap_or(0);
        Ok(teacher_dim.max(4 * widest))
    }
}
