//! Subcommands of the `dinoedge` CLI. Results go to stdout, progress and notes to stderr.

mod bench;
#[cfg(feature = "distill")]
mod distill;
mod embed;
mod eval_quant;
#[cfg(feature = "onnx")]
mod import;
mod info;
mod live;
mod quantize;
mod source;
mod track;

use clap::{Args, Parser, Subcommand};
use dinoedge::runtime::InputLimits;
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
    /// Convert an HF-exported DINOv2 / DINOv3 ViT or ConvNeXt ONNX backbone to an HF safetensors directory.
    #[cfg(feature = "onnx")]
    ImportOnnx(import::ImportArgs),
    /// Write an f16, bf16 or int8 (W8A8, calibrated) copy of a float model.
    Quantize(quantize::QuantizeArgs),
    /// Compare a quantised model with its float original: per-layer cosines, size, stereo score.
    EvalQuant(eval_quant::EvalQuantArgs),
    /// Distil a small DINOv3 student from a teacher's features (subcommands: cache-teacher, eval, plot).
    #[cfg(feature = "distill")]
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
    /// 0).
    #[arg(long)]
    pub adapter: Option<String>,
    /// cuda: record each forward shape as a CUDA graph and replay it.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub cuda_graphs: String,
    /// cuda: the attention kernel of f16 / bf16 sessions on sm_80+: mma (tensor cores) or
    /// simt (CUDA cores, as f32 sessions and older GPUs run).
    #[arg(long, default_value = "mma", value_parser = ["mma", "simt"])]
    pub cuda_attention: String,
    /// Largest image or frame accepted, in pixels (checked from the file header before
    /// decoding).
    #[arg(long, default_value_t = InputLimits::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Largest model input accepted, in tokens per image (attention cost grows with the
    /// square of it; a very long --dense strip needs many).
    #[arg(long, default_value_t = InputLimits::DEFAULT_MAX_TOKENS)]
    pub max_tokens: usize,
}

impl BackendArgs {
    pub fn session(&self) -> SessionOptions {
        SessionOptions {
            backend: self.backend,
            precision: self.precision,
            threads: self.threads,
            adapter: self.adapter.clone(),
            limits: self.limits(),
            cuda_graphs: self.cuda_graphs == "on",
            cuda_tensor_core_attention: self.cuda_attention == "mma",
        }
    }

    pub fn limits(&self) -> InputLimits {
        InputLimits {
            max_pixels: self.max_pixels,
            max_tokens: self.max_tokens,
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

/// A float option: finite (`NaN` would slip past every `<=` check, `inf` past every bound).
fn float_in(s: &str, ok: impl Fn(f64) -> bool, what: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() || !ok(v) {
        return Err(format!("{s:?}: expected {what}"));
    }
    Ok(v)
}

/// A finite number.
pub fn finite(s: &str) -> std::result::Result<f32, String> {
    float_in(s, |_| true, "a finite number").map(|v| v as f32)
}

/// A finite number >= 0.
pub fn non_negative(s: &str) -> std::result::Result<f32, String> {
    float_in(s, |v| v >= 0.0, "a finite number >= 0").map(|v| v as f32)
}

/// A finite number > 0.
pub fn positive(s: &str) -> std::result::Result<f32, String> {
    float_in(s, |v| v > 0.0, "a finite number > 0").map(|v| v as f32)
}

/// A probability in [0, 1].
#[cfg_attr(not(feature = "distill"), allow(dead_code))]
pub fn probability(s: &str) -> std::result::Result<f32, String> {
    float_in(s, |v| (0.0..=1.0).contains(&v), "a number in [0, 1]").map(|v| v as f32)
}

/// A fraction in [0, 1) (f64).
#[cfg_attr(not(feature = "distill"), allow(dead_code))]
pub fn fraction(s: &str) -> std::result::Result<f64, String> {
    float_in(s, |v| (0.0..1.0).contains(&v), "a number in [0, 1)")
}

/// A finite number of seconds > 0 (f64).
pub fn seconds(s: &str) -> std::result::Result<f64, String> {
    float_in(s, |v| v > 0.0, "a finite number of seconds > 0")
}

/// Refuses an output file path that cannot be written (an existing directory, a missing
/// parent), before any work is done, so a command never fails after writing half its outputs.
pub fn check_output_file(path: &std::path::Path, flag: &str) -> Result<()> {
    let refuse = |reason: String| {
        dinoedge::Error::from(dinoedge::runtime::RuntimeError::OutputRefused {
            path: path.to_path_buf(),
            reason: format!("{flag}: {reason}"),
        })
    };
    if path.is_dir() {
        return Err(refuse("it is a directory; give a file name".into()));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        return Err(refuse(format!(
            "its directory {} does not exist",
            parent.display()
        )));
    }
    Ok(())
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
#[cfg_attr(not(feature = "distill"), allow(dead_code))]
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
        #[cfg(feature = "onnx")]
        Cmd::ImportOnnx(a) => import::run(a),
        Cmd::Quantize(a) => quantize::run(a),
        Cmd::EvalQuant(a) => eval_quant::run(a),
        #[cfg(feature = "distill")]
        Cmd::Distill(a) => distill::run(*a),
        Cmd::Track(a) => track::track(*a),
        Cmd::EvalDavis(a) => track::eval_davis(a),
        Cmd::Discover(a) => track::discover(*a),
        Cmd::Live(a) => live::run(*a),
    }
}
