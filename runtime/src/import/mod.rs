//! Importers that turn other model files into the HF safetensors layout.

pub mod onnx;
pub mod onnx_convnext;
mod onnx_pb;
mod onnx_tensor;

pub use onnx::{Import, OnnxImport, import_model, import_onnx, write_import, write_model_dir};
pub use onnx_convnext::ConvNextImport;
