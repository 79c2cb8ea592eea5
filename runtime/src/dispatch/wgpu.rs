//! The wgpu backend: the op set's WGSL forms (`ops/<op>/wgpu.rs`) on a [`WgpuDevice`].
//! f32, or f16 weights with f32 arithmetic (SHADER_F16).

use super::{Backend, Epilogue, HostLinear, Op};
use crate::backend::wgpu::{GpuBuffer, WgpuDevice};
use crate::backend::{BackendInfo, BackendKind, Precision};
use crate::config::Activation;
use crate::error::Result;
use crate::ops::matmul::wgpu::GpuLinear;
use crate::ops::{self, Dims};

pub struct WgpuBackend {
    dev: WgpuDevice,
    precision: Precision,
}

impl WgpuBackend {
    /// Opens the preferred adapter (or the one `adapter` / `DINOEDGE_WGPU_ADAPTER` names).
    pub fn new(precision: Precision, adapter: Option<&str>) -> Result<Self> {
        if !matches!(precision, Precision::F32 | Precision::F16) {
            return Err(crate::error::RuntimeError::BackendUnavailable {
                backend: "wgpu".into(),
                reason: format!("precision {precision} is not supported on wgpu (use f32 or f16)"),
            });
        }
        Ok(WgpuBackend {
            dev: WgpuDevice::new(precision == Precision::F16, adapter)?,
            precision,
        })
    }

    pub fn device(&self) -> &WgpuDevice {
        &self.dev
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        self.dev.adapter_info()
    }

    /// The device limits the session runs under.
    pub fn adapter_limits(&self) -> &wgpu::Limits {
        self.dev.adapter_limits()
    }
}

impl Backend for WgpuBackend {
    type Buffer = GpuBuffer;
    type Linear = GpuLinear;

    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Wgpu,
            precision: self.precision,
            device: {
                let a = self.dev.adapter_info();
                format!("{} ({:?}, {:?})", a.name, a.backend, a.device_type)
            },
            threads: 1,
        }
    }

    fn supports(&self, op: Op) -> std::result::Result<(), String> {
        super::attention_head_dims_up_to(op, crate::ops::attention::wgpu::MAX_HEAD_DIM)
    }

    fn alloc(&self, len: usize) -> Result<GpuBuffer> {
        self.dev.zeros(len, "activations")
    }

    fn upload(&self, data: &[f32]) -> Result<GpuBuffer> {
        self.dev
            .buffer(bytemuck::cast_slice(data), data.len(), "parameter")
    }

    fn write(&self, dst: &mut GpuBuffer, data: &[f32]) -> Result<()> {
        self.dev.write(dst, data)
    }

    fn read(&self, src: &GpuBuffer, dst: &mut [f32]) -> Result<()> {
        self.dev.read_all(&mut [(src, dst)])
    }

    fn read_many(&self, reads: &mut [(&GpuBuffer, &mut [f32])]) -> Result<()> {
        self.dev.read_all(reads)
    }

    fn linear(&self, w: HostLinear) -> Result<GpuLinear> {
        let (k, n) = (w.in_features, w.out_features);
        // (N, K) -> (K, N): both matmul tiles then load contiguous rows.
        let mut t = vec![0.0f32; k * n];
        for o in 0..n {
            for i in 0..k {
                t[i * n + o] = w.weight[o * k + i];
            }
        }
        let f16 = self.precision == Precision::F16;
        let wbuf = if f16 {
            let halves: Vec<u16> = t
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            self.dev
                .buffer(bytemuck::cast_slice(&halves), k * n, &w.name)?
        } else {
            self.dev.buffer(bytemuck::cast_slice(&t), k * n, &w.name)?
        };
        let bias = w.bias.unwrap_or_else(|| vec![0.0; n]);
        Ok(GpuLinear {
            w: wbuf,
            bias: self.upload(&bias)?,
            k,
            n,
            f16,
        })
    }

    fn reserve(&self, _d: &Dims) -> Result<()> {
        self.dev.trim_caches();
        Ok(())
    }

    fn patch_embed_im2col(&self, cols: &mut GpuBuffer, pixels: &GpuBuffer, d: &Dims) -> Result<()> {
        ops::patch_embed::wgpu::patch_embed_forward_im2col(&self.dev, cols, pixels, d)
    }

    fn patch_embed_im2col_nhwc(&self, cols: &mut GpuBuffer, x: &GpuBuffer, d: &Dims) -> Result<()> {
        ops::patch_embed::wgpu::patch_embed_forward_im2col_nhwc(&self.dev, cols, x, d)
    }

    fn dwconv(
        &self,
        out: &mut GpuBuffer,
        inp: &GpuBuffer,
        weight: &GpuBuffer,
        bias: &GpuBuffer,
        d: &ops::dwconv::DwDims,
    ) -> Result<()> {
        ops::dwconv::wgpu::dwconv_forward(&self.dev, out, inp, weight, bias, d)
    }

    fn token_pool(
        &self,
        out: &mut GpuBuffer,
        inp: &GpuBuffer,
        batch: usize,
        cells: usize,
        channels: usize,
    ) -> Result<()> {
        ops::token_pool::wgpu::token_pool_forward(&self.dev, out, inp, batch, cells, channels)
    }

    fn patch_embed_assemble(
        &self,
        x: &mut GpuBuffer,
        emb: &GpuBuffer,
        cls: &GpuBuffer,
        registers: Option<&GpuBuffer>,
        pos: Option<&GpuBuffer>,
        d: &Dims,
    ) -> Result<()> {
        ops::patch_embed::wgpu::patch_embed_forward_assemble(
            &self.dev, x, emb, cls, registers, pos, d,
        )
    }

    fn layer_norm(
        &self,
        out: &mut GpuBuffer,
        inp: &GpuBuffer,
        weight: &GpuBuffer,
        bias: &GpuBuffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        ops::layer_norm::wgpu::layer_norm_forward(
            &self.dev, out, inp, weight, bias, rows, cols, eps,
        )
    }

    fn matmul(
        &self,
        out: &mut GpuBuffer,
        inp: &GpuBuffer,
        w: &GpuLinear,
        rows: usize,
        epi: Epilogue<'_, GpuBuffer>,
    ) -> Result<()> {
        ops::matmul::wgpu::matmul_forward(&self.dev, out, inp, w, rows, epi)
    }

    fn rope(&self, qkv: &mut GpuBuffer, cos: &GpuBuffer, sin: &GpuBuffer, d: &Dims) -> Result<()> {
        ops::rope::wgpu::rope_forward(&self.dev, qkv, cos, sin, d)
    }

    fn attention(&self, out: &mut GpuBuffer, qkv: &GpuBuffer, d: &Dims) -> Result<()> {
        ops::attention::wgpu::attention_forward(&self.dev, out, qkv, d)
    }

    fn swiglu(
        &self,
        out: &mut GpuBuffer,
        gate_up: &GpuBuffer,
        rows: usize,
        hidden: usize,
        act: Activation,
    ) -> Result<()> {
        ops::swiglu::wgpu::swiglu_forward(&self.dev, out, gate_up, rows, hidden, act)
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.submit()
    }
}
