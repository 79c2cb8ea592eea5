//! The live pipeline: frames -> features -> PCA view, tracking overlay, similarity map, with
//! per-stage timings, shared with the HTTP server of [`server`] (cargo feature `server`),
//! which streams the views as MJPEG to a browser page, takes clicks (similarity query or
//! point track) and serves live statistics.

#[cfg(feature = "server")]
pub mod server;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dinoedge_runtime::RgbImage;
use serde::Serialize;

use crate::davis::{Mask, palette};
use crate::dense::{blend, colormap, normalized, patch_at, render_map, resize_rgb};
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::frames::{Frame, LatestFrame};
use crate::pca::PcaBasis;
use crate::plot::{Marker, draw_markers};
use crate::track::{LabelPropagator, PointTracker, PropagationConfig};

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
    pub total: f64,
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
    pub grid: (usize, usize),
    pub source: String,
    pub backend: String,
    pub mode: String,
    pub points: usize,
    pub points_lost: usize,
    pub status: Option<String>,
    pub ended: bool,
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
    pub stop: AtomicBool,
}

impl LiveShared {
    pub fn new() -> Arc<Self> {
        Arc::new(LiveShared {
            views: Mutex::new(Views::default()),
            listeners: Mutex::new(Vec::new()),
            stats: Mutex::new(LiveStats::default()),
            clicks: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
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
        let version = {
            let mut v = self.views.lock().unwrap_or_else(|e| e.into_inner());
            v.version += 1;
            (v.input, v.pca, v.view) = (Arc::new(input), Arc::new(pca), Arc::new(view));
            v.version
        };
        self.notify(Some(version));
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

fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    let _ = image::ImageEncoder::write_image(
        enc,
        &img.data,
        img.width as u32,
        img.height as u32,
        image::ExtendedColorType::Rgb8,
    );
    out
}

/// Options of the pipeline.
pub struct PipelineOptions {
    /// Width of the views (height follows the frame's aspect).
    pub display_width: usize,
    pub jpeg_quality: u8,
    /// First-frame mask to propagate (label propagation), if any.
    pub mask: Option<Mask>,
    pub propagation: PropagationConfig,
    pub threads: Option<usize>,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// Encode views (off for pure benchmarks of the model stages).
    pub render: bool,
}

/// The per-frame work: features, views, tracking. Runs until the source ends or `stop`.
pub struct Pipeline {
    emb: Embedder,
    o: PipelineOptions,
    basis: Option<PcaBasis>,
    labels: Option<LabelPropagator>,
    points: Option<PointTracker>,
    /// Normalised query feature of the similarity map.
    query: Option<Vec<f32>>,
    recent: VecDeque<[f64; 5]>,
    times: VecDeque<Instant>,
    grid: (usize, usize),
}

impl Pipeline {
    pub fn new(emb: Embedder, o: PipelineOptions) -> Self {
        Pipeline {
            emb,
            o,
            basis: None,
            labels: None,
            points: None,
            query: None,
            recent: VecDeque::new(),
            times: VecDeque::new(),
            grid: (0, 0),
        }
    }

    fn mode(&self) -> String {
        let mut m = Vec::new();
        if self.labels.is_some() {
            m.push("masks");
        }
        if self.points.is_some() {
            m.push("points");
        }
        if self.query.is_some() {
            m.push("similarity");
        }
        if m.is_empty() {
            "pca".into()
        } else {
            m.join("+")
        }
    }

    /// Processes one frame; returns the stage times (preprocess, forward, propagate, post) in
    /// ms, where post includes propagate.
    pub fn process(&mut self, frame: &Frame, shared: &LiveShared) -> Result<[f64; 4]> {
        let t = Instant::now();
        let px = self.emb.preprocess(&frame.image)?;
        let pre = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let f = self.emb.embed_pixels(&px)?;
        let fwd = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let (dim, grid) = (f.dim(), f.grid);
        self.grid = grid;
        let patches = &f.last.patches.data;
        let (iw, ih) = (frame.image.width, frame.image.height);
        let dw = self.o.display_width.min(iw).max(16);
        let dh = (ih * dw / iw).max(1);
        // Clicks (in display coordinates, scaled to the frame).
        let clicks: Vec<Click> =
            std::mem::take(&mut *shared.clicks.lock().unwrap_or_else(|e| e.into_inner()));
        let new_points = clicks.iter().any(|c| matches!(c, Click::Point { .. }));
        for c in clicks {
            match c {
                Click::Similarity { u, v } => {
                    let p = patch_at(u * iw as f32, v * ih as f32, (iw, ih), grid);
                    let n = normalized(&patches[p * dim..(p + 1) * dim], dim);
                    self.query = Some(n);
                }
                Click::Point { u, v } => {
                    let mut pts: Vec<(f32, f32)> = self
                        .points
                        .as_ref()
                        .map(|t| {
                            t.pixels((iw, ih))
                                .into_iter()
                                .filter(|p| !p.2)
                                .map(|p| (p.0, p.1))
                                .collect()
                        })
                        .unwrap_or_default();
                    pts.push((u * iw as f32, v * ih as f32));
                    if pts.len() > MAX_POINTS {
                        pts.drain(..pts.len() - MAX_POINTS);
                    }
                    self.points = Some(PointTracker::new(patches, dim, grid, (iw, ih), &pts));
                }
                Click::Reset => {
                    self.query = None;
                    self.points = None;
                }
            }
        }
        // Tracking.
        let tp = Instant::now();
        let mut mask = None;
        if let Some(m) = &self.o.mask {
            match &mut self.labels {
                None => {
                    if (m.width, m.height) != (iw, ih) {
                        return Err(Error::InvalidArgument(format!(
                            "the mask is {}x{} but the frames are {iw}x{ih}",
                            m.width, m.height
                        )));
                    }
                    self.labels = Some(LabelPropagator::new(
                        self.o.propagation,
                        patches,
                        dim,
                        grid,
                        m,
                        self.o.threads,
                    )?);
                    mask = Some(m.clone());
                }
                Some(lp) => {
                    let soft = lp.step(patches)?;
                    mask = Some(lp.to_mask(&soft, dw, dh));
                }
            }
        }
        if let Some(pt) = &mut self.points
            && !new_points
        {
            pt.step(patches);
        }
        let prop = tp.elapsed().as_secs_f64() * 1e3;
        if self.o.render {
            let input = resize_rgb(&frame.image, dw, dh);
            let basis = match &self.basis {
                Some(b) => b,
                None => self.basis.insert(PcaBasis::fit(patches, dim)?),
            };
            let pca = resize_rgb(&basis.render(patches, grid), dw, dh);
            let mut view = input.clone();
            if let Some(q) = &self.query {
                let sims: Vec<f32> = normalized(patches, dim)
                    .chunks_exact(dim)
                    .map(|r| r.iter().zip(q).map(|(a, b)| a * b).sum())
                    .collect();
                view = blend(&view, &render_map(&sims, grid, 0.0, 1.0, dw, dh), 0.6);
            }
            if let Some(m) = &mask {
                let m = if (m.width, m.height) == (dw, dh) {
                    m.clone()
                } else {
                    resize_mask(m, dw, dh)
                };
                let pal = palette();
                let tint = RgbImage {
                    width: dw,
                    height: dh,
                    data: m.labels.iter().flat_map(|&l| pal[l as usize]).collect(),
                };
                let alpha_img = blend(&view, &tint, 0.5);
                view.data
                    .iter_mut()
                    .zip(&alpha_img.data)
                    .zip(m.labels.iter().flat_map(|&l| [l; 3]))
                    .for_each(|((v, a), l)| {
                        if l != 0 {
                            *v = *a;
                        }
                    });
            }
            if let Some(pt) = &self.points {
                let markers: Vec<Marker> = pt
                    .pixels((dw, dh))
                    .into_iter()
                    .enumerate()
                    .map(|(k, (x, y, lost))| Marker {
                        x: x as i32,
                        y: y as i32,
                        color: if lost {
                            [128, 128, 128]
                        } else {
                            colormap((k as f32 * 0.27) % 1.0)
                        },
                        lost,
                    })
                    .collect();
                draw_markers(&mut view, &markers);
            }
            let q = self.o.jpeg_quality;
            shared.publish_frame(jpeg(&input, q), jpeg(&pca, q), jpeg(&view, q));
        }
        let post = t.elapsed().as_secs_f64() * 1e3;
        Ok([pre, fwd, prop, post])
    }

    /// Runs on the newest frames of `source` until it ends, `max_frames`, or `shared.stop`.
    pub fn run(
        &mut self,
        source: &LatestFrame,
        source_name: &str,
        shared: &LiveShared,
    ) -> Result<LiveStats> {
        // A source being reopened (an RTSP camera rebooting) keeps the run going: /stats
        // shows its error until it is back.
        let next = || {
            let mut deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                match source.take(Duration::from_secs(1)) {
                    Err(_) if source.retrying() => {
                        // A reopened source gets the full wait again.
                        deadline = Instant::now() + Duration::from_secs(30);
                        let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                        s.status = source.status();
                        s.reconnects = source.reconnects();
                    }
                    Err(_) if !source.ended() && Instant::now() < deadline => {}
                    Err(_) if !source.ended() => {
                        return Err(crate::Error::Source {
                            name: source_name.to_string(),
                            reason: "no frame for 30 s".into(),
                        });
                    }
                    r => return r,
                }
            }
        };
        self.run_with(
            next,
            || (source.dropped(), source.reconnects(), source.status()),
            source_name,
            shared,
        )
    }

    /// Runs on every frame of `source`, in order (benchmarks).
    pub fn run_all(
        &mut self,
        source: &mut dyn crate::frames::FrameSource,
        shared: &LiveShared,
    ) -> Result<LiveStats> {
        let name = source.describe();
        self.run_with(|| source.next_frame(), || (0, 0, None), &name, shared)
    }

    fn run_with(
        &mut self,
        mut next: impl FnMut() -> Result<Option<Frame>>,
        status: impl Fn() -> (u64, u64, Option<String>),
        source_name: &str,
        shared: &LiveShared,
    ) -> Result<LiveStats> {
        // The stream ends with this call on every path, errors included.
        struct EndOnDrop<'a>(&'a LiveShared);
        impl Drop for EndOnDrop<'_> {
            fn drop(&mut self) {
                self.0.end();
            }
        }
        let ending = EndOnDrop(shared);
        let backend = {
            let b = self.emb.backend();
            format!("{} {} ({})", b.kind, b.precision, b.device)
        };
        let t0 = Instant::now();
        let mut n = 0u64;
        loop {
            if shared.stop.load(Ordering::Relaxed) || self.o.max_frames.is_some_and(|m| n >= m) {
                break;
            }
            let frame = match next()? {
                Some(f) => f,
                None => break,
            };
            let t = Instant::now();
            let [pre, fwd, prop, post] = self.process(&frame, shared)?;
            let total = t.elapsed().as_secs_f64() * 1e3 + frame.capture_ms as f64;
            n += 1;
            self.recent
                .push_back([frame.capture_ms as f64, pre, fwd, prop, post]);
            self.times.push_back(Instant::now());
            while self.recent.len() > 60 {
                self.recent.pop_front();
            }
            while self.times.len() > 30 {
                self.times.pop_front();
            }
            let med = |k: usize| {
                let mut v: Vec<f64> = self.recent.iter().map(|r| r[k]).collect();
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            let fps = if self.times.len() > 1 {
                (self.times.len() - 1) as f64
                    / self
                        .times
                        .back()
                        .expect("len")
                        .duration_since(self.times[0])
                        .as_secs_f64()
                        .max(1e-9)
            } else {
                0.0
            };
            let (pts, lost) = self
                .points
                .as_ref()
                .map(|p| (p.points.len(), p.points.iter().filter(|q| q.lost).count()))
                .unwrap_or((0, 0));
            let (dropped, reconnects, source_status) = status();
            let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            *s = LiveStats {
                frames: n,
                fps,
                dropped,
                reconnects,
                stage_ms: StageMs {
                    capture: med(0),
                    preprocess: med(1),
                    forward: med(2),
                    propagate: med(3),
                    post: med(4),
                    total,
                },
                grid: self.grid,
                source: source_name.to_string(),
                backend: backend.clone(),
                mode: self.mode(),
                points: pts,
                points_lost: lost,
                status: source_status,
                ended: false,
            };
        }
        {
            let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            if n > 0 {
                s.fps = n as f64 / t0.elapsed().as_secs_f64();
            }
        }
        drop(ending);
        Ok(shared.stats())
    }
}

fn resize_mask(m: &Mask, w: usize, h: usize) -> Mask {
    let labels = (0..w * h)
        .map(|i| m.labels[((i / w) * m.height / h) * m.width + (i % w) * m.width / w])
        .collect();
    Mask {
        width: w,
        height: h,
        labels,
    }
}
