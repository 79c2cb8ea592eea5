//! `dinoedge track` (label propagation of first-frame masks), `dinoedge eval-davis` (J and F)
//! and `dinoedge discover` (TokenCut object discovery).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use dinoedge::bench::Stats;
use dinoedge::davis::{self, Mask, read_mask_limited, write_mask};
use dinoedge::dense::{blend, resize_rgb};
use dinoedge::plot::draw_box;
use dinoedge::runtime::fsutil::{OutputDir, Replace};
use dinoedge::tokencut::{TokenCutConfig, tokencut};
use dinoedge::track::{LabelPropagator, PropagationConfig, Upsampler};
use dinoedge::{Embedder, EmbedderOptions, Error, InputMode, Result, image_io};
use serde_json::json;

use super::source::{self, GstArgs};
use super::{BackendArgs, note, progress};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["frames", "video", "gst", "csi", "rtsp"])))]
pub struct TrackArgs {
    /// HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// Frames: an image folder (natural order; DAVIS JPEGImages/480p/<seq>), a .y4m file, or
    /// any video ffmpeg reads.
    #[arg(long)]
    frames: Option<PathBuf>,
    /// Or a video file or GStreamer source (masks are named 00000.png, 00001.png, ... as in
    /// DAVIS). A camera or stream needs --max-frames.
    #[command(flatten)]
    gst: GstArgs,
    /// First-frame mask (DAVIS indexed PNG; 8-bit gray or palette RGB also read).
    #[arg(long)]
    mask: PathBuf,
    /// Output folder: one indexed PNG per frame, named after the frame.
    #[arg(long)]
    out: PathBuf,
    /// Short side of the model input (aspect kept, sides multiples of the patch). DINO
    /// evaluates at 480.
    #[arg(long, default_value_t = 480)]
    size: usize,
    #[arg(long, default_value_t = 5)]
    topk: usize,
    #[arg(long, default_value_t = 7)]
    n_last: usize,
    /// Neighbourhood half-size in patches (0: the whole frame).
    #[arg(long, default_value_t = 12)]
    neighborhood: usize,
    #[arg(long, default_value_t = 0.1, value_parser = super::positive)]
    temperature: f32,
    /// Stop after this many frames.
    #[arg(long)]
    max_frames: Option<usize>,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn track(a: TrackArgs) -> Result<()> {
    // Options first: nothing is read or created for a command that cannot run.
    let cfg = PropagationConfig {
        topk: a.topk,
        n_last: a.n_last,
        neighborhood: (a.neighborhood > 0).then_some(a.neighborhood),
        temperature: a.temperature,
    };
    cfg.validate()?;
    let limits = a.backend.limits();
    let first_mask = read_mask_limited(&a.mask, &limits)?;
    if first_mask.objects().is_empty() {
        return Err(Error::InvalidFile {
            path: a.mask.clone(),
            reason: "the mask has no objects (every pixel is 0, background)".into(),
        });
    }
    let mut src = source::open_any(a.frames.as_deref(), &a.gst, limits, false)?
        .ok_or_else(|| {
            Error::InvalidArgument("give --frames, --video or a GStreamer source".into())
        })?
        .src;
    let input = PathBuf::from(src.describe());
    // Masks are committed at the end: a camera would never get there.
    if src.is_live() && a.max_frames.is_none() {
        return Err(Error::InvalidArgument(format!(
            "{} is live: give --max-frames N",
            src.describe()
        )));
    }
    let mut emb = Embedder::load(
        &a.model,
        &EmbedderOptions {
            session: a.backend.session(),
            mode: InputMode::Dense(a.size),
            capture_layers: vec![],
        },
    )?;
    let first = src.next_frame()?.ok_or_else(|| Error::InvalidFile {
        path: input.clone(),
        reason: "no frames".into(),
    })?;
    if (first.image.width, first.image.height) != (first_mask.width, first_mask.height) {
        return Err(Error::InvalidFile {
            path: a.mask.clone(),
            reason: format!(
                "is {}x{} but the frames are {}x{}",
                first_mask.width, first_mask.height, first.image.width, first.image.height
            ),
        });
    }
    // Masks go to a staging folder moved into --out at the end: a run that fails half way
    // leaves --out as it was.
    let inputs: Vec<&std::path::Path> = a
        .frames
        .iter()
        .chain(&a.gst.video)
        .map(|p| p.as_path())
        .collect();
    let staged = OutputDir::create(&a.out, &inputs, Replace::Merge, "--out")?;
    let f0 = emb.embed(&first.image)?;
    let dim = f0.dim();
    let mut lp = LabelPropagator::new(
        cfg,
        &f0.last.patches.data,
        dim,
        f0.grid,
        &first_mask,
        a.backend.threads,
    )?;
    write_mask(
        &staged.path().join(format!("{}.png", first.name)),
        &first_mask,
    )?;
    let total = src
        .len_hint()
        .map(|n| n.min(a.max_frames.unwrap_or(usize::MAX)));
    let pb = progress(total.unwrap_or(0) as u64, "track");
    pb.inc(1);
    let (mut t_pre, mut t_fwd, mut t_prop) = (Vec::new(), Vec::new(), Vec::new());
    // The mask and the upsampling taps are kept between frames.
    let (mut up, mut m) = (Upsampler::default(), first_mask.clone());
    let mut count = 1usize;
    let t0 = Instant::now();
    while a.max_frames.is_none_or(|m| count < m) {
        let Some(frame) = src.next_frame()? else {
            break;
        };
        if (frame.image.width, frame.image.height) != (first.image.width, first.image.height) {
            return Err(Error::InvalidFile {
                path: input.clone(),
                reason: format!(
                    "frame {} is {}x{}, the first frame {}x{}",
                    frame.name,
                    frame.image.width,
                    frame.image.height,
                    first.image.width,
                    first.image.height
                ),
            });
        }
        let t = Instant::now();
        let px = emb.preprocess(&frame.image)?;
        t_pre.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let f = emb.embed_pixels(&px)?;
        t_fwd.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        lp.advance(&f.last.patches.data)?;
        (m.width, m.height) = (frame.image.width, frame.image.height);
        lp.last_mask_into(&mut up, &mut m);
        t_prop.push(t.elapsed().as_secs_f64() * 1e3);
        write_mask(&staged.path().join(format!("{}.png", frame.name)), &m)?;
        count += 1;
        pb.inc(1);
    }
    pb.finish_and_clear();
    staged.commit(Replace::Merge)?;
    let med = |v: &[f64]| Stats::from_ms(v).map(|s| s.median_ms).unwrap_or(f64::NAN);
    let (pre, fwd, prop) = (med(&t_pre), med(&t_fwd), med(&t_prop));
    note(
        &pb,
        format!(
            "{count} frames of {} -> {} ({} objects, grid {}x{}); median per frame: preprocess {pre:.1} ms, forward {fwd:.1} ms, propagation + mask {prop:.1} ms ({:.0}% of the forward); {:.2} fps overall",
            src.describe(),
            a.out.display(),
            lp.ids.len() - 1,
            f0.grid.0,
            f0.grid.1,
            100.0 * prop / fwd,
            count as f64 / t0.elapsed().as_secs_f64()
        ),
    );
    println!(
        "{}",
        json!({"frames": count, "objects": lp.ids.len() - 1, "grid": f0.grid, "out": a.out, "median_ms": {"preprocess": pre, "forward": fwd, "propagation": prop}, "propagation_over_forward": prop / fwd})
    );
    Ok(())
}

#[derive(Args)]
pub struct EvalDavisArgs {
    /// Ground-truth masks: one sequence (PNGs) or one folder per sequence.
    #[arg(long)]
    gt: PathBuf,
    /// Predicted masks, same layout and names.
    #[arg(long)]
    pred: PathBuf,
}

pub fn eval_davis(a: EvalDavisArgs) -> Result<()> {
    let s = davis::evaluate(&a.gt, &a.pred)?;
    println!(
        "{:<20} {:>6} {:>8} {:>8} {:>7}",
        "sequence", "object", "J", "F", "frames"
    );
    for o in &s.objects {
        println!(
            "{:<20} {:>6} {:>8.4} {:>8.4} {:>7}",
            o.sequence, o.object, o.j, o.f, o.frames
        );
    }
    println!(
        "J&F mean {:.4}  (J mean {:.4}, F mean {:.4}; first and last frames not scored)",
        s.jf_mean, s.j_mean, s.f_mean
    );
    println!("{}", serde_json::to_string(&s).unwrap_or_default());
    Ok(())
}

#[derive(Args)]
pub struct DiscoverArgs {
    /// HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// The image.
    image: PathBuf,
    /// Output mask (indexed PNG at the image size, object = 1).
    #[arg(long)]
    out: PathBuf,
    /// Also draw the object's box on the image into OUT-box.png (the box is always printed).
    #[arg(long = "box")]
    draw_box: bool,
    /// Short side of the model input (aspect kept).
    #[arg(long, default_value_t = 480)]
    size: usize,
    #[arg(long, default_value_t = 0.2, value_parser = super::finite)]
    tau: f32,
    #[arg(long, default_value_t = 1e-5, value_parser = super::non_negative)]
    eps: f32,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn discover(a: DiscoverArgs) -> Result<()> {
    super::check_output_file(&a.out, "--out")?;
    let img = image_io::load_rgb_limited(&a.image, &a.backend.limits())?;
    let mut emb = Embedder::load(
        &a.model,
        &EmbedderOptions {
            session: a.backend.session(),
            mode: InputMode::Dense(a.size),
            capture_layers: vec![],
        },
    )?;
    let px = emb.preprocess(&img)?;
    let (ih, iw) = (px.shape[2], px.shape[3]);
    let t = Instant::now();
    let f = emb.embed_pixels(&px)?;
    let fwd = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let patch = emb.model().config().patch_size();
    let d = tokencut(
        &f.last.patches.data,
        f.dim(),
        f.grid,
        patch,
        (iw, ih),
        &TokenCutConfig {
            tau: a.tau,
            eps: a.eps,
            binary: true,
        },
    )?;
    let cut = t.elapsed().as_secs_f64() * 1e3;
    // Mask at image size: nearest patch.
    let (gh, gw) = f.grid;
    let labels: Vec<u8> = (0..img.height * img.width)
        .map(|i| {
            let (y, x) = (i / img.width, i % img.width);
            let (r, c) = (
                (y * gh / img.height).min(gh - 1),
                (x * gw / img.width).min(gw - 1),
            );
            d.mask[r * gw + c] as u8
        })
        .collect();
    write_mask(
        &a.out,
        &Mask {
            width: img.width,
            height: img.height,
            labels: labels.clone(),
        },
    )?;
    let (sx, sy) = (img.width as f64 / iw as f64, img.height as f64 / ih as f64);
    let bbox = [
        (d.bbox[0] as f64 * sx).round() as usize,
        (d.bbox[1] as f64 * sy).round() as usize,
        (d.bbox[2] as f64 * sx).round() as usize,
        (d.bbox[3] as f64 * sy).round() as usize,
    ];
    if a.draw_box {
        let tint = dinoedge::RgbImage {
            width: img.width,
            height: img.height,
            data: labels
                .iter()
                .flat_map(|&l| if l == 1 { [255u8, 60, 60] } else { [0, 0, 0] })
                .collect(),
        };
        let mut over = resize_rgb(&blend(&img, &tint, 0.35), img.width, img.height);
        let thick = (img.width.max(img.height) / 200).max(2) as u32;
        draw_box(&mut over, bbox, [255, 220, 0], thick);
        let stem = a
            .out
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let path = a.out.with_file_name(format!("{stem}-box.png"));
        image_io::save_png(&path, &over)?;
        eprintln!("wrote {}", path.display());
    }
    let fg = d.mask.iter().filter(|&&m| m).count();
    eprintln!(
        "object: {fg} of {} patches, box x {}..{} y {}..{} (image pixels); forward {fwd:.1} ms, TokenCut {cut:.1} ms (grid {gh}x{gw})",
        gh * gw,
        bbox[0],
        bbox[2],
        bbox[1],
        bbox[3]
    );
    println!(
        "{}",
        json!({"image": a.image, "mask": a.out, "box": bbox, "patches": fg, "grid": f.grid, "eigenvalue": d.eigenvalue, "forward_ms": fwd, "tokencut_ms": cut})
    );
    Ok(())
}
