//! `dinoedge bench MODEL_DIR --backend cpu --size 224 --threads N --iters K`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use dinoedge::bench::{Stats, peak_rss_bytes};
use dinoedge::runtime::{RunOptions, create_session};
use dinoedge::{Error, Model, Result, Tensor};
use serde_json::json;

use super::{BackendArgs, progress};

#[derive(Args)]
pub struct BenchArgs {
    /// HF model directory.
    model: PathBuf,
    /// Square input size in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Non-square input: height (with --width).
    #[arg(long, requires = "width")]
    height: Option<usize>,
    #[arg(long, requires = "height")]
    width: Option<usize>,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.iters == 0 || a.batch == 0 {
        return Err(Error::InvalidArgument(
            "--iters and --batch must be at least 1".into(),
        ));
    }
    let (h, w) = (a.height.unwrap_or(a.size), a.width.unwrap_or(a.size));
    let model = Arc::new(Model::load(&a.model)?);
    let cfg = model.config().clone();
    let t_load = Instant::now();
    let mut session = create_session(model, &a.backend.session())?;
    let prepare_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let info = session.info();
    // Deterministic pseudo-random pixels in the normalised range.
    let n = a.batch * 3 * h * w;
    let mut state = 0x9e37_79b9u32;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 4.0 - 2.0
        })
        .collect();
    let pixels = Tensor::new(vec![a.batch, 3, h, w], data)?;
    let opts = RunOptions::default();
    eprintln!(
        "{} | {} ({}) {} | batch {} x {h}x{w} ({} tokens) | warmup {} + {} iters",
        cfg.describe(),
        info.kind,
        info.device,
        info.precision,
        a.batch,
        cfg.num_tokens(h, w),
        a.warmup,
        a.iters
    );
    for _ in 0..a.warmup {
        session.run(&pixels, &opts)?;
    }
    let pb = progress(a.iters as u64, "bench");
    let mut ms = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let t = Instant::now();
        session.run(&pixels, &opts)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let s = Stats::from_ms(&ms).expect("iters >= 1");
    let rss = peak_rss_bytes();
    println!(
        "median {:.2} ms  p90 {:.2} ms  min {:.2} ms  mean {:.2} ms  ({} iters, {:.1} img/s at the median)",
        s.median_ms,
        s.p90_ms,
        s.min_ms,
        s.mean_ms,
        s.iters,
        a.batch as f64 * 1e3 / s.median_ms
    );
    if let Some(r) = rss {
        println!(
            "peak RSS {:.1} MiB, session prepared in {prepare_ms:.0} ms",
            r as f64 / (1 << 20) as f64
        );
    }
    let size = if h == w { json!(h) } else { json!([h, w]) };
    println!(
        "{}",
        json!({
            "median_ms": s.median_ms,
            "p90_ms": s.p90_ms,
            "min_ms": s.min_ms,
            "mean_ms": s.mean_ms,
            "iters": s.iters,
            "backend": info.kind.to_string(),
            "device": info.device,
            "precision": info.precision.to_string(),
            "threads": info.threads,
            "size": size,
            "batch": a.batch,
            "tokens": cfg.num_tokens(h, w),
            "model": cfg.describe(),
            "peak_rss_bytes": rss,
        })
    );
    Ok(())
}
