//! `dinoedge live (--camera N | --frames DIR | --video FILE | --gst PIPELINE | --csi N |
//! --rtsp URL) --model M [--mask FIRST.png] [--serve 127.0.0.1:8080] [--bench]`: the live pipeline with a browser view, or its
//! per-stage benchmark.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use dinoedge::davis::read_mask_limited;
use dinoedge::frames::{self, FrameSource, LatestFrame, Reopen};
use dinoedge::live::{LiveShared, Overlap, Pipeline, PipelineOptions, Render};
use dinoedge::track::PropagationConfig;
use dinoedge::{Embedder, EmbedderOptions, Error, InputMode, Result};
use serde_json::json;

use super::BackendArgs;
use super::source::{self, GstArgs};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["camera", "frames", "video", "gst", "csi", "rtsp"])))]
pub struct LiveArgs {
    /// HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// V4L2 camera index (build with --features camera).
    #[arg(long)]
    camera: Option<u32>,
    /// An image-sequence folder.
    #[arg(long)]
    frames: Option<PathBuf>,
    /// Or a video file or GStreamer source.
    #[command(flatten)]
    gst: GstArgs,
    /// First-frame mask to propagate (DAVIS indexed PNG, same size as the frames).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Address to serve the page on. Loopback by default; a LAN address (0.0.0.0:8080) must
    /// be given explicitly, and then every request but the page needs the token printed in
    /// the URL.
    #[arg(long, default_value = "127.0.0.1:8080")]
    serve: String,
    /// A DNS name the page may be reached under besides IP addresses and localhost
    /// (jetson.local); repeatable. Other names are refused (DNS-rebinding protection).
    #[arg(long)]
    allow_host: Vec<String>,
    /// Short side of the model input (aspect kept).
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Camera resolution and rate requested.
    #[arg(long, default_value_t = 640)]
    width: u32,
    #[arg(long, default_value_t = 480)]
    height: u32,
    /// Camera rate, or the playback rate of folders and files (GStreamer plays files at
    /// their own rate).
    #[arg(long, default_value_t = 15)]
    fps: u32,
    /// Replay folders and files forever.
    #[arg(long = "loop")]
    looping: bool,
    /// Width of the views in the page.
    #[arg(long, default_value_t = 640)]
    display_width: usize,
    /// Stop after this many seconds (default: run until the source ends or Ctrl-C).
    #[arg(long, value_parser = super::seconds)]
    duration: Option<f64>,
    /// No server: run FRAMES frames as fast as possible and print per-stage latency.
    #[arg(long)]
    bench: bool,
    /// Frames to benchmark.
    #[arg(long, default_value_t = 40)]
    bench_frames: u64,
    /// Draw and encode all three views in --bench too (the page's cost with every view
    /// watched). Without it, --bench draws none; the server draws the watched ones.
    #[arg(long)]
    bench_views: bool,
    /// Run preprocess + forward and post-processing on their own threads (auto: on for GPU
    /// backends, off for the CPU backend).
    #[arg(long, value_enum, default_value_t = OverlapArg::Auto)]
    overlap: OverlapArg,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OverlapArg {
    Auto,
    On,
    Off,
}

/// Replays a source from the start when it ends.
struct Looping {
    open: Reopen,
    inner: Box<dyn FrameSource>,
    offset: u64,
}

impl FrameSource for Looping {
    fn next_frame(&mut self) -> Result<Option<frames::Frame>> {
        match self.inner.next_frame()? {
            Some(mut f) => {
                f.index += self.offset;
                Ok(Some(f))
            }
            None => {
                self.offset += self.inner.len_hint().unwrap_or(0) as u64;
                self.inner = (self.open)()?;
                let mut f = self.inner.next_frame()?.ok_or_else(|| Error::Source {
                    name: self.inner.describe(),
                    reason: "no frames".into(),
                })?;
                f.index += self.offset;
                Ok(Some(f))
            }
        }
    }
    fn describe(&self) -> String {
        format!("{} (looping)", self.inner.describe())
    }
}

/// The source, how to reopen it when it fails (cameras and streams), and whether to pace it
/// at --fps (folders and files outside GStreamer, which plays files at their own rate).
fn open_source(a: &LiveArgs) -> Result<(Box<dyn FrameSource>, Option<Reopen>, bool)> {
    let limits = a.backend.limits();
    if let Some(i) = a.camera {
        let (w, h, fps) = (a.width, a.height, a.fps);
        let src = frames::open_camera(i, w, h, fps)?;
        let reopen: Reopen = Box::new(move || frames::open_camera(i, w, h, fps));
        return Ok((src, Some(reopen), false));
    }
    let o = source::open_any(a.frames.as_deref(), &a.gst, limits, !a.bench)?.ok_or_else(|| {
        Error::InvalidArgument("give a source (--frames, --video, --gst, ...)".into())
    })?;
    let (src, reopen, open) = (o.src, o.reopen, o.again);
    let pace = !a.bench && !o.gst;
    if a.looping && reopen.is_none() {
        let src = Box::new(Looping {
            open,
            inner: src,
            offset: 0,
        });
        return Ok((src, None, pace));
    }
    Ok((src, reopen, pace))
}

pub fn run(a: LiveArgs) -> Result<()> {
    // The source first: a missing camera or an unreadable video fails before any model work.
    let (source, reopen, pace) = open_source(&a)?;
    let source_name = source.describe();
    let limits = a.backend.limits();
    let mask = a
        .mask
        .as_deref()
        .map(|m| read_mask_limited(m, &limits))
        .transpose()?;
    if let Some(m) = &mask
        && m.objects().is_empty()
    {
        return Err(Error::InvalidFile {
            path: a.mask.clone().unwrap_or_default(),
            reason: "the mask has no objects".into(),
        });
    }
    let emb = Embedder::load(
        &a.model,
        &EmbedderOptions {
            session: a.backend.session(),
            mode: InputMode::Dense(a.size),
            capture_layers: vec![],
        },
    )?;
    let mut pipeline = Pipeline::new(
        emb,
        PipelineOptions {
            display_width: a.display_width,
            jpeg_quality: 80,
            mask,
            propagation: PropagationConfig::default(),
            threads: a.backend.threads,
            max_frames: a.bench.then_some(a.bench_frames),
            render: match (a.bench, a.bench_views) {
                (false, _) => Render::Watched,
                (true, true) => Render::All,
                (true, false) => Render::Never,
            },
            overlap: match a.overlap {
                OverlapArg::Auto => Overlap::Auto,
                OverlapArg::On => Overlap::On,
                OverlapArg::Off => Overlap::Off,
            },
        },
    );
    // Folders and files play at --fps (their timestamps are index / fps).
    let source: Box<dyn FrameSource> = if pace {
        Box::new(Paced {
            inner: source,
            period: Duration::from_secs_f64(1.0 / a.fps.max(1) as f64),
            start: None,
        })
    } else {
        source
    };
    let shared = LiveShared::new();
    if a.bench {
        let mut source = source;
        let t0 = Instant::now();
        let s = pipeline.run_all(source.as_mut(), &shared)?;
        let m = s.stage_ms;
        let outside = m.capture + m.preprocess + m.post;
        eprintln!(
            "{} frames of {source_name} on {} in {:.1} s ({}, views: {}): {:.2} fps end to end = {:.2}x the forward-only rate ({:.2} fps); median ms: capture {:.1}, preprocess {:.1}, forward {:.1}, post-process {:.1} (propagation {:.1} = {:.0}% of the forward); outside the forward {:.1} ms = {:.0}% of it; busy: capture {:.0}%, infer {:.0}%, post {:.0}%",
            s.frames,
            s.backend,
            t0.elapsed().as_secs_f64(),
            if s.overlapped {
                "overlapped"
            } else {
                "one after another"
            },
            if a.bench_views { "all" } else { "none" },
            s.fps,
            s.of_forward,
            s.forward_fps,
            m.capture,
            m.preprocess,
            m.forward,
            m.post,
            m.propagate,
            100.0 * m.propagate / m.forward.max(1e-9),
            outside,
            100.0 * outside / m.forward.max(1e-9),
            100.0 * s.busy.capture,
            100.0 * s.busy.infer,
            100.0 * s.busy.post,
        );
        println!(
            "{}",
            json!({"frames": s.frames, "grid": s.grid, "fps": s.fps, "forward_fps": s.forward_fps, "of_forward": s.of_forward, "outside_forward_ms": outside, "stage_ms": m, "busy": s.busy, "overlapped": s.overlapped, "views": a.bench_views, "source": source_name, "backend": s.backend, "mode": s.mode})
        );
        return Ok(());
    }

    let latest = LatestFrame::start(source, reopen);
    let server = start_server(&a, shared.clone())?;
    eprintln!("serving {source_name} at {} (Ctrl-C to stop)", server.url);
    if let Some(d) = a.duration {
        let s = shared.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(d));
            s.stop.store(true, Ordering::Relaxed);
        });
    }
    let result = pipeline.run(&latest, &source_name, &shared);
    // Keep serving the last frame until --duration ends (or forever without it).
    if result.is_ok() && a.duration.is_some() {
        while !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    } else if result.is_ok() {
        eprintln!("the source ended; still serving the last frame (Ctrl-C to stop)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    drop(server);
    let s = result?;
    println!(
        "{}",
        json!({"frames": s.frames, "fps": s.fps, "stage_ms": s.stage_ms, "source": source_name})
    );
    Ok(())
}

/// The running server and its URL.
struct Served {
    url: String,
    #[cfg(feature = "server")]
    _server: dinoedge::live::server::LiveServer,
}

#[cfg(feature = "server")]
fn start_server(a: &LiveArgs, shared: std::sync::Arc<LiveShared>) -> Result<Served> {
    use dinoedge::live::server::{ServerOptions, serve};
    use std::net::IpAddr;
    let server = serve(
        ServerOptions {
            addr: a.serve.clone(),
            allowed_hosts: a.allow_host.clone(),
            ..Default::default()
        },
        shared,
    )?;
    let addr = server.addr();
    if !addr.ip().is_loopback() {
        let what = match addr.ip() {
            IpAddr::V4(v) if v.is_unspecified() => "every network interface",
            _ => "a network address",
        };
        eprintln!(
            "note: serving on {addr}, {what}: requests need the token in this URL; keep it private"
        );
    }
    Ok(Served {
        url: server.url(),
        _server: server,
    })
}

#[cfg(not(feature = "server"))]
fn start_server(a: &LiveArgs, _shared: std::sync::Arc<LiveShared>) -> Result<Served> {
    Err(Error::Unsupported {
        what: format!("serving on {}", a.serve),
        reason: "this build has no live server (rebuild with --features server, or use --bench)"
            .into(),
    })
}

/// Delivers frames of a file source at a fixed rate.
struct Paced {
    inner: Box<dyn FrameSource>,
    period: Duration,
    start: Option<(Instant, u64)>,
}

impl FrameSource for Paced {
    fn next_frame(&mut self) -> Result<Option<frames::Frame>> {
        let f = self.inner.next_frame()?;
        if let Some(f) = &f {
            let (t0, i0) = *self.start.get_or_insert((Instant::now(), f.index));
            let due = t0 + self.period * (f.index - i0) as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(f)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn len_hint(&self) -> Option<usize> {
        self.inner.len_hint()
    }
}
