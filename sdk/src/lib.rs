//! dinoedge: DINOv3-class dense vision features on edge devices.
//!
//! The library behind the `dinoedge` CLI: [`Embedder`] turns images into CLS, register and
//! patch features on a chosen backend; [`pca`] draws the classic DINO picture;
//! [`features_io`] reads and writes features and pixels as safetensors.
//!
//! ```no_run
//! use dinoedge::{Embedder, EmbedderOptions, image_io};
//! let mut e = Embedder::load("model_dir", &EmbedderOptions::default())?;
//! let f = e.embed(&image_io::load_rgb("photo.jpg".as_ref())?)?;
//! println!("{:?} patches of {} dims", f.grid, f.dim());
//! # Ok::<(), dinoedge::Error>(())
//! ```

pub mod assets;
pub mod bench;
pub mod compare;
pub mod davis;
pub mod dense;
#[cfg(feature = "distill")]
pub mod distill;
pub mod embed;
pub mod error;
pub mod features_io;
pub mod frames;
pub mod image_io;
pub mod live;
pub mod pca;
pub mod plot;
pub mod stereo;
pub mod synth;
pub mod tokencut;
pub mod track;

pub use dinoedge_runtime as runtime;
pub use dinoedge_runtime::{
    BackendKind, Features, LayerFeatures, Model, Precision, RgbImage, SessionOptions, Tensor,
};
pub use embed::{Embedder, EmbedderOptions, InputMode};
pub use error::{Error, Result};
