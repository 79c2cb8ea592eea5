//! A backend adapter that records what enters every Linear layer: the calibration hook.
//!
//! [`Observer`] wraps a CPU backend (buffers are host `Vec<f32>`), forwards every op to it,
//! and for each matmul keeps, per Linear (named by [`HostLinear::name`]), the per-input-
//! channel maximum of |x| and a sample of input rows. The model's forward is unchanged: the
//! seam is what makes this possible.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::backend::BackendInfo;
use crate::config::Activation;
use crate::dispatch::{Backend, Epilogue, HostLinear, Op};
use crate::error::Result;
use crate::ops::Dims;

/// Input statistics of one Linear over the calibration set.
#[derive(Clone, Debug, Default)]
pub struct InputStats {
    /// Per input channel: max |x| over every row seen.
    pub channel_absmax: Vec<f32>,
    /// Rows seen.
    pub rows: usize,
    /// A sample of input rows (row-major, `channel_absmax.len()` wide), for choosing smoothing.
    pub sample: Vec<f32>,
    /// The sample keeps every `sample_stride`-th row.
    pub sample_stride: usize,
}

/// Rows kept per Linear for the smoothing decision.
pub const SAMPLE_ROWS: usize = 768;

/// A Linear on the wrapped backend, with its name.
pub struct NamedLinear<L> {
    pub name: String,
    pub inner: L,
    pub in_features: usize,
}

pub struct Observer<B> {
    pub inner: B,
    stats: RefCell<BTreeMap<String, InputStats>>,
    /// The calibration's pixels over its first input's: a Linear's rows in the first
    /// forward times this is about every row it will see, over which its sample is spread.
    forwards: f64,
}

impl<B> Observer<B> {
    pub fn new(inner: B, forwards: f64) -> Self {
        Observer {
            inner,
            stats: RefCell::new(BTreeMap::new()),
            forwards: forwards.max(1.0),
        }
    }

    /// The statistics gathered so far, by Linear name.
    pub fn take_stats(&self) -> BTreeMap<String, InputStats> {
        std::mem::take(&mut self.stats.borrow_mut())
    }

    fn record(&self, name: &str, inp: &[f32], rows: usize, k: usize) {
        let mut all = self.stats.borrow_mut();
        // Each Linear's own stride: a ConvNeXt's early stages see 16x the rows of its last.
        let s = all.entry(name.to_string()).or_insert_with(|| InputStats {
            channel_absmax: vec![0.0; k],
            sample_stride: ((rows as f64 * self.forwards) / SAMPLE_ROWS as f64)
                .ceil()
                .max(1.0) as usize,
            ..Default::default()
        });
        for (r, row) in inp[..rows * k].chunks_exact(k).enumerate() {
            for (m, v) in s.channel_absmax.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
            if (s.rows + r).is_multiple_of(s.sample_stride) && s.sample.len() < SAMPLE_ROWS * k {
                s.sample.extend_from_slice(row);
            }
        }
        s.rows += rows;
    }
}

impl<B: Backend<Buffer = Vec<f32>>> Backend for Observer<B> {
    type Buffer = Vec<f32>;
    type Linear = NamedLinear<B::Linear>;

    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn supports(&self, op: Op) -> std::result::Result<(), String> {
        self.inner.supports(op)
    }
    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        self.inner.alloc(len)
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        self.inner.upload(data)
    }
    fn write(&self, dst: &mut Vec<f32>, data: &[f32]) -> Result<()> {
        self.inner.write(dst, data)
    }
    fn read(&self, src: &Vec<f32>, dst: &mut [f32]) -> Result<()> {
        self.inner.read(src, dst)
    }
    fn linear(&self, w: HostLinear) -> Result<Self::Linear> {
        let (name, in_features) = (w.name.clone(), w.in_features);
        Ok(NamedLinear {
            name,
            in_features,
            inner: self.inner.linear(w)?,
        })
    }
    fn reserve(&self, d: &Dims) -> Result<()> {
        self.inner.reserve(d)
    }
    fn patch_embed_im2col(&self, cols: &mut Vec<f32>, pixels: &Vec<f32>, d: &Dims) -> Result<()> {
        self.inner.patch_embed_im2col(cols, pixels, d)
    }
    fn patch_embed_im2col_nhwc(&self, cols: &mut Vec<f32>, x: &Vec<f32>, d: &Dims) -> Result<()> {
        self.inner.patch_embed_im2col_nhwc(cols, x, d)
    }
    fn dwconv(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        weight: &Vec<f32>,
        bias: &Vec<f32>,
        d: &crate::ops::dwconv::DwDims,
    ) -> Result<()> {
        self.inner.dwconv(out, inp, weight, bias, d)
    }
    fn token_pool(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        batch: usize,
        cells: usize,
        channels: usize,
    ) -> Result<()> {
        self.inner.token_pool(out, inp, batch, cells, channels)
    }
    fn patch_embed_assemble(
        &self,
        x: &mut Vec<f32>,
        emb: &Vec<f32>,
        cls: &Vec<f32>,
        registers: Option<&Vec<f32>>,
        pos: Option<&Vec<f32>>,
        d: &Dims,
    ) -> Result<()> {
        self.inner
            .patch_embed_assemble(x, emb, cls, registers, pos, d)
    }
    fn layer_norm(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        weight: &Vec<f32>,
        bias: &Vec<f32>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        self.inner
            .layer_norm(out, inp, weight, bias, rows, cols, eps)
    }
    fn matmul(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        w: &Self::Linear,
        rows: usize,
        epi: Epilogue<'_, Vec<f32>>,
    ) -> Result<()> {
        self.record(&w.name, inp, rows, w.in_features);
        self.inner.matmul(out, inp, &w.inner, rows, epi)
    }
    fn rope(&self, qkv: &mut Vec<f32>, cos: &Vec<f32>, sin: &Vec<f32>, d: &Dims) -> Result<()> {
        self.inner.rope(qkv, cos, sin, d)
    }
    fn attention(&self, out: &mut Vec<f32>, qkv: &Vec<f32>, d: &Dims) -> Result<()> {
        self.inner.attention(out, qkv, d)
    }
    fn swiglu(
        &self,
        out: &mut Vec<f32>,
        gate_up: &Vec<f32>,
        rows: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<()> {
        self.inner.swiglu(out, gate_up, rows, hidden, act)
    }
}
