//! The live pipeline: frames -> features -> PCA view, tracking overlay, similarity map, with
//! per-stage timings; and a small HTTP server (tiny_http) that streams the views as MJPEG to a
//! browser page, takes clicks (similarity query or point track) and serves live statistics.
//!
//! Endpoints: `/` (page), `/stream/{input,pca,view}.mjpg`, `/frame/{input,pca,view}.jpg`,
//! `/stats` (JSON), `POST /click?mode=similarity|point&u=..&v=..` (u, v in [0, 1] of the
//! image), `POST /reset`.

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dinoedge_runtime::RgbImage;
use serde::Serialize;

use crate::davis::{Mask, palette};
use crate::dense::{blend, colormap, normalized, patch_at, render_map, resize_rgb};
use crate::draw::Canvas;
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::frames::{Frame, LatestFrame};
use crate::pca::{PcaBasis, upsample};
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

#[derive(Default)]
struct Views {
    version: u64,
    input: Vec<u8>,
    pca: Vec<u8>,
    view: Vec<u8>,
}

/// State shared by the pipeline and the server.
pub struct LiveShared {
    views: Mutex<Views>,
    new_frame: Condvar,
    stats: Mutex<LiveStats>,
    clicks: Mutex<Vec<Click>>,
    pub stop: AtomicBool,
}

impl LiveShared {
    pub fn new() -> Arc<Self> {
        Arc::new(LiveShared {
            views: Mutex::new(Views::default()),
            new_frame: Condvar::new(),
            stats: Mutex::new(LiveStats::default()),
            clicks: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }

    pub fn click(&self, c: Click) {
        self.clicks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
    }

    pub fn stats(&self) -> LiveStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The latest JPEG of a view and its version.
    pub fn jpeg(&self, which: &str) -> Option<(u64, Vec<u8>)> {
        let v = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let data = match which {
            "input" => &v.input,
            "pca" => &v.pca,
            "view" => &v.view,
            _ => return None,
        };
        Some((v.version, data.clone()))
    }

    /// Waits for a version newer than `seen` (or the timeout).
    fn wait_newer(&self, seen: u64, timeout: Duration) -> u64 {
        let v = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let (v, _) = self
            .new_frame
            .wait_timeout_while(v, timeout, |v| {
                v.version <= seen && !self.stop.load(Ordering::Relaxed)
            })
            .unwrap_or_else(|e| e.into_inner());
        v.version
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
                        return Err(Error::Usage(format!(
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
            let pca = upsample(&basis.render(patches, grid), dw, dh);
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
            let mut cv = Canvas::new(dw, dh, [0, 0, 0]);
            cv.blit(&view, 0, 0);
            if let Some(pt) = &self.points {
                for (k, (x, y, lost)) in pt.pixels((dw, dh)).into_iter().enumerate() {
                    let c = if lost {
                        [128, 128, 128]
                    } else {
                        colormap((k as f32 * 0.27) % 1.0)
                    };
                    let (x, y) = (x as i64, y as i64);
                    cv.rect(x - 4, y - 4, 9, 9, [255, 255, 255]);
                    cv.rect(x - 3, y - 3, 7, 7, c);
                    if lost {
                        cv.line((x - 6, y - 6), (x + 6, y + 6), [255, 0, 0], 2);
                    }
                }
            }
            let view = cv.into_image();
            let q = self.o.jpeg_quality;
            let (a, b, c) = (jpeg(&input, q), jpeg(&pca, q), jpeg(&view, q));
            let mut v = shared.views.lock().unwrap_or_else(|e| e.into_inner());
            v.version += 1;
            (v.input, v.pca, v.view) = (a, b, c);
            shared.new_frame.notify_all();
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
        self.run_with(
            || source.take(Duration::from_secs(30)),
            || (source.dropped(), source.status()),
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
        self.run_with(|| source.next_frame(), || (0, None), &name, shared)
    }

    fn run_with(
        &mut self,
        mut next: impl FnMut() -> Result<Option<Frame>>,
        status: impl Fn() -> (u64, Option<String>),
        source_name: &str,
        shared: &LiveShared,
    ) -> Result<LiveStats> {
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
            let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            *s = LiveStats {
                frames: n,
                fps,
                dropped: status().0,
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
                status: status().1,
                ended: false,
            };
        }
        let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.ended = true;
        if n > 0 {
            s.fps = n as f64 / t0.elapsed().as_secs_f64();
        }
        Ok(s.clone())
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

const PAGE: &str = include_str!("live.html");

/// Serves the page and streams until `shared.stop`. Returns the bound address.
pub fn serve(
    addr: &str,
    shared: Arc<LiveShared>,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| Error::Usage(format!("cannot listen on {addr}: {e}")))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| Error::Usage(format!("{addr}: not an IP address")))?;
    let handle = std::thread::spawn(move || {
        let server = Arc::new(server);
        while !shared.stop.load(Ordering::Relaxed) {
            let req = match server.recv_timeout(Duration::from_millis(200)) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(_) => break,
            };
            let s = shared.clone();
            std::thread::spawn(move || handle_request(req, &s));
        }
    });
    Ok((bound, handle))
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("valid header")
}

fn handle_request(req: tiny_http::Request, s: &Arc<LiveShared>) {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let param = |k: &str| {
        query.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        })
    };
    let no_cache = header("Cache-Control", "no-store");
    let _ = match (req.method(), path) {
        (tiny_http::Method::Get, "/") => req.respond(
            tiny_http::Response::from_string(PAGE)
                .with_header(header("Content-Type", "text/html; charset=utf-8")),
        ),
        (tiny_http::Method::Get, "/stats") => {
            let body = serde_json::to_string(&s.stats()).unwrap_or_default();
            req.respond(
                tiny_http::Response::from_string(body)
                    .with_header(header("Content-Type", "application/json"))
                    .with_header(no_cache),
            )
        }
        (tiny_http::Method::Get, p) if p.starts_with("/frame/") && p.ends_with(".jpg") => {
            match s.jpeg(&p[7..p.len() - 4]) {
                Some((v, data)) if !data.is_empty() => req.respond(
                    tiny_http::Response::from_data(data)
                        .with_header(header("Content-Type", "image/jpeg"))
                        .with_header(header("X-Frame-Version", &v.to_string()))
                        .with_header(no_cache),
                ),
                _ => req.respond(
                    tiny_http::Response::from_string("no frame yet").with_status_code(503),
                ),
            }
        }
        (tiny_http::Method::Get, p) if p.starts_with("/stream/") && p.ends_with(".mjpg") => {
            let which = p[8..p.len() - 5].to_string();
            if s.jpeg(&which).is_none() {
                req.respond(
                    tiny_http::Response::from_string("unknown stream").with_status_code(404),
                )
            } else {
                let body = MjpegStream {
                    shared: s.clone(),
                    which,
                    seen: 0,
                    buf: Vec::new(),
                    pos: 0,
                };
                let headers = vec![
                    header("Content-Type", "multipart/x-mixed-replace; boundary=frame"),
                    no_cache,
                ];
                req.respond(tiny_http::Response::new(
                    tiny_http::StatusCode(200),
                    headers,
                    body,
                    None,
                    None,
                ))
            }
        }
        (tiny_http::Method::Post, "/click") => {
            let f = |k: &str| {
                param(k)
                    .and_then(|v| v.parse::<f32>().ok())
                    .filter(|v| (0.0..=1.0).contains(v))
            };
            match (param("mode").as_deref(), f("u"), f("v")) {
                (Some("similarity"), Some(u), Some(v)) => s.click(Click::Similarity { u, v }),
                (Some("point"), Some(u), Some(v)) => s.click(Click::Point { u, v }),
                _ => {
                    let _ = req.respond(
                        tiny_http::Response::from_string(
                            "expected mode=similarity|point and u, v in [0, 1]",
                        )
                        .with_status_code(400),
                    );
                    return;
                }
            }
            req.respond(tiny_http::Response::from_string("ok"))
        }
        (tiny_http::Method::Post, "/reset") => {
            s.click(Click::Reset);
            req.respond(tiny_http::Response::from_string("ok"))
        }
        _ => req.respond(tiny_http::Response::from_string("not found").with_status_code(404)),
    };
}

/// A `multipart/x-mixed-replace` body that yields each new JPEG of one view.
struct MjpegStream {
    shared: Arc<LiveShared>,
    which: String,
    seen: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for MjpegStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Ok(0);
            }
            let v = self.shared.wait_newer(self.seen, Duration::from_secs(1));
            if v <= self.seen {
                continue;
            }
            let Some((v, data)) = self.shared.jpeg(&self.which) else {
                return Ok(0);
            };
            self.seen = v;
            self.buf.clear();
            self.buf.extend_from_slice(
                format!(
                    "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    data.len()
                )
                .as_bytes(),
            );
            self.buf.extend_from_slice(&data);
            self.buf.extend_from_slice(b"\r\n");
            self.pos = 0;
        }
        let n = (self.buf.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
