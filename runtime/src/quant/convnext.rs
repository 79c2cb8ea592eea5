//! A ConvNeXt's quantised files: f16 / bf16 tensors, or W8A8 with its pointwise and
//! downsampling convolutions int8 (per output channel) under HF's names and shapes.
//!
//! The 2x2 downsampling convs read channels-last im2col rows, so calibration sees their
//! input as (tap, channel) columns: their weights are held in that order here (their
//! LayerNorm's smoothing is per channel, shared by the four taps) and written back in HF's
//! (O, I, 2, 2) order. Scales are per output channel, so the reordering does not change them.

use std::collections::HashMap;

use safetensors::tensor::Dtype;

use super::sites::{self, Site};
use super::{CalibrationStats, QuantizeOptions, Quantized, half_bytes};
use crate::config::{ConvNextConfig, QuantConfig};
use crate::error::Result;
use crate::model::Model;
use crate::models::convnext::layout::{
    self as cl, BlockParam as BP, DownParam as DP, Param, channels_last_conv, hf_conv,
};
use crate::models::vit::layout::{HubTensor, ParamData, emit_param};
use crate::ops::matmul::fast::quantize_rows;

/// Every tensor in f16 or bf16.
pub(super) fn half(model: &Model, cfg: &ConvNextConfig, dtype: Dtype) -> Result<Quantized> {
    let tensors = cl::params(cfg)
        .into_iter()
        .map(|p| {
            let bytes = half_bytes(model.tensor_f32(p)?.into_iter(), dtype);
            Ok((cl::hub_name(p), cl::shape(cfg, p), dtype, bytes))
        })
        .collect::<Result<_>>()?;
    Ok(Quantized {
        config: cfg.clone().into(),
        tensors,
        sites: Vec::new(),
    })
}

/// The Linear input sites, named as the forward names its matmuls.
fn sites(cfg: &ConvNextConfig) -> Vec<Site<Param>> {
    let mut out = Vec::new();
    for (s, (&c, &depth)) in cfg.hidden_sizes.iter().zip(&cfg.depths).enumerate() {
        if s > 0 {
            let cin = cfg.hidden_sizes[s - 1];
            out.push(Site {
                name: format!("stages.{s}.downsample"),
                members: vec![Param::Down(s, DP::ConvWeight)],
                norm: Some((Param::Down(s, DP::NormWeight), Param::Down(s, DP::NormBias))),
                k: 4 * cin,
                norm_width: cin,
            });
        }
        for b in 0..depth {
            let p = |bp| Param::Block(s, b, bp);
            out.push(Site {
                name: format!("stages.{s}.layers.{b}.pw1"),
                members: vec![p(BP::Pw1Weight)],
                norm: Some((p(BP::NormWeight), p(BP::NormBias))),
                k: c,
                norm_width: c,
            });
            out.push(Site {
                name: format!("stages.{s}.layers.{b}.pw2"),
                members: vec![p(BP::Pw2Weight)],
                norm: None,
                k: 4 * c,
                norm_width: 4 * c,
            });
        }
    }
    out
}

/// The `quantization` section's modules for a ConvNeXt.
fn w8a8(opts: &QuantizeOptions) -> QuantConfig {
    let mut q = QuantConfig::w8a8(opts.activations);
    q.quantized_modules = vec![
        "stages.*.layers.*.pointwise_conv{1,2}".into(),
        "stages.{1,..}.downsample_layers.1 (the 2x2 stride-2 conv)".into(),
    ];
    q.float_ops = [
        "stem (stages.0.downsample_layers.0)",
        "depthwise_conv",
        "layer_norm",
        "gelu",
        "layer_scale",
        "residual",
        "pooling",
    ]
    .map(String::from)
    .to_vec();
    q
}

/// W8A8 from the float `model`.
pub(super) fn int8(
    model: &Model,
    cfg: &ConvNextConfig,
    opts: &QuantizeOptions,
    calib: Option<&CalibrationStats>,
) -> Result<Quantized> {
    let (o_of, cin_of) = (
        |s: usize| cfg.hidden_sizes[s],
        |s: usize| cfg.hidden_sizes[s - 1],
    );
    let mut values = HashMap::new();
    for p in cl::params(cfg) {
        let mut v = model.tensor_f32(p)?;
        if let Param::Down(s @ 1.., DP::ConvWeight) = p {
            v = channels_last_conv(&v, o_of(s), cin_of(s), 2);
        }
        values.insert(p, v);
    }
    let decisions = sites::decide(sites(cfg), &mut values, opts, calib)?;
    let mut config = cfg.clone();
    config.quantization = Some(sites::section(w8a8(opts), &decisions, calib));
    let mut tensors: Vec<HubTensor> = Vec::new();
    for p in cl::params(cfg) {
        let (key, shape, v) = (cl::hub_name(p), cl::shape(cfg, p), &values[&p]);
        if !cl::is_quantized(p) {
            emit_param(&mut tensors, key, shape, &ParamData::F32(v.clone()));
            continue;
        }
        let (q, scales) = quantize_rows(v, shape[0], v.len() / shape[0]);
        let q = match p {
            Param::Down(s @ 1.., DP::ConvWeight) => hf_conv(&q, o_of(s), cin_of(s), 2),
            _ => q,
        };
        let input_scale = decisions.input_scales.get(&p).copied();
        let data = ParamData::Int8 {
            q,
            scales,
            input_scale,
        };
        emit_param(&mut tensors, key, shape, &data);
    }
    Ok(Quantized {
        config: config.into(),
        tensors,
        sites: decisions.reports,
    })
}
