//! The live pipeline: frames -> features -> PCA view, tracking overlay, similarity map, with
//! per-stage timings, shared with the HTTP server of [`server`] (cargo feature `server`),
//! which streams the views as MJPEG to a browser page, takes clicks (similarity query or
//! point track) and serves live statistics.
//!
//! - this file: the state the pipeline and the server share ([`LiveShared`]);
//! - [`pipeline`]: the stages (capture, preprocess + forward, post-processing) and how they
//!   run, one after another or overlapped on threads;
//! - `render`: the views, drawn only while a client watches them.

mod pipeline;
mod render;
#[cfg(feature = "server")]
pub mod server;

pub use pipeline::{Overlap, Pipeline, PipelineOptions, Render};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a click asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Click {
    /// Similarity of every patch to the clicked patch (fixed at click time).
    Similarity {
        u: f32,
        v: f32,
    },
    /// Track the clicked point.
    Point {
        u: f32,
        v: f32,
    },
    Reset,
}

/// Median milliseconds per stage over the recent frames.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StageMs {
    pub capture: f64,
    pub preprocess: f64,
    pub forward: f64,
    /// Label propagation and point tracking (part of post-processing, shown on its own).
    pub propagate: f64,
    /// Everything after the forward: propagation, rendering, JPEG encoding.
    pub post: f64,
    /// The last frame's capture, preprocess, forward and post-processing added up (time
    /// waiting between overlapped stages not included).
    pub total: f64,
}

/// Fraction of the wall time each stage was busy over the recent frames. Overlapped, the
/// busiest stage sets the rate; one after another, they add up.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Busy {
    /// The source (decoding, copying out of the camera's buffer).
    pub capture: f64,
    /// Preprocess and forward.
    pub infer: f64,
    /// Propagation, point tracking, rendering and encoding.
    pub post: f64,
}

/// Live statistics (`/stats`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LiveStats {
    pub frames: u64,
    pub fps: f64,
    pub dropped: u64,
    /// Times the source was reopened after failing (a camera unplugged, an RTSP drop).
    pub reconnects: u64,
    pub stage_ms: StageMs,
    pub busy: Busy,
    /// The rate the forward alone allows (1000 / median forward ms).
    pub forward_fps: f64,
    /// `fps / forward_fps`: how close the pipeline comes to the model's rate.
    pub of_forward: f64,
    /// Stages on their own threads (see [`Overlap`]).
    pub overlapped: bool,
    /// Views drawn at the last frame (`input`, `pca`, `view`; empty when none is watched).
    pub rendered: Vec<&'static str>,
    pub grid: (usize, usize),
    pub source: String,
    pub backend: String,
    pub mode: String,
    pub points: usize,
    pub points_lost: usize,
    pub status: Option<String>,
    pub ended: bool,
}

/// The three views, in the order of [`Views`]' fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Input = 0,
    Pca = 1,
    /// The overlays (similarity, masks, points) over the input.
    Overlay = 2,
}

impl View {
    pub const ALL: [View; 3] = [View::Input, View::Pca, View::Overlay];

    pub fn name(self) -> &'static str {
        ["input", "pca", "view"][self as usize]
    }

    pub fn from_name(name: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// A single-frame request (`/input.jpg`) keeps its view drawn for this long.
pub const POLL_WATCH: Duration = Duration::from_secs(3);

/// Who is watching one view: open streams, and the last single-frame request.
#[derive(Default)]
struct Watchers {
    streams: AtomicUsize,
    /// Milliseconds after `LiveShared::born` (0: never), plus one.
    polled: AtomicU64,
}

/// Held while a stream of a view is open: the pipeline draws the view until it is dropped.
pub struct Watching {
    shared: Arc<LiveShared>,
    view: View,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.shared.watchers[self.view as usize]
            .streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The JPEG of each view at one frame. `Arc`s, so a server hands them out without copies.
#[derive(Default, Clone)]
pub struct Views {
    pub version: u64,
    pub input: Arc<Vec<u8>>,
    pub pca: Arc<Vec<u8>>,
    pub view: Arc<Vec<u8>>,
}

impl Views {
    /// One view by name (`input`, `pca`, `view`).
    pub fn get(&self, which: &str) -> Option<&Arc<Vec<u8>>> {
        match which {
            "input" => Some(&self.input),
            "pca" => Some(&self.pca),
            "view" => Some(&self.view),
            _ => None,
        }
    }
}

/// Clicks waiting for the pipeline: more are refused (the page sends one per user click).
pub const MAX_PENDING_CLICKS: usize = 16;
/// Points tracked at once: a new one replaces the oldest.
pub const MAX_POINTS: usize = 32;

/// Called with the new version after each frame's views are published, and with `None`
/// when the stream ends.
type Listener = Box<dyn Fn(Option<u64>) + Send + Sync>;

/// State shared by the pipeline and the server.
pub struct LiveShared {
    views: Mutex<Views>,
    listeners: Mutex<Vec<Listener>>,
    stats: Mutex<LiveStats>,
    clicks: Mutex<Vec<Click>>,
    watchers: [Watchers; 3],
    born: Instant,
    pub stop: AtomicBool,
}

impl LiveShared {
    pub fn new() -> Arc<Self> {
        Arc::new(LiveShared {
            views: Mutex::new(Views::default()),
            listeners: Mutex::new(Vec::new()),
            stats: Mutex::new(LiveStats::default()),
            clicks: Mutex::new(Vec::new()),
            watchers: Default::default(),
            born: Instant::now(),
            stop: AtomicBool::new(false),
        })
    }

    /// Marks `view` watched until the guard is dropped (an open stream).
    pub fn watch(self: &Arc<Self>, view: View) -> Watching {
        self.watchers[view as usize]
            .streams
            .fetch_add(1, Ordering::Relaxed);
        Watching {
            shared: self.clone(),
            view,
        }
    }

    /// Marks `view` watched for [`POLL_WATCH`] (a single-frame request).
    pub fn polled(&self, view: View) {
        let ms = self.born.elapsed().as_millis() as u64 + 1;
        self.watchers[view as usize]
            .polled
            .store(ms, Ordering::Relaxed);
    }

    /// Which views some client watches now, indexed by [`View`].
    pub fn watched(&self) -> [bool; 3] {
        let now = self.born.elapsed().as_millis() as u64 + 1;
        self.watchers.each_ref().map(|w| {
            let polled = w.polled.load(Ordering::Relaxed);
            w.streams.load(Ordering::Relaxed) > 0
                || (polled > 0 && now.saturating_sub(polled) <= POLL_WATCH.as_millis() as u64)
        })
    }

    /// Queues a click for the next frame; `false` when [`MAX_PENDING_CLICKS`] are waiting.
    pub fn click(&self, c: Click) -> bool {
        let mut q = self.clicks.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_PENDING_CLICKS {
            return false;
        }
        q.push(c);
        true
    }

    pub fn stats(&self) -> LiveStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The latest views (cheap: reference-counted JPEGs).
    pub fn views(&self) -> Views {
        self.views.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Registers a callback for new frames and the end of the stream (see [`Listener`]).
    pub fn listen(&self, f: impl Fn(Option<u64>) + Send + Sync + 'static) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    fn notify(&self, version: Option<u64>) {
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            l(version);
        }
    }

    /// Publishes one frame's JPEGs (the pipeline does; so can a custom one) and wakes the streams.
    pub fn publish_frame(&self, input: Vec<u8>, pca: Vec<u8>, view: Vec<u8>) {
        self.publish([Some(input), Some(pca), Some(view)]);
    }

    /// Publishes the views that were drawn (indexed by [`View`]); the others keep their last
    /// frame. Nothing drawn, nothing published.
    pub fn publish(&self, views: [Option<Vec<u8>>; 3]) {
        if views.iter().all(Option::is_none) {
            return;
        }
        let version = {
            let mut guard = self.views.lock().unwrap_or_else(|e| e.into_inner());
            let v = &mut *guard;
            v.version += 1;
            let [input, pca, view] = views;
            for (slot, new) in [
                (&mut v.input, input),
                (&mut v.pca, pca),
                (&mut v.view, view),
            ] {
                if let Some(new) = new {
                    *slot = Arc::new(new);
                }
            }
            v.version
        };
        self.notify(Some(version));
    }

    fn set_stats(&self, s: LiveStats) {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    fn take_clicks(&self) -> Vec<Click> {
        std::mem::take(&mut *self.clicks.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Marks the stream ended (the source ran out, or the pipeline stopped): MJPEG streams
    /// send their last frame and close.
    pub fn end(&self) {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).ended = true;
        self.notify(None);
    }

    pub fn ended(&self) -> bool {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_watched_while_streamed_or_recently_polled() {
        let shared = LiveShared::new();
        assert_eq!(shared.watched(), [false; 3]);
        let a = shared.watch(View::Pca);
        let b = shared.watch(View::Pca);
        assert_eq!(shared.watched(), [false, true, false]);
        drop(a);
        assert_eq!(shared.watched(), [false, true, false]);
        drop(b);
        assert_eq!(shared.watched(), [false; 3]);
        shared.polled(View::Overlay);
        assert_eq!(shared.watched(), [false, false, true]);
        assert_eq!(View::from_name("view"), Some(View::Overlay));
        assert_eq!(View::from_name("other"), None);
    }

    #[test]
    fn publishing_some_views_keeps_the_others() {
        let shared = LiveShared::new();
        shared.publish_frame(vec![1], vec![2], vec![3]);
        shared.publish([None, Some(vec![20]), None]);
        let v = shared.views();
        assert_eq!(v.version, 2);
        assert_eq!((v.input[0], v.pca[0], v.view[0]), (1, 20, 3));
        // Nothing drawn: no new version, no wake-up.
        shared.publish([None, None, None]);
        assert_eq!(shared.views().version, 2);
    }
}
