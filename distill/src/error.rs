//! The distillation crate's one error type.

use std::path::PathBuf;

use dinoedge_runtime::RuntimeError;

pub type Result<T, E = DistillError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The data folder has no usable images.
    #[error("{dir}: no images (jpg, jpeg, png, pgm, ppm) found{detail}")]
    NoImages { dir: PathBuf, detail: String },

    /// Options or configs that do not fit together (grids, sizes, names).
    #[error("{0}")]
    Config(String),

    /// The loss stopped being finite.
    #[error(
        "loss is {value} at step {step}; training stopped (last good checkpoint: {last_good}). Lower --lr or raise --warmup"
    )]
    Diverged {
        step: usize,
        value: String,
        last_good: String,
    },

    /// A data-parallel rank stopped (the message names each, with its log).
    #[error("{0}")]
    RankFailed(String),

    /// A checkpoint or cache that does not belong to this run.
    #[error("{path}: {reason}")]
    Mismatch { path: PathBuf, reason: String },

    /// An error of one student of a several-student run, named.
    #[error("{name}: {source}")]
    Student {
        name: String,
        #[source]
        source: Box<DistillError>,
    },
}

impl DistillError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DistillError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Leaf-by-leaf differences of two JSON values, as `path: LEFT x, RIGHT y` (numbers shown at
/// f32 precision, since configs hold f32 values).
pub fn json_differences(
    a: &serde_json::Value,
    b: &serde_json::Value,
    left: &str,
    right: &str,
) -> Vec<String> {
    fn show(v: Option<&serde_json::Value>) -> String {
        match v {
            None => "(absent)".into(),
            Some(serde_json::Value::Number(n)) if n.is_f64() => {
                format!("{:?}", n.as_f64().unwrap_or(f64::NAN) as f32)
            }
            Some(v) => v.to_string(),
        }
    }
    fn walk(
        a: Option<&serde_json::Value>,
        b: Option<&serde_json::Value>,
        path: &str,
        l: &str,
        r: &str,
        out: &mut Vec<String>,
    ) {
        match (a, b) {
            (Some(serde_json::Value::Object(x)), Some(serde_json::Value::Object(y))) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(x.get(k), y.get(k), &p, l, r, out);
                }
            }
            (x, y) if x != y => out.push(format!("{path}: {l} {}, {r} {}", show(x), show(y))),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(Some(a), Some(b), "", left, right, &mut out);
    out
}
