//! The fast CPU backend: SIMD microkernels chosen at run time ([`Isa`]), weights prepacked
//! once, fused epilogues, flash-style attention, its own fork-join pool ([`Pool`], no
//! allocation per dispatch) and one scratch arena sized when a plan is built, so a forward
//! after warm-up allocates nothing.
//!
//! Precisions: f32; f16 weights with f32 arithmetic; bf16 (weights and activations into
//! the GEMMs, f32 accumulation; AMX tiles or `vdpbf16ps`, else bf16 weights with f32
//! arithmetic); int8 (W8A8: per-output-channel int8 weights, per-token int8 activations)
//! through AMX-INT8, VNNI or SDOT dot products. The readable f32
//! reference is [`super::reference::ReferenceBackend`].

use std::cell::RefCell;

use super::{Backend, Epilogue, HostLinear, Op};
use crate::backend::cpu::isa::Isa;
use crate::backend::cpu::pool::{Pool, RowsMut};
use crate::backend::{BackendInfo, BackendKind, Precision};
use crate::config::Activation;
use crate::error::{Result, RuntimeError};
use crate::ops::dwconv::DwDims;
use crate::ops::matmul::Epi;
use crate::ops::matmul::fast::{PackedLinear, matmul_forward};
use crate::ops::patch_embed::cpu::{assemble_rows, im2col_nhwc_rows, im2col_rows};
use crate::ops::token_pool::cpu::token_pool_image;
use crate::ops::{self, Dims};

pub struct CpuBackend {
    pool: Pool,
    isa: Isa,
    precision: Precision,
    /// Scratch for attention packing and int8 activations; grows only in `reserve`.
    scratch: RefCell<Vec<f32>>,
}

impl CpuBackend {
    /// A backend with `threads` threads (default: all cores) on the best ISA of this CPU.
    pub fn new(threads: Option<usize>, precision: Precision) -> Result<Self> {
        Self::with_isa(threads, precision, Isa::detect())
    }

    /// As [`CpuBackend::new`] with an explicit kernel family (tests run every one).
    pub fn with_isa(threads: Option<usize>, precision: Precision, isa: Isa) -> Result<Self> {
        let threads = match threads {
            Some(0) => return Err(RuntimeError::input("threads", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        // Every precision runs on every family: bf16 on the AMX tiles or `vdpbf16ps` where
        // the CPU has them, else as bf16 weights with f32 arithmetic.
        let pool = Pool::new(threads).map_err(|e| RuntimeError::BackendUnavailable {
            backend: "cpu".into(),
            reason: e.to_string(),
        })?;
        Ok(CpuBackend {
            pool,
            isa,
            precision,
            scratch: RefCell::new(Vec::new()),
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Attention runs on the AMX tiles (bf16 products, f32 softmax) where the CPU has them,
    /// at bf16 and at int8: its rounding (~1e-3 relative) is far below int8's.
    #[cfg(target_arch = "x86_64")]
    fn attention_on_tiles(&self, d: &Dims) -> bool {
        matches!(self.precision, Precision::BF16 | Precision::Int8)
            && self.isa == Isa::Amx
            && ops::attention::amx::supported(d)
    }

    fn attention_scratch(&self, d: &Dims) -> usize {
        if d.heads == 0 {
            return 0;
        }
        #[cfg(target_arch = "x86_64")]
        if self.attention_on_tiles(d) {
            return ops::attention::amx::scratch_len(d, self.pool.threads());
        }
        ops::attention::fast::scratch_len(self.isa, d)
    }

    fn scratch_floats(&self, d: &Dims) -> usize {
        let attn = self.attention_scratch(d);
        // int8 activations (bytes, with per-row scales) or bf16 ones, K up to the MLP width.
        let k = d.dim.max(d.hidden).max(d.patch_len());
        let rows = d.rows().max(d.batch * d.patches());
        let bytes = match self.precision {
            Precision::Int8 => PackedLinear::int8_scratch_bytes(rows, k),
            Precision::BF16 => PackedLinear::bf16_scratch_bytes(rows, k),
            _ => 0,
        };
        attn.max(bytes.div_ceil(4))
    }
}

impl Backend for CpuBackend {
    type Buffer = Vec<f32>;
    type Linear = PackedLinear;

    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Cpu,
            precision: self.precision,
            device: format!(
                "{} CPU ({} kernels), {} threads",
                std::env::consts::ARCH,
                self.isa,
                self.pool.threads()
            ),
            threads: self.pool.threads(),
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

    fn linear(&self, w: HostLinear) -> Result<PackedLinear> {
        let (o, k) = (w.out_features, w.in_features);
        Ok(match self.precision {
            // An int8 model's own weights and activation scheme.
            Precision::Int8 if w.int8.is_some() => {
                let q = w.int8.expect("checked");
                PackedLinear::int8(self.isa, &q.q, q.scales, w.bias, o, k, q.input_scale)
            }
            // A float model at int8: per-channel weights quantised here, dynamic activations.
            // The patch embedding stays in float: it sees raw pixels, and quantising it costs
            // accuracy for ~1% of the FLOPs.
            Precision::Int8 if w.name != "patch_embed" => {
                PackedLinear::int8_from_f32(self.isa, &w.weight, w.bias, o, k)
            }
            Precision::F16 => PackedLinear::f16(self.isa, &w.weight, w.bias, o, k),
            // The patch embedding stays in f32 as for int8: raw pixels lose the most to
            // rounding, for ~1% of the FLOPs.
            Precision::BF16 if w.name != "patch_embed" => {
                PackedLinear::bf16(self.isa, &w.weight, w.bias, o, k)
            }
            _ => PackedLinear::f32(self.isa, &w.weight, w.bias, o, k),
        })
    }

    fn reserve(&self, d: &Dims) -> Result<()> {
        let need = self.scratch_floats(d);
        let mut s = self.scratch.borrow_mut();
        if s.len() < need {
            s.resize(need, 0.0);
        }
        Ok(())
    }

    fn patch_embed_im2col(&self, cols: &mut Vec<f32>, pixels: &Vec<f32>, d: &Dims) -> Result<()> {
        let (pl, n_patches) = (d.patch_len(), d.batch * d.patches());
        let cols_rows = RowsMut::new(&mut cols[..n_patches * pl], pl);
        self.pool.run_rows(n_patches, 4, |r0, r1| {
            im2col_rows(unsafe { cols_rows.rows(r0, r1) }, r0, pixels, d)
        });
        pool_status(&self.pool)
    }

    fn patch_embed_im2col_nhwc(&self, cols: &mut Vec<f32>, x: &Vec<f32>, d: &Dims) -> Result<()> {
        let (pl, n_patches) = (d.patch_len(), d.batch * d.patches());
        let cols_rows = RowsMut::new(&mut cols[..n_patches * pl], pl);
        self.pool.run_rows(n_patches, 4, |r0, r1| {
            im2col_nhwc_rows(unsafe { cols_rows.rows(r0, r1) }, r0, x, d)
        });
        pool_status(&self.pool)
    }

    fn dwconv(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        weight: &Vec<f32>,
        bias: &Vec<f32>,
        d: &DwDims,
    ) -> Result<()> {
        ops::dwconv::fast::dwconv_forward(&self.pool, self.isa, out, inp, weight, bias, d);
        pool_status(&self.pool)
    }

    fn token_pool(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        batch: usize,
        cells: usize,
        channels: usize,
    ) -> Result<()> {
        let (n_out, n_in) = ((1 + cells) * channels, cells * channels);
        let images = RowsMut::new(&mut out[..batch * n_out], n_out);
        self.pool.run_rows(batch, 1, |b0, b1| {
            let outs = unsafe { images.rows(b0, b1) };
            for (i, o) in outs.chunks_exact_mut(n_out).enumerate() {
                let b = b0 + i;
                token_pool_image(o, &inp[b * n_in..(b + 1) * n_in], channels);
            }
        });
        pool_status(&self.pool)
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
        let dim = d.dim;
        let regs: &[f32] = registers.map(|r| r.as_slice()).unwrap_or(&[]);
        let x_rows = RowsMut::new(&mut x[..d.rows() * dim], dim);
        self.pool.run_rows(d.rows(), 8, |r0, r1| {
            assemble_rows(
                unsafe { x_rows.rows(r0, r1) },
                r0,
                emb,
                cls,
                regs,
                pos.map(|p| p.as_slice()),
                d,
            )
        });
        pool_status(&self.pool)
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
        ops::layer_norm::fast::layer_norm_forward(
            &self.pool, self.isa, out, None, inp, weight, bias, rows, cols, eps,
        );
        pool_status(&self.pool)
    }

    fn matmul(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        w: &PackedLinear,
        rows: usize,
        epi: Epilogue<'_, Vec<f32>>,
    ) -> Result<()> {
        let epi = match epi {
            Epilogue::Store => Epi::Store,
            Epilogue::Act(a) => Epi::Act(a),
            Epilogue::Residual(g) => Epi::Residual(g),
        };
        self.matmul_slices(out, inp, w, rows, epi)
    }

    fn rope(&self, qkv: &mut Vec<f32>, cos: &Vec<f32>, sin: &Vec<f32>, d: &Dims) -> Result<()> {
        let row = 3 * d.dim;
        let rows = RowsMut::new(&mut qkv[..d.rows() * row], row);
        self.pool.run_rows(d.rows(), 16, |r0, r1| {
            ops::rope::cpu::rope_rows(unsafe { rows.rows(r0, r1) }, r0, cos, sin, d)
        });
        pool_status(&self.pool)
    }

    fn attention(&self, out: &mut Vec<f32>, qkv: &Vec<f32>, d: &Dims) -> Result<()> {
        let mut scratch = self.scratch.borrow_mut();
        let need = self.attention_scratch(d);
        if scratch.len() < need {
            // Only when `reserve` was not called for these dims (a forward outside a plan).
            scratch.resize(need, 0.0);
        }
        #[cfg(target_arch = "x86_64")]
        if self.attention_on_tiles(d) {
            ops::attention::amx::attention_forward(&self.pool, out, qkv, d, &mut scratch);
            return pool_status(&self.pool);
        }
        ops::attention::fast::attention_forward(&self.pool, self.isa, out, qkv, d, &mut scratch);
        pool_status(&self.pool)
    }

    fn swiglu(
        &self,
        out: &mut Vec<f32>,
        gate_up: &Vec<f32>,
        rows: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<()> {
        ops::swiglu::fast::swiglu_forward(&self.pool, self.isa, out, gate_up, rows, hidden, act);
        pool_status(&self.pool)
    }
}

impl CpuBackend {
    fn matmul_slices(
        &self,
        out: &mut [f32],
        inp: &[f32],
        w: &PackedLinear,
        rows: usize,
        epi: Epi,
    ) -> Result<()> {
        let need = w.scratch_bytes(rows);
        let mut scratch = self.scratch.borrow_mut();
        if scratch.len() * 4 < need {
            scratch.resize(need.div_ceil(4), 0.0);
        }
        // SAFETY: viewing f32 storage as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(scratch.as_mut_ptr() as *mut u8, scratch.len() * 4)
        };
        matmul_forward(&self.pool, out, inp, w, rows, epi, bytes);
        pool_status(&self.pool)
    }
}

/// `Err` when a task of the op just run panicked: its output is incomplete.
fn pool_status(pool: &Pool) -> Result<()> {
    match pool.take_panic() {
        None => Ok(()),
        Some(reason) => Err(RuntimeError::TaskPanicked {
            backend: "cpu".into(),
            reason,
        }),
    }
}
