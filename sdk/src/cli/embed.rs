//! `dinoedge embed MODEL_DIR IMAGE... --out FEATURES.safetensors [--size N | --dense] [--pca PCA.png]`
//! `dinoedge embed MODEL_DIR --pixels PIXELS.safetensors --out FEATURES.safetensors`

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use dinoedge::dense::resize_rgb;
use dinoedge::features_io::{concat, read_pixels, write_features};
use dinoedge::pca::PcaBasis;
use dinoedge::{Embedder, EmbedderOptions, Error, Features, InputMode, Result, image_io};

use super::source::{self, GstArgs};
use super::{BackendArgs, progress};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("frame_source").args(["video", "gst", "csi", "rtsp"])))]
pub struct EmbedArgs {
    /// HF model directory.
    model: PathBuf,
    /// Images (PNG, JPEG, PNM).
    images: Vec<PathBuf>,
    /// Already preprocessed `pixel_values` (B, 3, H, W) f32 instead of images.
    #[arg(long, conflicts_with_all = ["images", "dense", "size"])]
    pixels: Option<PathBuf>,
    /// Output safetensors: cls (B, D), registers (B, R, D), patches (B, h, w, D).
    #[arg(long)]
    out: PathBuf,
    /// Input size: the model's processor at SIZE x SIZE, or the short side with --dense.
    #[arg(long)]
    size: Option<usize>,
    /// Keep the aspect ratio: short side --size (default 224), sides multiples of the patch.
    #[arg(long)]
    dense: bool,
    /// Write the PCA picture (first 3 components as RGB, upsampled to the image). With several
    /// images, one file each: NAME-0.png, NAME-1.png, ...
    #[arg(long)]
    pca: Option<PathBuf>,
    /// Also write these blocks (0-based, comma separated), final norm applied; for a ConvNeXt,
    /// its stages (0 to 3, stride 4 to 32), raw as HF's hidden_states.
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// Or embed the frames of a video file or GStreamer source, stacked along the batch.
    #[command(flatten)]
    gst: GstArgs,
    /// With a video or GStreamer source: stop after this many frames (needed for cameras and
    /// streams).
    #[arg(long)]
    max_frames: Option<usize>,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let frames = a.gst.spec().is_some() || a.gst.video.is_some();
    let given = [!a.images.is_empty(), a.pixels.is_some(), frames];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err(Error::InvalidArgument(
            "give IMAGE..., or --pixels PIXELS.safetensors, or --video FILE, or a GStreamer source (--gst, --csi, --rtsp)".into(),
        ));
    }
    super::check_output_file(&a.out, "--out")?;
    if let Some(p) = &a.pca {
        super::check_output_file(p, "--pca")?;
    }
    let size = a.size.unwrap_or(224);
    let mode = if a.dense {
        InputMode::Dense(size)
    } else {
        InputMode::Fixed(size)
    };
    let opts = EmbedderOptions {
        session: a.backend.session(),
        mode,
        capture_layers: a.layers.clone(),
    };
    let mut emb = Embedder::load(&a.model, &opts)?;
    let info = emb.backend();
    let t0 = Instant::now();

    // (features, display size for the PCA picture) per input.
    let mut parts: Vec<(Features, (usize, usize))> = Vec::new();
    let mut inputs: Vec<String> = Vec::new();
    if let Some(px) = &a.pixels {
        let pixels = read_pixels(px)?;
        let f = emb.embed_pixels(&pixels)?;
        let hw = (pixels.shape[2], pixels.shape[3]);
        inputs.push(px.display().to_string());
        parts.push((f, hw));
    } else if frames {
        embed_frames(&a, &mut emb, &mut parts, &mut inputs)?;
    } else {
        // Check every header first: a bad file or an image over the limits fails before any
        // compute and before any output; images are then decoded one at a time.
        let sizes = a
            .images
            .iter()
            .map(|p| {
                let (w, h) = image_io::dimensions(p)?;
                emb.check_input(w as usize, h as usize)
                    .map_err(|e| in_file(p, e))?;
                Ok((h as usize, w as usize))
            })
            .collect::<Result<Vec<_>>>()?;
        // Features are stacked along the batch: every image must give the same grid.
        let patch = emb.model().config().patch_size();
        let grids: Vec<_> = sizes
            .iter()
            .map(|&(ih, iw)| {
                let (h, w) = emb.preprocessor().output_size(ih, iw);
                (h / patch, w / patch)
            })
            .collect();
        if let Some(k) = grids.iter().position(|g| *g != grids[0]) {
            return Err(Error::InvalidArgument(format!(
                "{} gives a {}x{} patch grid but {} gives {}x{}: features are stacked along the batch, so embed them separately (or use a fixed --size)",
                a.images[0].display(),
                grids[0].0,
                grids[0].1,
                a.images[k].display(),
                grids[k].0,
                grids[k].1
            )));
        }
        let pb = progress(a.images.len() as u64, "embed");
        let limits = *emb.limits();
        for path in &a.images {
            pb.set_message(
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            let img = image_io::load_rgb_limited(path, &limits)?;
            let f = emb.embed(&img)?;
            parts.push((f, (img.height, img.width)));
            inputs.push(path.display().to_string());
            pb.inc(1);
        }
        pb.finish_and_clear();
    }
    let elapsed = t0.elapsed();
    let features = concat(&parts.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>())?;

    let cfg = emb.model().config();
    let mut meta = HashMap::new();
    meta.insert("format".into(), "pt".into());
    meta.insert("dinoedge_version".into(), env!("CARGO_PKG_VERSION").into());
    meta.insert("model_dir".into(), a.model.display().to_string());
    meta.insert("architecture".into(), cfg.describe());
    meta.insert("backend".into(), info.kind.to_string());
    meta.insert("precision".into(), info.precision.to_string());
    meta.insert(
        "inputs".into(),
        serde_json::to_string(&inputs).expect("json"),
    );
    meta.insert(
        "preprocess".into(),
        format!("{:?}", emb.preprocessor().resize),
    );
    meta.insert(
        "grid".into(),
        format!("{}x{}", features.grid.0, features.grid.1),
    );
    // Every picture is made before anything is written.
    let pictures = match &a.pca {
        Some(pca_path) => pca_pictures(pca_path, &parts, features.dim())?,
        None => Vec::new(),
    };
    write_features(&a.out, &features, meta)?;
    for (path, img, explained) in &pictures {
        image_io::save_png(path, img)?;
        let [e0, e1, e2] = explained.map(|e| e * 100.0);
        println!(
            "wrote {} (components explain {e0:.0}% / {e1:.0}% / {e2:.0}% of the variance)",
            path.display()
        );
    }
    let (gh, gw) = features.grid;
    eprintln!(
        "embedded {} input(s) with {} on {} ({}) in {:.2} s: grid {gh}x{gw}, dim {}, {} registers",
        inputs.len(),
        cfg.describe(),
        info.kind,
        info.device,
        elapsed.as_secs_f64(),
        features.dim(),
        cfg.num_register_tokens(),
    );
    let d = features.dim();
    for (i, name) in inputs.iter().enumerate() {
        let cls = &features.last.cls.data[i * d..(i + 1) * d];
        let norm = cls.iter().map(|x| x * x).sum::<f32>().sqrt();
        println!(
            "{name}: cls[:4] = {:?}, |cls| = {norm:.3}",
            &cls[..4.min(d)]
        );
    }
    println!("wrote {}", a.out.display());
    Ok(())
}

/// Embeds the frames of a video or GStreamer source (all of a file's, or --max-frames).
fn embed_frames(
    a: &EmbedArgs,
    emb: &mut Embedder,
    parts: &mut Vec<(Features, (usize, usize))>,
    inputs: &mut Vec<String>,
) -> Result<()> {
    let mut src = source::open_any(None, &a.gst, *emb.limits(), false)?
        .ok_or_else(|| Error::InvalidArgument("no frame source".into()))?
        .src;
    if src.is_live() && a.max_frames.is_none() {
        return Err(Error::InvalidArgument(format!(
            "{} is live: give --max-frames N",
            src.describe()
        )));
    }
    let max = a.max_frames.unwrap_or(usize::MAX);
    let total = src.len_hint().map(|n| n.min(max));
    let pb = progress(total.unwrap_or(0) as u64, "embed");
    while parts.len() < max {
        let Some(frame) = src.next_frame()? else {
            break;
        };
        if let Some((_, hw)) = parts.first()
            && *hw != (frame.image.height, frame.image.width)
        {
            return Err(Error::Source {
                name: src.describe(),
                reason: format!(
                    "frame {} is {}x{}, the first frame {}x{}: features are stacked along the batch",
                    frame.name, frame.image.width, frame.image.height, hw.1, hw.0
                ),
            });
        }
        let f = emb.embed(&frame.image)?;
        parts.push((f, (frame.image.height, frame.image.width)));
        inputs.push(format!("{} frame {}", src.describe(), frame.name));
        pb.inc(1);
    }
    pb.finish_and_clear();
    if parts.is_empty() {
        return Err(Error::Source {
            name: src.describe(),
            reason: "no frames".into(),
        });
    }
    Ok(())
}

/// A runtime error about an image, with the image's path in front.
fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Runtime(dinoedge::runtime::RuntimeError::LimitExceeded {
            found,
            limit,
            raise,
            ..
        }) => Error::Runtime(dinoedge::runtime::RuntimeError::LimitExceeded {
            what: path.display().to_string(),
            found,
            limit,
            raise,
        }),
        other => Error::InvalidFile {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// A PCA picture to write: path, image, explained variance of the three components.
type Picture = (PathBuf, dinoedge::RgbImage, [f32; 3]);

/// One picture per image, each with its own PCA basis (the classic per-image DINO view),
/// upsampled to the image's size.
fn pca_pictures(
    path: &Path,
    parts: &[(Features, (usize, usize))],
    dim: usize,
) -> Result<Vec<Picture>> {
    let total: usize = parts.iter().map(|(f, _)| f.batch()).sum();
    let mut out = Vec::new();
    let mut k = 0;
    for (f, (h, w)) in parts {
        let per = f.grid.0 * f.grid.1 * dim;
        for b in 0..f.batch() {
            let patches = &f.last.patches.data[b * per..(b + 1) * per];
            let basis = PcaBasis::fit(patches, dim)?;
            let img = resize_rgb(&basis.render(patches, f.grid), *w, *h);
            let file = if total == 1 {
                path.to_path_buf()
            } else {
                numbered(path, k)
            };
            out.push((file, img, basis.explained));
            k += 1;
        }
    }
    Ok(out)
}

fn numbered(path: &Path, k: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pca".into());
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    path.with_file_name(format!("{stem}-{k}.{ext}"))
}
