//! Importers that turn other model files into the HF safetensors layout.

pub mod onnx;

pub use onnx::{OnnxImport, import_onnx, write_model_dir};
