//! Models, sessions, images and features.

use std::ffi::{CString, c_char};
use std::sync::Arc;

use dinoedge::runtime::session::compiled_backends;
use dinoedge::runtime::{BackendKind, InputLimits, Precision, Tensor};
use dinoedge::{Embedder, EmbedderOptions, Features, InputMode, Model, RgbImage, SessionOptions};

use crate::dinoedge_status::{self, *};
use crate::{
    Fail, Handle, arg_mut, c_str, check_size, copy_out, destroy, guard, obj, obj_mut, obj_opt, put,
};

/// A loaded model: weights and configuration. Immutable; share it between threads.
pub struct dinoedge_model {
    pub(crate) model: Arc<Model>,
    describe: CString,
}

impl Handle for dinoedge_model {
    const NAME: &'static str = "dinoedge_model";
}

/// A model prepared on one backend, with its preprocessing. One thread at a time.
pub struct dinoedge_session {
    pub(crate) emb: Embedder,
    backend: CString,
    /// The model input of the `_into` calls, reused between frames.
    pixels: Tensor,
}

impl Handle for dinoedge_session {
    const NAME: &'static str = "dinoedge_session";
}

/// An RGB image owned by the library (decoded from a file or copied from a frame).
pub struct dinoedge_image {
    pub(crate) image: RgbImage,
}

impl Handle for dinoedge_image {
    const NAME: &'static str = "dinoedge_image";
}

/// Features of one embedded input: CLS, registers and patches of the last layer.
pub struct dinoedge_features {
    pub(crate) f: Features,
    /// Size of the image the features come from (before resizing), (width, height).
    pub(crate) image_size: (usize, usize),
    /// Size of the model input, (width, height).
    pub(crate) input_size: (usize, usize),
    /// Model input to image pixels: `image = (input + offset) * scale` (sx, sy, ox, oy).
    pub(crate) to_image: (f64, f64, f64, f64),
    pub(crate) patch: usize,
}

impl Handle for dinoedge_features {
    const NAME: &'static str = "dinoedge_features";
}

/// Loads a model directory (HF `config.json` + safetensors: DINOv3, DINOv2, or a
/// dinoedge-quantized / distilled model).
///
/// - `dir`: borrowed, NUL-terminated path.
/// - `out`: receives a new model; destroy it with `dinoedge_model_destroy`.
///
/// Errors: DINOEDGE_ERR_IO (missing directory or files), DINOEDGE_ERR_INVALID_DATA (bad
/// config, truncated weights, unknown model type).
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_model_load(
    dir: *const c_char,
    out: *mut *mut dinoedge_model,
) -> dinoedge_status {
    guard(|| {
        let dir = c_str(dir, "dir")?;
        let model = Model::load(dir)?;
        let describe = CString::new(model.config().describe()).unwrap_or_default();
        put(
            out,
            dinoedge_model {
                model: Arc::new(model),
                describe,
            },
        )
    })
}

/// Destroys a model. NULL is a no-op (DINOEDGE_OK); a handle that is not a live one of this type
/// (destroyed already, or another kind) is left alone and gives DINOEDGE_ERR_INVALID_ARGUMENT.
/// Sessions made from it keep their own reference, so a model may be destroyed before its
/// sessions.
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_model_destroy(model: *mut dinoedge_model) -> dinoedge_status {
    destroy(model, "model")
}

/// Architecture facts of a model.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct dinoedge_model_info {
    /// Set to `sizeof(dinoedge_model_info)` before the call.
    pub struct_size: usize,
    pub hidden_size: u32,
    pub num_layers: u32,
    pub num_heads: u32,
    pub patch_size: u32,
    pub num_register_tokens: u32,
    pub num_parameters: u64,
}

/// Fills `info` (whose `struct_size` the caller sets) with the model's architecture.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_model_get_info(
    model: *const dinoedge_model,
    info: *mut dinoedge_model_info,
) -> dinoedge_status {
    guard(|| {
        let m = obj(model, "model")?;
        let i = arg_mut(info, "info")?;
        check_size(
            i.struct_size,
            std::mem::size_of::<dinoedge_model_info>(),
            "dinoedge_model_info",
        )?;
        let c = m.model.config();
        *i = dinoedge_model_info {
            struct_size: i.struct_size,
            hidden_size: c.hidden_size() as u32,
            num_layers: c.num_layers() as u32,
            num_heads: c.as_vit().map_or(0, |v| v.num_heads) as u32,
            patch_size: c.patch_size() as u32,
            num_register_tokens: c.num_register_tokens() as u32,
            num_parameters: m.model.num_parameters() as u64,
        };
        Ok(DINOEDGE_OK)
    })
}

/// A one-line description of the model (owned by the model, valid until it is destroyed).
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_model_describe(model: *const dinoedge_model) -> *const c_char {
    match obj_opt(model) {
        Some(m) => m.describe.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// Compute backends.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dinoedge_backend {
    /// The best available: CUDA, then wgpu (a real GPU), then the fast CPU backend. The
    /// session reports which one it got (`dinoedge_session_backend`).
    DINOEDGE_BACKEND_AUTO = 0,
    DINOEDGE_BACKEND_CPU = 1,
    /// The f32 CPU reference (slow, exact).
    DINOEDGE_BACKEND_CPU_REFERENCE = 2,
    DINOEDGE_BACKEND_WGPU = 3,
    DINOEDGE_BACKEND_CUDA = 4,
}

/// Numeric precision.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dinoedge_precision {
    /// The model's own: int8 for dinoedge int8 models on the CPU, f32 otherwise.
    DINOEDGE_PRECISION_DEFAULT = 0,
    DINOEDGE_PRECISION_F32 = 1,
    DINOEDGE_PRECISION_F16 = 2,
    DINOEDGE_PRECISION_BF16 = 3,
    DINOEDGE_PRECISION_INT8 = 4,
}

/// How images are resized for the model.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dinoedge_input_mode {
    /// The model's HF processor at `size` x `size` (224 for released checkpoints).
    DINOEDGE_INPUT_FIXED = 0,
    /// Aspect kept: short side about `size`, sides multiples of the patch (dense tasks).
    DINOEDGE_INPUT_DENSE = 1,
}

/// Options of `dinoedge_session_create`. Initialise with `dinoedge_session_default_options`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct dinoedge_session_options {
    /// `sizeof(dinoedge_session_options)`; set by `dinoedge_session_default_options`.
    pub struct_size: usize,
    /// A `dinoedge_backend` value.
    pub backend: i32,
    /// A `dinoedge_precision` value.
    pub precision: i32,
    /// CPU threads; 0 = all cores.
    pub threads: u32,
    /// A `dinoedge_input_mode` value.
    pub input_mode: i32,
    /// Input size (see `dinoedge_input_mode`); default 224.
    pub size: u32,
    /// wgpu adapter name substring or index; NULL = the best GPU. Borrowed for the call.
    pub adapter: *const c_char,
    /// Largest image accepted, in pixels (width x height); 0 = the default (40 MP). Added in
    /// ABI 2: callers built against ABI 1 pass a smaller `struct_size` and get the defaults.
    pub max_pixels: u64,
    /// Largest model input accepted, in tokens per image; 0 = the default (16384).
    pub max_tokens: u64,
}

/// Size of `dinoedge_session_options` in ABI 1 (before `max_pixels`).
const SESSION_OPTIONS_V1: usize = std::mem::offset_of!(dinoedge_session_options, max_pixels);

impl dinoedge_session_options {
    fn defaults() -> Self {
        dinoedge_session_options {
            struct_size: std::mem::size_of::<dinoedge_session_options>(),
            backend: dinoedge_backend::DINOEDGE_BACKEND_AUTO as i32,
            precision: dinoedge_precision::DINOEDGE_PRECISION_DEFAULT as i32,
            threads: 0,
            input_mode: dinoedge_input_mode::DINOEDGE_INPUT_FIXED as i32,
            size: 224,
            adapter: std::ptr::null(),
            max_pixels: 0,
            max_tokens: 0,
        }
    }

    fn limits(&self) -> InputLimits {
        let d = InputLimits::default();
        InputLimits {
            max_pixels: if self.max_pixels == 0 {
                d.max_pixels
            } else {
                self.max_pixels
            },
            max_tokens: if self.max_tokens == 0 {
                d.max_tokens
            } else {
                usize::try_from(self.max_tokens).unwrap_or(usize::MAX)
            },
        }
    }
}

/// Fills `options` with the defaults: AUTO backend, default precision, all cores, fixed
/// 224 x 224 input.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_session_default_options(
    options: *mut dinoedge_session_options,
) -> dinoedge_status {
    guard(|| {
        let o = arg_mut(options, "options")?;
        *o = dinoedge_session_options::defaults();
        Ok(DINOEDGE_OK)
    })
}

fn precision(p: i32) -> Option<Precision> {
    match p {
        1 => Some(Precision::F32),
        2 => Some(Precision::F16),
        3 => Some(Precision::BF16),
        4 => Some(Precision::Int8),
        _ => None,
    }
}

/// Creates a session: the model prepared on a backend.
///
/// - `model`: borrowed; the session keeps its own reference to the weights.
/// - `options`: borrowed for the call; NULL = defaults.
/// - `out`: receives a new session; destroy with `dinoedge_session_destroy`.
///
/// Errors: DINOEDGE_ERR_UNSUPPORTED when the backend is not compiled in or has no device
/// (the message lists what is available), DINOEDGE_ERR_INVALID_ARGUMENT for bad options.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_session_create(
    model: *const dinoedge_model,
    options: *const dinoedge_session_options,
    out: *mut *mut dinoedge_session,
) -> dinoedge_status {
    guard(|| {
        let m = obj(model, "model")?;
        let mut o = dinoedge_session_options::defaults();
        if !options.is_null() {
            // SAFETY: non-NULL options point at a struct of at least `struct_size` bytes; read
            // the size first, then the fields that size covers (older callers pass the ABI 1
            // struct, without the fields appended since).
            let size = unsafe { std::ptr::read_unaligned(options as *const usize) };
            check_size(size, SESSION_OPTIONS_V1, "dinoedge_session_options")?;
            let n = size.min(std::mem::size_of::<dinoedge_session_options>());
            unsafe {
                std::ptr::copy_nonoverlapping(
                    options as *const u8,
                    &mut o as *mut dinoedge_session_options as *mut u8,
                    n,
                )
            };
        }
        if !(0..=4).contains(&o.backend)
            || !(0..=4).contains(&o.precision)
            || !(0..=1).contains(&o.input_mode)
        {
            return Err(Fail::arg(format!(
                "options: backend {}, precision {} or input_mode {} is not a valid value",
                o.backend, o.precision, o.input_mode
            )));
        }
        if o.size < 1 {
            return Err(Fail::arg("options.size must be at least 1"));
        }
        let adapter = if o.adapter.is_null() {
            None
        } else {
            Some(c_str(o.adapter, "options.adapter")?.to_string())
        };
        let threads = (o.threads > 0).then_some(o.threads as usize);
        let mode = if o.input_mode == 1 {
            InputMode::Dense(o.size as usize)
        } else {
            InputMode::Fixed(o.size as usize)
        };
        let kinds: Vec<BackendKind> = match o.backend {
            0 => {
                let compiled = compiled_backends();
                let mut v = Vec::new();
                if compiled.contains(&"cuda") {
                    v.push(BackendKind::Cuda);
                }
                if compiled.contains(&"wgpu") && adapter_is_gpu() {
                    v.push(BackendKind::Wgpu);
                }
                v.push(BackendKind::Cpu);
                v
            }
            1 => vec![BackendKind::Cpu],
            2 => vec![BackendKind::CpuReference],
            3 => vec![BackendKind::Wgpu],
            _ => vec![BackendKind::Cuda],
        };
        let mut last = None;
        for kind in kinds {
            let session = SessionOptions {
                backend: kind,
                precision: precision(o.precision),
                threads,
                adapter: adapter.clone(),
                limits: o.limits(),
                ..Default::default()
            };
            match Embedder::from_model(
                m.model.clone(),
                &EmbedderOptions {
                    session,
                    mode,
                    capture_layers: vec![],
                },
            ) {
                Ok(emb) => {
                    let b = emb.backend();
                    let backend =
                        CString::new(format!("{} {} ({})", b.kind, b.precision, b.device))
                            .unwrap_or_default();
                    return put(
                        out,
                        dinoedge_session {
                            emb,
                            backend,
                            pixels: Tensor::empty(),
                        },
                    );
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .map(Fail::from)
            .unwrap_or_else(|| Fail(DINOEDGE_ERR_UNSUPPORTED, "no backend".into())))
    })
}

/// Whether wgpu sees a hardware GPU (AUTO does not pick a software rasteriser).
fn adapter_is_gpu() -> bool {
    #[cfg(feature = "wgpu")]
    {
        dinoedge::runtime::backend::wgpu::list_adapters()
            .iter()
            .any(|a| a.device_type != "Cpu")
    }
    #[cfg(not(feature = "wgpu"))]
    {
        false
    }
}

/// Destroys a session. NULL is a no-op (DINOEDGE_OK); a handle that is not a live one of this type
/// (destroyed already, or another kind) is left alone and gives DINOEDGE_ERR_INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_session_destroy(session: *mut dinoedge_session) -> dinoedge_status {
    destroy(session, "session")
}

/// The backend a session runs on, e.g. "cpu f32 (x86_64 CPU (avx2 kernels), 8 threads)".
/// Owned by the session; valid until it is destroyed.
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_session_backend(session: *const dinoedge_session) -> *const c_char {
    match obj_opt(session) {
        Some(s) => s.backend.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// Pixel layouts of caller images (8 bits per channel).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dinoedge_pixel_format {
    DINOEDGE_PIXEL_RGB8 = 0,
    /// OpenCV's default order.
    DINOEDGE_PIXEL_BGR8 = 1,
    DINOEDGE_PIXEL_RGBA8 = 2,
    DINOEDGE_PIXEL_BGRA8 = 3,
    DINOEDGE_PIXEL_GRAY8 = 4,
}

/// Copies a caller image into an RGB image.
pub(crate) fn image_from(
    pixels: *const u8,
    width: u32,
    height: u32,
    stride: usize,
    fmt: i32,
) -> Result<RgbImage, Fail> {
    if pixels.is_null() {
        return Err(Fail::arg("pixels is NULL"));
    }
    let bpp = match fmt {
        0 | 1 => 3,
        2 | 3 => 4,
        4 => 1,
        _ => {
            return Err(Fail::arg(format!(
                "pixel format {fmt} is not a dinoedge_pixel_format"
            )));
        }
    };
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 {
        return Err(Fail::arg(format!("image of {w}x{h} pixels is empty")));
    }
    if stride < w * bpp {
        return Err(Fail::arg(format!(
            "stride {stride} is smaller than width x {bpp} bytes = {}",
            w * bpp
        )));
    }
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        // SAFETY: the caller's buffer holds `height` rows of `stride` bytes.
        let row = unsafe { std::slice::from_raw_parts(pixels.add(y * stride), w * bpp) };
        for px in row.chunks_exact(bpp) {
            match fmt {
                0 | 2 => data.extend_from_slice(&px[..3]),
                1 | 3 => data.extend_from_slice(&[px[2], px[1], px[0]]),
                _ => data.extend_from_slice(&[px[0]; 3]),
            }
        }
    }
    Ok(RgbImage {
        width: w,
        height: h,
        data,
    })
}

/// Decodes an image file (PNG, JPEG, PNM) into a library-owned RGB image.
/// `path`: borrowed. `out`: destroy with `dinoedge_image_destroy`.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_image_load(
    path: *const c_char,
    out: *mut *mut dinoedge_image,
) -> dinoedge_status {
    guard(|| {
        let p = c_str(path, "path")?;
        let image = dinoedge::image_io::load_rgb(std::path::Path::new(p))?;
        put(out, dinoedge_image { image })
    })
}

/// Width and height of an image.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_image_size(
    image: *const dinoedge_image,
    width: *mut u32,
    height: *mut u32,
) -> dinoedge_status {
    guard(|| {
        let i = obj(image, "image")?;
        let (w, h) = (arg_mut(width, "width")?, arg_mut(height, "height")?);
        (*w, *h) = (i.image.width as u32, i.image.height as u32);
        Ok(DINOEDGE_OK)
    })
}

/// The image's RGB8 pixels, rows of `width * 3` bytes, owned by the image.
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_image_pixels(image: *const dinoedge_image) -> *const u8 {
    match obj_opt(image) {
        Some(i) => i.image.data.as_ptr(),
        None => std::ptr::null(),
    }
}

/// Destroys an image. NULL is a no-op (DINOEDGE_OK); a handle that is not a live one of this type
/// (destroyed already, or another kind) is left alone and gives DINOEDGE_ERR_INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_image_destroy(image: *mut dinoedge_image) -> dinoedge_status {
    destroy(image, "image")
}

fn embed(
    s: &mut dinoedge_session,
    img: &RgbImage,
    out: *mut *mut dinoedge_features,
) -> Result<dinoedge_status, Fail> {
    let px = s.emb.preprocess(img)?;
    let input_size = (px.shape[3], px.shape[2]);
    let f = s.emb.embed_pixels(&px)?;
    let patch = s.emb.model().config().patch_size();
    let to_image = s.emb.preprocessor().input_to_image(img.height, img.width);
    put(
        out,
        dinoedge_features {
            f,
            image_size: (img.width, img.height),
            input_size,
            to_image,
            patch,
        },
    )
}

/// Embeds a caller image: resized and normalised by the session's preprocessing, then run.
///
/// - `pixels`: borrowed; `height` rows of `stride` bytes in `format` (a
///   `dinoedge_pixel_format` value).
/// - `out`: receives new features; destroy with `dinoedge_features_destroy`.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_session_embed_pixels(
    session: *mut dinoedge_session,
    pixels: *const u8,
    width: u32,
    height: u32,
    stride: usize,
    format: i32,
    out: *mut *mut dinoedge_features,
) -> dinoedge_status {
    guard(|| {
        let s = obj_mut(session, "session")?;
        let img = image_from(pixels, width, height, stride, format)?;
        embed(s, &img, out)
    })
}

/// Embeds a library image (from `dinoedge_image_load` or a frame source).
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_session_embed_image(
    session: *mut dinoedge_session,
    image: *const dinoedge_image,
    out: *mut *mut dinoedge_features,
) -> dinoedge_status {
    guard(|| {
        let s = obj_mut(session, "session")?;
        let i = obj(image, "image")?;
        embed(s, &i.image, out)
    })
}

/// The video path: `img`'s features into `f`, reusing its buffers (the fused frame
/// preprocessing and `run_into`).
fn embed_into(
    s: &mut dinoedge_session,
    img: &RgbImage,
    f: &mut dinoedge_features,
) -> Result<dinoedge_status, Fail> {
    s.emb.preprocess_frame_into(img, &mut s.pixels)?;
    let input_size = (s.pixels.shape[3], s.pixels.shape[2]);
    s.emb.embed_pixels_into(&s.pixels, &mut f.f)?;
    f.image_size = (img.width, img.height);
    f.input_size = input_size;
    f.to_image = s.emb.preprocessor().input_to_image(img.height, img.width);
    f.patch = s.emb.model().config().patch_size();
    Ok(DINOEDGE_OK)
}

/// Embeds a library image into `features`, a handle from an earlier embed call that is
/// overwritten in place (video): the features' buffers and the model input are reused, so
/// with the dense input mode or a DINOv3 model a call allocates nothing once they have grown
/// (DINOv2's fixed-size preprocessing still allocates). The preprocessing is the session's,
/// fused for frames: values within 1e-5 of `dinoedge_session_embed_image`'s model input. On failure `features` stays a valid
/// handle (to destroy, or to embed into again) whose values are unspecified.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_session_embed_image_into(
    session: *mut dinoedge_session,
    image: *const dinoedge_image,
    features: *mut dinoedge_features,
) -> dinoedge_status {
    guard(|| {
        let s = obj_mut(session, "session")?;
        let i = obj(image, "image")?;
        let f = obj_mut(features, "features")?;
        embed_into(s, &i.image, f)
    })
}

/// `dinoedge_session_embed_pixels` into an existing `features` handle, as
/// `dinoedge_session_embed_image_into` (the caller's frame is copied once, as by
/// `dinoedge_session_embed_pixels`).
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_session_embed_pixels_into(
    session: *mut dinoedge_session,
    pixels: *const u8,
    width: u32,
    height: u32,
    stride: usize,
    format: i32,
    features: *mut dinoedge_features,
) -> dinoedge_status {
    guard(|| {
        let s = obj_mut(session, "session")?;
        let f = obj_mut(features, "features")?;
        let img = image_from(pixels, width, height, stride, format)?;
        embed_into(s, &img, f)
    })
}

/// Embeds an already preprocessed float tensor `pixel_values` (batch, channels, height,
/// width), row-major, borrowed for the call.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_session_embed_tensor(
    session: *mut dinoedge_session,
    data: *const f32,
    batch: u32,
    channels: u32,
    height: u32,
    width: u32,
    out: *mut *mut dinoedge_features,
) -> dinoedge_status {
    guard(|| {
        let s = obj_mut(session, "session")?;
        if data.is_null() {
            return Err(Fail::arg("data is NULL"));
        }
        let shape = vec![
            batch as usize,
            channels as usize,
            height as usize,
            width as usize,
        ];
        // Checked: 203 x 3 x 36760123 x 823996703 must not wrap to a handful of floats.
        let n = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        let n = match n {
            Some(0) => return Err(Fail::arg(format!("tensor shape {shape:?} is empty"))),
            Some(n) => n,
            None => {
                return Err(Fail::arg(format!(
                    "tensor shape {shape:?} holds more values than memory can address"
                )));
            }
        };
        let limits = s.emb.limits();
        limits.check_pixels("pixel_values", width as u64, height as u64)?;
        if batch as u64 > MAX_BATCH {
            return Err(Fail::arg(format!(
                "batch {batch} exceeds the limit of {MAX_BATCH} images per call"
            )));
        }
        // SAFETY: `data` holds batch * channels * height * width floats (caller contract).
        let v = unsafe { std::slice::from_raw_parts(data, n) }.to_vec();
        let f = s.emb.embed_pixels(&Tensor::new(shape, v)?)?;
        let patch = s.emb.model().config().patch_size();
        put(
            out,
            dinoedge_features {
                f,
                image_size: (width as usize, height as usize),
                input_size: (width as usize, height as usize),
                to_image: (1.0, 1.0, 0.0, 0.0),
                patch,
            },
        )
    })
}

/// Images per `dinoedge_session_embed_tensor` call: far above any real batch, it bounds the
/// memory a shape can ask for.
const MAX_BATCH: u64 = 4096;

/// Shape of a features object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct dinoedge_features_shape {
    pub batch: u32,
    /// Patch grid rows and columns.
    pub grid_height: u32,
    pub grid_width: u32,
    /// Feature dimension.
    pub dim: u32,
    pub num_registers: u32,
}

/// Reads the shape of `features` into `shape`.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_features_get_shape(
    features: *const dinoedge_features,
    shape: *mut dinoedge_features_shape,
) -> dinoedge_status {
    guard(|| {
        let f = obj(features, "features")?;
        let s = arg_mut(shape, "shape")?;
        *s = dinoedge_features_shape {
            batch: f.f.batch() as u32,
            grid_height: f.f.grid.0 as u32,
            grid_width: f.f.grid.1 as u32,
            dim: f.f.dim() as u32,
            num_registers: f.f.last.registers.shape[1] as u32,
        };
        Ok(DINOEDGE_OK)
    })
}

/// Which tokens to read.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dinoedge_tokens {
    /// (batch, dim)
    DINOEDGE_TOKENS_CLS = 0,
    /// (batch, num_registers, dim)
    DINOEDGE_TOKENS_REGISTERS = 1,
    /// (batch, grid_height, grid_width, dim), row-major grid
    DINOEDGE_TOKENS_PATCHES = 2,
}

/// Copies tokens (a `dinoedge_tokens` value) into a caller buffer of `capacity` floats.
///
/// Size query: pass `dst = NULL` and a non-NULL `needed`; `*needed` receives the number of
/// floats. With a buffer, `needed` (may be NULL) also receives it, and a buffer that is too
/// small gives DINOEDGE_ERR_BUFFER_TOO_SMALL with nothing written.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_features_copy(
    features: *const dinoedge_features,
    tokens: i32,
    dst: *mut f32,
    capacity: usize,
    needed: *mut usize,
) -> dinoedge_status {
    guard(|| {
        let f = obj(features, "features")?;
        let src = match tokens {
            0 => &f.f.last.cls.data,
            1 => &f.f.last.registers.data,
            2 => &f.f.last.patches.data,
            other => {
                return Err(Fail::arg(format!(
                    "tokens {other} is not a dinoedge_tokens value"
                )));
            }
        };
        copy_out(src, dst, capacity, needed, "features")
    })
}

/// Destroys features. NULL is a no-op (DINOEDGE_OK); a handle that is not a live one of this type
/// (destroyed already, or another kind) is left alone and gives DINOEDGE_ERR_INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_features_destroy(features: *mut dinoedge_features) -> dinoedge_status {
    destroy(features, "features")
}
