//! Frame sources: where video frames come from.
//!
//! - [`FolderSource`]: an image-sequence folder in natural order (jpg, png, pgm, ppm),
//!   including a DAVIS `JPEGImages/480p/<sequence>/` folder;
//! - [`Y4mSource`]: YUV4MPEG2 files, decoded natively;
//! - [`FfmpegSource`]: any other video through an `ffmpeg` subprocess (`$DINOEDGE_FFMPEG` or
//!   `ffmpeg` on the PATH) that streams Y4M to us;
//! - `CameraSource` (feature `camera`): a V4L2 camera through nokhwa;
//! - `GstSource` (feature `gstreamer`): any GStreamer pipeline, and the presets of
//!   [`GstSpec`] (Jetson CSI cameras, RTSP, hardware-decoded files), opened by [`open_gst`].
//!
//! [`open`] picks one from a path. [`LatestFrame`] runs any source on its own thread and keeps
//! only the newest frame, so a slow consumer drops stale frames instead of falling behind.

#[cfg(feature = "camera")]
mod camera;
mod ffmpeg;
mod folder;
#[cfg(feature = "gstreamer")]
mod gst;
mod gst_spec;
#[cfg(all(test, feature = "gstreamer"))]
mod gst_tests;
mod latest;
#[cfg(test)]
mod tests;
mod y4m;

#[cfg(feature = "camera")]
pub use camera::CameraSource;
pub use ffmpeg::{FfmpegSource, ffmpeg_binary};
pub use folder::FolderSource;
#[cfg(feature = "gstreamer")]
pub use gst::{GstSource, package_for};
pub use gst_spec::{CsiMode, DEFAULT_RTSP_LATENCY_MS, GstOptions, GstSpec};
pub use latest::{LatestFrame, Reopen};
pub use y4m::Y4mSource;

use std::path::Path;
use std::time::Duration;

use dinoedge_runtime::{InputLimits, RgbImage};

use crate::error::{Error, Result};

/// One frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// 0-based position in the source.
    pub index: u64,
    /// Time since the source was opened when the frame was captured (camera) or decoded;
    /// for files, `index / fps` when the rate is known; for GStreamer, the buffer's PTS.
    pub timestamp: Duration,
    /// A name for outputs: the file stem for folders (`00000`), else the zero-padded index.
    pub name: String,
    pub image: RgbImage,
    /// Time spent reading and decoding this frame.
    pub capture_ms: f32,
}

impl Frame {
    /// Frame `index` of a stream, named by its zero-padded index.
    pub fn numbered(index: u64, timestamp: Duration, image: RgbImage, capture_ms: f32) -> Self {
        Frame {
            index,
            timestamp,
            name: format!("{index:05}"),
            image,
            capture_ms,
        }
    }
}

/// A stream of frames.
pub trait FrameSource: Send {
    /// The next frame, `None` at the end of the stream.
    fn next_frame(&mut self) -> Result<Option<Frame>>;
    /// For logs and errors.
    fn describe(&self) -> String;
    /// Number of frames when known.
    fn len_hint(&self) -> Option<usize> {
        None
    }
    /// A camera or stream: it keeps capturing while we are slow (frames are dropped, not
    /// queued) and is worth reopening when it fails.
    fn is_live(&self) -> bool {
        false
    }
    /// More than [`FrameSource::describe`], for `--verbose` (a GStreamer source's pipeline).
    fn details(&self) -> Option<String> {
        None
    }
}

/// Orders strings with digit runs compared as numbers (`img2` before `img10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let nx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ny = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (dx, dy) = (&x[..nx], &y[..ny]);
                let tx: &[u8] = {
                    let z = dx.iter().take_while(|&&c| c == b'0').count();
                    &dx[z.min(nx.saturating_sub(1))..]
                };
                let ty: &[u8] = {
                    let z = dy.iter().take_while(|&&c| c == b'0').count();
                    &dy[z.min(ny.saturating_sub(1))..]
                };
                let o = tx.len().cmp(&ty.len()).then(tx.cmp(ty));
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
                x = &x[nx..];
                y = &y[ny..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

/// Opens a folder, a .y4m file, or another video through ffmpeg, with the default limits.
pub fn open(path: &Path) -> Result<Box<dyn FrameSource>> {
    open_limited(path, &InputLimits::default())
}

/// As [`open`], with frames that must fit `limits` (checked before a frame is decoded).
pub fn open_limited(path: &Path, limits: &InputLimits) -> Result<Box<dyn FrameSource>> {
    if path.is_dir() {
        return Ok(Box::new(FolderSource::open(path)?.with_limits(*limits)));
    }
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("y4m") => Ok(Box::new(Y4mSource::open_limited(path, limits)?)),
        _ => Ok(Box::new(FfmpegSource::open(path, limits)?)),
    }
}

/// Opens a GStreamer pipeline or preset (feature `gstreamer`), or explains how to get
/// GStreamer support.
pub fn open_gst(spec: &GstSpec, opts: &GstOptions) -> Result<Box<dyn FrameSource>> {
    #[cfg(feature = "gstreamer")]
    {
        Ok(Box::new(GstSource::open(spec, opts)?))
    }
    #[cfg(not(feature = "gstreamer"))]
    {
        let _ = opts;
        spec.validate()?;
        Err(Error::Unsupported {
            what: spec.describe(),
            reason: "this build has no GStreamer support (rebuild with `--features gstreamer`; needs libgstreamer1.0-dev and libgstreamer-plugins-base1.0-dev)".into(),
        })
    }
}

/// Opens camera `index` (feature `camera`), or explains how to get camera support.
pub fn open_camera(index: u32, width: u32, height: u32, fps: u32) -> Result<Box<dyn FrameSource>> {
    #[cfg(feature = "camera")]
    {
        Ok(Box::new(CameraSource::open(index, width, height, fps)?))
    }
    #[cfg(not(feature = "camera"))]
    {
        let _ = (width, height, fps);
        Err(Error::Unsupported {
            what: format!("camera {index}"),
            reason: "this build has no camera support (rebuild with `--features camera`; needs libclang-dev)".into(),
        })
    }
}
