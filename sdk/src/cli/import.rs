//! `dinoedge import-onnx MODEL.onnx --out DIR`

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use dinoedge::runtime::fsutil::{OutputDir, Replace};
use dinoedge::runtime::import::{import_model, write_import};
use dinoedge::{Model, Result};

#[derive(Args)]
pub struct ImportArgs {
    /// An HF DINOv2 / DINOv3 ViT or DINOv3 ConvNeXt backbone exported to ONNX (a task head
    /// around it is ignored).
    onnx: PathBuf,
    /// Output directory: config.json + model.safetensors in HF layout (written to a staging
    /// directory, renamed into place at the end).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out when it already holds a model or other files.
    #[arg(long)]
    force: bool,
}

pub fn run(a: ImportArgs) -> Result<()> {
    let replace = if a.force {
        Replace::Force
    } else {
        Replace::Never
    };
    let staged = OutputDir::create(&a.out, &[&a.onnx], replace, "--force")?;
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("reading {}", a.onnx.display()));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let imp = import_model(&a.onnx);
    spinner.finish_and_clear();
    let imp = imp?;
    for n in imp.notes() {
        eprintln!("note: {n}");
    }
    write_import(&imp, staged.path(), &a.onnx)?;
    // Load what was written, as any user of the directory would, before it replaces --out.
    Model::load(staged.path())?;
    staged.commit(replace)?;
    let model = Model::load(&a.out)?;
    println!(
        "imported {} ({} parameters) -> {}",
        model.config().describe(),
        model.num_parameters(),
        a.out.display()
    );
    Ok(())
}
