//! A minimal host tensor: a shape and row-major f32 data. Used at the API boundary only;
//! backends keep activations in their own buffers.

use crate::error::{Result, RuntimeError};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// No values yet: a buffer for the `_into` calls to fill.
    pub fn empty() -> Self {
        Tensor {
            shape: vec![0],
            data: Vec::new(),
        }
    }

    /// Wraps data, checking that it fills the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(RuntimeError::input(
                "tensor",
                format!("shape {shape:?} needs {n} values, got {}", data.len()),
            ));
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Largest absolute value (0 for an empty tensor).
    pub fn max_abs(&self) -> f32 {
        self.data.iter().fold(0.0f32, |m, x| m.max(x.abs()))
    }
}

/// Mean cosine similarity of corresponding rows of length `row` (1 for two zero rows).
pub fn mean_row_cosine(a: &[f32], b: &[f32], row: usize) -> f64 {
    let n = a.len() / row.max(1);
    let mut total = 0.0;
    for (x, y) in a.chunks_exact(row).zip(b.chunks_exact(row)) {
        let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
        for (p, q) in x.iter().zip(y) {
            xy += *p as f64 * *q as f64;
            xx += *p as f64 * *p as f64;
            yy += *q as f64 * *q as f64;
        }
        total += if xx == 0.0 && yy == 0.0 {
            1.0
        } else {
            xy / (xx.sqrt() * yy.sqrt()).max(1e-30)
        };
    }
    total / n.max(1) as f64
}
