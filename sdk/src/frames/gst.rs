//! [`GstSource`] (feature `gstreamer`): frames from a GStreamer pipeline's appsink.
//!
//! Live sources (cameras, RTSP, `is-live` test sources) run with a one-buffer appsink that
//! drops old buffers, so a slow consumer gets the newest frame; files run with a blocking
//! appsink, so every frame arrives in order.

use std::str::FromStr;
use std::sync::Once;
use std::time::{Duration, Instant};

use dinoedge_runtime::{InputLimits, RgbImage};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app::AppSink;
use gstreamer_video::{VideoFormat, VideoFrameExt, VideoFrameRef, VideoInfo};

use super::gst_spec::{GstOptions, GstSpec};
use super::{Frame, FrameSource};
use crate::error::{Error, Result};

/// The formats our appsink takes, in order of preference (copied out without conversion).
const SINK_CAPS: &str = "video/x-raw,format=(string){ RGB, RGBx, RGBA, BGRx, BGRA, BGR }";
const SINK_FORMATS: [VideoFormat; 6] = [
    VideoFormat::Rgb,
    VideoFormat::Rgbx,
    VideoFormat::Rgba,
    VideoFormat::Bgrx,
    VideoFormat::Bgra,
    VideoFormat::Bgr,
];

/// A GStreamer pipeline ending in an appsink.
pub struct GstSource {
    pipeline: gst::Pipeline,
    sink: AppSink,
    bus: gst::Bus,
    /// The full pipeline as launched.
    launched: String,
    name: String,
    live: bool,
    limits: InputLimits,
    timeout: Duration,
    count: u64,
    opened: Instant,
    frames_hint: Option<usize>,
    /// Why the pipeline stopped (it was set to NULL): later reads return it at once.
    failed: Option<String>,
    /// A file's first PTS (encoders with B-frames start later than 0).
    first_pts: Option<Duration>,
    info: Option<(gst::Caps, VideoInfo)>,
}

/// Starts GStreamer once per process.
fn init() -> Result<()> {
    gst::init().map_err(|e| Error::Unsupported {
        what: "GStreamer".into(),
        reason: format!("it failed to start: {e}"),
    })
}

/// The Debian/JetPack package that ships `element`, for the missing-plugin error.
pub fn package_for(element: &str) -> &'static str {
    const TABLE: &[(&[&str], &str)] = &[
        (
            &[
                "nvarguscamerasrc",
                "nvvidconv",
                "nvv4l2decoder",
                "nvv4l2camerasrc",
                "nvjpegdec",
                "nvegltransform",
            ],
            "nvidia-l4t-gstreamer (JetPack, on a Jetson)",
        ),
        (
            &[
                "appsink",
                "appsrc",
                "videoconvert",
                "videoscale",
                "videorate",
                "videotestsrc",
                "decodebin",
                "decodebin3",
                "uridecodebin",
                "uridecodebin3",
                "playbin",
                "theoradec",
                "oggdemux",
                "tcpclientsrc",
            ],
            "gstreamer1.0-plugins-base",
        ),
        (
            &[
                "rtspsrc",
                "v4l2src",
                "jpegdec",
                "jpegenc",
                "pngdec",
                "pngenc",
                "avimux",
                "avidemux",
                "qtdemux",
                "matroskademux",
                "matroskamux",
                "mp4mux",
                "qtmux",
                "multifilesrc",
                "multifilesink",
                "udpsrc",
                "rtph264depay",
                "rtph265depay",
                "rtpjpegdepay",
                "souphttpsrc",
                "vp8dec",
                "vp9dec",
                "flvdemux",
                "imagefreeze",
            ],
            "gstreamer1.0-plugins-good",
        ),
        (
            &[
                "h264parse",
                "h265parse",
                "nvh264dec",
                "nvh265dec",
                "vah264dec",
                "vah265dec",
                "v4l2h264dec",
                "v4l2h265dec",
                "openh264dec",
                "openh264enc",
                "srtsrc",
                "webrtcbin",
                "av1parse",
                "dav1ddec",
            ],
            "gstreamer1.0-plugins-bad",
        ),
        (
            &["x264enc", "mpeg2dec", "asfdemux"],
            "gstreamer1.0-plugins-ugly",
        ),
        (
            &[
                "filesrc",
                "filesink",
                "fakesink",
                "fakesrc",
                "queue",
                "queue2",
                "tee",
                "identity",
                "capsfilter",
                "fdsrc",
                "typefind",
            ],
            "libgstreamer1.0-0 (GStreamer's core)",
        ),
    ];
    if element.starts_with("avdec_") || element.starts_with("avenc_") {
        return "gstreamer1.0-libav";
    }
    TABLE
        .iter()
        .find(|(names, _)| names.contains(&element))
        .map(|(_, p)| *p)
        .unwrap_or(
            "a GStreamer plugin package: gstreamer1.0-plugins-{base,good,bad,ugly} or gstreamer1.0-libav (gst-inspect-1.0 lists what is installed)",
        )
}

/// Hardware decoders above software ones in decodebin's choice (they already are on most
/// systems; a distribution that ranks them low would otherwise decode on the CPU).
fn prefer_hardware_decoders() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for name in [
            "nvv4l2decoder",
            "nvh264dec",
            "nvh265dec",
            "vah264dec",
            "vah265dec",
            "v4l2h264dec",
            "v4l2h265dec",
        ] {
            if let Some(f) = gst::ElementFactory::find(name)
                && f.rank() < gst::Rank::PRIMARY + 1
            {
                f.set_rank(gst::Rank::PRIMARY + 1);
            }
        }
    });
}

/// Converts to a format our appsink takes: nvvidconv on a Jetson where the head may deliver
/// NVMM buffers (the CSI camera, NVIDIA's decoders, decodebin choosing them; nvvidconv also
/// runs on the VIC instead of the CPU), else videoconvert on the CPU (nvvidconv does not take
/// packed RGB, which a free pipeline may end in).
fn tail(head: &str) -> String {
    let nvmm = ["memory:NVMM", "nvarguscamerasrc", "nvv4l2", "decodebin"]
        .iter()
        .any(|k| head.contains(k));
    if nvmm && gst::ElementFactory::find("nvvidconv").is_some() {
        "nvvidconv ! video/x-raw,format=(string)RGBA ! appsink name=dinoedge_sink".into()
    } else {
        format!("videoconvert ! {SINK_CAPS} ! appsink name=dinoedge_sink")
    }
}

/// Parses gst-launch text; a missing element becomes [`Error::MissingPlugin`].
fn parse(text: &str, name: &str) -> Result<gst::Element> {
    let mut ctx = gst::ParseContext::new();
    gst::parse::launch_full(text, Some(&mut ctx), gst::ParseFlags::FATAL_ERRORS).map_err(|e| {
        // Caps where an element should be (`caps ! caps`) read as an element named `video`.
        let caps_misplaced =
            |e: &String| ["video", "audio", "image", "application"].contains(&e.as_str());
        match ctx
            .missing_elements()
            .into_iter()
            .find(|e| !caps_misplaced(e))
        {
            Some(element) => Error::MissingPlugin {
                package: package_for(&element).into(),
                element,
            },
            None => Error::Source {
                name: name.into(),
                reason: format!("cannot parse the pipeline `{text}`: {e}"),
            },
        }
    })
}

/// An `appsink` element in gst-launch text (a word of its own, not a property's value).
fn has_appsink(text: &str) -> bool {
    text.split(|c: char| c.is_whitespace() || c == '!')
        .any(|w| w == "appsink")
}

fn find_appsink(pipeline: &gst::Pipeline) -> Option<AppSink> {
    pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(|e| e.ok())
        .find_map(|e| e.downcast::<AppSink>().ok())
}

/// GStreamer's error and debug text, with the elements a decoder search found missing.
fn describe_error(msg: &gst::message::Error, missing: &[String]) -> String {
    let src = msg
        .src()
        .map(|s| format!("{}: ", s.path_string()))
        .unwrap_or_default();
    let mut text = format!("{src}{}", msg.error());
    if let Some(d) = msg.debug() {
        text.push_str(&format!(" (debug: {d})"));
    }
    if !missing.is_empty() {
        text.push_str(&format!(
            "; missing: {} (install gstreamer1.0-libav, gstreamer1.0-plugins-good and gstreamer1.0-plugins-bad for common codecs)",
            missing.join(", ")
        ));
    }
    text
}

/// What a "missing-plugin" element message asks for: a decoder's media type
/// (`video/x-h265`), or an element's name.
pub(crate) fn missing_plugin(msg: &gst::message::Element) -> Option<String> {
    let s = msg.structure()?;
    (s.name() == "missing-plugin").then(|| {
        let detail = s
            .get::<gst::Caps>("detail")
            .ok()
            .and_then(|c| c.structure(0).map(|st| st.name().to_string()))
            .or_else(|| s.get::<String>("detail").ok())
            .unwrap_or_else(|| s.to_string());
        detail
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    })
}

/// The package with a decoder for `media` (a missing-plugin message's media type).
pub(crate) fn package_for_caps(media: &str) -> &'static str {
    match media {
        "video/x-h264" | "video/x-h265" | "video/mpeg" | "video/x-divx" | "video/x-msmpeg" => {
            "gstreamer1.0-libav (avdec_*; NVIDIA's nvv4l2decoder on a Jetson: nvidia-l4t-gstreamer)"
        }
        "video/x-vp8" | "video/x-vp9" | "image/jpeg" | "image/png" => "gstreamer1.0-plugins-good",
        "video/x-av1" => "gstreamer1.0-plugins-bad (dav1ddec) or gstreamer1.0-libav",
        _ => "gstreamer1.0-libav, gstreamer1.0-plugins-good or gstreamer1.0-plugins-bad",
    }
}

impl GstSource {
    /// Builds the pipeline of `spec`, starts it, and waits (up to `opts.timeout`) for PLAYING.
    pub fn open(spec: &GstSpec, opts: &GstOptions) -> Result<Self> {
        spec.validate()?;
        init()?;
        let name = spec.describe();
        let head = spec.head();
        if head.contains("decodebin") {
            prefer_hardware_decoders();
        }
        // A free pipeline may have its own appsink; everything else gets our tail.
        let launched = match spec {
            GstSpec::Pipeline(_) if has_appsink(&head) => head,
            _ => format!("{head} ! {}", tail(&head)),
        };
        let element = parse(&launched, &name)?;
        let pipeline = element
            .downcast::<gst::Pipeline>()
            .map_err(|_| Error::Source {
                name: name.clone(),
                reason: format!("`{launched}` is a single element, not a pipeline"),
            })?;
        let sink = find_appsink(&pipeline).ok_or_else(|| Error::Source {
            name: name.clone(),
            reason: "the pipeline has no appsink".into(),
        })?;
        if sink.caps().is_none() {
            sink.set_caps(Some(&gst::Caps::from_str(SINK_CAPS).expect("valid caps")));
        }
        sink.set_property("enable-last-sample", false);
        let bus = pipeline.bus().expect("a pipeline has a bus");
        let mut src = GstSource {
            pipeline,
            sink,
            bus,
            launched,
            name,
            live: false,
            limits: opts.limits,
            // Bounded, so deadlines cannot overflow (a year is "no timeout").
            timeout: opts.timeout.min(Duration::from_secs(365 * 86_400)),
            failed: None,
            count: 0,
            opened: Instant::now(),
            frames_hint: None,
            first_pts: None,
            info: None,
        };
        src.start(opts.realtime)?;
        Ok(src)
    }

    /// PAUSED tells whether the source is live; the appsink is set for it; then PLAYING.
    fn start(&mut self, realtime: bool) -> Result<()> {
        let paused = self.pipeline.set_state(gst::State::Paused);
        if paused.is_err() {
            return Err(self.start_error("could not start"));
        }
        self.live = paused == Ok(gst::StateChangeSuccess::NoPreroll);
        // Live: the newest frame only. Files: block the decoder rather than drop.
        self.sink.set_max_buffers(if self.live { 1 } else { 4 });
        self.sink.set_drop(self.live);
        self.sink.set_sync(realtime && !self.live);
        if self.pipeline.set_state(gst::State::Playing).is_err() {
            return Err(self.start_error("could not start"));
        }
        self.wait_playing()?;
        if !self.live {
            self.frames_hint = self.count_hint();
        }
        self.opened = Instant::now();
        Ok(())
    }

    /// Waits for PLAYING, returning GStreamer's own error when the pipeline fails first.
    fn wait_playing(&self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut missing: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self
                .bus
                .timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64))
            else {
                return Err(Error::Source {
                    name: self.name.clone(),
                    reason: format!(
                        "the pipeline `{}` did not reach PLAYING within {:.0} s",
                        self.launched,
                        self.timeout.as_secs_f64()
                    ),
                });
            };
            match msg.view() {
                // decodebin found no decoder: name what it looked for and who ships one.
                gst::MessageView::Error(_)
                    if missing
                        .first()
                        .is_some_and(|m| m.starts_with("video/") || m.starts_with("image/")) =>
                {
                    return Err(Error::MissingPlugin {
                        package: package_for_caps(&missing[0]).into(),
                        element: format!("a decoder for {}", missing[0]),
                    });
                }
                gst::MessageView::Error(e) => {
                    return Err(Error::Source {
                        name: self.name.clone(),
                        reason: format!(
                            "the pipeline `{}` failed to start: {}",
                            self.launched,
                            describe_error(e, &missing)
                        ),
                    });
                }
                gst::MessageView::Element(e) => missing.extend(missing_plugin(e)),
                gst::MessageView::StateChanged(s)
                    if s.current() == gst::State::Playing
                        && msg.src() == Some(self.pipeline.upcast_ref::<gst::Object>()) =>
                {
                    return Ok(());
                }
                // An empty file may end before PLAYING is announced; the first read says so.
                gst::MessageView::Eos(_) => return Ok(()),
                _ => {}
            }
        }
    }

    /// The error on the bus (with its debug text), else `fallback`.
    fn start_error(&self, fallback: &str) -> Error {
        let reason = self
            .bus
            .pop_filtered(&[gst::MessageType::Error])
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(describe_error(e, &[])),
                _ => None,
            })
            .unwrap_or_else(|| fallback.to_string());
        Error::Source {
            name: self.name.clone(),
            reason: format!("the pipeline `{}` failed to start: {reason}", self.launched),
        }
    }

    /// Duration x frame rate, for progress bars (files only).
    fn count_hint(&self) -> Option<usize> {
        let dur = self.pipeline.query_duration::<gst::ClockTime>()?;
        let caps = self.sink.static_pad("sink")?.current_caps()?;
        let fps = VideoInfo::from_caps(&caps).ok()?.fps();
        (fps.numer() > 0 && fps.denom() > 0).then(|| {
            (dur.nseconds() as f64 * fps.numer() as f64 / fps.denom() as f64 / 1e9).round() as usize
        })
    }

    /// An error (or live EOS) waiting on the bus.
    fn bus_failure(&self) -> Option<String> {
        let msg = self.bus.pop_filtered(&[gst::MessageType::Error])?;
        match msg.view() {
            gst::MessageView::Error(e) => Some(describe_error(e, &[])),
            _ => None,
        }
    }

    /// Copies a sample into a tight RGB image.
    fn frame_from(&mut self, sample: &gst::Sample, started: Instant) -> Result<Frame> {
        let bad = |reason: String| Error::Source {
            name: self.name.clone(),
            reason,
        };
        let caps = sample
            .caps()
            .ok_or_else(|| bad("a sample without caps".into()))?;
        if self.info.as_ref().is_none_or(|(c, _)| c != caps) {
            let info = VideoInfo::from_caps(caps)
                .map_err(|e| bad(format!("caps {caps} are not raw video: {e}")))?;
            self.info = Some((caps.to_owned(), info));
        }
        let info = &self.info.as_ref().expect("set above").1;
        let (w, h) = (info.width() as usize, info.height() as usize);
        self.limits.check_pixels(&self.name, w as u64, h as u64)?;
        let buffer = sample
            .buffer()
            .ok_or_else(|| bad("a sample without a buffer".into()))?;
        let frame = VideoFrameRef::from_buffer_ref_readable(buffer, info)
            .map_err(|e| bad(format!("cannot map a frame: {e}")))?;
        let stride = frame.plane_stride()[0] as usize;
        let data = frame
            .plane_data(0)
            .map_err(|e| bad(format!("cannot read a frame: {e}")))?;
        if !SINK_FORMATS.contains(&info.format()) {
            return Err(bad(format!(
                "the appsink delivers {:?}, not one of RGB, RGBx, RGBA, BGRx, BGRA, BGR (set its caps, e.g. `videoconvert ! video/x-raw,format=RGB ! appsink`)",
                info.format()
            )));
        }
        let rgb = unpack_rgb(data, stride, w, h, info.format()).ok_or_else(|| {
            bad(format!(
                "a {w}x{h} {:?} frame with a short buffer",
                info.format()
            ))
        })?;
        let index = self.count;
        self.count += 1;
        // Live: the running time since PLAYING. Files: the time since their first frame.
        let timestamp = match buffer.pts().map(|t| Duration::from_nanos(t.nseconds())) {
            Some(pts) if self.live => pts,
            Some(pts) => pts.saturating_sub(*self.first_pts.get_or_insert(pts)),
            None => self.opened.elapsed(),
        };
        let image = RgbImage {
            width: w,
            height: h,
            data: rgb,
        };
        let capture_ms = started.elapsed().as_secs_f32() * 1e3;
        Ok(Frame::numbered(index, timestamp, image, capture_ms))
    }
}

/// Packed RGB from one of [`SINK_CAPS`]'s formats with a row `stride`; `None` when `data` is
/// short or the format is not one of them.
pub(crate) fn unpack_rgb(
    data: &[u8],
    stride: usize,
    w: usize,
    h: usize,
    format: VideoFormat,
) -> Option<Vec<u8>> {
    // (bytes per pixel, offsets of R, G, B)
    let (bpp, [r, g, b]) = match format {
        VideoFormat::Rgb => (3, [0, 1, 2]),
        VideoFormat::Bgr => (3, [2, 1, 0]),
        VideoFormat::Rgbx | VideoFormat::Rgba => (4, [0, 1, 2]),
        VideoFormat::Bgrx | VideoFormat::Bgra => (4, [2, 1, 0]),
        _ => return None,
    };
    if h > 0 && (stride < w * bpp || data.len() < (h - 1) * stride + w * bpp) {
        return None;
    }
    let mut out = Vec::with_capacity(w * h * 3);
    for row in data.chunks(stride.max(1)).take(h) {
        if bpp == 3 && r == 0 {
            out.extend_from_slice(&row[..w * 3]);
        } else {
            for px in row[..w * bpp].chunks_exact(bpp) {
                out.extend_from_slice(&[px[r], px[g], px[b]]);
            }
        }
    }
    Some(out)
}

impl FrameSource for GstSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if let Some(reason) = &self.failed {
            return Err(Error::Source {
                name: self.name.clone(),
                reason: reason.clone(),
            });
        }
        let started = Instant::now();
        let deadline = started + self.timeout;
        let failure = loop {
            if let Some(sample) = self
                .sink
                .try_pull_sample(gst::ClockTime::from_mseconds(100))
            {
                return self.frame_from(&sample, started).map(Some);
            }
            if let Some(e) = self.bus_failure() {
                break format!("stopped after {} frames: {e}", self.count);
            }
            if self.sink.is_eos() {
                // A camera or stream that ends has dropped; LatestFrame reopens it.
                if !self.live {
                    return Ok(None);
                }
                break format!("the live source ended after {} frames", self.count);
            }
            if Instant::now() >= deadline {
                break format!(
                    "no frame for {:.0} s after {} frames",
                    self.timeout.as_secs_f64(),
                    self.count
                );
            }
        };
        // Stop it now: a camera or an RTSP session is released for whoever reopens it.
        let _ = self.pipeline.set_state(gst::State::Null);
        self.failed = Some(failure.clone());
        Err(Error::Source {
            name: self.name.clone(),
            reason: failure,
        })
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn len_hint(&self) -> Option<usize> {
        self.frames_hint
    }
    fn is_live(&self) -> bool {
        self.live
    }
    fn details(&self) -> Option<String> {
        Some(format!("gst-launch-1.0 {}", self.launched))
    }
}

impl Drop for GstSource {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
