//! Jetson camera demo: camera -> dense features -> PCA view + tracking -> live browser view.
//!
//! On a Jetson Orin (JetPack 6, USB or CSI camera exposed as /dev/video0):
//!
//!     sudo apt-get install libclang-dev
//!     cargo run --release -p dinoedge-examples --features camera --example jetson_camera -- \
//!         MODEL_DIR 0 0.0.0.0:8080
//!
//! An optional fourth argument picks the backend (`cpu`, the default; `cuda` with
//! `--features camera,cuda`; `wgpu` with `--features camera,wgpu`).
//!
//! then open the URL it prints (http://<jetson-ip>:8080/?token=..., the token guards the
//! stream on the LAN) and click the image to start a similarity map or a point track.
//! Without `--features camera` the demo plays an image folder instead:
//!
//!     cargo run --release -p dinoedge-examples --example jetson_camera -- MODEL_DIR FRAMES_DIR
//!
//! The camera is reopened with backoff when it disappears (USB unplugged), and stale frames
//! are dropped when the model is slower than the camera.

use std::time::Duration;

use dinoedge::frames::{self, FrameSource, LatestFrame, Reopen};
use dinoedge::live::server::{ServerOptions, serve};
use dinoedge::live::{LiveShared, Pipeline, PipelineOptions};
use dinoedge::track::PropagationConfig;
use dinoedge::{Embedder, EmbedderOptions, InputMode, SessionOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(model), Some(source)) = (args.get(1), args.get(2)) else {
        return Err(
            "usage: jetson_camera MODEL_DIR (CAMERA_INDEX | FRAMES_DIR) [ADDR] [cpu|cuda|wgpu]"
                .into(),
        );
    };
    let addr = args.get(3).map(String::as_str).unwrap_or("127.0.0.1:8080");
    let backend = args.get(4).map(String::as_str).unwrap_or("cpu").parse()?;
    let (src, reopen): (Box<dyn FrameSource>, Option<Reopen>) = match source.parse::<u32>() {
        Ok(index) => (
            frames::open_camera(index, 640, 480, 30)?,
            Some(Box::new(move || frames::open_camera(index, 640, 480, 30))),
        ),
        Err(_) => (frames::open(source.as_ref())?, None),
    };
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
        render: true,
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
