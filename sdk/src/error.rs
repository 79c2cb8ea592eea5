//! The SDK's one error type.

use std::path::PathBuf;

use dinoedge_runtime::RuntimeError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Model loading or inference failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),

    /// Distillation failed.
    #[error(transparent)]
    Distill(#[from] dinoedge_distill::DistillError),

    /// An image file could not be decoded.
    #[error("{path}: cannot read image: {reason}")]
    Image { path: PathBuf, reason: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file has the wrong content (a features or pixels file, say).
    #[error("{path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },

    /// A camera could not be opened or read.
    #[error("camera {index}: {reason}")]
    Camera { index: u32, reason: String },

    /// Arguments that do not fit together.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
