//! The CUDA backend: the op set's CUDA forms (`ops/<op>/cuda.rs` + `<op>.cu`) on a
//! [`Device`]: a GPU (feature `cuda`: NVRTC kernels, cuBLASLt GEMMs with f32 accumulation,
//! tensor-core attention in f16 / bf16 sessions on sm_80+, pinned host memory) or, as
//! `cuda-emulated`, the CPU emulator of the same kernels, which runs this host code and every
//! kernel in CI. The whole forward is recorded after its first run and replayed (CUDA graphs).
//!
//! Precisions: f32 (GEMMs without TF32); f16 / bf16 weights and GEMM inputs with f32
//! accumulation; activations between ops stay f32.

pub mod plan;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use half::{bf16, f16};

use super::{Backend, Epilogue, HostLinear, Op};
use crate::backend::cuda::device::{DevPtr, Device, DeviceBuffer, Elem, GraphId, bytes, bytes_mut};
use crate::backend::{BackendInfo, BackendKind, Precision};
use crate::config::Activation;
use crate::error::{Result, RuntimeError};
use crate::ops::matmul::cuda::{CudaLinear, GemmScratch};
use crate::ops::{self, Dims};

/// An f32 device buffer.
pub type CudaBuffer = DeviceBuffer;

/// Recorded forwards: a plan's second forward is recorded and every later one replays it
/// (one launch instead of one per op). Scratch that moves invalidates them.
#[derive(Default)]
struct Graphs {
    enabled: bool,
    runs: HashMap<u64, u32>,
    recorded: Vec<(u64, GraphId)>,
    capturing: Option<u64>,
}

/// Graphs kept (oldest dropped first).
const MAX_GRAPHS: usize = 8;

/// How to open a CUDA backend.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    pub precision: Precision,
    /// GPU index (default 0).
    pub ordinal: Option<usize>,
    /// Run on the emulator instead of a GPU.
    pub emulated: bool,
    /// Record each forward shape as a CUDA graph and replay it.
    pub graphs: bool,
    /// Tensor-core attention where the kernel exists (f16 / bf16 on sm_80+).
    pub tensor_core_attention: bool,
}

impl CudaOptions {
    /// A GPU (or the emulator) at `precision` with graphs and tensor-core attention on.
    pub fn new(precision: Precision, ordinal: Option<usize>, emulated: bool) -> CudaOptions {
        CudaOptions {
            precision,
            ordinal,
            emulated,
            graphs: true,
            tensor_core_attention: true,
        }
    }
}

pub struct CudaBackend {
    dev: Arc<dyn Device>,
    kind: BackendKind,
    precision: Precision,
    /// Tensor-core attention where the kernel exists.
    tensor_core_attention: bool,
    scratch: RefCell<GemmScratch>,
    graphs: RefCell<Graphs>,
}

impl CudaBackend {
    /// Opens the device and loads the op kernels.
    pub fn new(o: &CudaOptions) -> Result<Self> {
        let backend = if o.emulated { "cuda-emulated" } else { "cuda" };
        if !matches!(
            o.precision,
            Precision::F32 | Precision::F16 | Precision::BF16
        ) {
            return Err(RuntimeError::BackendUnavailable {
                backend: backend.into(),
                reason: format!("{} is not supported on cuda (f32, f16, bf16)", o.precision),
            });
        }
        let dev = crate::backend::cuda::open(&ops::cuda_program(), o.emulated, o.ordinal)?;
        Ok(Self::on(dev, o))
    }

    /// A backend on an opened device (which must have `ops::cuda_program()` loaded).
    pub fn on(dev: Arc<dyn Device>, o: &CudaOptions) -> Self {
        let (precision, emulated) = (o.precision, o.emulated);
        CudaBackend {
            scratch: RefCell::new(GemmScratch::new(&dev)),
            dev,
            kind: if emulated {
                BackendKind::CudaEmulated
            } else {
                BackendKind::Cuda
            },
            precision,
            tensor_core_attention: o.tensor_core_attention,
            graphs: RefCell::new(Graphs {
                enabled: o.graphs,
                ..Default::default()
            }),
        }
    }

    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }

    /// Switches the tensor-core attention on or off (f16 / bf16 sessions on sm_80+; the
    /// CUDA-core kernel otherwise). Parity checks compare both.
    pub fn set_tensor_core_attention(&mut self, on: bool) {
        self.tensor_core_attention = on;
    }

    /// Forwards recorded and being replayed now (one per recent plan).
    pub fn recorded_graphs(&self) -> usize {
        self.graphs.borrow().recorded.len()
    }

    /// Switches recording forwards as graphs on or off.
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs.borrow_mut().enabled = on;
    }

    /// The attention kernel this backend runs for `head_dim`.
    pub fn attention_kernel(&self, head_dim: usize) -> &'static str {
        let mma = ops::attention::cuda::mma_kernel(self.precision, self.dev.sm(), head_dim);
        match mma {
            Some(k) if self.tensor_core_attention => k,
            _ => "attention_forward",
        }
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.dev.memory()
    }

    /// Compute capability as major * 10 + minor (90 on Hopper, 87 on Jetson Orin).
    pub fn sm(&self) -> u32 {
        self.dev.sm()
    }

    fn check_memory(&self, bytes: usize, what: &str) -> Result<()> {
        let (free, total) = self.memory()?;
        if bytes > free {
            return Err(plan::out_of_memory(
                what,
                bytes as u64,
                free as u64,
                total as u64,
            ));
        }
        Ok(())
    }

    fn buffer(&self, len: usize, elem: usize, what: &str) -> Result<DeviceBuffer> {
        if len * elem >= 4 << 20 {
            self.check_memory(len * elem, what)?;
        }
        DeviceBuffer::new(&self.dev, len, elem, what)
    }

    /// Drops every recorded graph (scratch moved, so their addresses are stale).
    fn forget_graphs(&self, g: &mut Graphs) {
        for (_, id) in g.recorded.drain(..) {
            self.dev.drop_graph(id);
        }
        g.runs.clear();
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;
    type Linear = CudaLinear;

    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: self.kind,
            precision: self.precision,
            device: self.dev.name(),
            threads: 1,
        }
    }

    fn supports(&self, op: Op) -> std::result::Result<(), String> {
        super::attention_head_dims_up_to(op, ops::attention::cuda::MAX_HEAD_DIM)
    }

    fn alloc(&self, len: usize) -> Result<CudaBuffer> {
        self.buffer(len, 4, &format!("an activation buffer of {len} floats"))
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuffer> {
        let b = self.buffer(data.len(), 4, "a parameter")?;
        self.dev.upload(b.ptr, bytes(data))?;
        Ok(b)
    }

    fn write(&self, dst: &mut CudaBuffer, data: &[f32]) -> Result<()> {
        if data.len() > dst.len {
            return Err(RuntimeError::input(
                "buffer",
                format!("write of {} values into {}", data.len(), dst.len),
            ));
        }
        self.dev.upload(dst.ptr, bytes(data))
    }

    fn read(&self, src: &CudaBuffer, dst: &mut [f32]) -> Result<()> {
        if dst.len() > src.len {
            return Err(RuntimeError::input(
                "buffer",
                format!("read of {} values from {}", dst.len(), src.len),
            ));
        }
        self.dev.download(src.ptr, bytes_mut(dst))
    }

    fn linear(&self, w: HostLinear) -> Result<CudaLinear> {
        let (ty, raw): (Elem, Vec<u8>) = match self.precision {
            Precision::F16 => (
                Elem::F16,
                w.weight
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            Precision::BF16 => (
                Elem::BF16,
                w.weight
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            _ => (Elem::F32, bytes(&w.weight).to_vec()),
        };
        let wbuf = self.buffer(
            w.weight.len(),
            ty.bytes(),
            &format!("the weights of {}", w.name),
        )?;
        self.dev.upload(wbuf.ptr, &raw)?;
        let bias = match &w.bias {
            Some(b) => self.upload(b)?,
            None => self.alloc(w.out_features)?,
        };
        Ok(CudaLinear {
            w: wbuf,
            ty,
            has_bias: w.bias.is_some(),
            bias,
            out_features: w.out_features,
            in_features: w.in_features,
        })
    }

    fn reserve(&self, d: &Dims) -> Result<()> {
        self.check_memory(
            plan::gemm_scratch_bytes(d, self.precision),
            "the GEMM scratch of this input shape",
        )?;
        let mut s = self.scratch.borrow_mut();
        s.acc(plan::acc_scratch_len(d))?;
        if self.precision != Precision::F32 {
            s.half(0, plan::half_scratch_len(d))?;
        }
        Ok(())
    }

    fn patch_embed_im2col(
        &self,
        cols: &mut CudaBuffer,
        pixels: &CudaBuffer,
        d: &Dims,
    ) -> Result<()> {
        ops::patch_embed::cuda::patch_embed_forward_im2col(&*self.dev, cols.ptr, pixels.ptr, d)
    }

    fn patch_embed_im2col_nhwc(
        &self,
        cols: &mut CudaBuffer,
        x: &CudaBuffer,
        d: &Dims,
    ) -> Result<()> {
        ops::patch_embed::cuda::patch_embed_forward_im2col_nhwc(&*self.dev, cols.ptr, x.ptr, d)
    }

    fn dwconv(
        &self,
        out: &mut CudaBuffer,
        inp: &CudaBuffer,
        weight: &CudaBuffer,
        bias: &CudaBuffer,
        d: &ops::dwconv::DwDims,
    ) -> Result<()> {
        ops::dwconv::cuda::dwconv_forward(&*self.dev, out.ptr, inp.ptr, weight.ptr, bias.ptr, d)
    }

    fn token_pool(
        &self,
        out: &mut CudaBuffer,
        inp: &CudaBuffer,
        batch: usize,
        cells: usize,
        channels: usize,
    ) -> Result<()> {
        ops::token_pool::cuda::token_pool_forward(
            &*self.dev, out.ptr, inp.ptr, batch, cells, channels,
        )
    }

    fn patch_embed_assemble(
        &self,
        x: &mut CudaBuffer,
        emb: &CudaBuffer,
        cls: &CudaBuffer,
        registers: Option<&CudaBuffer>,
        pos: Option<&CudaBuffer>,
        d: &Dims,
    ) -> Result<()> {
        ops::patch_embed::cuda::patch_embed_forward_assemble(
            &*self.dev,
            x.ptr,
            emb.ptr,
            cls.ptr,
            registers.map(|r| r.ptr),
            pos.map(|p| p.ptr),
            d,
        )
    }

    fn layer_norm(
        &self,
        out: &mut CudaBuffer,
        inp: &CudaBuffer,
        weight: &CudaBuffer,
        bias: &CudaBuffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        ops::layer_norm::cuda::layer_norm_forward(
            &*self.dev, out.ptr, None, inp.ptr, weight.ptr, bias.ptr, rows, cols, eps,
        )
    }

    fn matmul(
        &self,
        out: &mut CudaBuffer,
        inp: &CudaBuffer,
        w: &CudaLinear,
        rows: usize,
        epilogue: Epilogue<'_, CudaBuffer>,
    ) -> Result<()> {
        let (gamma, act): (Option<DevPtr>, Option<Activation>) = match epilogue {
            Epilogue::Store => (None, None),
            Epilogue::Act(a) => (None, Some(a)),
            Epilogue::Residual(g) => (Some(g.ptr), None),
        };
        ops::matmul::cuda::matmul_forward(
            &*self.dev,
            &mut self.scratch.borrow_mut(),
            out.ptr,
            inp.ptr,
            w,
            rows,
            gamma,
            act,
        )
    }

    fn rope(
        &self,
        qkv: &mut CudaBuffer,
        cos: &CudaBuffer,
        sin: &CudaBuffer,
        d: &Dims,
    ) -> Result<()> {
        ops::rope::cuda::rope_forward(&*self.dev, qkv.ptr, cos.ptr, sin.ptr, d)
    }

    fn attention(&self, out: &mut CudaBuffer, qkv: &CudaBuffer, d: &Dims) -> Result<()> {
        let kernel = self.attention_kernel(d.head_dim());
        ops::attention::cuda::attention_forward(&*self.dev, kernel, out.ptr, qkv.ptr, d)
    }

    fn swiglu(
        &self,
        out: &mut CudaBuffer,
        gate_up: &CudaBuffer,
        rows: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<()> {
        ops::swiglu::cuda::swiglu_forward(&*self.dev, out.ptr, gate_up.ptr, rows, hidden, act)
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    fn begin_forward(&self, plan: u64) -> Result<bool> {
        let mut g = self.graphs.borrow_mut();
        if !g.enabled {
            return Ok(false);
        }
        if std::mem::take(&mut self.scratch.borrow_mut().grew) {
            self.forget_graphs(&mut g);
        }
        if let Some(&(_, id)) = g.recorded.iter().find(|(p, _)| *p == plan) {
            self.dev.replay(id)?;
            return Ok(true);
        }
        if g.runs.get(&plan).copied().unwrap_or(0) >= 1 {
            if self.dev.begin_capture()? {
                g.capturing = Some(plan);
            } else {
                // Recording unsupported here: run every forward directly from now on.
                g.enabled = false;
            }
        }
        Ok(false)
    }

    fn end_forward(&self, plan: u64, completed: bool) -> Result<bool> {
        let mut g = self.graphs.borrow_mut();
        *g.runs.entry(plan).or_insert(0) += 1;
        if g.capturing != Some(plan) {
            return Ok(true);
        }
        g.capturing = None;
        // The recorded ops did not run: they run now through the graph, or, when the
        // recording or an op failed (or scratch moved meanwhile), graphs are switched off and
        // the caller issues the ops directly.
        let id = self.dev.end_capture()?;
        let moved = std::mem::take(&mut self.scratch.borrow_mut().grew);
        let id = match (completed && !moved, id) {
            (true, Some(id)) => id,
            (_, other) => {
                if let Some(id) = other {
                    self.dev.drop_graph(id);
                }
                g.enabled = false;
                return Ok(false);
            }
        };
        if self.dev.replay(id).is_err() {
            self.dev.drop_graph(id);
            g.enabled = false;
            return Ok(false);
        }
        if g.recorded.len() == MAX_GRAPHS {
            let (_, old) = g.recorded.remove(0);
            self.dev.drop_graph(old);
        }
        g.recorded.push((plan, id));
        Ok(true)
    }
}
