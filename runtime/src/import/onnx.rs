//! Import of HF-exported DINOv2 / DINOv3 backbones from ONNX into the HF safetensors layout
//! (a DINOv3 ConvNeXt is recognised here and read by `onnx_convnext.rs`).
//!
//! The protobuf is decoded by prost (`onnx_pb.rs`), tensors by `onnx_tensor.rs`. Named initializers keep their HF names (under a
//! prefix such as `backbone.`); Linear weights that the exporter folded into anonymous
//! `MatMul` initializers (stored (in, out)) are found through the node that uses them,
//! whose name carries the module path, e.g.
//! `/backbone/encoder/layer.0/attention/attention/query/MatMul`. DINOv2's learned position
//! table, when split into anonymous CLS and patch parts by the exporter, is found through
//! the embedding subgraph. The rest of the graph (a task head) is ignored.
//!
//! The config is inferred from the weights (dims, layers, MLP width), the attention
//! reshape (heads), the LayerNorm epsilon, the MLP's activation ops and, for DINOv3, the
//! RoPE frequencies.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use prost::Message;

use super::onnx_pb::{GraphProto, ModelProto, NodeProto, TensorProto};
use super::onnx_tensor;

use crate::config::{Activation, Family, MlpKind, Positions, VitConfig};
use crate::error::{Result, RuntimeError};
use crate::models::vit::layout::{self, LayerParam as L, Param};

/// A backbone read out of an ONNX graph.
#[derive(Debug)]
pub struct OnnxImport {
    pub config: VitConfig,
    /// Every parameter of the architecture, f32, HF shapes.
    pub tensors: HashMap<Param, Vec<f32>>,
    /// Name prefix of the backbone in the graph (e.g. `backbone.`).
    pub prefix: String,
    /// How each inferred setting was found, for the user.
    pub notes: Vec<String>,
}

pub(super) fn err(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::OnnxImport {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(super) struct Graph<'a> {
    pub(super) path: &'a Path,
    pub(super) g: &'a GraphProto,
    pub(super) inits: HashMap<&'a str, &'a TensorProto>,
    consts: HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Graph<'a> {
    fn new(path: &'a Path, g: &'a GraphProto) -> Self {
        let inits = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut consts = HashMap::new();
        for n in g.node.iter().filter(|n| n.op_type == "Constant") {
            if let (Some(out), Some(t)) = (
                n.output.first(),
                n.attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref()),
            ) {
                consts.insert(out.as_str(), t);
            }
        }
        Graph {
            path,
            g,
            inits,
            consts,
        }
    }

    pub(super) fn f32s(&self, t: &TensorProto) -> Result<(Vec<usize>, Vec<f32>)> {
        onnx_tensor::f32s(self.path, t)
    }

    fn ints(&self, t: &TensorProto) -> Option<Vec<i64>> {
        onnx_tensor::i64s(self.path, t).ok()
    }

    pub(super) fn init_f32(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        match self.inits.get(name) {
            Some(t) => Ok(Some(self.f32s(t)?)),
            None => Ok(None),
        }
    }

    /// A node input that is a constant: initializer or Constant node output.
    fn constant(&self, name: &str) -> Option<&'a TensorProto> {
        self.inits
            .get(name)
            .or_else(|| self.consts.get(name))
            .copied()
    }

    fn nodes_under<'s>(&'s self, path: &'s str) -> impl Iterator<Item = &'a NodeProto> + 's {
        self.g.node.iter().filter(move |n| n.name.contains(path))
    }
}

/// A layer index from a name, below the config limit (`None` otherwise).
fn layer_index(digits: &str) -> Option<usize> {
    digits
        .parse::<usize>()
        .ok()
        .filter(|&l| l < crate::config::LIMITS.layers)
}

/// `encoder.layer.3.norm1.weight` -> 3.
fn layer_of_name(name: &str) -> Option<usize> {
    let at = if name.starts_with("layer.") {
        0
    } else {
        name.find(".layer.")? + 1
    };
    let rest = &name[at + "layer.".len()..];
    layer_index(&rest[..rest.find('.')?])
}

/// `.../layer.12/attention/q_proj/MatMul` -> (12, "attention/q_proj").
fn linear_site(node_name: &str) -> Option<(usize, String)> {
    let at = node_name.find("layer.")?;
    let rest = &node_name[at + "layer.".len()..];
    let slash = rest.find('/')?;
    let layer = layer_index(&rest[..slash])?;
    let module = rest[slash + 1..].rsplit_once('/')?.0.to_string();
    Some((layer, module))
}

/// Which (weight, bias) parameters a module path of an HF layer holds.
fn module_params(family: Family, module: &str) -> Option<(L, L)> {
    let m = match (family, module) {
        (Family::Dinov3, "attention/q_proj")
        | (_, "attention/attention/query")
        | (_, "attention/q_proj") => (L::QWeight, L::QBias),
        (Family::Dinov3, "attention/k_proj")
        | (_, "attention/attention/key")
        | (_, "attention/k_proj") => (L::KWeight, L::KBias),
        (Family::Dinov3, "attention/v_proj")
        | (_, "attention/attention/value")
        | (_, "attention/v_proj") => (L::VWeight, L::VBias),
        (_, "attention/o_proj") | (_, "attention/output/dense") => (L::OWeight, L::OBias),
        (_, "mlp/fc1") | (_, "mlp/up_proj") => (L::UpWeight, L::UpBias),
        (_, "mlp/fc2") | (_, "mlp/down_proj") | (_, "mlp/weights_out") => {
            (L::DownWeight, L::DownBias)
        }
        (_, "mlp/gate_proj") => (L::GateWeight, L::GateBias),
        // weights_in packs gate and up; split after reading.
        (_, "mlp/weights_in") => (L::GateWeight, L::GateBias),
        _ => return None,
    };
    Some(m)
}

/// What an ONNX file held: a ViT, or a DINOv3 ConvNeXt.
#[derive(Debug)]
pub enum Import {
    Vit(OnnxImport),
    ConvNext(super::onnx_convnext::ConvNextImport),
}

impl Import {
    /// How each inferred setting was found, for the user.
    pub fn notes(&self) -> &[String] {
        match self {
            Import::Vit(i) => &i.notes,
            Import::ConvNext(i) => &i.notes,
        }
    }
}

/// Reads an HF-exported DINOv2 / DINOv3 ViT or DINOv3 ConvNeXt backbone from an ONNX file.
pub fn import_model(path: &Path) -> Result<Import> {
    with_graph(path, |graph| {
        if super::onnx_convnext::is_convnext(graph) {
            super::onnx_convnext::import(graph).map(Import::ConvNext)
        } else {
            import_vit(graph).map(Import::Vit)
        }
    })
}

/// Reads an HF-exported DINOv2 / DINOv3 ViT backbone from an ONNX file.
pub fn import_onnx(path: &Path) -> Result<OnnxImport> {
    with_graph(path, import_vit)
}

fn with_graph<T>(path: &Path, f: impl FnOnce(&Graph) -> Result<T>) -> Result<T> {
    let proto = read_model(path)?;
    let g = proto
        .graph
        .as_ref()
        .ok_or_else(|| err(path, "the model has no graph"))?;
    f(&Graph::new(path, g))
}

/// Protobuf's own limit on a message; larger models keep their weights as external data.
const MAX_MODEL_BYTES: u64 = 2 << 30;

fn read_model(path: &Path) -> Result<ModelProto> {
    let unreadable = |why: String| err(path, format!("not a readable ONNX model: {why}"));
    let meta = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(unreadable("not a regular file".into()));
    }
    let too_big = |len: u64| {
        unreadable(format!(
            "{len} bytes, above protobuf's limit of {MAX_MODEL_BYTES} (keep the weights as external data)"
        ))
    };
    if meta.len() > MAX_MODEL_BYTES {
        return Err(too_big(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows after the check.
    file.take(MAX_MODEL_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_MODEL_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    ModelProto::decode(bytes.as_slice()).map_err(|e| unreadable(e.to_string()))
}

fn import_vit(graph: &Graph) -> Result<OnnxImport> {
    let path = graph.path;
    let mut notes = Vec::new();
    let b = backbone(graph)?;
    notes.push(format!(
        "backbone prefix {:?}, family {}",
        b.prefix,
        b.family.model_type()
    ));
    let mut linears = linears(graph, &b)?;
    let (config, mut tensors) = infer_config(graph, &b, &linears, &mut notes)?;
    config
        .validate()
        .map_err(|r| err(path, format!("inferred config is invalid: {r}")))?;
    gather_params(graph, &config, &b.prefix, &mut linears, &mut tensors)?;
    Ok(OnnxImport {
        config,
        tensors,
        prefix: b.prefix,
        notes,
    })
}

/// Where the backbone sits in the graph and what it is.
struct Backbone {
    /// Initializer name prefix (`backbone.`), and the node name prefix (`/backbone`).
    prefix: String,
    node_prefix: String,
    family: Family,
    /// The patch embedding: width, input channels, patch size.
    dim: usize,
    channels: usize,
    patch: usize,
}

/// Phase 1: the prefix and family from the embedding initializers, and the patch geometry.
fn backbone(graph: &Graph) -> Result<Backbone> {
    let path = graph.path;
    let prefix = graph
        .g
        .initializer
        .iter()
        .find_map(|t| t.name.strip_suffix("embeddings.cls_token"))
        .ok_or_else(|| err(path, "no initializer named *embeddings.cls_token: not an HF DINOv2/DINOv3 backbone export"))?
        .to_string();
    let has = |n: &str| graph.inits.contains_key(format!("{prefix}{n}").as_str());
    let family = if has("embeddings.patch_embeddings.projection.weight") {
        if has("embeddings.register_tokens") {
            Family::Dinov2Registers
        } else {
            Family::Dinov2
        }
    } else if has("embeddings.patch_embeddings.weight") {
        Family::Dinov3
    } else {
        return Err(err(
            path,
            format!("no {prefix}embeddings.patch_embeddings weight: unknown backbone layout"),
        ));
    };
    let node_prefix = format!("/{}", prefix.replace('.', "/"));
    let projection = if family == Family::Dinov3 {
        ""
    } else {
        "projection."
    };
    let (patch_shape, _) = graph
        .init_f32(&format!(
            "{prefix}embeddings.patch_embeddings.{projection}weight"
        ))?
        .expect("checked above");
    if patch_shape.len() != 4 || patch_shape[2] != patch_shape[3] || patch_shape.contains(&0) {
        return Err(err(
            path,
            format!("patch embedding weight has shape {patch_shape:?}, expected (D, C, P, P)"),
        ));
    }
    Ok(Backbone {
        prefix,
        node_prefix,
        family,
        dim: patch_shape[0],
        channels: patch_shape[1],
        patch: patch_shape[2],
    })
}

/// The blocks' Linear weights found as MatMul / Gemm operands, in HF's (out, in) layout.
struct Linears {
    weights: BTreeMap<(usize, L), Vec<f32>>,
    shapes: BTreeMap<(usize, L), (usize, usize)>,
    num_layers: usize,
}

/// Phase 2: the Linear weights of anonymous MatMul / Gemm operands, and the number of
/// blocks (from those nodes and from named initializers).
fn linears(graph: &Graph, b: &Backbone) -> Result<Linears> {
    let path = graph.path;
    let mut weights: BTreeMap<(usize, L), Vec<f32>> = BTreeMap::new();
    let mut shapes: BTreeMap<(usize, L), (usize, usize)> = BTreeMap::new();
    let mut num_layers = 0usize;
    for node in graph
        .g
        .node
        .iter()
        .filter(|n| n.op_type == "MatMul" || n.op_type == "Gemm")
    {
        if !node.name.starts_with(&b.node_prefix) {
            continue;
        }
        let Some((layer, module)) = linear_site(&node.name) else {
            continue;
        };
        let Some((wp, _)) = module_params(b.family, &module) else {
            continue;
        };
        let Some(t) = node.input.get(1).and_then(|i| graph.inits.get(i.as_str())) else {
            continue;
        };
        let (shape, data) = graph.f32s(t)?;
        if shape.len() != 2 {
            return Err(err(
                path,
                format!("{}: weight {:?} has shape {shape:?}", node.name, t.name),
            ));
        }
        let trans_b = node
            .attribute
            .iter()
            .any(|a| a.name == "transB" && a.i == 1);
        // MatMul / Gemm without transB: (in, out). Transpose to HF's (out, in).
        let (out_f, in_f, w) = if trans_b {
            (shape[0], shape[1], data)
        } else {
            (shape[1], shape[0], transpose(&data, shape[0], shape[1]))
        };
        num_layers = num_layers.max(layer + 1);
        shapes.insert((layer, wp), (out_f, in_f));
        weights.insert((layer, wp), w);
    }
    // Layers may also be counted from named initializers (LayerNorms keep their names).
    for t in &graph.g.initializer {
        if let Some(layer) = t
            .name
            .strip_prefix(b.prefix.as_str())
            .and_then(layer_of_name)
        {
            num_layers = num_layers.max(layer + 1);
        }
    }
    if num_layers == 0 {
        return Err(err(
            path,
            "found no transformer layers (no nodes named like .../layer.N/...)",
        ));
    }
    Ok(Linears {
        weights,
        shapes,
        num_layers,
    })
}

/// Phase 3: the config (MLP width and kind, heads, epsilon, registers, biases, positions),
/// and the learned position table where the family has one.
fn infer_config(
    graph: &Graph,
    b: &Backbone,
    lin: &Linears,
    notes: &mut Vec<String>,
) -> Result<(VitConfig, HashMap<Param, Vec<f32>>)> {
    let path = graph.path;
    let (family, prefix, node_prefix) = (b.family, &b.prefix, &b.node_prefix);
    let (dim, num_layers) = (b.dim, lin.num_layers);
    let gated = family_gated(graph, family, prefix, &lin.weights);
    let packed_gate_up = gated
        && !lin.shapes.contains_key(&(0, L::UpWeight))
        && lin.shapes.contains_key(&(0, L::GateWeight));
    let hidden = match (
        lin.shapes.get(&(0, L::UpWeight)),
        lin.shapes.get(&(0, L::GateWeight)),
    ) {
        (Some(&(o, _)), _) => o,
        (None, Some(&(o, _))) => {
            if packed_gate_up {
                o / 2
            } else {
                o
            }
        }
        (None, None) => named_mlp_width(graph, prefix, family)
            .ok_or_else(|| err(path, "cannot find the first layer's MLP input projection"))?,
    };
    let act = mlp_activation(graph, node_prefix, gated)?;
    let heads = attention_heads(graph, node_prefix, dim).ok_or_else(|| {
        err(
            path,
            "cannot infer the number of attention heads from the attention reshape",
        )
    })?;
    notes.push(format!(
        "{num_layers} layers, {heads} heads, dim {dim}, MLP {hidden} ({})",
        if gated { "gated" } else { "plain" }
    ));
    let eps = layer_norm_eps(graph, node_prefix).unwrap_or_else(|| {
        let e = if family == Family::Dinov3 { 1e-5 } else { 1e-6 };
        notes.push(format!(
            "LayerNorm epsilon not found in the graph; using the family default {e}"
        ));
        e
    });
    let registers = match graph
        .inits
        .get(format!("{prefix}embeddings.register_tokens").as_str())
    {
        Some(t) => usize::try_from(t.dims.iter().rev().nth(1).copied().unwrap_or(0))
            .map_err(|_| err(path, format!("register tokens have shape {:?}", t.dims)))?,
        None => 0,
    };
    let bias_present = |lp: L| -> bool {
        let hub = layout_name(family, prefix, 0, lp);
        hub.iter().any(|n| graph.inits.contains_key(n.as_str()))
    };
    let mut tensors: HashMap<Param, Vec<f32>> = HashMap::new();
    let positions = positions(graph, b, heads, notes, &mut tensors)?;
    let image_size = match positions {
        Positions::Learned { grid, .. } => grid * b.patch,
        Positions::Rope { .. } => 224,
    };
    let config = VitConfig {
        family,
        hidden_size: dim,
        num_layers,
        num_heads: heads,
        intermediate_size: hidden,
        mlp: if gated {
            MlpKind::Gated(act)
        } else {
            MlpKind::Plain(act)
        },
        patch_size: b.patch,
        num_channels: b.channels,
        num_register_tokens: registers,
        layer_norm_eps: eps,
        query_bias: bias_present(L::QBias),
        key_bias: bias_present(L::KBias),
        value_bias: bias_present(L::VBias),
        proj_bias: bias_present(L::OBias),
        mlp_bias: bias_present(L::DownBias),
        positions,
        image_size,
        quantization: None,
    };
    Ok((config, tensors))
}

/// RoPE's theta (DINOv3), or the learned position table (DINOv2, into `tensors`).
fn positions(
    graph: &Graph,
    b: &Backbone,
    heads: usize,
    notes: &mut Vec<String>,
    tensors: &mut HashMap<Param, Vec<f32>>,
) -> Result<Positions> {
    let (path, dim) = (graph.path, b.dim);
    match b.family {
        Family::Dinov3 => {
            let theta = rope_theta(graph, &b.node_prefix, dim / heads).unwrap_or_else(|| {
                notes.push("RoPE frequencies not found in the graph; using rope_theta 100".into());
                100.0
            });
            Ok(Positions::Rope { theta })
        }
        Family::Dinov2 | Family::Dinov2Registers => {
            let table = position_table(graph, &b.prefix, &b.node_prefix, dim)?;
            let n = (table.len() / dim).checked_sub(1).ok_or_else(|| {
                err(
                    path,
                    format!(
                        "position table of {} values is shorter than one row of {dim}",
                        table.len()
                    ),
                )
            })?;
            let grid = (n as f64).sqrt().round() as usize;
            if grid * grid != n {
                return Err(err(
                    path,
                    format!("position table has {n} patch positions, not a square grid"),
                ));
            }
            tensors.insert(Param::PosEmbed, table);
            Ok(Positions::Learned {
                grid,
                antialias: b.family == Family::Dinov2Registers,
            })
        }
    }
}

/// Phase 4: every parameter of the architecture, from a named initializer or a MatMul
/// operand, checked against its shape.
fn gather_params(
    graph: &Graph,
    config: &VitConfig,
    prefix: &str,
    lin: &mut Linears,
    tensors: &mut HashMap<Param, Vec<f32>>,
) -> Result<()> {
    let path = graph.path;
    let (gated, hidden) = (
        matches!(config.mlp, MlpKind::Gated(_)),
        config.intermediate_size,
    );
    for p in layout::params(config) {
        if tensors.contains_key(&p) {
            continue;
        }
        let data = match p {
            Param::Layer(l, lp)
                if matches!(
                    lp,
                    L::QWeight
                        | L::KWeight
                        | L::VWeight
                        | L::OWeight
                        | L::UpWeight
                        | L::DownWeight
                        | L::GateWeight
                ) =>
            {
                match named_param(graph, config, prefix, p)? {
                    Some(v) => v,
                    None => anonymous_linear(&mut lin.weights, l, lp, gated, hidden).ok_or_else(
                        || {
                            err(
                                path,
                                format!(
                                    "layer {l}: no weight for {lp:?} (named or as a MatMul operand)"
                                ),
                            )
                        },
                    )?,
                }
            }
            _ => named_param(graph, config, prefix, p)?.ok_or_else(|| {
                err(
                    path,
                    format!(
                        "missing initializer {:?}",
                        format!("{prefix}{}", layout::hub_location(config, p).key)
                    ),
                )
            })?,
        };
        let want: usize = layout::shape(config, p).iter().product();
        if data.len() != want {
            return Err(err(
                path,
                format!(
                    "{p:?} has {} values, expected shape {:?}",
                    data.len(),
                    layout::shape(config, p)
                ),
            ));
        }
        tensors.insert(p, data);
    }
    Ok(())
}

pub(super) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Hub and transformers-5 names of a layer parameter under `prefix`.
fn layout_name(family: Family, prefix: &str, layer: usize, lp: L) -> Vec<String> {
    // A throwaway config of the right family is enough to produce the names.
    let gated = matches!(lp, L::GateWeight | L::GateBias);
    let cfg = name_config(family, gated);
    let p = Param::Layer(layer, lp);
    let mut v = vec![format!("{prefix}{}", layout::hub_location(&cfg, p).key)];
    v.extend(
        layout::aliases(&cfg, p)
            .into_iter()
            .map(|l| format!("{prefix}{}", l.key)),
    );
    v
}

fn name_config(family: Family, gated: bool) -> VitConfig {
    let json = format!(
        r#"{{"model_type":"{}","hidden_size":8,"num_attention_heads":2,"num_hidden_layers":1,"use_swiglu_ffn":{gated},"use_gated_mlp":{gated}}}"#,
        family.model_type()
    );
    VitConfig::from_json_str(&json, Path::new("<names>")).expect("static config")
}

/// A parameter stored under its HF name (or a transformers-5 alias).
fn named_param(graph: &Graph, cfg: &VitConfig, prefix: &str, p: Param) -> Result<Option<Vec<f32>>> {
    let mut names = vec![layout::hub_location(cfg, p)];
    names.extend(layout::aliases(cfg, p));
    for loc in names {
        if let Some((shape, v)) = graph.init_f32(&format!("{prefix}{}", loc.key))? {
            return Ok(Some(match loc.rows {
                None => v,
                // Packed weights_in (2I, D) or its bias (2I): take this parameter's rows.
                Some(r) => {
                    let cols: usize = shape.get(1..).unwrap_or(&[]).iter().product();
                    v.get(r.start * cols..r.end * cols)
                        .ok_or_else(|| {
                            err(
                                graph.path,
                                format!(
                                    "{prefix}{} has shape {shape:?}: too few rows for {p:?}",
                                    loc.key
                                ),
                            )
                        })?
                        .to_vec()
                }
            }));
        }
    }
    Ok(None)
}

/// Takes a Linear weight found as a MatMul operand; splits DINOv2's packed weights_in.
fn anonymous_linear(
    linear: &mut BTreeMap<(usize, L), Vec<f32>>,
    l: usize,
    lp: L,
    gated: bool,
    hidden: usize,
) -> Option<Vec<f32>> {
    if gated && matches!(lp, L::GateWeight | L::UpWeight) && !linear.contains_key(&(l, L::UpWeight))
    {
        // weights_in (2I, D): gate rows first, then up.
        let w = linear.get(&(l, L::GateWeight))?;
        let d = w.len() / (2 * hidden);
        return Some(if lp == L::GateWeight {
            w[..hidden * d].to_vec()
        } else {
            w[hidden * d..].to_vec()
        });
    }
    linear.remove(&(l, lp))
}

fn family_gated(
    graph: &Graph,
    family: Family,
    prefix: &str,
    linear: &BTreeMap<(usize, L), Vec<f32>>,
) -> bool {
    linear.contains_key(&(0, L::GateWeight))
        || layout_name(family, prefix, 0, L::GateWeight)
            .iter()
            .any(|n| graph.inits.contains_key(n.as_str()))
        || graph
            .inits
            .keys()
            .any(|k| k.starts_with(prefix) && k.contains("mlp.weights_in"))
}

/// MLP width from a named first-layer weight, when the exporter kept names.
fn named_mlp_width(graph: &Graph, prefix: &str, family: Family) -> Option<usize> {
    [L::UpWeight, L::GateWeight]
        .into_iter()
        .flat_map(|lp| layout_name(family, prefix, 0, lp))
        .find_map(|n| {
            graph
                .inits
                .get(n.as_str())
                .and_then(|t| t.dims.first())
                .map(|&d| d as usize)
        })
}

fn mlp_activation(graph: &Graph, node_prefix: &str, gated: bool) -> Result<Activation> {
    let ops: Vec<&str> = graph
        .nodes_under(node_prefix)
        .filter(|n| linear_site(&n.name).is_some_and(|(l, m)| l == 0 && m.starts_with("mlp")))
        .map(|n| n.op_type.as_str())
        .collect();
    Ok(if ops.contains(&"Erf") || ops.contains(&"Gelu") {
        Activation::Gelu
    } else if ops.contains(&"Tanh") {
        Activation::GeluTanh
    } else if ops.contains(&"Sigmoid") || gated {
        Activation::Silu
    } else {
        return Err(err(
            graph.path,
            format!("cannot identify the MLP activation of layer 0 (ops: {ops:?})"),
        ));
    })
}

/// Heads from the first layer's attention reshape: an (..., heads, head_dim) target shape.
fn attention_heads(graph: &Graph, node_prefix: &str, dim: usize) -> Option<usize> {
    let in_attention = |n: &&NodeProto| {
        linear_site(&n.name).is_some_and(|(l, m)| l == 0 && m.starts_with("attention"))
    };
    for n in graph.nodes_under(node_prefix).filter(in_attention) {
        let dims: Vec<i64> = match n.op_type.as_str() {
            // Shape assembled from scalars: [.., .., heads, head_dim].
            "Concat" => n
                .input
                .iter()
                .map(|i| {
                    graph
                        .constant(i)
                        .and_then(|t| graph.ints(t))
                        .filter(|v| v.len() == 1)
                        .map(|v| v[0])
                        .unwrap_or(-1)
                })
                .collect(),
            "Reshape" => n
                .input
                .get(1)
                .and_then(|i| graph.constant(i))
                .and_then(|t| graph.ints(t))
                .unwrap_or_default(),
            _ => continue,
        };
        for w in dims.windows(2) {
            if w[0] > 0 && w[1] > 1 && w[0].checked_mul(w[1]) == i64::try_from(dim).ok() {
                return Some(w[0] as usize);
            }
        }
        // (..., -1, head_dim): the head count is left to the runtime.
        if let [.., -1, hd] = dims[..]
            && hd > 1
            && dim.is_multiple_of(hd as usize)
        {
            return Some(dim / hd as usize);
        }
    }
    None
}

/// The f64 with the same shortest decimal form as an f32 (1e-5f32 -> 1e-5, not 9.99e-6).
pub(super) fn shortest_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

fn layer_norm_eps(graph: &Graph, node_prefix: &str) -> Option<f64> {
    let in_norm =
        |n: &&NodeProto| linear_site(&n.name).is_some_and(|(l, m)| l == 0 && m == "norm1");
    for n in graph.nodes_under(node_prefix).filter(in_norm) {
        if n.op_type == "LayerNormalization" {
            return n
                .attribute
                .iter()
                .find(|a| a.name == "epsilon")
                .map(|a| shortest_f64(a.f));
        }
        // Decomposed: var + eps, a scalar constant below 1e-2.
        if n.op_type == "Add" {
            for i in &n.input {
                if let Some(t) = graph.constant(i)
                    && let Ok((shape, v)) = graph.f32s(t)
                    && shape.iter().product::<usize>() == 1
                    && v[0] > 0.0
                    && v[0] < 1e-2
                {
                    return Some(shortest_f64(v[0]));
                }
            }
        }
    }
    None
}

/// RoPE theta from the exported inverse frequencies `theta^(-4k/hd)`, k = 0..hd/4.
fn rope_theta(graph: &Graph, node_prefix: &str, head_dim: usize) -> Option<f64> {
    let quarter = head_dim / 4;
    for n in graph
        .nodes_under(node_prefix)
        .filter(|n| n.name.contains("rope"))
    {
        for i in n.input.iter().chain(n.output.iter()) {
            let Some(t) = graph.constant(i) else { continue };
            let Ok((shape, v)) = graph.f32s(t) else {
                continue;
            };
            if shape.iter().product::<usize>() == quarter
                && quarter >= 2
                && (v[0] - 1.0).abs() < 1e-6
                && v[1] > 0.0
                && v[1] < 1.0
            {
                let theta = (v[1] as f64).powf(-(head_dim as f64) / 4.0);
                // Round away float noise (theta is a round number in every released model).
                return Some((theta * 1e4).round() / 1e4);
            }
        }
    }
    None
}

/// DINOv2's (1 + g*g, D) table: named, or as anonymous CLS and patch parts feeding the
/// embedding's Concat / Reshape.
fn position_table(graph: &Graph, prefix: &str, node_prefix: &str, dim: usize) -> Result<Vec<f32>> {
    if let Some((_, v)) = graph.init_f32(&format!("{prefix}embeddings.position_embeddings"))? {
        return Ok(v);
    }
    let cls_name = format!("{prefix}embeddings.cls_token");
    let mut cls_pos = None;
    let mut patch_pos = None;
    for n in graph.nodes_under(&format!("{node_prefix}embeddings/")) {
        for i in &n.input {
            let Some(t) = graph.inits.get(i.as_str()) else {
                continue;
            };
            if t.name == cls_name
                || t.name.ends_with("mask_token")
                || t.name.ends_with("register_tokens")
                || t.name.contains("patch_embeddings")
            {
                continue;
            }
            // Checked: these dims come straight from the file (`f32s` checks them later).
            let Some(numel) = t.dims.iter().try_fold(1usize, |n, &d| {
                usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
            }) else {
                continue;
            };
            if n.op_type == "Concat" && numel == dim {
                cls_pos = Some(graph.f32s(t)?.1);
            } else if n.op_type == "Reshape" && numel.is_multiple_of(dim) && numel > dim {
                patch_pos = Some(graph.f32s(t)?.1);
            }
        }
    }
    match (cls_pos, patch_pos) {
        (Some(mut c), Some(p)) => {
            c.extend(p);
            Ok(c)
        }
        _ => Err(err(
            graph.path,
            "cannot find the position embedding (named or as CLS/patch parts in the embedding subgraph)",
        )),
    }
}

/// Writes a ViT import as an HF model directory: `config.json` and `model.safetensors`.
pub fn write_model_dir(imp: &OnnxImport, out_dir: &Path, source: &Path) -> Result<()> {
    let tensors = layout::hub_tensors(&imp.config, |p| {
        imp.tensors
            .get(&p)
            .cloned()
            .ok_or_else(|| RuntimeError::input(format!("{p:?}"), "not imported"))
    })?;
    write_dir(out_dir, &tensors, &imp.config.to_hf_json(), source)
}

/// Writes any import as an HF model directory.
pub fn write_import(imp: &Import, out_dir: &Path, source: &Path) -> Result<()> {
    match imp {
        Import::Vit(i) => write_model_dir(i, out_dir, source),
        Import::ConvNext(i) => {
            use crate::models::convnext::layout as cl;
            let tensors = cl::params(&i.config)
                .into_iter()
                .map(|p| {
                    let shape = cl::shape(&i.config, p);
                    match i.tensors.get(&p) {
                        Some(v) if v.len() == shape.iter().product::<usize>() => {
                            Ok(crate::weights::store::f32_entry(cl::hub_name(p), shape, v))
                        }
                        _ => Err(RuntimeError::input(
                            cl::hub_name(p),
                            format!("not imported with shape {shape:?}"),
                        )),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            write_dir(out_dir, &tensors, &i.config.to_hf_json(), source)
        }
    }
}

fn write_dir(
    out_dir: &Path,
    tensors: &[layout::HubTensor],
    config: &serde_json::Value,
    source: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| RuntimeError::io(out_dir, e))?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("dinoedge_source".to_string(), source.display().to_string());
    crate::weights::store::write_safetensors(
        &out_dir.join("model.safetensors"),
        tensors,
        Some(meta),
    )?;
    let cfg = serde_json::to_string_pretty(config).expect("json");
    crate::fsutil::write_atomic(&out_dir.join("config.json"), cfg.as_bytes())
}
