//! A ViT's quantised files: its Linear input sites, and f16 / bf16 / int8 tensors under
//! HF's names.

use std::collections::HashMap;

use safetensors::tensor::Dtype;

use super::sites::{self, Site};
use super::{CalibrationStats, QuantizeOptions, Quantized, convert_f32_bytes};
use crate::config::{MlpKind, QuantConfig, VitConfig};
use crate::error::{Result, RuntimeError};
use crate::models::vit::layout::{self, LayerParam as L, Param, ParamData};
use crate::ops::matmul::fast::quantize_rows;

/// The Linear input sites of every layer (named as the forward names its Linears).
fn sites(cfg: &VitConfig) -> Vec<Site<Param>> {
    let (d, hidden) = (cfg.hidden_size, cfg.intermediate_size);
    let mlp_in = match cfg.mlp {
        MlpKind::Plain(_) => vec![L::UpWeight],
        MlpKind::Gated(_) => vec![L::GateWeight, L::UpWeight],
    };
    let mut out = Vec::new();
    for l in 0..cfg.num_layers {
        let at = |ps: &[L]| ps.iter().map(|&p| Param::Layer(l, p)).collect::<Vec<_>>();
        let site = |name: &str, members: Vec<Param>, norm: Option<(L, L)>, k: usize| Site {
            name: format!("layer.{l}.{name}"),
            members,
            norm: norm.map(|(w, b)| (Param::Layer(l, w), Param::Layer(l, b))),
            k,
            norm_width: k,
        };
        out.push(site(
            "qkv",
            at(&[L::QWeight, L::KWeight, L::VWeight]),
            Some((L::Norm1Weight, L::Norm1Bias)),
            d,
        ));
        out.push(site("o_proj", at(&[L::OWeight]), None, d));
        out.push(site(
            "mlp_in",
            at(&mlp_in),
            Some((L::Norm2Weight, L::Norm2Bias)),
            d,
        ));
        out.push(site("mlp_out", at(&[L::DownWeight]), None, hidden));
    }
    out
}

/// Every tensor of `cfg` in f16 or bf16.
pub(super) fn half(
    cfg: &VitConfig,
    values: &HashMap<Param, Vec<f32>>,
    dtype: Dtype,
) -> Result<Quantized> {
    let tensors = layout::hub_tensors(cfg, |p| {
        values
            .get(&p)
            .cloned()
            .ok_or_else(|| RuntimeError::input(format!("{p:?}"), "missing"))
    })?
    .into_iter()
    .map(|(k, shp, _, bytes)| (k, shp, dtype, convert_f32_bytes(&bytes, dtype)))
    .collect();
    Ok(Quantized {
        config: cfg.clone().into(),
        tensors,
        sites: Vec::new(),
    })
}

/// W8A8: the block Linears' weights int8, per output channel.
pub(super) fn int8(
    cfg: &VitConfig,
    mut values: HashMap<Param, Vec<f32>>,
    opts: &QuantizeOptions,
    calib: Option<&CalibrationStats>,
) -> Result<Quantized> {
    let decisions = sites::decide(sites(cfg), &mut values, opts, calib)?;
    let mut config = cfg.clone();
    config.quantization = Some(sites::section(
        QuantConfig::w8a8(opts.activations),
        &decisions,
        calib,
    ));
    let tensors = layout::hub_tensors_with(&config, |p| {
        let v = values
            .get(&p)
            .cloned()
            .ok_or_else(|| RuntimeError::input(format!("{p:?}"), "missing"))?;
        if layout::is_quantized_linear(p) {
            let (o, k) = (layout::shape(&config, p)[0], layout::shape(&config, p)[1]);
            let (q, scales) = quantize_rows(&v, o, k);
            Ok(ParamData::Int8 {
                q,
                scales,
                input_scale: decisions.input_scales.get(&p).copied(),
            })
        } else {
            Ok(ParamData::F32(v))
        }
    })?;
    Ok(Quantized {
        config: config.into(),
        tensors,
        sites: decisions.reports,
    })
}
