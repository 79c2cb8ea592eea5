//! Weights: memory-mapped safetensors ([`store`]). Each architecture names its own tensors
//! (`models::<name>::layout`).

pub mod store;

pub use store::{StoredTensor, TensorStore};
