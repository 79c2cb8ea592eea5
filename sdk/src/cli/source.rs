//! The frame-source options shared by `track`, `live` and `embed`: a video file (`--video`),
//! a GStreamer pipeline (`--gst`) or preset (`--csi`, `--rtsp`), opened through
//! `frames::open_gst` (or ffmpeg, for videos in builds without GStreamer).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use dinoedge::Result;
use dinoedge::frames::{self, CsiMode, FrameSource, GstOptions, GstSpec, Reopen};
use dinoedge::runtime::InputLimits;

#[derive(Args, Clone, Debug)]
pub struct GstArgs {
    /// A video file: .y4m natively; other formats through GStreamer's decodebin (hardware
    /// decoders preferred; played at the file's own rate by `live`) in builds with --features
    /// gstreamer, else through ffmpeg.
    #[arg(long, value_name = "FILE")]
    pub video: Option<PathBuf>,
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

/// A source as opened from the command line.
pub struct Opened {
    pub src: Box<dyn FrameSource>,
    /// How to reopen it after a failure (cameras and streams).
    pub reopen: Option<Reopen>,
    /// How to open it again from its start (`live --loop`).
    pub again: Reopen,
    /// GStreamer paces files itself (`realtime`); other files need pacing by the caller.
    pub gst: bool,
}

/// Opens `--frames PATH`, `--video FILE` or a GStreamer source, whichever was given (`None`:
/// none was).
pub fn open_any(
    frames: Option<&Path>,
    g: &GstArgs,
    limits: InputLimits,
    realtime: bool,
) -> Result<Option<Opened>> {
    let plain = |path: &Path| -> Result<Opened> {
        let path = path.to_path_buf();
        let src = frames::open_limited(&path, &limits)?;
        let again: Reopen = Box::new(move || frames::open_limited(&path, &limits));
        Ok(Opened {
            src,
            reopen: None,
            again,
            gst: false,
        })
    };
    if let Some(path) = frames {
        return plain(path).map(Some);
    }
    let (spec, video) = match (g.spec(), &g.video) {
        (Some(spec), _) => (spec, None),
        (None, Some(path)) => match video_spec(path) {
            Some(spec) => (spec, Some(path)),
            None => return plain(path).map(Some),
        },
        (None, None) => return Ok(None),
    };
    let (src, reopen) = match open(&spec, limits, realtime, g.verbose) {
        Ok(opened) => opened,
        // A video GStreamer cannot decode (a codec without its plugin) may still go through
        // ffmpeg, as in builds without GStreamer.
        Err(e) if video.is_some() && frames::ffmpeg_binary().is_some() => {
            let path = video.expect("checked");
            eprintln!("note: {e}; decoding {} with ffmpeg instead", path.display());
            return plain(path).map(Some);
        }
        Err(e) => return Err(e),
    };
    let again: Reopen = Box::new(move || open(&spec, limits, realtime, false).map(|(s, _)| s));
    Ok(Some(Opened {
        src,
        reopen,
        again,
        gst: true,
    }))
}

/// A video file through GStreamer's decodebin in builds that have it (hardware decoders
/// preferred); `.y4m` stays native, and other builds use ffmpeg.
fn video_spec(path: &Path) -> Option<GstSpec> {
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
