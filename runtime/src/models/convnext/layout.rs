//! A DINOv3 ConvNeXt's tensors: their HF names and shapes, matched against a store.
//!
//! Hub names (`save_pretrained`): `stages.{s}.downsample_layers.{0,1}.*` (stage 0: the 4x4
//! stem conv, then its LayerNorm; later stages: LayerNorm, then the 2x2 conv),
//! `stages.{s}.layers.{b}.{depthwise_conv,layer_norm,pointwise_conv1,pointwise_conv2}.*`,
//! `stages.{s}.layers.{b}.gamma` and the final `layer_norm.*`. transformers 5 holds the
//! stages under `model.` in memory, so `state_dict()` dumps load too.

use std::collections::{HashMap, HashSet};

use super::config::ConvNextConfig;
use crate::config::ActivationScheme;
use crate::error::{Result, RuntimeError};
use crate::models::vit::layout::{Resolved, check_no_extra, check_tensor, int8_companions};
use crate::ops::dwconv::KERNEL;
use crate::weights::store::TensorStore;

/// A parameter of a stage's downsampling layer (the stem for stage 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DownParam {
    ConvWeight,
    ConvBias,
    NormWeight,
    NormBias,
}

/// A parameter of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockParam {
    DwWeight,
    DwBias,
    NormWeight,
    NormBias,
    Pw1Weight,
    Pw1Bias,
    Pw2Weight,
    Pw2Bias,
    Gamma,
}

/// A logical parameter of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Param {
    /// Stage `s`'s downsampling layer.
    Down(usize, DownParam),
    /// Block `b` of stage `s`.
    Block(usize, usize, BlockParam),
    NormWeight,
    NormBias,
}

/// Every parameter, in a stable order.
pub fn params(cfg: &ConvNextConfig) -> Vec<Param> {
    use BlockParam as B;
    use DownParam as D;
    let mut v = Vec::new();
    for (s, &depth) in cfg.depths.iter().enumerate() {
        for p in [D::ConvWeight, D::ConvBias, D::NormWeight, D::NormBias] {
            v.push(Param::Down(s, p));
        }
        for b in 0..depth {
            for p in [
                B::DwWeight,
                B::DwBias,
                B::NormWeight,
                B::NormBias,
                B::Pw1Weight,
                B::Pw1Bias,
                B::Pw2Weight,
                B::Pw2Bias,
                B::Gamma,
            ] {
                v.push(Param::Block(s, b, p));
            }
        }
    }
    v.push(Param::NormWeight);
    v.push(Param::NormBias);
    v
}

/// The HF shape of a parameter.
pub fn shape(cfg: &ConvNextConfig, p: Param) -> Vec<usize> {
    let c = |s: usize| cfg.hidden_sizes[s];
    match p {
        Param::Down(0, DownParam::ConvWeight) => vec![c(0), cfg.num_channels, 4, 4],
        Param::Down(s, DownParam::ConvWeight) => vec![c(s), c(s - 1), 2, 2],
        Param::Down(s, DownParam::ConvBias) => vec![c(s)],
        Param::Down(0, DownParam::NormWeight | DownParam::NormBias) => vec![c(0)],
        Param::Down(s, DownParam::NormWeight | DownParam::NormBias) => vec![c(s - 1)],
        Param::Block(s, _, bp) => match bp {
            BlockParam::DwWeight => vec![c(s), 1, KERNEL, KERNEL],
            BlockParam::Pw1Weight => vec![4 * c(s), c(s)],
            BlockParam::Pw1Bias => vec![4 * c(s)],
            BlockParam::Pw2Weight => vec![c(s), 4 * c(s)],
            _ => vec![c(s)],
        },
        Param::NormWeight | Param::NormBias => vec![cfg.hidden_size()],
    }
}

/// The hub (save_pretrained) name of a parameter.
pub fn hub_name(p: Param) -> String {
    match p {
        Param::Down(s, dp) => {
            // Stage 0 is conv then norm; later stages norm then conv.
            let conv_first = s == 0;
            let (i, what) = match dp {
                DownParam::ConvWeight => (!conv_first as usize, "weight"),
                DownParam::ConvBias => (!conv_first as usize, "bias"),
                DownParam::NormWeight => (conv_first as usize, "weight"),
                DownParam::NormBias => (conv_first as usize, "bias"),
            };
            format!("stages.{s}.downsample_layers.{i}.{what}")
        }
        Param::Block(s, b, bp) => {
            let n = match bp {
                BlockParam::DwWeight => "depthwise_conv.weight",
                BlockParam::DwBias => "depthwise_conv.bias",
                BlockParam::NormWeight => "layer_norm.weight",
                BlockParam::NormBias => "layer_norm.bias",
                BlockParam::Pw1Weight => "pointwise_conv1.weight",
                BlockParam::Pw1Bias => "pointwise_conv1.bias",
                BlockParam::Pw2Weight => "pointwise_conv2.weight",
                BlockParam::Pw2Bias => "pointwise_conv2.bias",
                BlockParam::Gamma => "gamma",
            };
            format!("stages.{s}.layers.{b}.{n}")
        }
        Param::NormWeight => "layer_norm.weight".into(),
        Param::NormBias => "layer_norm.bias".into(),
    }
}

/// Whether int8 files store this parameter quantised: the weights of the convolutions run
/// as matmuls after the stem (pointwise layers, 2x2 downsampling). The stem (raw pixels)
/// and the depthwise convolution stay in float.
pub fn is_quantized(p: Param) -> bool {
    matches!(
        p,
        Param::Block(_, _, BlockParam::Pw1Weight | BlockParam::Pw2Weight)
    ) || matches!(p, Param::Down(s, DownParam::ConvWeight) if s > 0)
}

/// A conv weight (O, I, k, k) in the channels-last order (O, k, k, I) the im2col rows read.
pub fn channels_last_conv<T: Copy + Default>(w: &[T], out: usize, inp: usize, k: usize) -> Vec<T> {
    let mut r = vec![T::default(); w.len()];
    for o in 0..out {
        for i in 0..inp {
            for t in 0..k * k {
                r[(o * k * k + t) * inp + i] = w[(o * inp + i) * k * k + t];
            }
        }
    }
    r
}

/// The inverse of [`channels_last_conv`]: (O, k, k, I) back to HF's (O, I, k, k).
pub fn hf_conv<T: Copy + Default>(w: &[T], out: usize, inp: usize, k: usize) -> Vec<T> {
    let mut r = vec![T::default(); w.len()];
    for o in 0..out {
        for i in 0..inp {
            for t in 0..k * k {
                r[(o * inp + i) * k * k + t] = w[(o * k * k + t) * inp + i];
            }
        }
    }
    r
}

/// The result of matching a store against a ConvNeXt.
#[derive(Clone, Debug, Default)]
pub struct ConvNextLayout {
    /// Prefix stripped from every name (e.g. `backbone.`).
    pub prefix: String,
    pub params: HashMap<Param, Resolved>,
}

/// The prefix in front of the stem's weight (`backbone.`, or empty).
fn detect_prefix(store: &TensorStore) -> String {
    const STEM: &str = "stages.0.downsample_layers.0.weight";
    let names = store.names();
    let found = names.iter().find_map(|n| n.strip_suffix(STEM));
    match found {
        // transformers 5's in-memory `model.stages`: the prefix is what precedes `model.`.
        Some(p) => p.strip_suffix("model.").unwrap_or(p).to_string(),
        None => String::new(),
    }
}

/// Matches the store against the architecture, naming every missing, extra or mis-shaped
/// tensor with its file (and, in int8 files, every missing or invalid scale).
pub fn resolve(cfg: &ConvNextConfig, store: &TensorStore) -> Result<ConvNextLayout> {
    let prefix = detect_prefix(store);
    let mut out = ConvNextLayout {
        prefix: prefix.clone(),
        params: HashMap::new(),
    };
    let mut used = HashSet::new();
    for p in params(cfg) {
        let expected = shape(cfg, p);
        let hub = format!("{prefix}{}", hub_name(p));
        let alias = format!("{prefix}model.{}", hub_name(p));
        let Some((key, t)) = [hub.clone(), alias]
            .into_iter()
            .find_map(|k| store.get(&k).map(|t| (k, t)))
        else {
            return Err(RuntimeError::MissingTensor {
                path: store.main_path().to_path_buf(),
                tensor: hub,
                expected,
            });
        };
        let quantized = cfg.quantization.as_ref();
        let int8 = quantized.is_some() && is_quantized(p);
        check_tensor(&t, None, &expected, int8, quantized.is_some())?;
        let (scale_key, input_scale_key) = match quantized.filter(|_| int8) {
            Some(q) => {
                let statics = q.activations == ActivationScheme::StaticPerTensor;
                int8_companions(store, &key, &t, statics, &mut used)?
            }
            None => (None, None),
        };
        used.insert(key.clone());
        out.params.insert(
            p,
            Resolved {
                key,
                rows: None,
                shape: expected,
                scale_key,
                input_scale_key,
            },
        );
    }
    check_no_extra(store, &used, &prefix, &cfg.describe())?;
    Ok(out)
}
