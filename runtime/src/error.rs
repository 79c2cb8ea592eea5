//! The runtime's one error type. Every variant names the file, tensor and shape involved
//! where there is one, so that a message alone tells the user what to fix.

use std::path::PathBuf;

/// Result alias used across the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The model directory has no `config.json`.
    #[error(
        "{dir}: no config.json (expected an HF model directory with config.json and model.safetensors)"
    )]
    MissingConfig { dir: PathBuf },

    /// `config.json` is not valid JSON or a field has the wrong type.
    #[error("{path}: invalid config: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },

    /// `model_type` is not one we implement.
    #[error("{path}: unknown model_type {model_type:?} (supported: {supported})")]
    UnknownModelType {
        path: PathBuf,
        model_type: String,
        supported: String,
    },

    /// A job that needs another architecture than the model's (ONNX import, say, reads ViTs).
    #[error("{what} needs {needs}; this model is a {model}")]
    WrongArchitecture {
        what: String,
        needs: &'static str,
        model: String,
    },

    /// No weights file in the model directory.
    #[error("{dir}: no weights (expected model.safetensors or model.safetensors.index.json)")]
    MissingWeights { dir: PathBuf },

    /// A safetensors file is truncated, corrupt or otherwise unreadable.
    #[error("{path}: corrupt safetensors file: {reason}")]
    CorruptWeights { path: PathBuf, reason: String },

    /// A tensor the architecture needs is not in any weights file.
    #[error("{path}: missing tensor {tensor:?} (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
    },

    /// A tensor is in the weights files but the architecture has no place for it.
    #[error(
        "{path}: unexpected tensor {tensor:?} with shape {shape:?} (not part of this {arch} model)"
    )]
    UnexpectedTensor {
        path: PathBuf,
        tensor: String,
        shape: Vec<usize>,
        arch: String,
    },

    /// A tensor has the wrong shape for the config.
    #[error("{path}: tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor is stored in a dtype we cannot convert.
    #[error(
        "{path}: tensor {tensor:?} has unsupported dtype {dtype} (supported: F32, F16, BF16{extra})"
    )]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
        extra: &'static str,
    },

    /// The config's `quantization` section and the stored tensors disagree.
    #[error("{path}: quantization mismatch: {reason}")]
    QuantizationMismatch { path: PathBuf, reason: String },

    /// An input tensor (pixels, features) has the wrong shape.
    #[error("invalid input {name}: {reason}")]
    InvalidInput { name: String, reason: String },

    /// The image is smaller than one patch in some dimension.
    #[error(
        "image of {width}x{height} pixels (width x height) is smaller than one {patch}x{patch} patch"
    )]
    ImageTooSmall {
        height: usize,
        width: usize,
        patch: usize,
    },

    /// The requested backend is not compiled in, or has no device here.
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable { backend: String, reason: String },

    /// An ONNX graph could not be imported.
    #[error("{path}: cannot import ONNX graph: {reason}")]
    OnnxImport { path: PathBuf, reason: String },

    /// A device backend reported an error.
    #[error("{backend} backend: {reason}")]
    Device { backend: String, reason: String },

    /// An output path that would destroy an input or an existing model.
    #[error("{path}: refusing to write here: {reason}")]
    OutputRefused { path: PathBuf, reason: String },

    /// An input is larger than a configured limit (an image's pixels, a model input's tokens).
    #[error("{what}: {found} exceeds the limit of {limit} (raise it with {raise})")]
    LimitExceeded {
        what: String,
        found: String,
        limit: String,
        /// The option that raises the limit.
        raise: String,
    },

    /// The backend cannot run this model (a head dim beyond its attention kernel, say).
    #[error("backend {backend} cannot run this model: {reason}")]
    Unsupported { backend: String, reason: String },

    /// A compute task panicked (a bug): the op's output is incomplete and was discarded.
    #[error("internal error in a {backend} compute task (please report): {reason}")]
    TaskPanicked { backend: String, reason: String },
}

impl RuntimeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn input(name: impl Into<String>, reason: impl Into<String>) -> Self {
        RuntimeError::InvalidInput {
            name: name.into(),
            reason: reason.into(),
        }
    }
}
