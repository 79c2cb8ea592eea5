//! `dinoedge eval-quant REFERENCE_DIR QUANT_DIR IMAGES...`: what quantisation cost, in the
//! terms dense-feature users care about.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use dinoedge::compare::{average, layer_cosines};
use dinoedge::stereo::{self, StereoScore};
use dinoedge::{
    Embedder, EmbedderOptions, Error, InputMode, Model, Precision, Result, SessionOptions, assets,
    image_io,
};
use serde_json::json;

use super::progress;

#[derive(Args)]
pub struct EvalQuantArgs {
    /// The float model.
    reference: PathBuf,
    /// The quantised model (dinoedge quantize output).
    quantized: PathBuf,
    /// Images for the feature comparison (default: the real photos from the asset cache).
    images: Vec<PathBuf>,
    /// Input size for the feature comparison.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Short side for the stereo correspondence score (dense mode).
    #[arg(long, default_value_t = 448)]
    stereo_size: usize,
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(a: EvalQuantArgs) -> Result<()> {
    let reference = Arc::new(Model::load(&a.reference)?);
    let quantized = Arc::new(Model::load(&a.quantized)?);
    let (rc, qc) = (reference.config(), quantized.config());
    if (rc.hidden_size(), rc.num_layers(), rc.patch_size())
        != (qc.hidden_size(), qc.num_layers(), qc.patch_size())
    {
        return Err(Error::InvalidArgument(format!(
            "{} and {} are different architectures",
            a.reference.display(),
            a.quantized.display()
        )));
    }
    let images = if a.images.is_empty() {
        assets::default_photos()
    } else {
        a.images.clone()
    };
    if images.is_empty() {
        return Err(Error::InvalidArgument(
            "no images: pass IMAGES or run scripts/fetch-assets.sh for the default photos".into(),
        ));
    }
    // Every layer but the last, which the output itself gives: for a ViT a captured layer
    // is final-normed (the same as the output), for a ConvNeXt it is the raw stage.
    let all_layers: Vec<usize> = (0..rc.num_layers() - 1).collect();
    let session = |precision: Option<Precision>| SessionOptions {
        precision,
        threads: a.threads,
        ..Default::default()
    };
    let opts = |precision, mode| EmbedderOptions {
        session: session(precision),
        mode,
        capture_layers: all_layers.clone(),
    };
    let mut ref_e = Embedder::from_model(
        reference.clone(),
        &opts(Some(Precision::F32), InputMode::Fixed(a.size)),
    )?;
    let mut q_e = Embedder::from_model(quantized.clone(), &opts(None, InputMode::Fixed(a.size)))?;
    eprintln!("reference: {} on {}", rc.describe(), ref_e.backend().device);
    eprintln!(
        "quantised: {} ({}) on {}",
        qc.describe(),
        q_e.backend().precision,
        q_e.backend().device
    );

    let pb = progress(images.len() as u64, "compare");
    let mut per_image = Vec::new();
    for path in &images {
        let img = image_io::load_rgb(path)?;
        let (fr, fq) = (ref_e.embed(&img)?, q_e.embed(&img)?);
        per_image.push(layer_cosines(&fr, &fq));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let cos = average(&per_image);

    // Dense task: stereo correspondence, same metric for both models.
    let pairs = stereo::available_pairs()?;
    let dense = |model: &Arc<Model>, precision| {
        Embedder::from_model(
            model.clone(),
            &EmbedderOptions {
                session: session(precision),
                mode: InputMode::Dense(a.stereo_size),
                capture_layers: vec![],
            },
        )
    };
    let (mut rd, mut qd) = (
        dense(&reference, Some(Precision::F32))?,
        dense(&quantized, None)?,
    );
    let mut stereo_rows: Vec<(StereoScore, StereoScore)> = Vec::new();
    for p in &pairs {
        stereo_rows.push((stereo::evaluate(&mut rd, p)?, stereo::evaluate(&mut qd, p)?));
    }

    println!("{:<8} {:>12} {:>12}", "layer", "CLS cos", "patch cos");
    for c in &cos {
        let label = if c.layer + 1 == rc.num_layers() {
            format!("{} (out)", c.layer)
        } else {
            c.layer.to_string()
        };
        println!("{label:<8} {:>12.6} {:>12.6}", c.cls, c.patches);
    }
    let (sr, sq) = (
        reference.store().file_bytes(),
        quantized.store().file_bytes(),
    );
    println!(
        "size on disk: reference {:.1} MiB, quantised {:.1} MiB ({:.3}x)",
        sr as f64 / 1048576.0,
        sq as f64 / 1048576.0,
        sq as f64 / sr.max(1) as f64
    );
    if pairs.is_empty() {
        println!("stereo: no pairs found (run scripts/fetch-assets.sh)");
    }
    for (r, q) in &stereo_rows {
        println!(
            "stereo {:<10} accuracy reference {:.2}% quantised {:.2}% (delta {:+.2} points), median error {:.2} / {:.2} patches, {} patches, grid {}x{}",
            r.pair,
            r.accuracy * 100.0,
            q.accuracy * 100.0,
            (q.accuracy - r.accuracy) * 100.0,
            r.median_error,
            q.median_error,
            r.scored_patches,
            r.grid.0,
            r.grid.1
        );
    }
    let last = cos.last().expect("at least the output layer");
    println!(
        "{}",
        json!({
            "reference": a.reference.display().to_string(),
            "quantized": a.quantized.display().to_string(),
            "precision": q_e.backend().precision.to_string(),
            "images": images.len(),
            "final_cls_cosine": last.cls,
            "final_patch_cosine": last.patches,
            "layers": cos,
            "size_bytes": {"reference": sr, "quantized": sq, "ratio": sq as f64 / sr.max(1) as f64},
            "stereo": stereo_rows.iter().map(|(r, q)| json!({"pair": r.pair, "reference": r, "quantized": q, "delta_points": (q.accuracy - r.accuracy) * 100.0})).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
