//! Subcommands of the `dinoedge` CLI. Results go to stdout, progress and notes to stderr.

mod bench;
mod distill;
mod embed;
mod eval_quant;
mod import;
mod info;
mod live;
mod quantize;
mod track;

use clap::{Args, Parser, Subcommand};
use dinoedge::{BackendKind, Precision, Result, SessionOptions};

#[derive(Parser)]
#[command(
    name = "dinoedge",
    version,
    about = "DINOv3-class dense vision features on edge devices"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Architecture, parameter count, dtype and tokens of a model directory.
    Info(info::InfoArgs),
    /// Embed images (or preprocessed pixels) and write CLS / register / patch features.
    Embed(embed::EmbedArgs),
    /// Time forward passes and print median / p90 latency (last line: one JSON object).
    Bench(bench::BenchArgs),
    /// Convert an HF-exported DINOv2 / DINOv3 ONNX backbone to an HF safetensors directory.
    ImportOnnx(import::ImportArgs),
    /// Write an f16, bf16 or int8 (W8A8, calibrated) copy of a float model.
    Quantize(quantize::QuantizeArgs),
    /// Compare a quantised model with its float original: per-layer cosines, size, stereo score.
    EvalQuant(eval_quant::EvalQuantArgs),
    /// Distil a small DINOv3 student from a teacher's features (subcommands: cache-teacher, eval, plot).
    Distill(Box<distill::DistillArgs>),
    /// Propagate first-frame object masks through a video (DINO label propagation).
    Track(Box<track::TrackArgs>),
    /// DAVIS J (IoU) and F (boundary) scores of predicted masks against ground truth.
    EvalDavis(track::EvalDavisArgs),
    /// Find the salient object of an image without labels (TokenCut): mask and box.
    Discover(Box<track::DiscoverArgs>),
    /// Live view in the browser: camera / folder / video -> PCA, tracking, similarity, stats.
    Live(Box<live::LiveArgs>),
}

/// Backend selection shared by the commands that run a model.
#[derive(Args, Clone, Debug)]
pub struct BackendArgs {
    /// cpu (fast SIMD kernels), cpu-ref (the f32 reference), wgpu (with --features wgpu),
    /// cuda (with --features cuda).
    #[arg(long, default_value = "cpu", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Precision: f32, f16 (weights), int8 (W8A8), bf16 where the backend supports it;
    /// default: the model's own (int8 for `dinoedge quantize --precision int8` models).
    #[arg(long, value_parser = parse_precision)]
    pub precision: Option<Precision>,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// wgpu adapter: a name substring or an index from `dinoedge info --backend wgpu`
    /// (default: `DINOEDGE_WGPU_ADAPTER`, else the best GPU); cuda: a GPU index (default:
    /// `DINOEDGE_CUDA_DEVICE`, else 0).
    #[arg(long)]
    pub adapter: Option<String>,
}

impl BackendArgs {
    pub fn session(&self) -> SessionOptions {
        SessionOptions {
            backend: self.backend,
            precision: self.precision,
            threads: self.threads,
            adapter: self.adapter.clone(),
        }
    }
}

pub fn parse_backend(s: &str) -> std::result::Result<BackendKind, String> {
    s.parse()
        .map_err(|e: dinoedge::runtime::RuntimeError| e.to_string())
}

pub fn parse_precision(s: &str) -> std::result::Result<Precision, String> {
    s.parse()
        .map_err(|e: dinoedge::runtime::RuntimeError| e.to_string())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Prints a line above the progress bar, or to stderr when the bar is hidden (not a terminal).
pub fn note(pb: &indicatif::ProgressBar, msg: impl AsRef<str>) {
    if pb.is_hidden() {
        eprintln!("{}", msg.as_ref());
    } else {
        pb.println(msg.as_ref());
    }
}

/// When the bar is hidden (logs, nohup), prints `line` to stderr at most every 30 s so long
/// jobs still show progress.
pub fn heartbeat(
    pb: &indicatif::ProgressBar,
    last: &mut std::time::Instant,
    line: impl FnOnce() -> String,
) {
    if pb.is_hidden() && last.elapsed() >= std::time::Duration::from_secs(30) {
        eprintln!("{}", line());
        *last = std::time::Instant::now();
    }
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Info(a) => info::run(a),
        Cmd::Embed(a) => embed::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::ImportOnnx(a) => import::run(a),
        Cmd::Quantize(a) => quantize::run(a),
        Cmd::EvalQuant(a) => eval_quant::run(a),
        Cmd::Distill(a) => distill::run(*a),
        Cmd::Track(a) => track::track(*a),
        Cmd::EvalDavis(a) => track::eval_davis(a),
        Cmd::Discover(a) => track::discover(*a),
        Cmd::Live(a) => live::run(*a),
    }
}
