//! Import of an HF-exported DINOv3 ConvNeXt from ONNX into the HF safetensors layout.
//!
//! The exporter keeps the names of the convolution, LayerNorm, LayerScale and bias
//! initializers (`backbone.model.stages.0.downsample_layers.0.weight`, ...); the pointwise
//! Linear weights become anonymous `MatMul` initializers stored (in, out), found through the
//! node that uses them (`/backbone/model/stages.0/layers.0/pointwise_conv1/MatMul`). The
//! config is read from the weights (widths, depths), the LayerNorm epsilon and the
//! activation ops.

use std::collections::HashMap;

use super::onnx::{Graph, err, shortest_f64, transpose};
use super::onnx_pb::TensorProto;
use crate::config::{Activation, ConvNextConfig};
use crate::error::Result;
use crate::models::convnext::config::{MAX_DEPTH, MAX_STAGES};
use crate::models::convnext::layout::{self, BlockParam, Param};

/// The stem's weight: what marks a ConvNeXt export, and where its prefix ends.
const STEM: &str = "stages.0.downsample_layers.0.weight";

/// Parameters an import may hold: 2^32, twenty times ConvNeXt-L (every tensor is read into
/// memory).
const MAX_PARAMETERS: u64 = 1 << 32;

/// A ConvNeXt read out of an ONNX graph.
#[derive(Debug)]
pub struct ConvNextImport {
    pub config: ConvNextConfig,
    /// Every parameter, f32, HF shapes.
    pub tensors: HashMap<Param, Vec<f32>>,
    /// Initializer prefix of the stages (e.g. `backbone.model.`).
    pub prefix: String,
    pub notes: Vec<String>,
}

/// Whether the graph holds a DINOv3 ConvNeXt (its stem weight is named).
pub(super) fn is_convnext(graph: &Graph) -> bool {
    graph.g.initializer.iter().any(|t| t.name.ends_with(STEM))
}

pub(super) fn import(graph: &Graph) -> Result<ConvNextImport> {
    let path = graph.path;
    let stages_prefix = graph
        .g
        .initializer
        .iter()
        .find_map(|t| t.name.strip_suffix(STEM))
        .ok_or_else(|| {
            err(
                path,
                format!("no initializer named *{STEM}: not a ConvNeXt"),
            )
        })?
        .to_string();
    // The final norm sits beside `model.` (transformers 5) or beside the stages (4.x).
    let top = stages_prefix
        .strip_suffix("model.")
        .unwrap_or(&stages_prefix)
        .to_string();
    let node_prefix = format!("/{}", stages_prefix.trim_end_matches('.').replace('.', "/"));
    let mut notes = vec![format!("ConvNeXt, stages under {stages_prefix:?}")];
    let (hidden_sizes, depths) = widths_and_depths(graph, &stages_prefix)?;
    let act = if graph.g.node.iter().any(|n| n.op_type == "Erf") {
        Activation::Gelu
    } else {
        return Err(err(
            path,
            "no Erf node: the blocks' activation is not the exact GELU DINOv3 ConvNeXts use",
        ));
    };
    let eps = match graph
        .g
        .node
        .iter()
        .filter(|n| n.op_type == "LayerNormalization")
        .find_map(|n| n.attribute.iter().find(|a| a.name == "epsilon"))
    {
        Some(a) => shortest_f64(a.f),
        None => {
            notes.push("no LayerNormalization node: layer_norm_eps 1e-6 assumed".into());
            1e-6
        }
    };
    let config = ConvNextConfig {
        hidden_sizes,
        depths,
        act,
        layer_norm_eps: eps,
        layer_scale_init_value: 1e-6,
        num_channels: 3,
        image_size: 224,
        quantization: None,
    };
    config
        .validate()
        .map_err(|r| err(path, format!("inferred config is invalid: {r}")))?;
    if config.num_parameters() as u64 > MAX_PARAMETERS {
        let n = config.num_parameters();
        let why =
            format!("the weights describe {n} parameters, above the limit of {MAX_PARAMETERS}");
        return Err(err(path, why));
    }
    notes.push(config.describe());
    let mut tensors = HashMap::new();
    for p in layout::params(&config) {
        let shape = layout::shape(&config, p);
        let values = param(graph, &stages_prefix, &top, &node_prefix, p, &shape)?;
        tensors.insert(p, values);
    }
    Ok(ConvNextImport {
        config,
        tensors,
        prefix: stages_prefix,
        notes,
    })
}

/// Each stage's width (its conv's output channels) and depth (blocks with a `gamma`).
fn widths_and_depths(graph: &Graph, prefix: &str) -> Result<(Vec<usize>, Vec<usize>)> {
    let (mut widths, mut depths) = (Vec::new(), Vec::new());
    for s in 0..=MAX_STAGES {
        let conv = format!(
            "{prefix}stages.{s}.downsample_layers.{}.weight",
            (s > 0) as usize
        );
        let Some(t) = graph.inits.get(conv.as_str()) else {
            break;
        };
        let width = t
            .dims
            .first()
            .and_then(|&w| usize::try_from(w).ok())
            .filter(|&w| w > 0);
        let width = width.ok_or_else(|| {
            err(
                graph.path,
                format!("{conv} has shape {:?}, expected (C, ...)", t.dims),
            )
        })?;
        let has = |b: usize| {
            let g = format!("{prefix}stages.{s}.layers.{b}.gamma");
            graph.inits.contains_key(g.as_str())
        };
        let depth = (0..=MAX_DEPTH).take_while(|&b| has(b)).count();
        // A block past a gap would be dropped without a word: refuse it.
        let blocks = format!("{prefix}stages.{s}.layers.");
        let block_of = |k: &str| {
            let rest = k.strip_prefix(blocks.as_str())?;
            rest.split('.').next()?.parse::<usize>().ok()
        };
        if let Some(stray) = graph
            .inits
            .keys()
            .find(|k| block_of(k).is_some_and(|b| b >= depth))
        {
            let why = format!("{stray}: stage {s} has no {blocks}{depth}.gamma before it");
            return Err(err(graph.path, why));
        }
        widths.push(width);
        depths.push(depth);
    }
    Ok((widths, depths))
}

/// One parameter: its named initializer, or (pointwise weights) the anonymous operand of
/// its MatMul, transposed to (out, in). Shapes are checked before a tensor is read.
fn param(
    graph: &Graph,
    prefix: &str,
    top: &str,
    node_prefix: &str,
    p: Param,
    shape: &[usize],
) -> Result<Vec<f32>> {
    let hub = layout::hub_name(p);
    let name = match p {
        Param::NormWeight | Param::NormBias => format!("{top}{hub}"),
        _ => format!("{prefix}{hub}"),
    };
    let dims = |t: &TensorProto| {
        t.dims
            .iter()
            .map(|&d| d.max(0) as usize)
            .collect::<Vec<_>>()
    };
    let squeeze = |s: Vec<usize>| s.into_iter().skip_while(|&d| d == 1).collect::<Vec<_>>();
    if let Some(t) = graph.inits.get(name.as_str()) {
        if squeeze(dims(t)) != squeeze(shape.to_vec()) {
            let why = format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims);
            return Err(err(graph.path, why));
        }
        return Ok(graph.f32s(t)?.1);
    }
    if let Param::Block(s, b, k @ (BlockParam::Pw1Weight | BlockParam::Pw2Weight)) = p {
        let which = if k == BlockParam::Pw1Weight { 1 } else { 2 };
        let node = format!("{node_prefix}/stages.{s}/layers.{b}/pointwise_conv{which}/MatMul");
        if let Some(t) = matmul_operand(graph, &node) {
            // Stored (in, out): the transpose of HF's (out, in).
            let (o, k) = (shape[0], shape[1]);
            if dims(t) != [k, o] {
                let why = format!(
                    "{name}: operand {:?} of node {node} has shape {:?}, expected [{k}, {o}]",
                    t.name, t.dims
                );
                return Err(err(graph.path, why));
            }
            return Ok(transpose(&graph.f32s(t)?.1, k, o));
        }
    }
    let why = format!("no tensor {name} (expected shape {shape:?})");
    Err(err(graph.path, why))
}

/// The initializer operand of the MatMul node named `node`.
fn matmul_operand<'a>(graph: &Graph<'a>, node: &str) -> Option<&'a TensorProto> {
    let n = graph
        .g
        .node
        .iter()
        .find(|n| n.name == node && n.op_type == "MatMul")?;
    n.input
        .iter()
        .find_map(|i| graph.inits.get(i.as_str()).copied())
}
