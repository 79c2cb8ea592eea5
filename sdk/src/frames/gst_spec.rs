//! [`GstSpec`]: which GStreamer pipeline to run: one given in gst-launch syntax, or a preset
//! for the inputs Jetson users have (a CSI camera, an RTSP camera, a video file). Pure text,
//! so the CLI can parse and print it in builds without GStreamer.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use dinoedge_runtime::InputLimits;

use crate::error::{Error, Result};

/// A CSI sensor mode, `WxH@FPS` (jetson-utils' default is 1280x720@30).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsiMode {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl Default for CsiMode {
    fn default() -> Self {
        CsiMode {
            width: 1280,
            height: 720,
            fps: 30,
        }
    }
}

impl FromStr for CsiMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "--csi-mode {s:?}: expected WIDTHxHEIGHT@FPS, e.g. 1920x1080@30"
            ))
        };
        let (size, fps) = s.split_once('@').ok_or_else(bad)?;
        let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
        let num = |v: &str, max: u32| v.trim().parse::<u32>().ok().filter(|&n| n > 0 && n <= max);
        Ok(CsiMode {
            width: num(w, 16384).ok_or_else(bad)?,
            height: num(h, 16384).ok_or_else(bad)?,
            fps: num(fps, 1000).ok_or_else(bad)?,
        })
    }
}

impl fmt::Display for CsiMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}@{}", self.width, self.height, self.fps)
    }
}

/// What a GStreamer source runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GstSpec {
    /// A pipeline in gst-launch syntax. Unless it has an appsink, dinoedge appends the
    /// conversion to RGB and one.
    Pipeline(String),
    /// A Jetson CSI camera (nvarguscamerasrc `sensor-id`).
    Csi { sensor: u32, mode: CsiMode },
    /// An RTSP stream (rtspsrc with a jitter buffer of `latency_ms`; video only).
    Rtsp { url: String, latency_ms: u32 },
    /// A video file decoded by decodebin, hardware decoders preferred.
    Video(PathBuf),
}

/// jetson-utils' default RTSP jitter-buffer latency (`--input-rtsp-latency`).
pub const DEFAULT_RTSP_LATENCY_MS: u32 = 2000;

impl GstSpec {
    /// Checks what can be checked without GStreamer (the URL's scheme, the file).
    pub fn validate(&self) -> Result<()> {
        match self {
            GstSpec::Pipeline(p) if p.trim().is_empty() => Err(Error::InvalidArgument(
                "--gst: the pipeline is empty".into(),
            )),
            GstSpec::Rtsp { url, .. }
                if !["rtsp://", "rtsps://", "rtspt://"]
                    .iter()
                    .any(|s| url.to_ascii_lowercase().starts_with(s)) =>
            {
                Err(Error::InvalidArgument(format!(
                    "--rtsp {url:?}: expected an rtsp:// (or rtsps://, rtspt://) URL"
                )))
            }
            GstSpec::Video(p) if !p.is_file() => Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            )),
            _ => Ok(()),
        }
    }

    /// The pipeline up to the decoded video, without dinoedge's tail (conversion + appsink).
    pub fn head(&self) -> String {
        match self {
            GstSpec::Pipeline(p) => p.trim().trim_end_matches('!').trim().to_string(),
            GstSpec::Csi { sensor, mode } => format!(
                "nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width=(int){},height=(int){},framerate=(fraction){}/1,format=(string)NV12",
                mode.width, mode.height, mode.fps
            ),
            GstSpec::Rtsp { url, latency_ms } => format!(
                "rtspsrc location={} latency={latency_ms} drop-on-latency=true ! application/x-rtp,media=video ! decodebin",
                quote(url)
            ),
            GstSpec::Video(p) => format!(
                "filesrc location={} ! decodebin",
                quote(&p.display().to_string())
            ),
        }
    }

    /// Cameras and streams: they keep going while we are slow, and are reopened when they drop.
    /// A free pipeline is live when GStreamer says so ([`super::FrameSource::is_live`]).
    pub fn is_camera_or_stream(&self) -> bool {
        matches!(self, GstSpec::Csi { .. } | GstSpec::Rtsp { .. })
    }

    /// For logs and errors.
    pub fn describe(&self) -> String {
        match self {
            GstSpec::Pipeline(p) => format!("gst `{}`", p.trim()),
            GstSpec::Csi { sensor, mode } => format!("CSI camera {sensor} ({mode})"),
            GstSpec::Rtsp { url, .. } => format!("RTSP {url}"),
            GstSpec::Video(p) => format!("video {} (GStreamer)", p.display()),
        }
    }
}

/// A value quoted for gst-launch syntax.
fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// How a GStreamer source runs.
#[derive(Clone, Debug)]
pub struct GstOptions {
    /// Frames must fit these (checked before a frame is copied out of GStreamer).
    pub limits: InputLimits,
    /// The longest wait for the pipeline to start, and then for each frame.
    pub timeout: Duration,
    /// Files play at their own rate (the appsink syncs to the clock) instead of as fast as
    /// they decode. Live sources always deliver as they capture.
    pub realtime: bool,
}

impl Default for GstOptions {
    fn default() -> Self {
        GstOptions {
            limits: InputLimits::default(),
            timeout: Duration::from_secs(20),
            realtime: false,
        }
    }
}
