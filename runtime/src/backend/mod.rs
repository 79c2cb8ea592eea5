//! Device plumbing, one folder per device, knowing no op: the CPU's thread pool and kernel
//! family ([`cpu`]), the wgpu device ([`wgpu`], feature `wgpu`) and the CUDA device layer
//! ([`cuda`]: a GPU with feature `cuda`, or the CPU emulator of its kernels). The op set runs
//! on them through [`crate::dispatch`]; the ops' kernels (`ops/<op>/`) use their APIs.
//!
//! Here too: the names every layer shares ([`BackendKind`], [`Precision`], [`BackendInfo`]).

pub mod cpu;
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// Numeric precision a backend computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    BF16,
    Int8,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
            Precision::Int8 => "int8",
        })
    }
}

impl FromStr for Precision {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::BF16),
            "int8" | "i8" | "w8a8" => Ok(Precision::Int8),
            other => Err(RuntimeError::input(
                "precision",
                format!("{other:?} (expected f32, f16, bf16 or int8)"),
            )),
        }
    }
}

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The fast CPU backend (SIMD kernels, f32 / f16 weights / int8).
    Cpu,
    /// The readable f32 CPU reference every other backend is tested against.
    CpuReference,
    Wgpu,
    Cuda,
    /// The CUDA backend's host code and kernels on [`cuda::emu::EmuDevice`] (the CPU): for
    /// tests of the CUDA path without a GPU. Slow; tiny models only.
    #[serde(rename = "cuda-emulated")]
    CudaEmulated,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::CpuReference => "cpu-ref",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
            BackendKind::CudaEmulated => "cuda-emulated",
        })
    }
}

impl FromStr for BackendKind {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(BackendKind::Cpu),
            "cpu-ref" | "cpu-reference" => Ok(BackendKind::CpuReference),
            "wgpu" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            "cuda-emulated" | "cuda-emu" => Ok(BackendKind::CudaEmulated),
            other => Err(RuntimeError::input(
                "backend",
                format!("{other:?} (expected cpu, cpu-ref, wgpu, cuda or cuda-emulated)"),
            )),
        }
    }
}

/// What a backend reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub kind: BackendKind,
    pub precision: Precision,
    /// Human description of the device, e.g. `"x86_64, 2 threads"`.
    pub device: String,
    pub threads: usize,
}

/// Backends compiled into this build (`cuda-emulated` needs a C++ compiler at run time).
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["cpu", "cpu-ref"];
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v.push("cuda-emulated");
    v
}
