//! [`Embedder`]: a model, a preprocessing recipe and a session, for images in and
//! features out.

use std::path::Path;
use std::sync::Arc;

use dinoedge_runtime::{
    BackendInfo, Features, FramePreprocessor, InferenceSession, InputLimits, Model, Preprocessor,
    RgbImage, RunOptions, RuntimeError, SessionOptions, Tensor, create_session,
};

use crate::error::Result;

/// How images are resized before the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputMode {
    /// The model's HF processor at this size (224 for the released checkpoints).
    Fixed(usize),
    /// Aspect-preserving: short side about this size, sides multiples of the patch.
    Dense(usize),
}

impl Default for InputMode {
    fn default() -> Self {
        InputMode::Fixed(224)
    }
}

/// Everything [`Embedder::load`] needs besides the model directory.
#[derive(Clone, Debug, Default)]
pub struct EmbedderOptions {
    pub session: SessionOptions,
    pub mode: InputMode,
    /// Intermediate blocks (0-based) to return as well, final norm applied.
    pub capture_layers: Vec<usize>,
}

pub struct Embedder {
    model: Arc<Model>,
    session: Box<dyn InferenceSession>,
    pre: Preprocessor,
    /// The fused preprocessing of video frames, made on first use.
    frames: Option<FramePreprocessor>,
    run: RunOptions,
    limits: InputLimits,
}

impl Embedder {
    /// Loads a model directory and prepares it on the requested backend.
    pub fn load(model_dir: impl AsRef<Path>, opts: &EmbedderOptions) -> Result<Self> {
        let model = Arc::new(Model::load(model_dir.as_ref())?);
        Self::from_model(model, opts)
    }

    pub fn from_model(model: Arc<Model>, opts: &EmbedderOptions) -> Result<Self> {
        let cfg = model.config();
        let pre = match opts.mode {
            InputMode::Fixed(size) => Preprocessor::for_model(cfg, Some(model.dir()), size)?,
            InputMode::Dense(size) => Preprocessor::dense(cfg, Some(model.dir()), size)?,
        };
        let session = create_session(model.clone(), &opts.session)?;
        Ok(Embedder {
            model,
            session,
            pre,
            frames: None,
            run: RunOptions {
                capture_layers: opts.capture_layers.clone(),
            },
            limits: opts.session.limits,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn backend(&self) -> BackendInfo {
        self.session.info()
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.pre
    }

    /// The input limits this embedder enforces.
    pub fn limits(&self) -> &InputLimits {
        &self.limits
    }

    /// Preprocesses an image to `pixel_values` (1, 3, H, W). Images smaller than one patch
    /// are refused: resizing them up would invent the content the model sees. Images above
    /// the pixel limit, or whose model input would exceed the token limit, are refused before
    /// any buffer is sized from them.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        self.check_input(img.width, img.height)?;
        Ok(self.pre.run(img)?)
    }

    /// Preprocesses a video frame into `out`, reusing its buffer: the same recipe as
    /// [`Embedder::preprocess`], fused, within
    /// [`dinoedge_runtime::frame_preprocess::FRAME_PREPROCESS_TOLERANCE`] of it (the live
    /// pipeline; `embed` keeps the exact path).
    pub fn preprocess_frame_into(&mut self, img: &RgbImage, out: &mut Tensor) -> Result<()> {
        self.check_input(img.width, img.height)?;
        let pre = &self.pre;
        let frames = self
            .frames
            .get_or_insert_with(|| FramePreprocessor::new(pre.clone()));
        Ok(frames.run_into(img, out)?)
    }

    /// Checks an image of `width x height` against the patch size and the limits.
    pub fn check_input(&self, width: usize, height: usize) -> Result<()> {
        let cfg = self.model.config();
        let p = cfg.patch_size();
        if width < p || height < p {
            return Err(RuntimeError::ImageTooSmall {
                height,
                width,
                patch: p,
            }
            .into());
        }
        self.limits
            .check_pixels("image", width as u64, height as u64)?;
        let (h, w) = self.pre.output_size(height, width);
        let (grid, tokens) = (cfg.grid(h, w), cfg.num_tokens(h, w));
        self.limits
            .check_tokens(&format!("a {width}x{height} image"), tokens, grid)?;
        Ok(())
    }

    /// Features of one image.
    pub fn embed(&mut self, img: &RgbImage) -> Result<Features> {
        let pixels = self.preprocess(img)?;
        self.embed_pixels(&pixels)
    }

    /// Features of already preprocessed `pixel_values` (B, 3, H, W).
    pub fn embed_pixels(&mut self, pixels: &Tensor) -> Result<Features> {
        Ok(self.session.run(pixels, &self.run)?)
    }

    /// [`Embedder::embed_pixels`] into `out`, reusing its buffers (no allocation per frame
    /// once they have grown).
    pub fn embed_pixels_into(&mut self, pixels: &Tensor, out: &mut Features) -> Result<()> {
        Ok(self.session.run_into(pixels, &self.run, out)?)
    }
}
