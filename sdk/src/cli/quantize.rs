//! `dinoedge quantize MODEL_DIR --precision f16|bf16|int8 [--calib IMAGE_DIR --calib-count N] --out DIR`

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use dinoedge::runtime::fsutil::{OutputDir, Replace};
use dinoedge::runtime::quant::{self, CalibrationStats, QuantizeOptions, Smoothing};
use dinoedge::runtime::{ActivationScheme, Preprocessor};
use dinoedge::{Error, Model, Precision, Result, Tensor, assets, image_io};

use super::progress;

#[derive(Args)]
pub struct QuantizeArgs {
    /// Float HF model directory.
    model: PathBuf,
    /// f16, bf16 or int8 (W8A8).
    #[arg(long, value_parser = super::parse_precision)]
    precision: Precision,
    /// Output model directory (written to a staging directory, renamed into place at the end).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out when it already holds a model or other files (never the input itself).
    #[arg(long)]
    force: bool,
    /// Calibration images (int8). Default: the real photos from scripts/fetch-assets.sh.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Use at most this many calibration images.
    #[arg(long, default_value_t = 32)]
    calib_count: usize,
    /// Calibration input size (the model's processor at SIZE x SIZE).
    #[arg(long, default_value_t = 224)]
    calib_size: usize,
    /// int8 activations: dynamic (per token, at run time) or static (per tensor, calibrated).
    #[arg(long, default_value = "dynamic", value_parser = ["dynamic", "static"])]
    activations: String,
    /// SmoothQuant: auto (per Linear, where it helps), off, or a strength in (0, 1).
    #[arg(long, default_value = "auto")]
    smoothquant: String,
    /// CPU threads for calibration.
    #[arg(long)]
    threads: Option<usize>,
}

/// Loads and preprocesses calibration images; unreadable files are skipped with a warning.
fn calibration_inputs(
    model: &Model,
    files: &[PathBuf],
    size: usize,
    source: &Path,
) -> Result<Vec<Tensor>> {
    let pre = Preprocessor::for_model(model.config(), Some(model.dir()), size)?;
    let pb = progress(files.len() as u64, "load");
    let mut out = Vec::new();
    let mut skipped = 0;
    for f in files {
        match image_io::load_rgb(f) {
            Ok(img)
                if img.width >= model.config().patch_size()
                    && img.height >= model.config().patch_size() =>
            {
                out.push(pre.run(&img)?)
            }
            Ok(_) => {
                skipped += 1;
                super::note(
                    &pb,
                    format!(
                        "warning: {} is smaller than one patch, skipped",
                        f.display()
                    ),
                );
            }
            Err(e) => {
                skipped += 1;
                super::note(&pb, format!("warning: skipped: {e}"));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if out.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no readable calibration images ({} files tried, {skipped} unreadable)",
            source.display(),
            files.len()
        )));
    }
    if skipped > 0 {
        eprintln!("note: {skipped} calibration file(s) skipped");
    }
    Ok(out)
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let model = Arc::new(Model::load(&a.model)?);
    // Before any work: --out must not be the input, nor a model unless --force.
    let replace = if a.force {
        Replace::Force
    } else {
        Replace::Never
    };
    let staged = OutputDir::create(&a.out, &[&a.model], replace, "--force")?;
    if model.is_quantized() {
        return Err(Error::InvalidArgument(format!(
            "{}: the model is already quantized (int8); quantize the float original",
            a.model.display()
        )));
    }
    let smoothing = match a.smoothquant.as_str() {
        "auto" => Smoothing::Auto,
        "off" => Smoothing::Off,
        s => match s.parse::<f32>() {
            Ok(v) if v > 0.0 && v < 1.0 => Smoothing::Alpha(v),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "--smoothquant {s:?}: expected auto, off or a number in (0, 1)"
                )));
            }
        },
    };
    let activations = if a.activations == "static" {
        ActivationScheme::StaticPerTensor
    } else {
        ActivationScheme::DynamicPerToken
    };
    let opts = QuantizeOptions {
        precision: a.precision,
        activations,
        smoothing,
        threads: a.threads,
    };

    // Calibration: needed for SmoothQuant and static scales (int8 only).
    let wants_calib = a.precision == Precision::Int8
        && (smoothing != Smoothing::Off || activations == ActivationScheme::StaticPerTensor);
    let mut calib: Option<CalibrationStats> = None;
    if wants_calib {
        let (files, source) = match &a.calib {
            Some(dir) => (assets::list_images(dir)?, dir.clone()),
            None => (assets::default_photos(), assets::photos_dir()),
        };
        if a.calib.is_none() && files.is_empty() {
            if activations == ActivationScheme::StaticPerTensor {
                return Err(Error::InvalidArgument("static activations need calibration images: pass --calib DIR (or run scripts/fetch-assets.sh)".into()));
            }
            eprintln!(
                "note: no calibration images (no --calib, and the asset photos are not fetched): int8 without SmoothQuant"
            );
        } else {
            let files: Vec<PathBuf> = files.into_iter().take(a.calib_count.max(1)).collect();
            if files.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{}: no image files (jpg, png, pgm) to calibrate on",
                    source.display()
                )));
            }
            let inputs = calibration_inputs(&model, &files, a.calib_size, &source)?;
            let pb = progress(inputs.len() as u64, "calibrate");
            let stats = quant::calibrate(
                &model,
                &inputs,
                a.threads,
                &source.display().to_string(),
                |i| pb.set_position(i as u64),
            )?;
            pb.finish_and_clear();
            eprintln!(
                "calibrated on {} image(s) from {}",
                stats.images,
                source.display()
            );
            calib = Some(stats);
        }
    }

    let q = quant::quantize(&model, &opts, calib.as_ref())?;
    quant::write(&q, staged.path(), &a.model)?;
    // Load what was written, as any user of the directory would, before it replaces --out.
    Model::load(staged.path())?;
    staged.commit(replace)?;
    let written = Model::load(&a.out)?;
    let (s0, s1) = (model.store().file_bytes(), written.store().file_bytes());
    // The decisions, when calibration reached the sites (with --smoothquant off and dynamic
    // activations nothing was calibrated, and there is nothing to show).
    if q.sites.iter().any(|r| r.error_plain.is_some()) {
        let w = q
            .sites
            .iter()
            .map(|r| r.site.len())
            .max()
            .unwrap_or(0)
            .max(12);
        println!(
            "{:<w$} {:>12} {:>12} {:>7} {:>12}",
            "linear input", "int8 err", "smoothed", "alpha", "input scale"
        );
        for r in &q.sites {
            let f = |v: Option<f64>| v.map_or("-".to_string(), |e| format!("{e:.2e}"));
            println!(
                "{:<w$} {:>12} {:>12} {:>7} {:>12}",
                r.site,
                f(r.error_plain),
                f(r.error_smoothed),
                r.alpha.map_or("-".into(), |a| format!("{a}")),
                r.input_scale.map_or("-".into(), |s| format!("{s:.3e}"))
            );
        }
    }
    println!(
        "wrote {} ({}, {}): {:.1} MiB, {:.3}x the original {:.1} MiB",
        a.out.display(),
        written.config().describe(),
        a.precision,
        s1 as f64 / (1 << 20) as f64,
        s1 as f64 / s0.max(1) as f64,
        s0 as f64 / (1 << 20) as f64
    );
    Ok(())
}
