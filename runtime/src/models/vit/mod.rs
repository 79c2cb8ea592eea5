//! The DINOv3 / DINOv2 ViT: [`config`] (what `config.json` says), [`layout`] (where each
//! parameter lives in HF files) and [`forward`] (the model definition).

pub mod config;
pub mod forward;
pub mod layout;

pub use config::VitConfig;

use crate::config::ModelConfig;
use crate::dispatch::{Backend, Op};
use crate::error::{Result, RuntimeError};
use crate::features::{Features, LayerFeatures, split_tokens_into};
use crate::limits::InputLimits;
use crate::model::Model;
use crate::models::Architecture;
use crate::ops::Dims;
use forward::{Plan, PreparedModel};

/// The ViT as an [`Architecture`].
pub struct Vit;

impl Architecture for Vit {
    type Config = VitConfig;
    type Prepared<B: Backend> = PreparedModel<B>;
    type Plan<B: Backend> = Plan<B>;
    type Shape = Dims;

    fn config(cfg: &ModelConfig) -> Result<&VitConfig> {
        cfg.vit_for("the ViT forward")
    }

    fn ops_used(model: &Model) -> Result<Vec<Op>> {
        Ok(forward::ops_used(Self::config(model.config())?))
    }

    fn buffer_table(cfg: &VitConfig, shape: &Dims, captures: usize) -> Vec<(&'static str, usize)> {
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
    ) -> Result<Dims> {
        let cfg = &m.config;
        if height < cfg.patch_size || width < cfg.patch_size {
            return Err(RuntimeError::ImageTooSmall {
                height,
                width,
                patch: cfg.patch_size,
            });
        }
        let grid = cfg.grid(height, width);
        limits.check_tokens("pixel_values", cfg.num_tokens(height, width), grid)?;
        Ok(forward::dims(cfg, batch, height, width))
    }

    fn plan<B: Backend>(
        backend: &B,
        m: &PreparedModel<B>,
        shape: Dims,
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
        let d = plan.dims;
        let rows = d.rows() * d.dim;
        let (grid, regs) = ((d.grid_h, d.grid_w), m.config.num_register_tokens);
        let outputs = 1 + plan.captured.len();
        hosts.resize_with(outputs, Vec::new);
        hosts.iter_mut().for_each(|h| h.resize(rows, 0.0));
        // Every output in one read (one mapped copy on GPU backends); without captured
        // layers (video), on the stack.
        if let [h] = hosts.as_mut_slice() {
            backend.read_many(&mut [(&plan.out, h.as_mut_slice())])?;
        } else {
            let mut reads: Vec<(&B::Buffer, &mut [f32])> = std::iter::once(&plan.out)
                .chain(plan.captured.iter())
                .zip(hosts.iter_mut())
                .map(|(b, h)| (b, h.as_mut_slice()))
                .collect();
            backend.read_many(&mut reads)?;
        }
        let split = |layer: usize, h: &[f32], o: &mut LayerFeatures| {
            split_tokens_into(layer, h, d.batch, regs, grid, d.dim, o)
        };
        out.grid = grid;
        split(m.config.num_layers - 1, &hosts[0], &mut out.last);
        out.intermediate
            .resize_with(plan.capture.len(), LayerFeatures::empty);
        for ((&l, h), o) in plan
            .capture
            .iter()
            .zip(&hosts[1..])
            .zip(&mut out.intermediate)
        {
            split(l, h, o);
        }
        Ok(())
    }
}
