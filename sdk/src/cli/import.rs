//! `dinoedge import-onnx MODEL.onnx --out DIR`

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use dinoedge::runtime::import::{import_onnx, write_model_dir};
use dinoedge::{Model, Result};

#[derive(Args)]
pub struct ImportArgs {
    /// An HF DINOv2 / DINOv3 backbone exported to ONNX (a task head around it is ignored).
    onnx: PathBuf,
    /// Output directory: config.json + model.safetensors in HF layout.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ImportArgs) -> Result<()> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("reading {}", a.onnx.display()));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let imp = import_onnx(&a.onnx);
    spinner.finish_and_clear();
    let imp = imp?;
    for n in &imp.notes {
        eprintln!("note: {n}");
    }
    write_model_dir(&imp, &a.out, &a.onnx)?;
    // Load what was written, as any user of the directory would.
    let model = Model::load(&a.out)?;
    println!(
        "imported {} ({} parameters) -> {}",
        model.config().describe(),
        model.num_parameters(),
        a.out.display()
    );
    Ok(())
}
