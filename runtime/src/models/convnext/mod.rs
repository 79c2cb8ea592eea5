//! The DINOv3 ConvNeXt: [`config`] (`DINOv3ConvNextConfig`), [`layout`] (its tensors in HF
//! files) and [`forward`] (the model definition, channels-last).
//!
//! Outputs as HF's `DINOv3ConvNextModel`: `last_hidden_state` is `[pooled, cells]` after the
//! final norm, so the pooled token is [`Features`]' `cls`, the stride-32 cells its
//! `patches`, and there are no registers. `--layers` names stages (0 to 3): each captured
//! stage is its raw output (HF `hidden_states[s + 1]`, stride 4 / 8 / 16 / 32) as `patches`,
//! with its spatial mean as `cls`.

pub mod config;
pub mod forward;
pub mod layout;

pub use config::ConvNextConfig;

use crate::config::ModelConfig;
use crate::dispatch::{Backend, Op};
use crate::error::{Result, RuntimeError};
use crate::features::{Features, LayerFeatures, split_tokens_into};
use crate::limits::InputLimits;
use crate::model::Model;
use crate::models::Architecture;
use forward::{Plan, PreparedModel, Shape};

/// The ConvNeXt as an [`Architecture`].
pub struct ConvNext;

impl Architecture for ConvNext {
    type Config = ConvNextConfig;
    type Prepared<B: Backend> = PreparedModel<B>;
    type Plan<B: Backend> = Plan<B>;
    type Shape = Shape;

    fn config(cfg: &ModelConfig) -> Result<&ConvNextConfig> {
        match cfg {
            ModelConfig::ConvNext(c) => Ok(c),
            other => Err(RuntimeError::WrongArchitecture {
                what: "the ConvNeXt forward".into(),
                needs: "a ConvNeXt",
                model: other.describe(),
            }),
        }
    }

    fn ops_used(_model: &Model) -> Result<Vec<Op>> {
        Ok(forward::ops_used())
    }

    fn buffer_table(
        cfg: &ConvNextConfig,
        shape: &Shape,
        captures: usize,
    ) -> Vec<(&'static str, usize)> {
        forward::buffer_table(cfg, shape, captures)
    }

    fn prepare<B: Backend>(backend: &B, model: &Model) -> Result<PreparedModel<B>> {
        PreparedModel::new(backend, model)
    }

    fn shape<B: Backend>(
        m: &PreparedModel<B>,
        batch: usize,
        height: usize,
        width: usize,
        limits: &InputLimits,
    ) -> Result<Shape> {
        let cfg = &m.config;
        // Every stage must keep at least one cell: 4 px per stem cell, halved 3 times.
        let stride = cfg.stride();
        if height < stride || width < stride {
            return Err(RuntimeError::ImageTooSmall {
                height,
                width,
                patch: stride,
            });
        }
        // Memory follows the early, fine stages, so the limit counts cells at stride 16 (a
        // ViT/16's tokens for the same image), not the few stride-32 outputs.
        let fine = (height / 16, width / 16);
        limits.check_tokens("pixel_values", fine.0.saturating_mul(fine.1), fine)?;
        Ok(Shape {
            batch,
            height,
            width,
        })
    }

    fn plan<B: Backend>(
        backend: &B,
        m: &PreparedModel<B>,
        shape: Shape,
        capture: &[usize],
    ) -> Result<Plan<B>> {
        Plan::new(backend, m, shape, capture)
    }

    fn pixels<B: Backend>(plan: &mut Plan<B>) -> &mut B::Buffer {
        &mut plan.pixels
    }

    fn forward<B: Backend>(backend: &B, m: &PreparedModel<B>, plan: &mut Plan<B>) -> Result<()> {
        forward::forward(backend, m, plan)
    }

    fn outputs_into<B: Backend>(
        backend: &B,
        m: &PreparedModel<B>,
        plan: &Plan<B>,
        hosts: &mut Vec<Vec<f32>>,
        out: &mut Features,
    ) -> Result<()> {
        let b = plan.shape.batch;
        let pooled = |s: usize| {
            let sd = &plan.stages[s];
            (sd.cells(b) + b) * sd.channels
        };
        let last = m.config.num_stages() - 1;
        // Sized in place and, without captured stages (video), read without a list: a
        // warmed-up session allocates nothing per frame.
        hosts.resize_with(1 + plan.capture.len(), Vec::new);
        let stages = std::iter::once(last).chain(plan.capture.iter().copied());
        for (h, s) in hosts.iter_mut().zip(stages) {
            h.resize(pooled(s), 0.0);
        }
        if let [h] = hosts.as_mut_slice() {
            backend.read_many(&mut [(&plan.out, h.as_mut_slice())])?;
        } else {
            let mut reads: Vec<(&B::Buffer, &mut [f32])> = std::iter::once(&plan.out)
                .chain(plan.captured.iter())
                .zip(hosts.iter_mut())
                .map(|(buf, h)| (buf, h.as_mut_slice()))
                .collect();
            backend.read_many(&mut reads)?;
        }
        let split = |s: usize, h: &[f32], o: &mut LayerFeatures| {
            let sd = &plan.stages[s];
            split_tokens_into(s, h, b, 0, sd.grid, sd.channels, o)
        };
        out.grid = plan.stages[last].grid;
        split(last, &hosts[0], &mut out.last);
        out.intermediate
            .resize_with(plan.capture.len(), LayerFeatures::empty);
        for ((&s, h), o) in plan
            .capture
            .iter()
            .zip(&hosts[1..])
            .zip(&mut out.intermediate)
        {
            split(s, h, o);
        }
        Ok(())
    }
}
