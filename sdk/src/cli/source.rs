//! The GStreamer frame-source options shared by `track`, `live` and `embed`: a pipeline
//! (`--gst`) or a preset (`--csi`, `--rtsp`), opened through `frames::open_gst`.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use dinoedge::Result;
use dinoedge::frames::{self, CsiMode, FrameSource, GstOptions, GstSpec, Reopen};
use dinoedge::runtime::InputLimits;

#[derive(Args, Clone, Debug)]
pub struct GstArgs {
    /// A GStreamer pipeline (gst-launch syntax) as the frame source, e.g.
    /// "filesrc location=clip.mp4 ! decodebin". dinoedge appends the conversion to RGB and an
    /// appsink unless it has one (build with --features gstreamer).
    #[arg(long, value_name = "PIPELINE")]
    pub gst: Option<String>,
    /// A Jetson CSI camera (nvarguscamerasrc sensor-id N) through GStreamer.
    #[arg(long, value_name = "N")]
    pub csi: Option<u32>,
    /// The CSI sensor mode.
    #[arg(
        long,
        value_name = "WxH@FPS",
        default_value = "1280x720@30",
        requires = "csi"
    )]
    pub csi_mode: CsiMode,
    /// An RTSP camera or stream (rtsp://...) through GStreamer; reopened with backoff when it
    /// drops.
    #[arg(long, value_name = "URL")]
    pub rtsp: Option<String>,
    /// The RTSP jitter buffer, in milliseconds (jetson-utils' default).
    #[arg(long, value_name = "MS", default_value_t = frames::DEFAULT_RTSP_LATENCY_MS, requires = "rtsp")]
    pub rtsp_latency: u32,
    /// Print the GStreamer pipeline that runs.
    #[arg(long)]
    pub verbose: bool,
}

impl GstArgs {
    /// The source these options ask for, if any.
    pub fn spec(&self) -> Option<GstSpec> {
        if let Some(p) = &self.gst {
            Some(GstSpec::Pipeline(p.clone()))
        } else if let Some(sensor) = self.csi {
            Some(GstSpec::Csi {
                sensor,
                mode: self.csi_mode,
            })
        } else {
            self.rtsp.as_ref().map(|url| GstSpec::Rtsp {
                url: url.clone(),
                latency_ms: self.rtsp_latency,
            })
        }
    }
}

/// A video file through GStreamer's decodebin in builds that have it (hardware decoders
/// preferred); `.y4m` stays native, and other builds use ffmpeg.
pub fn video_spec(path: &Path) -> Option<GstSpec> {
    let y4m = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("y4m"));
    (cfg!(feature = "gstreamer") && !y4m && !path.is_dir()).then(|| GstSpec::Video(path.into()))
}

/// Opens `spec`; with `verbose`, prints the pipeline that runs. Also returns how to reopen it
/// when it is a camera or stream (`LatestFrame` retries those with backoff).
pub fn open(
    spec: &GstSpec,
    limits: InputLimits,
    realtime: bool,
    verbose: bool,
) -> Result<(Box<dyn FrameSource>, Option<Reopen>)> {
    let opts = GstOptions {
        limits,
        timeout: Duration::from_secs(20),
        realtime,
    };
    let src = frames::open_gst(spec, &opts)?;
    if verbose && let Some(d) = src.details() {
        eprintln!("{}: {d}", src.describe());
    }
    let reopen: Option<Reopen> = (spec.is_camera_or_stream() || src.is_live()).then(|| {
        let spec = spec.clone();
        Box::new(move || frames::open_gst(&spec, &opts)) as Reopen
    });
    Ok((src, reopen))
}
