//! Model outputs: CLS, register and patch features after the final norm.

use serde::{Deserialize, Serialize};

use crate::tensor::Tensor;

/// Features of one layer (the last, or an intermediate one with the final norm applied,
/// as DINOv3's `get_intermediate_layers(norm=True)`).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerFeatures {
    /// Block index, 0-based (the last block is `num_layers - 1`).
    pub layer: usize,
    /// (B, D)
    pub cls: Tensor,
    /// (B, R, D)
    pub registers: Tensor,
    /// (B, h, w, D)
    pub patches: Tensor,
}

/// What a forward pass returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// Patch grid (h, w).
    pub grid: (usize, usize),
    /// Output of the last block after the final norm.
    pub last: LayerFeatures,
    /// Requested intermediate blocks, in request order.
    pub intermediate: Vec<LayerFeatures>,
}

/// Shape summary for logs and JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeatureShapes {
    pub batch: usize,
    pub grid: (usize, usize),
    pub dim: usize,
    pub registers: usize,
}

impl LayerFeatures {
    /// No values yet: a buffer for [`split_tokens_into`].
    pub fn empty() -> Self {
        LayerFeatures {
            layer: 0,
            cls: Tensor::empty(),
            registers: Tensor::empty(),
            patches: Tensor::empty(),
        }
    }
}

impl Features {
    /// No values yet: a buffer for [`crate::InferenceSession::run_into`].
    pub fn empty() -> Self {
        Features {
            grid: (0, 0),
            last: LayerFeatures::empty(),
            intermediate: Vec::new(),
        }
    }

    pub fn batch(&self) -> usize {
        self.last.cls.shape[0]
    }

    pub fn dim(&self) -> usize {
        self.last.cls.shape[1]
    }

    pub fn shapes(&self) -> FeatureShapes {
        FeatureShapes {
            batch: self.batch(),
            grid: self.grid,
            dim: self.dim(),
            registers: self.last.registers.shape[1],
        }
    }
}

/// Splits final-normed tokens (B, N, D) into CLS, registers and patches.
pub fn split_tokens(
    layer: usize,
    tokens: &[f32],
    batch: usize,
    registers: usize,
    grid: (usize, usize),
    dim: usize,
) -> LayerFeatures {
    let mut out = LayerFeatures::empty();
    split_tokens_into(layer, tokens, batch, registers, grid, dim, &mut out);
    out
}

/// [`split_tokens`] into `out`, reusing its buffers (no allocation once they are large
/// enough: the live pipeline's per-frame path).
pub fn split_tokens_into(
    layer: usize,
    tokens: &[f32],
    batch: usize,
    registers: usize,
    grid: (usize, usize),
    dim: usize,
    out: &mut LayerFeatures,
) {
    let hw = grid.0 * grid.1;
    let n = 1 + registers + hw;
    out.layer = layer;
    let (cls, regs, patches) = (
        &mut out.cls.data,
        &mut out.registers.data,
        &mut out.patches.data,
    );
    cls.clear();
    regs.clear();
    patches.clear();
    for b in 0..batch {
        let t = &tokens[b * n * dim..(b + 1) * n * dim];
        cls.extend_from_slice(&t[..dim]);
        regs.extend_from_slice(&t[dim..(1 + registers) * dim]);
        patches.extend_from_slice(&t[(1 + registers) * dim..]);
    }
    set_shape(&mut out.cls.shape, &[batch, dim]);
    set_shape(&mut out.registers.shape, &[batch, registers, dim]);
    set_shape(&mut out.patches.shape, &[batch, grid.0, grid.1, dim]);
}

fn set_shape(shape: &mut Vec<usize>, to: &[usize]) {
    shape.clear();
    shape.extend_from_slice(to);
}
