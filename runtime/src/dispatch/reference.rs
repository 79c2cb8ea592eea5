//! The CPU reference backend: f32 everywhere, the readable forms in `ops/*/cpu.rs`; every
//! other backend and precision is tested against it.
//!
//! Ops run on the backend's own rayon pool (`threads` workers), so `--threads N` is exact
//! and nothing oversubscribes the global pool. Buffers are plain `Vec<f32>`.

use super::{Backend, Epilogue, HostLinear, Op};
use crate::backend::{BackendInfo, BackendKind, Precision};
use crate::config::Activation;
use crate::error::{Result, RuntimeError};
use crate::ops::dwconv::DwDims;
use crate::ops::matmul::Epi;
use crate::ops::{self, Dims};

/// A Linear layer in HF layout (out, in), bias expanded to zeros when absent.
pub struct RefLinear {
    pub out_features: usize,
    pub in_features: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

pub struct ReferenceBackend {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl ReferenceBackend {
    /// A backend with `threads` workers (default: all available cores).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        let threads = match threads {
            Some(0) => return Err(RuntimeError::input("threads", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("dinoedge-ref-{i}"))
            .build()
            .map_err(|e| RuntimeError::BackendUnavailable {
                backend: "cpu-ref".into(),
                reason: e.to_string(),
            })?;
        Ok(ReferenceBackend { pool, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Backend for ReferenceBackend {
    type Buffer = Vec<f32>;
    type Linear = RefLinear;

    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::CpuReference,
            precision: Precision::F32,
            device: format!(
                "{} CPU reference kernels, {} threads",
                std::env::consts::ARCH,
                self.threads
            ),
            threads: self.threads,
        }
    }

    fn supports(&self, op: Op) -> std::result::Result<(), String> {
        super::attention_head_dims_up_to(op, crate::ops::attention::MAX_HEAD_DIM)
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn write(&self, dst: &mut Vec<f32>, data: &[f32]) -> Result<()> {
        super::host_write(dst, data)
    }

    fn read(&self, src: &Vec<f32>, dst: &mut [f32]) -> Result<()> {
        super::host_read(src, dst)
    }

    fn linear(&self, w: HostLinear) -> Result<RefLinear> {
        let bias = w.bias.unwrap_or_else(|| vec![0.0; w.out_features]);
        Ok(RefLinear {
            out_features: w.out_features,
            in_features: w.in_features,
            weight: w.weight,
            bias,
        })
    }

    fn patch_embed_im2col(&self, cols: &mut Vec<f32>, pixels: &Vec<f32>, d: &Dims) -> Result<()> {
        self.pool
            .install(|| ops::patch_embed::cpu::patch_embed_forward_im2col(cols, pixels, d));
        Ok(())
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
        let regs: &[f32] = registers.map(|r| r.as_slice()).unwrap_or(&[]);
        self.pool.install(|| {
            ops::patch_embed::cpu::patch_embed_forward_assemble(
                x,
                emb,
                cls,
                regs,
                pos.map(|p| p.as_slice()),
                d,
            )
        });
        Ok(())
    }

    fn patch_embed_im2col_nhwc(&self, cols: &mut Vec<f32>, x: &Vec<f32>, d: &Dims) -> Result<()> {
        self.pool
            .install(|| ops::patch_embed::cpu::patch_embed_forward_im2col_nhwc(cols, x, d));
        Ok(())
    }

    fn dwconv(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        weight: &Vec<f32>,
        bias: &Vec<f32>,
        d: &DwDims,
    ) -> Result<()> {
        self.pool
            .install(|| ops::dwconv::cpu::dwconv_forward(out, inp, weight, bias, d));
        Ok(())
    }

    fn token_pool(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        batch: usize,
        cells: usize,
        channels: usize,
    ) -> Result<()> {
        self.pool
            .install(|| ops::token_pool::cpu::token_pool_forward(out, inp, batch, cells, channels));
        Ok(())
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
        let n = rows * cols;
        self.pool.install(|| {
            ops::layer_norm::cpu::layer_norm_forward(
                &mut out[..n],
                None,
                &inp[..n],
                weight,
                bias,
                cols,
                eps,
            )
        });
        Ok(())
    }

    fn matmul(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        w: &RefLinear,
        rows: usize,
        epi: Epilogue<'_, Vec<f32>>,
    ) -> Result<()> {
        let (k, o) = (w.in_features, w.out_features);
        let epi = match epi {
            Epilogue::Store => Epi::Store,
            Epilogue::Act(a) => Epi::Act(a),
            Epilogue::Residual(g) => Epi::Residual(g),
        };
        self.pool.install(|| {
            ops::matmul::cpu::matmul_forward(
                &mut out[..rows * o],
                &inp[..rows * k],
                &w.weight,
                Some(&w.bias),
                k,
                o,
                epi,
            )
        });
        Ok(())
    }

    fn rope(&self, qkv: &mut Vec<f32>, cos: &Vec<f32>, sin: &Vec<f32>, d: &Dims) -> Result<()> {
        self.pool.install(|| {
            ops::rope::cpu::rope_forward(&mut qkv[..d.rows() * 3 * d.dim], cos, sin, d)
        });
        Ok(())
    }

    fn attention(&self, out: &mut Vec<f32>, qkv: &Vec<f32>, d: &Dims) -> Result<()> {
        let rows = d.rows();
        self.pool.install(|| {
            ops::attention::cpu::attention_forward(
                &mut out[..rows * d.dim],
                &qkv[..rows * 3 * d.dim],
                d,
            )
        });
        Ok(())
    }

    fn swiglu(
        &self,
        out: &mut Vec<f32>,
        gate_up: &Vec<f32>,
        rows: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<()> {
        self.pool.install(|| {
            ops::swiglu::cpu::swiglu_forward(
                &mut out[..rows * hidden],
                &gate_up[..rows * 2 * hidden],
                hidden,
                act,
            )
        });
        Ok(())
    }
}
