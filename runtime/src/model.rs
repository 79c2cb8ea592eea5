//! A loaded model: its config, its memory-mapped weights and where each parameter lives.
//!
//! Loading validates every tensor name, shape and dtype but converts nothing: each backend
//! converts the mapped data once, into its own layout, when a session is created.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::config::ModelConfig;
use crate::error::{Result, RuntimeError};
use crate::models::convnext::layout::{self as convnext_layout, ConvNextLayout};
use crate::models::vit::layout::{self, Param, Resolved, WeightLayout};
use crate::weights::store::{StoredTensor, TensorStore};

/// A quantised Linear weight as stored: `w[o][k] = q[o][k] * scales[o]`.
#[derive(Clone, Debug)]
pub struct Int8Weight {
    /// (out, in) row-major.
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    /// Static activation scale of the Linear's input, when calibrated.
    pub input_scale: Option<f32>,
}

impl Int8Weight {
    /// `w = q * scale`, per output channel (row).
    pub fn dequantize(&self) -> Vec<f32> {
        let cols = self.q.len() / self.scales.len().max(1);
        self.q
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f32 * self.scales[i / cols])
            .collect()
    }
}

pub struct Model {
    dir: PathBuf,
    config: ModelConfig,
    store: TensorStore,
    layout: Layout,
}

/// Where each parameter lives, per architecture.
enum Layout {
    Vit(WeightLayout),
    ConvNext(ConvNextLayout),
}

/// An architecture's parameter names ([`Param`] for ViTs, [`convnext_layout::Param`]):
/// what [`Model::tensor_f32`] and friends take.
pub trait ParamKey: Copy {
    /// Where `self` lives in `m`; `None` when `m` is another architecture or the
    /// parameter is absent.
    fn resolved(self, m: &Model) -> Option<&Resolved>;
    /// The error for a missing `self` (its hub name and shape).
    fn missing(self, m: &Model) -> RuntimeError;
}

impl ParamKey for Param {
    fn resolved(self, m: &Model) -> Option<&Resolved> {
        match &m.layout {
            Layout::Vit(l) => l.params.get(&self),
            Layout::ConvNext(_) => None,
        }
    }

    fn missing(self, m: &Model) -> RuntimeError {
        match &m.config {
            ModelConfig::Vit(c) => RuntimeError::MissingTensor {
                path: m.store.main_path().to_path_buf(),
                tensor: layout::hub_location(c, self).key,
                expected: layout::shape(c, self),
            },
            other => RuntimeError::WrongArchitecture {
                what: format!("ViT parameter {self:?}"),
                needs: "a ViT",
                model: other.describe(),
            },
        }
    }
}

impl ParamKey for convnext_layout::Param {
    fn resolved(self, m: &Model) -> Option<&Resolved> {
        match &m.layout {
            Layout::ConvNext(l) => l.params.get(&self),
            Layout::Vit(_) => None,
        }
    }

    fn missing(self, m: &Model) -> RuntimeError {
        match &m.config {
            ModelConfig::ConvNext(c) => RuntimeError::MissingTensor {
                path: m.store.main_path().to_path_buf(),
                tensor: convnext_layout::hub_name(self),
                expected: convnext_layout::shape(c, self),
            },
            other => RuntimeError::WrongArchitecture {
                what: format!("ConvNeXt parameter {self:?}"),
                needs: "a ConvNeXt",
                model: other.describe(),
            },
        }
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads an HF model directory: `config.json` plus `model.safetensors` or a sharded set
    /// with `model.safetensors.index.json`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(RuntimeError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        }
        let config = ModelConfig::from_dir(dir)?;
        let store = TensorStore::open_dir(dir)?;
        Self::from_parts(dir.to_path_buf(), config, store)
    }

    /// Builds a model from an already opened store (validates names and shapes).
    pub fn from_parts(dir: PathBuf, config: ModelConfig, store: TensorStore) -> Result<Self> {
        let layout = match &config {
            ModelConfig::Vit(c) => Layout::Vit(layout::resolve(c, &store)?),
            ModelConfig::ConvNext(c) => Layout::ConvNext(convnext_layout::resolve(c, &store)?),
        };
        Ok(Model {
            dir,
            config,
            store,
            layout,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn store(&self) -> &TensorStore {
        &self.store
    }

    /// Where a parameter is stored; `None` for an absent optional one (the mask token).
    pub fn stored<K: ParamKey>(&self, p: K) -> Option<(StoredTensor<'_>, Option<Range<usize>>)> {
        let r = p.resolved(self)?;
        let t = self.store.get(&r.key)?;
        Some((t, r.rows.clone()))
    }

    /// A parameter converted to f32 in its HF layout (int8 weights are dequantised,
    /// `w = q * scale` per output channel).
    pub fn tensor_f32<K: ParamKey>(&self, p: K) -> Result<Vec<f32>> {
        if let Some(q) = self.int8(p)? {
            return Ok(q.dequantize());
        }
        let (t, rows) = self.stored(p).ok_or_else(|| p.missing(self))?;
        match rows {
            None => t.to_f32(),
            Some(r) => {
                let cols: usize = t.shape[1..].iter().product();
                let mut out = vec![0.0; r.len() * cols];
                t.read_f32_into(r.start * cols, &mut out)?;
                Ok(out)
            }
        }
    }

    /// Whether the model stores int8 Linear weights (config `quantization` section).
    pub fn is_quantized(&self) -> bool {
        self.config.quantization().is_some()
    }

    /// The int8 form of a quantised Linear weight; `None` for float parameters.
    pub fn int8<K: ParamKey>(&self, p: K) -> Result<Option<Int8Weight>> {
        let Some(r) = p.resolved(self) else {
            return Ok(None);
        };
        let Some(scale_key) = &r.scale_key else {
            return Ok(None);
        };
        let t = self.store.get(&r.key).ok_or_else(|| p.missing(self))?;
        let st = self.store.get(scale_key).ok_or_else(|| p.missing(self))?;
        let (mut q, mut scales) = (t.to_i8()?, st.to_f32()?);
        if let Some(rows) = &r.rows {
            let cols: usize = t.shape[1..].iter().product();
            q = q[rows.start * cols..rows.end * cols].to_vec();
            scales = scales[rows.clone()].to_vec();
        }
        let input_scale = match &r.input_scale_key {
            Some(k) => Some(self.store.get(k).ok_or_else(|| p.missing(self))?.to_f32()?[0]),
            None => None,
        };
        Ok(Some(Int8Weight {
            q,
            scales,
            input_scale,
        }))
    }

    /// Number of parameters actually stored for this architecture.
    pub fn num_parameters(&self) -> usize {
        let shapes: Box<dyn Iterator<Item = &Resolved>> = match &self.layout {
            Layout::Vit(l) => Box::new(l.params.values()),
            Layout::ConvNext(l) => Box::new(l.params.values()),
        };
        shapes.map(|r| r.shape.iter().product::<usize>()).sum()
    }
}
