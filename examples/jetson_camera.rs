//! Jetson camera demo: camera -> dense features -> PCA view + tracking -> live browser view.
//!
//! On a Jetson Orin (JetPack 6) with a CSI camera (IMX219/IMX477), through GStreamer:
//!
//!     sudo apt-get install libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
//!     cargo run --release -p dinoedge-examples --features gstreamer --example jetson_camera -- \
//!         MODEL_DIR --csi 0 0.0.0.0:8080
//!
//! The source is one of:
//! - `--csi N` (nvarguscamerasrc sensor N at 1280x720@30, with `--features gstreamer`);
//! - `--rtsp rtsp://camera/stream` (an IP camera, with `--features gstreamer`);
//! - `--gst "PIPELINE"` (any GStreamer pipeline, with `--features gstreamer`);
//! - a V4L2 camera index (USB cameras, with `--features camera`; needs libclang-dev);
//! - an image folder or video file.
//!
//! An optional argument after the address picks the backend (`cpu`, the default; `cuda` with
//! `--features cuda`; `wgpu` with `--features wgpu`). Open the URL it prints
//! (http://<jetson-ip>:8080/?token=..., the token guards the stream on the LAN) and click the
//! image to start a similarity map or a point track.
//!
//! Cameras and streams are reopened with backoff when they drop (USB unplugged, RTSP camera
//! rebooting), and stale frames are dropped when the model is slower than the camera.

use std::time::Duration;

use dinoedge::frames::{self, CsiMode, FrameSource, GstOptions, GstSpec, LatestFrame, Reopen};
use dinoedge::live::server::{ServerOptions, serve};
use dinoedge::live::{LiveShared, Overlap, Pipeline, PipelineOptions, Render};
use dinoedge::track::PropagationConfig;
use dinoedge::{Embedder, EmbedderOptions, InputMode, SessionOptions};

const USAGE: &str = "usage: jetson_camera MODEL_DIR (--csi N | --rtsp URL | --gst PIPELINE | CAMERA_INDEX | FRAMES) [ADDR] [cpu|cuda|wgpu]";

type Error = Box<dyn std::error::Error>;
/// A source, how to reopen it (cameras and streams), and the arguments after it.
type Opened<'a> = (Box<dyn FrameSource>, Option<Reopen>, &'a [String]);

/// The source named on the command line.
fn source(args: &[String]) -> Result<Opened<'_>, Error> {
    let (first, rest) = args.split_first().ok_or(USAGE)?;
    let gst = |spec: GstSpec, rest| -> Result<_, Error> {
        let src = frames::open_gst(&spec, &GstOptions::default())?;
        if let Some(d) = src.details() {
            eprintln!("{}: {d}", src.describe());
        }
        // Cameras and streams are reopened when they drop; a file that fails stays failed.
        let reopen = (spec.is_camera_or_stream() || src.is_live())
            .then(|| Box::new(move || frames::open_gst(&spec, &GstOptions::default())) as Reopen);
        Ok((src, reopen, rest))
    };
    match first.as_str() {
        "--csi" | "--rtsp" | "--gst" => {
            let (value, rest) = rest.split_first().ok_or(USAGE)?;
            let spec = match first.as_str() {
                "--csi" => GstSpec::Csi {
                    sensor: value.parse()?,
                    mode: CsiMode::default(),
                },
                "--rtsp" => GstSpec::Rtsp {
                    url: value.clone(),
                    latency_ms: frames::DEFAULT_RTSP_LATENCY_MS,
                },
                _ => GstSpec::Pipeline(value.clone()),
            };
            gst(spec, rest)
        }
        s => match s.parse::<u32>() {
            Ok(index) => Ok((
                frames::open_camera(index, 640, 480, 30)?,
                Some(Box::new(move || frames::open_camera(index, 640, 480, 30))),
                rest,
            )),
            Err(_) => Ok((frames::open(s.as_ref())?, None, rest)),
        },
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).ok_or(USAGE)?;
    let (src, reopen, rest) = source(&args[2..])?;
    let addr = rest.first().map(String::as_str).unwrap_or("127.0.0.1:8080");
    let backend = rest.get(1).map(String::as_str).unwrap_or("cpu").parse()?;
    let name = src.describe();
    let emb = Embedder::load(
        model,
        &EmbedderOptions {
            mode: InputMode::Dense(224),
            session: SessionOptions {
                backend,
                ..Default::default()
            },
            ..Default::default()
        },
    )?;
    let opts = PipelineOptions {
        display_width: 640,
        jpeg_quality: 80,
        mask: None,
        propagation: PropagationConfig::default(),
        threads: None,
        max_frames: None,
        render: Render::Watched,
        overlap: Overlap::Auto,
    };
    let mut pipeline = Pipeline::new(emb, opts);
    let latest = LatestFrame::start(src, reopen);
    let shared = LiveShared::new();
    let server = serve(
        ServerOptions {
            addr: addr.into(),
            ..Default::default()
        },
        shared.clone(),
    )?;
    eprintln!("{name}: open {}", server.url());
    let stats = pipeline.run(&latest, &name, &shared)?;
    eprintln!(
        "stream ended after {} frames ({:.1} fps)",
        stats.frames, stats.fps
    );
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}
