//! Tracking on real pictures with ground truth: builds a sequence in which a real object (the
//! opencv-doc alphamat plant, cut out with its real matte) moves, grows and is partly occluded
//! over a real background, propagates the first mask through it with label propagation, and
//! scores the result with the DAVIS J&F metric, next to the "first mask copied" baseline.
//!
//!     cargo run --release -p dinoedge-examples --example track -- MODEL_DIR [OUT_DIR [FRAMES]]
//!
//! FRAMES (default 12) sets the sequence's length (`scripts/bench-live.sh` uses 40).

use std::path::PathBuf;

use dinoedge::davis::{self, read_mask, write_mask};
use dinoedge::frames::{FolderSource, FrameSource};
use dinoedge::synth::{Motion, paste_sequence};
use dinoedge::track::{LabelPropagator, PropagationConfig};
use dinoedge::{Embedder, EmbedderOptions, InputMode, assets};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .ok_or("usage: track MODEL_DIR [OUT_DIR [FRAMES]]")?;
    let out = PathBuf::from(args.get(2).cloned().unwrap_or_else(|| "track-out".into()));
    let frames = match args.get(3) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("FRAMES must be a number, got {n}"))?,
        None => Motion::default().frames,
    };
    let a = assets::assets_dir();
    let ocv = assets::opencv_data_dir();
    paste_sequence(
        &a.join("alphamat/input_images/plant.jpg"),
        &a.join("alphamat/output_mattes/plant_result.png"),
        &ocv.join("building.jpg"),
        &ocv.join("fruits.jpg"),
        &out.join("gt"),
        &Motion {
            frames,
            ..Motion::default()
        },
    )?;
    let mut emb = Embedder::load(
        model,
        &EmbedderOptions {
            mode: InputMode::Dense(224),
            ..Default::default()
        },
    )?;
    let mut src = FolderSource::open(&out.join("gt/frames"))?;
    let first_mask = read_mask(&out.join("gt/masks/00000.png"))?;
    let pred = out.join("pred");
    let copy = out.join("copy");
    std::fs::create_dir_all(&pred)?;
    std::fs::create_dir_all(&copy)?;
    let first = src.next_frame()?.ok_or("no frames")?;
    let f0 = emb.embed(&first.image)?;
    let mut lp = LabelPropagator::new(
        PropagationConfig::default(),
        &f0.last.patches.data,
        f0.dim(),
        f0.grid,
        &first_mask,
        None,
    )?;
    write_mask(&pred.join("00000.png"), &first_mask)?;
    write_mask(&copy.join("00000.png"), &first_mask)?;
    while let Some(frame) = src.next_frame()? {
        let f = emb.embed(&frame.image)?;
        let soft = lp.step(&f.last.patches.data)?;
        write_mask(
            &pred.join(format!("{}.png", frame.name)),
            &lp.to_mask(&soft, frame.image.width, frame.image.height),
        )?;
        write_mask(&copy.join(format!("{}.png", frame.name)), &first_mask)?;
    }
    let tracked = davis::evaluate(&out.join("gt/masks"), &pred)?;
    let baseline = davis::evaluate(&out.join("gt/masks"), &copy)?;
    println!(
        "label propagation: J&F {:.3} (J {:.3}, F {:.3})",
        tracked.jf_mean, tracked.j_mean, tracked.f_mean
    );
    println!(
        "first mask copied: J&F {:.3} (J {:.3}, F {:.3})",
        baseline.jf_mean, baseline.j_mean, baseline.f_mean
    );
    println!("frames, ground truth and predictions in {}", out.display());
    Ok(())
}
