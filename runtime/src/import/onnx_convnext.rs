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
use crate::config::{Activation, ConvNextConfig};
use crate::error::Result;
use crate::models::convnext::config::{MAX_DEPTH, MAX_STAGES};
use crate::models::convnext::layout::{self, BlockParam, Param};

/// The stem's weight: what marks a ConvNeXt export, and where its prefix ends.
const STEM: &str = "stages.0.downsample_layers.0.weight";

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
    };
    config
        .validate()
        .map_err(|r| err(path, format!("inferred config is invalid: {r}")))?;
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
        let width = t.dims.first().copied().unwrap_or(0);
        let width =
            usize::try_from(width).map_err(|_| err(graph.path, format!("{conv}: bad shape")))?;
        let has = |b: usize| {
            let g = format!("{prefix}stages.{s}.layers.{b}.gamma");
            graph.inits.contains_key(g.as_str())
        };
        let depth = (0..=MAX_DEPTH).take_while(|&b| has(b)).count();
        widths.push(width);
        depths.push(depth);
    }
    Ok((widths, depths))
}

/// One parameter: its named initializer, or (pointwise weights) the anonymous operand of
/// its MatMul, transposed to (out, in); checked against `shape`.
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
    let found = match graph.init_f32(&name)? {
        Some(t) => Some(t),
        None => match p {
            Param::Block(s, b, k @ (BlockParam::Pw1Weight | BlockParam::Pw2Weight)) => {
                let which = if k == BlockParam::Pw1Weight { 1 } else { 2 };
                let node =
                    format!("{node_prefix}/stages.{s}/layers.{b}/pointwise_conv{which}/MatMul");
                anonymous_matmul(graph, &node)?
            }
            _ => None,
        },
    };
    let (got, values) = found.ok_or_else(|| {
        err(
            graph.path,
            format!("no tensor {name} (expected shape {shape:?})"),
        )
    })?;
    let squeeze = |s: &[usize]| {
        s.iter()
            .skip_while(|&&d| d == 1)
            .copied()
            .collect::<Vec<_>>()
    };
    if squeeze(&got) != squeeze(shape) {
        return Err(err(
            graph.path,
            format!("tensor {name} has shape {got:?}, expected {shape:?}"),
        ));
    }
    Ok(values)
}

/// The (in, out) weight operand of the MatMul node named `node`, as ((out, in), values).
fn anonymous_matmul(graph: &Graph, node: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
    let Some(n) = graph
        .g
        .node
        .iter()
        .find(|n| n.name == node && n.op_type == "MatMul")
    else {
        return Ok(None);
    };
    for i in &n.input {
        if let Some(t) = graph.inits.get(i.as_str()) {
            let (shape, v) = graph.f32s(t)?;
            if let [k, o] = shape[..] {
                return Ok(Some((vec![o, k], transpose(&v, k, o))));
            }
        }
    }
    Ok(None)
}
