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
    #[cfg(feature = "distill")]
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

    /// A camera could not be opened or read (unplugged, busy, no such device).
    #[error("camera {index}: {reason}")]
    Camera { index: u32, reason: String },

    /// A frame source failed, ended early, or delivered no frame in time.
    #[error("frame source {name}: {reason}")]
    Source { name: String, reason: String },

    /// A GStreamer pipeline names an element this machine does not have installed.
    #[error("GStreamer element `{element}` is not installed (it ships in {package})")]
    MissingPlugin { element: String, package: String },

    /// A feature this build or machine does not have (camera support not compiled in).
    #[error("{what} is not available: {reason}")]
    Unsupported { what: String, reason: String },

    /// The system refused a resource: threads, processes, memory for a worker.
    #[error("cannot start {what}: {reason}")]
    Resource { what: String, reason: String },

    /// An address could not be served (in use, not local, not an IP address).
    #[error("cannot serve on {addr}: {reason}")]
    Network { addr: String, reason: String },

    /// Arguments or options that are invalid or do not fit together.
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    pub fn resource(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Resource {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
