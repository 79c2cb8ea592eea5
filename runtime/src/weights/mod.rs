//! Weights: memory-mapped safetensors ([`store`]) and the architecture's tensor names ([`layout`]).

pub mod layout;
pub mod store;

pub use layout::{LayerParam, Param, WeightLayout};
pub use store::{StoredTensor, TensorStore};
