//! Which tensors an architecture holds, their HF names and shapes.
//!
//! [`Param`] names each logical parameter once. [`hub_location`] gives the name HF writes
//! with `save_pretrained` (the hub layout, which transformers 4 and 5 both load), and
//! [`aliases`] the names transformers 5 uses in memory, so `state_dict()` dumps load too.
//! [`resolve`] matches a [`TensorStore`] against the architecture and reports every missing,
//! extra or mis-shaped tensor with its file.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use safetensors::tensor::Dtype;

use crate::config::{Family, MlpKind, Positions, VitConfig};
use crate::error::{Result, RuntimeError};
use crate::weights::store::{self, StoredTensor, TensorStore};

/// A parameter of one transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerParam {
    Norm1Weight,
    Norm1Bias,
    QWeight,
    QBias,
    KWeight,
    KBias,
    VWeight,
    VBias,
    OWeight,
    OBias,
    LayerScale1,
    Norm2Weight,
    Norm2Bias,
    GateWeight,
    GateBias,
    UpWeight,
    UpBias,
    DownWeight,
    DownBias,
    LayerScale2,
}

/// A logical parameter of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Param {
    PatchWeight,
    PatchBias,
    ClsToken,
    RegisterTokens,
    PosEmbed,
    /// Training-only; accepted and ignored at inference, written on export for HF.
    MaskToken,
    Layer(usize, LayerParam),
    NormWeight,
    NormBias,
}

/// Where a parameter lives in a file: a tensor name, optionally a range of its rows
/// (DINOv2's packed SwiGLU `weights_in` holds gate and up one after the other).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub key: String,
    pub rows: Option<Range<usize>>,
}

impl Location {
    fn whole(key: String) -> Self {
        Location { key, rows: None }
    }
}

/// Every parameter the architecture needs, in a stable order. The mask token is not listed
/// (it is optional); biases appear only when the config enables them.
pub fn params(cfg: &VitConfig) -> Vec<Param> {
    use LayerParam::*;
    let mut v = vec![Param::PatchWeight, Param::PatchBias, Param::ClsToken];
    // HF's DINOv3 always holds `register_tokens`, shape (1, 0, D) when there are none.
    if cfg.num_register_tokens > 0 || cfg.family == Family::Dinov3 {
        v.push(Param::RegisterTokens);
    }
    if matches!(cfg.positions, Positions::Learned { .. }) {
        v.push(Param::PosEmbed);
    }
    for l in 0..cfg.num_layers {
        let mut add = |p| v.push(Param::Layer(l, p));
        add(Norm1Weight);
        add(Norm1Bias);
        for (w, b, has_bias) in [
            (QWeight, QBias, cfg.query_bias),
            (KWeight, KBias, cfg.key_bias),
            (VWeight, VBias, cfg.value_bias),
            (OWeight, OBias, cfg.proj_bias),
        ] {
            add(w);
            if has_bias {
                add(b);
            }
        }
        add(LayerScale1);
        add(Norm2Weight);
        add(Norm2Bias);
        if matches!(cfg.mlp, MlpKind::Gated(_)) {
            add(GateWeight);
            if cfg.mlp_bias {
                add(GateBias);
            }
        }
        add(UpWeight);
        if cfg.mlp_bias {
            add(UpBias);
        }
        add(DownWeight);
        if cfg.mlp_bias {
            add(DownBias);
        }
        add(LayerScale2);
    }
    v.push(Param::NormWeight);
    v.push(Param::NormBias);
    v
}

/// The HF shape of a parameter.
pub fn shape(cfg: &VitConfig, p: Param) -> Vec<usize> {
    use LayerParam::*;
    let d = cfg.hidden_size;
    let i = cfg.intermediate_size;
    match p {
        Param::PatchWeight => vec![d, cfg.num_channels, cfg.patch_size, cfg.patch_size],
        Param::PatchBias | Param::NormWeight | Param::NormBias => vec![d],
        Param::ClsToken => vec![1, 1, d],
        Param::RegisterTokens => vec![1, cfg.num_register_tokens, d],
        Param::PosEmbed => match cfg.positions {
            Positions::Learned { grid, .. } => vec![1, 1 + grid * grid, d],
            Positions::Rope { .. } => vec![0],
        },
        Param::MaskToken => match cfg.family {
            Family::Dinov3 => vec![1, 1, d],
            Family::Dinov2 | Family::Dinov2Registers => vec![1, d],
        },
        Param::Layer(_, lp) => match lp {
            QWeight | KWeight | VWeight | OWeight => vec![d, d],
            GateWeight | UpWeight => vec![i, d],
            DownWeight => vec![d, i],
            GateBias | UpBias => vec![i],
            Norm1Weight | Norm1Bias | Norm2Weight | Norm2Bias | QBias | KBias | VBias | OBias
            | DownBias | LayerScale1 | LayerScale2 => vec![d],
        },
    }
}

/// The hub (save_pretrained) name of a parameter.
pub fn hub_location(cfg: &VitConfig, p: Param) -> Location {
    match cfg.family {
        Family::Dinov3 => Location::whole(dinov3_name(p, "layer")),
        Family::Dinov2 | Family::Dinov2Registers => dinov2_location(cfg, p),
    }
}

/// Other names of a parameter: transformers 5 in-memory names.
pub fn aliases(cfg: &VitConfig, p: Param) -> Vec<Location> {
    match (cfg.family, p) {
        (Family::Dinov3, Param::Layer(..)) => vec![Location::whole(dinov3_name(p, "model.layer"))],
        (Family::Dinov2 | Family::Dinov2Registers, Param::Layer(l, lp)) => {
            use LayerParam::*;
            let base = format!("encoder.layer.{l}");
            let name = match lp {
                QWeight => "attention.q_proj.weight",
                QBias => "attention.q_proj.bias",
                KWeight => "attention.k_proj.weight",
                KBias => "attention.k_proj.bias",
                VWeight => "attention.v_proj.weight",
                VBias => "attention.v_proj.bias",
                OWeight => "attention.o_proj.weight",
                OBias => "attention.o_proj.bias",
                GateWeight => "mlp.gate_proj.weight",
                GateBias => "mlp.gate_proj.bias",
                UpWeight if matches!(cfg.mlp, MlpKind::Gated(_)) => "mlp.up_proj.weight",
                UpBias if matches!(cfg.mlp, MlpKind::Gated(_)) => "mlp.up_proj.bias",
                DownWeight if matches!(cfg.mlp, MlpKind::Gated(_)) => "mlp.down_proj.weight",
                DownBias if matches!(cfg.mlp, MlpKind::Gated(_)) => "mlp.down_proj.bias",
                _ => return vec![],
            };
            vec![Location::whole(format!("{base}.{name}"))]
        }
        _ => vec![],
    }
}

fn dinov3_name(p: Param, layer_prefix: &str) -> String {
    use LayerParam::*;
    match p {
        Param::PatchWeight => "embeddings.patch_embeddings.weight".into(),
        Param::PatchBias => "embeddings.patch_embeddings.bias".into(),
        Param::ClsToken => "embeddings.cls_token".into(),
        Param::RegisterTokens => "embeddings.register_tokens".into(),
        Param::MaskToken => "embeddings.mask_token".into(),
        Param::PosEmbed => "embeddings.position_embeddings".into(),
        Param::NormWeight => "norm.weight".into(),
        Param::NormBias => "norm.bias".into(),
        Param::Layer(l, lp) => {
            let s = match lp {
                Norm1Weight => "norm1.weight",
                Norm1Bias => "norm1.bias",
                QWeight => "attention.q_proj.weight",
                QBias => "attention.q_proj.bias",
                KWeight => "attention.k_proj.weight",
                KBias => "attention.k_proj.bias",
                VWeight => "attention.v_proj.weight",
                VBias => "attention.v_proj.bias",
                OWeight => "attention.o_proj.weight",
                OBias => "attention.o_proj.bias",
                LayerScale1 => "layer_scale1.lambda1",
                Norm2Weight => "norm2.weight",
                Norm2Bias => "norm2.bias",
                GateWeight => "mlp.gate_proj.weight",
                GateBias => "mlp.gate_proj.bias",
                UpWeight => "mlp.up_proj.weight",
                UpBias => "mlp.up_proj.bias",
                DownWeight => "mlp.down_proj.weight",
                DownBias => "mlp.down_proj.bias",
                LayerScale2 => "layer_scale2.lambda1",
            };
            format!("{layer_prefix}.{l}.{s}")
        }
    }
}

fn dinov2_location(cfg: &VitConfig, p: Param) -> Location {
    use LayerParam::*;
    let gated = matches!(cfg.mlp, MlpKind::Gated(_));
    let i = cfg.intermediate_size;
    let name = match p {
        Param::PatchWeight => "embeddings.patch_embeddings.projection.weight".into(),
        Param::PatchBias => "embeddings.patch_embeddings.projection.bias".into(),
        Param::ClsToken => "embeddings.cls_token".into(),
        Param::RegisterTokens => "embeddings.register_tokens".into(),
        Param::MaskToken => "embeddings.mask_token".into(),
        Param::PosEmbed => "embeddings.position_embeddings".into(),
        Param::NormWeight => "layernorm.weight".into(),
        Param::NormBias => "layernorm.bias".into(),
        Param::Layer(l, lp) => {
            let base = format!("encoder.layer.{l}");
            // HF chunks weights_in into (x1, x2) and computes silu(x1) * x2: gate first.
            let packed = |suffix: &str, rows: Range<usize>| Location {
                key: format!("{base}.mlp.weights_in.{suffix}"),
                rows: Some(rows),
            };
            let s = match lp {
                Norm1Weight => "norm1.weight",
                Norm1Bias => "norm1.bias",
                QWeight => "attention.attention.query.weight",
                QBias => "attention.attention.query.bias",
                KWeight => "attention.attention.key.weight",
                KBias => "attention.attention.key.bias",
                VWeight => "attention.attention.value.weight",
                VBias => "attention.attention.value.bias",
                OWeight => "attention.output.dense.weight",
                OBias => "attention.output.dense.bias",
                LayerScale1 => "layer_scale1.lambda1",
                Norm2Weight => "norm2.weight",
                Norm2Bias => "norm2.bias",
                GateWeight => return packed("weight", 0..i),
                GateBias => return packed("bias", 0..i),
                UpWeight if gated => return packed("weight", i..2 * i),
                UpBias if gated => return packed("bias", i..2 * i),
                UpWeight => "mlp.fc1.weight",
                UpBias => "mlp.fc1.bias",
                DownWeight if gated => "mlp.weights_out.weight",
                DownBias if gated => "mlp.weights_out.bias",
                DownWeight => "mlp.fc2.weight",
                DownBias => "mlp.fc2.bias",
                LayerScale2 => "layer_scale2.lambda1",
            };
            format!("{base}.{s}")
        }
    };
    Location::whole(name)
}

/// A parameter found in a store.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub key: String,
    pub rows: Option<Range<usize>>,
    /// The HF shape of the parameter (of the row slice, for packed tensors).
    pub shape: Vec<usize>,
    /// int8 models: the per-output-channel scales of this weight (`<key>_scale`).
    pub scale_key: Option<String>,
    /// int8 models with static activations: the input scale (`<module>.input_scale`).
    pub input_scale_key: Option<String>,
}

/// Whether a parameter is the weight of a Linear that int8 models store quantised.
pub fn is_quantized_linear(p: Param) -> bool {
    use LayerParam::*;
    matches!(
        p,
        Param::Layer(
            _,
            QWeight | KWeight | VWeight | OWeight | GateWeight | UpWeight | DownWeight
        )
    )
}

/// `a.b.weight` -> `a.b.weight_scale`.
pub fn scale_key(weight_key: &str) -> String {
    format!("{weight_key}_scale")
}

/// `a.b.weight` -> `a.b.input_scale`.
pub fn input_scale_key(weight_key: &str) -> String {
    format!(
        "{}.input_scale",
        weight_key.strip_suffix(".weight").unwrap_or(weight_key)
    )
}

/// The result of matching a store against an architecture.
#[derive(Clone, Debug, Default)]
pub struct WeightLayout {
    /// Prefix stripped from every name (e.g. `backbone.`), empty for a bare backbone.
    pub prefix: String,
    pub params: HashMap<Param, Resolved>,
}

fn squeeze_leading(s: &[usize]) -> &[usize] {
    let first = s.iter().position(|&d| d != 1).unwrap_or(s.len());
    &s[first..]
}

fn same_shape(a: &[usize], b: &[usize]) -> bool {
    squeeze_leading(a) == squeeze_leading(b)
}

/// Dtypes the loader converts.
pub fn supported_dtype(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

/// Detects a common prefix such as `backbone.` or `dinov2.` from the CLS token's name.
fn detect_prefix(store: &TensorStore) -> String {
    store
        .names()
        .into_iter()
        .find_map(|n| n.strip_suffix("embeddings.cls_token").map(str::to_string))
        .unwrap_or_default()
}

/// Matches the store against the architecture.
pub fn resolve(cfg: &VitConfig, store: &TensorStore) -> Result<WeightLayout> {
    let prefix = detect_prefix(store);
    let mut out = WeightLayout {
        prefix: prefix.clone(),
        params: HashMap::new(),
    };
    let mut used: HashSet<String> = HashSet::new();
    let arch = cfg.describe();

    let mut wanted = params(cfg);
    wanted.push(Param::MaskToken);
    for p in wanted {
        let expected = shape(cfg, p);
        let mut candidates = vec![hub_location(cfg, p)];
        candidates.extend(aliases(cfg, p));
        let found = candidates.iter().find_map(|loc| {
            let key = format!("{prefix}{}", loc.key);
            store.get(&key).map(|t| (key, loc.rows.clone(), t))
        });
        let Some((key, rows, t)) = found else {
            if p == Param::MaskToken {
                continue;
            }
            return Err(RuntimeError::MissingTensor {
                path: store.main_path().to_path_buf(),
                tensor: format!("{prefix}{}", candidates[0].key),
                expected,
            });
        };
        let int8 = cfg.quantization.is_some() && is_quantized_linear(p);
        check_tensor(
            &t,
            rows.as_ref(),
            &expected,
            int8,
            cfg.quantization.is_some(),
        )?;
        let (scale, input_scale) = if int8 {
            let statics = cfg
                .quantization
                .as_ref()
                .is_some_and(|q| q.activations == crate::config::ActivationScheme::StaticPerTensor);
            int8_companions(store, &key, &t, statics, &mut used)?
        } else {
            (None, None)
        };
        used.insert(key.clone());
        out.params.insert(
            p,
            Resolved {
                key,
                rows,
                shape: expected,
                scale_key: scale,
                input_scale_key: input_scale,
            },
        );
    }

    check_no_extra(store, &used, &prefix, &arch)?;
    Ok(out)
}

/// The companions of int8 weight `key` (tensor `t`): its per-output-channel scales and, for
/// static activations, its input scale, each checked and marked used. Returns their keys.
pub(crate) fn int8_companions(
    store: &TensorStore,
    key: &str,
    t: &StoredTensor,
    statics: bool,
    used: &mut HashSet<String>,
) -> Result<(Option<String>, Option<String>)> {
    let sk = scale_key(key);
    let st = store.get(&sk).ok_or_else(|| RuntimeError::MissingTensor {
        path: t.path.to_path_buf(),
        tensor: sk.clone(),
        expected: vec![t.shape[0]],
    })?;
    if st.dtype != Dtype::F32 || st.shape != [t.shape[0]] {
        return Err(RuntimeError::ShapeMismatch {
            path: st.path.to_path_buf(),
            tensor: sk,
            expected: vec![t.shape[0]],
            found: st.shape.to_vec(),
        });
    }
    check_scales(&st)?;
    check_symmetric(t)?;
    used.insert(sk.clone());
    if !statics {
        return Ok((Some(sk), None));
    }
    let ik = input_scale_key(key);
    let it = store.get(&ik).ok_or_else(|| RuntimeError::MissingTensor {
        path: t.path.to_path_buf(),
        tensor: ik.clone(),
        expected: vec![1],
    })?;
    if it.dtype != Dtype::F32 || it.numel() != 1 {
        return Err(RuntimeError::ShapeMismatch {
            path: it.path.to_path_buf(),
            tensor: ik,
            expected: vec![1],
            found: it.shape.to_vec(),
        });
    }
    check_scales(&it)?;
    used.insert(ik.clone());
    Ok((Some(sk), Some(ik)))
}

/// Every tensor under `prefix` must be one the architecture `arch` uses (`used`), or one
/// exporters keep without information; a task head outside the prefix is not ours to load.
pub(crate) fn check_no_extra(
    store: &TensorStore,
    used: &HashSet<String>,
    prefix: &str,
    arch: &str,
) -> Result<()> {
    for name in store.names() {
        if used.contains(name) || ignorable(name) || !name.starts_with(prefix) {
            continue;
        }
        let t = store.get(name).expect("listed name");
        return Err(RuntimeError::UnexpectedTensor {
            path: t.path.to_path_buf(),
            tensor: name.to_string(),
            shape: t.shape.to_vec(),
            arch: arch.to_string(),
        });
    }
    Ok(())
}

/// Quantisation scales multiply int8 values back to floats: each must be finite and positive
/// (a NaN, infinite or zero scale would load and silently wreck the features).
fn check_scales(t: &StoredTensor) -> Result<()> {
    let v = t.to_f32()?;
    if let Some((i, s)) = v
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        return Err(RuntimeError::QuantizationMismatch {
            path: t.path.to_path_buf(),
            reason: format!(
                "tensor {:?}: scale {s} at index {i} is not finite and positive",
                t.name
            ),
        });
    }
    Ok(())
}

/// int8 weights are symmetric, in [-127, 127]: -128 has no negation in i8, which the AVX2
/// kernel without VNNI (`vpsignb`) relies on, and no exporter of this scheme writes it.
fn check_symmetric(t: &StoredTensor) -> Result<()> {
    // `contains` is a memchr; the index is only looked for on the error path.
    if t.bytes.contains(&0x80) {
        let i = t.bytes.iter().position(|&b| b == 0x80).unwrap_or(0);
        return Err(RuntimeError::QuantizationMismatch {
            path: t.path.to_path_buf(),
            reason: format!(
                "tensor {:?}: int8 weight -128 at index {i}; weights must lie in [-127, 127]",
                t.name
            ),
        });
    }
    Ok(())
}

/// Buffers some exporters keep that carry no information for inference.
fn ignorable(name: &str) -> bool {
    name.ends_with("rope_embeddings.inv_freq") || name.ends_with("rope_embed.periods")
}

pub(crate) fn check_tensor(
    t: &StoredTensor,
    rows: Option<&Range<usize>>,
    expected: &[usize],
    int8: bool,
    quantized_model: bool,
) -> Result<()> {
    if int8 && t.dtype != Dtype::I8 {
        return Err(RuntimeError::QuantizationMismatch {
            path: t.path.to_path_buf(),
            reason: format!(
                "config.json declares an int8 model but tensor {:?} is {:?}, not I8",
                t.name, t.dtype
            ),
        });
    }
    if !int8 && t.dtype == Dtype::I8 {
        let why = if quantized_model {
            "a dinoedge int8 model stores only its matmul weights as I8"
        } else {
            "config.json has no quantization section"
        };
        return Err(RuntimeError::QuantizationMismatch {
            path: t.path.to_path_buf(),
            reason: format!("tensor {:?} is I8 but {why}", t.name),
        });
    }
    if !int8 && !supported_dtype(t.dtype) {
        return Err(RuntimeError::UnsupportedDtype {
            path: t.path.to_path_buf(),
            tensor: t.name.to_string(),
            dtype: format!("{:?}", t.dtype),
            extra: ", and I8 in dinoedge int8 models",
        });
    }
    let ok = match rows {
        // A packed tensor holds the slice's rows among others: [rows_total, cols].
        Some(r) => {
            t.shape.len() == expected.len() && t.shape[0] >= r.end && t.shape[1..] == expected[1..]
        }
        None => same_shape(t.shape, expected),
    };
    if !ok {
        let expected = match rows {
            Some(r) => {
                let mut e = expected.to_vec();
                e[0] = r.end.max(2 * (r.end - r.start));
                e
            }
            None => expected.to_vec(),
        };
        return Err(RuntimeError::ShapeMismatch {
            path: t.path.to_path_buf(),
            tensor: t.name.to_string(),
            expected,
            found: t.shape.to_vec(),
        });
    }
    Ok(())
}

/// One tensor in the hub layout, ready for [`crate::weights::store::write_safetensors`].
pub type HubTensor = (String, Vec<usize>, Dtype, Vec<u8>);

/// The stored form of one parameter, for [`hub_tensors_with`].
pub enum ParamData {
    F32(Vec<f32>),
    /// A quantised Linear weight: `(out, in)` int8, per-row scales, optional input scale.
    Int8 {
        q: Vec<i8>,
        scales: Vec<f32>,
        input_scale: Option<f32>,
    },
}

/// Builds the hub-layout tensors of a model from per-parameter f32 values (packing DINOv2's
/// SwiGLU `weights_in`). The mask token is written as zeros when `get` has none.
pub fn hub_tensors(
    cfg: &VitConfig,
    mut get: impl FnMut(Param) -> Result<Vec<f32>>,
) -> Result<Vec<HubTensor>> {
    hub_tensors_with(cfg, |p| get(p).map(ParamData::F32))
}

fn i8_entry(name: String, shape: Vec<usize>, q: &[i8]) -> HubTensor {
    (name, shape, Dtype::I8, q.iter().map(|&v| v as u8).collect())
}

/// One parameter's hub tensors: f32, or I8 with its `_scale` (and `input_scale`).
pub fn emit_param(out: &mut Vec<HubTensor>, key: String, shp: Vec<usize>, data: &ParamData) {
    match data {
        ParamData::F32(v) => out.push(store::f32_entry(key, shp, v)),
        ParamData::Int8 {
            q,
            scales,
            input_scale,
        } => {
            out.push(store::f32_entry(scale_key(&key), vec![shp[0]], scales));
            if let Some(s) = input_scale {
                out.push(store::f32_entry(input_scale_key(&key), vec![], &[*s]));
            }
            out.push(i8_entry(key, shp, q));
        }
    }
}

/// As [`hub_tensors`], with int8 Linear weights written as I8 plus their `_scale` (and
/// `input_scale`) tensors.
pub fn hub_tensors_with(
    cfg: &VitConfig,
    mut get: impl FnMut(Param) -> Result<ParamData>,
) -> Result<Vec<HubTensor>> {
    // Packed tensor name -> its parts: (rows, data, shape of the part).
    type Part = (Range<usize>, ParamData, Vec<usize>);
    let mut packed: HashMap<String, Vec<Part>> = HashMap::new();
    let mut out = Vec::new();
    let mut all = params(cfg);
    all.push(Param::MaskToken);
    for p in all {
        let shp = shape(cfg, p);
        let n: usize = shp.iter().product();
        let data = match (p, get(p)) {
            (Param::MaskToken, Err(_)) => ParamData::F32(vec![0.0; n]),
            (_, r) => r?,
        };
        let len = match &data {
            ParamData::F32(v) => v.len(),
            ParamData::Int8 { q, .. } => q.len(),
        };
        if len != n {
            return Err(RuntimeError::input(
                format!("{p:?}"),
                format!("has {len} values, shape {shp:?} needs {n}"),
            ));
        }
        let loc = hub_location(cfg, p);
        match loc.rows {
            Some(rows) => packed.entry(loc.key).or_default().push((rows, data, shp)),
            None => emit_param(&mut out, loc.key, shp, &data),
        }
    }
    for (key, mut parts) in packed {
        parts.sort_by_key(|(r, _, _)| r.start);
        let rows: usize = parts.iter().map(|(r, _, _)| r.len()).sum();
        let mut shp = parts[0].2.clone();
        shp[0] = rows;
        let merged = match &parts[0].1 {
            ParamData::F32(_) => ParamData::F32(
                parts
                    .iter()
                    .flat_map(|(_, d, _)| {
                        if let ParamData::F32(v) = d {
                            v.clone()
                        } else {
                            Vec::new()
                        }
                    })
                    .collect(),
            ),
            ParamData::Int8 { input_scale, .. } => {
                let (mut q, mut scales) = (Vec::new(), Vec::new());
                for (_, d, _) in &parts {
                    if let ParamData::Int8 {
                        q: pq, scales: ps, ..
                    } = d
                    {
                        q.extend_from_slice(pq);
                        scales.extend_from_slice(ps);
                    }
                }
                ParamData::Int8 {
                    q,
                    scales,
                    input_scale: *input_scale,
                }
            }
        };
        emit_param(&mut out, key, shp, &merged);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
