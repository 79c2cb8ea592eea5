//! The live pipeline's stages and how they run.
//!
//! Three stages: capture (the source, on its own thread in `live`), infer (preprocess and
//! forward) and post (clicks, label propagation, point tracking, the watched views). Run
//! [`Overlap::On`], infer and post are two threads joined by a one-slot queue, with the
//! feature buffers handed back and forth so that nothing is allocated per frame: the
//! slowest stage sets the rate, not their sum.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use dinoedge_runtime::backend::cpu::pool::panic_message;
use dinoedge_runtime::{BackendKind, Features, Tensor};

use super::render::{MAX_VIEW_SIDE, Scene, render, resize_mask_into};
use super::{Busy, Click, LiveShared, LiveStats, MAX_POINTS, StageMs, View};
use crate::davis::Mask;
use crate::dense::{RgbResizer, normalized, patch_at};
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::frames::{Frame, FrameSource, LatestFrame};
use crate::pca::PcaBasis;
use crate::track::{LabelPropagator, PointTracker, PropagationConfig, Upsampler};

/// Which views the pipeline draws.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Render {
    /// Those some client watches ([`LiveShared::watch`], [`LiveShared::polled`]).
    #[default]
    Watched,
    /// All three every frame (benchmarks of the drawing).
    All,
    /// None (tracking and benchmarks of the model stages).
    Never,
}

/// Whether infer and post run on their own threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlap {
    /// On for GPU backends, where post-processing runs on the CPU while the GPU runs the
    /// next forward; off for the CPU backend, whose forward already uses every core it is
    /// given: there, overlapping measured from 8% slower (the student) to 3% faster (the
    /// teacher) than running the stages in turn (docs/perf.md).
    #[default]
    Auto,
    On,
    Off,
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
    pub render: Render,
    pub overlap: Overlap,
}

/// Preprocess and forward, into buffers kept between frames.
struct Infer {
    emb: Embedder,
    pixels: Tensor,
}

impl Infer {
    /// Features of `frame` into `out`; (preprocess, forward) ms.
    fn run(&mut self, frame: &Frame, out: &mut Features) -> Result<[f64; 2]> {
        let t = Instant::now();
        self.emb
            .preprocess_frame_into(&frame.image, &mut self.pixels)?;
        let pre = ms(t);
        let t = Instant::now();
        self.emb.embed_pixels_into(&self.pixels, out)?;
        Ok([pre, ms(t)])
    }
}

/// Everything after the forward, and the tracking state it keeps.
struct Post {
    display_width: usize,
    jpeg_quality: u8,
    mask: Option<Mask>,
    propagation: PropagationConfig,
    threads: Option<usize>,
    render: Render,
    basis: Option<PcaBasis>,
    labels: Option<LabelPropagator>,
    points: Option<PointTracker>,
    /// Normalised query feature of the similarity map.
    query: Option<Vec<f32>>,
    upsampler: Upsampler,
    resizer: RgbResizer,
    /// The tracked labels at display size.
    shown: Mask,
    grid: (usize, usize),
    rendered: Vec<&'static str>,
}

impl Post {
    /// Processes one frame's features; (propagate, post) ms, where post includes propagate.
    fn run(&mut self, frame: &Frame, f: &Features, shared: &LiveShared) -> Result<[f64; 2]> {
        let t = Instant::now();
        let (dim, grid) = (f.dim(), f.grid);
        self.grid = grid;
        let patches = &f.last.patches.data;
        let (iw, ih) = (frame.image.width, frame.image.height);
        let dw = self.display_width.min(iw).clamp(16, MAX_VIEW_SIDE);
        let dh = (ih * dw / iw).clamp(1, MAX_VIEW_SIDE);
        let new_points = self.clicks(shared.take_clicks(), patches, dim, grid, (iw, ih));
        let want = match self.render {
            Render::Watched => shared.watched(),
            Render::All => [true; 3],
            Render::Never => [false; 3],
        };
        let tp = Instant::now();
        let show_mask = want[View::Overlay as usize];
        let tracked = self.propagate(patches, dim, grid, (iw, ih), (dw, dh), show_mask)?;
        if let Some(pt) = &mut self.points
            && !new_points
        {
            pt.step(patches);
        }
        let prop = ms(tp);
        let scene = Scene {
            frame: &frame.image,
            patches,
            dim,
            grid,
            query: self.query.as_deref(),
            mask: (tracked && show_mask).then_some(&self.shown),
            points: self.points.as_ref(),
        };
        let views = render(
            &scene,
            &mut self.basis,
            &mut self.resizer,
            want,
            (dw, dh),
            self.jpeg_quality,
        )?;
        self.rendered.clear();
        self.rendered.extend(
            View::ALL
                .into_iter()
                .filter(|v| views[*v as usize].is_some())
                .map(View::name),
        );
        shared.publish(views);
        Ok([prop, ms(t)])
    }

    /// Applies the clicks (in display coordinates, scaled to the frame); whether points were
    /// (re)started on this frame.
    fn clicks(
        &mut self,
        clicks: Vec<Click>,
        patches: &[f32],
        dim: usize,
        grid: (usize, usize),
        (iw, ih): (usize, usize),
    ) -> bool {
        let new_points = clicks.iter().any(|c| matches!(c, Click::Point { .. }));
        for c in clicks {
            match c {
                Click::Similarity { u, v } => {
                    let p = patch_at(u * iw as f32, v * ih as f32, (iw, ih), grid);
                    self.query = Some(normalized(&patches[p * dim..(p + 1) * dim], dim));
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
        new_points
    }

    /// Label propagation; the labels are drawn at display size into `shown` only when the
    /// overlay is watched (`show`). Whether there are tracked labels.
    fn propagate(
        &mut self,
        patches: &[f32],
        dim: usize,
        grid: (usize, usize),
        (iw, ih): (usize, usize),
        (dw, dh): (usize, usize),
        show: bool,
    ) -> Result<bool> {
        let Some(m) = &self.mask else {
            return Ok(false);
        };
        match &mut self.labels {
            None => {
                if (m.width, m.height) != (iw, ih) {
                    return Err(Error::InvalidArgument(format!(
                        "the mask is {}x{} but the frames are {iw}x{ih}",
                        m.width, m.height
                    )));
                }
                self.labels = Some(LabelPropagator::new(
                    self.propagation,
                    patches,
                    dim,
                    grid,
                    m,
                    self.threads,
                )?);
                if show {
                    resize_mask_into(m, dw, dh, &mut self.shown);
                }
            }
            Some(lp) => {
                lp.advance(patches)?;
                if show {
                    (self.shown.width, self.shown.height) = (dw, dh);
                    lp.last_mask_into(&mut self.upsampler, &mut self.shown);
                }
            }
        }
        Ok(true)
    }
}

/// Per-frame records and the statistics drawn from them.
#[derive(Default)]
struct Meter {
    /// capture, preprocess, forward, propagate, post ms; when the frame was done.
    recent: VecDeque<([f64; 5], Instant)>,
    frames: u64,
}

/// What the source says besides frames: dropped frames, reconnects, its status line.
type SourceStatus = (u64, u64, Option<String>);

impl Meter {
    fn push(&mut self, times: [f64; 5]) {
        self.frames += 1;
        self.recent.push_back((times, Instant::now()));
        while self.recent.len() > 60 {
            self.recent.pop_front();
        }
    }

    fn median(&self, k: usize) -> f64 {
        let mut v: Vec<f64> = self.recent.iter().map(|r| r.0[k]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    /// Frames per second and stage busy fractions over the recent frames.
    fn rates(&self) -> (f64, Busy) {
        let (Some(first), Some(last)) = (self.recent.front(), self.recent.back()) else {
            return (0.0, Busy::default());
        };
        let span = last.1.duration_since(first.1).as_secs_f64();
        if self.recent.len() < 2 || span <= 0.0 {
            return (0.0, Busy::default());
        }
        // The first record's work happened before the span began.
        let sum = |f: fn(&[f64; 5]) -> f64| {
            self.recent.iter().skip(1).map(|r| f(&r.0)).sum::<f64>() / 1e3 / span
        };
        let busy = Busy {
            capture: sum(|r| r[0]),
            infer: sum(|r| r[1] + r[2]),
            post: sum(|r| r[4]),
        };
        ((self.recent.len() - 1) as f64 / span, busy)
    }
}

/// The per-frame work: features, tracking, views. Runs until the source ends or `stop`.
pub struct Pipeline {
    infer: Infer,
    post: Post,
    max_frames: Option<u64>,
    overlap: Overlap,
}

/// One frame between the stages: the frame, its features, (preprocess, forward) ms and
/// the source's status when it was taken.
type Job = (Frame, Features, [f64; 2], SourceStatus);

impl Pipeline {
    pub fn new(emb: Embedder, o: PipelineOptions) -> Self {
        Pipeline {
            infer: Infer {
                emb,
                pixels: Tensor::empty(),
            },
            post: Post {
                display_width: o.display_width,
                jpeg_quality: o.jpeg_quality,
                mask: o.mask,
                propagation: o.propagation,
                threads: o.threads,
                render: o.render,
                basis: None,
                labels: None,
                points: None,
                query: None,
                upsampler: Upsampler::default(),
                resizer: RgbResizer::default(),
                shown: Mask {
                    width: 0,
                    height: 0,
                    labels: Vec::new(),
                },
                grid: (0, 0),
                rendered: Vec::new(),
            },
            max_frames: o.max_frames,
            overlap: o.overlap,
        }
    }

    /// Whether the stages run on their own threads.
    pub fn overlapped(&self) -> bool {
        match self.overlap {
            Overlap::On => true,
            Overlap::Off => false,
            Overlap::Auto => self.infer.emb.backend().kind != BackendKind::Cpu,
        }
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
                        return Err(Error::Source {
                            name: source_name.to_string(),
                            reason: "no frame for 30 s".into(),
                        });
                    }
                    r => return r,
                }
            }
        };
        let status = || (source.dropped(), source.reconnects(), source.status());
        self.run_with(next, status, source_name, shared)
    }

    /// Runs on every frame of `source`, in order (benchmarks). The source is read on its own
    /// thread, up to two frames ahead, as `live` reads a camera: decoding overlaps the
    /// model in both modes.
    pub fn run_all(
        &mut self,
        source: &mut dyn FrameSource,
        shared: &LiveShared,
    ) -> Result<LiveStats> {
        let name = source.describe();
        std::thread::scope(|s| {
            let (tx, rx) = sync_channel::<Result<Option<Frame>>>(2);
            s.spawn(move || {
                loop {
                    let r = source.next_frame();
                    let more = matches!(r, Ok(Some(_)));
                    if tx.send(r).is_err() || !more {
                        break;
                    }
                }
            });
            let next = move || rx.recv().unwrap_or(Ok(None));
            self.run_with(next, || (0, 0, None), &name, shared)
        })
    }

    fn run_with(
        &mut self,
        mut next: impl FnMut() -> Result<Option<Frame>>,
        status: impl Fn() -> SourceStatus,
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
        let info = self.infer.emb.backend();
        let backend = format!("{} {} ({})", info.kind, info.precision, info.device);
        let overlapped = self.overlapped();
        let report = Report {
            source: source_name.to_string(),
            backend,
            overlapped,
        };
        let t0 = Instant::now();
        let max = self.max_frames;
        let stop = |n: u64| shared.stop.load(Ordering::Relaxed) || max.is_some_and(|m| n >= m);
        let mut meter = Meter::default();
        if overlapped {
            self.run_overlapped(&mut next, &status, &stop, &mut meter, &report, shared)?;
        } else {
            let mut f = Features::empty();
            let mut n = 0;
            while !stop(n) {
                let Some(frame) = next()? else { break };
                n += 1;
                let [pre, fwd] = self.infer.run(&frame, &mut f)?;
                let [prop, post] = self.post.run(&frame, &f, shared)?;
                let times = [frame.capture_ms as f64, pre, fwd, prop, post];
                meter.push(times);
                shared.set_stats(report.stats(&meter, &self.post, status()));
            }
        }
        {
            let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            if meter.frames > 0 {
                s.fps = meter.frames as f64 / t0.elapsed().as_secs_f64();
                s.of_forward = s.fps / s.forward_fps.max(1e-9);
            }
        }
        drop(ending);
        Ok(shared.stats())
    }

    /// Infer on this thread, post on another; three feature buffers circulate between them.
    fn run_overlapped(
        &mut self,
        next: &mut impl FnMut() -> Result<Option<Frame>>,
        status: &impl Fn() -> SourceStatus,
        stop: &impl Fn(u64) -> bool,
        meter: &mut Meter,
        report: &Report,
        shared: &LiveShared,
    ) -> Result<()> {
        let (job_tx, job_rx) = sync_channel::<Job>(1);
        let (free_tx, free_rx) = sync_channel::<Features>(3);
        for _ in 0..3 {
            let _ = free_tx.send(Features::empty());
        }
        let Pipeline { infer, post, .. } = self;
        std::thread::scope(|s| {
            let poster = s.spawn(move || post_loop(post, job_rx, free_tx, meter, report, shared));
            let fed = feed(infer, next, status, stop, &free_rx, job_tx);
            let posted = poster.join().unwrap_or_else(|p| {
                Err(Error::Resource {
                    what: "the live post-processing thread".into(),
                    reason: format!("it panicked: {}", panic_message(&*p)),
                })
            });
            // An error of the post stage stops the feeding; report it first.
            posted.and(fed)
        })
    }
}

/// The infer stage of an overlapped run: frames in, features out to the post stage.
fn feed(
    infer: &mut Infer,
    next: &mut impl FnMut() -> Result<Option<Frame>>,
    status: &impl Fn() -> SourceStatus,
    stop: &impl Fn(u64) -> bool,
    free: &Receiver<Features>,
    jobs: SyncSender<Job>,
) -> Result<()> {
    let mut n = 0;
    while !stop(n) {
        let Some(frame) = next()? else { break };
        n += 1;
        // The post stage hung up (it failed): its error is the one reported.
        let Ok(mut f) = free.recv() else { break };
        let times = infer.run(&frame, &mut f)?;
        if jobs.send((frame, f, times, status())).is_err() {
            break;
        }
    }
    Ok(())
}

/// The post stage of an overlapped run.
fn post_loop(
    post: &mut Post,
    jobs: Receiver<Job>,
    free: SyncSender<Features>,
    meter: &mut Meter,
    report: &Report,
    shared: &LiveShared,
) -> Result<()> {
    for (frame, f, [pre, fwd], status) in jobs {
        let [prop, post_ms] = match post.run(&frame, &f, shared) {
            Ok(t) => t,
            Err(e) => {
                // The infer stage may be waiting on the source (a reconnecting camera): stop
                // it now rather than at its next frame.
                shared.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        meter.push([frame.capture_ms as f64, pre, fwd, prop, post_ms]);
        shared.set_stats(report.stats(meter, post, status));
        let _ = free.send(f);
    }
    Ok(())
}

/// The parts of [`LiveStats`] fixed for a run.
struct Report {
    source: String,
    backend: String,
    overlapped: bool,
}

impl Report {
    fn stats(&self, meter: &Meter, post: &Post, status: SourceStatus) -> LiveStats {
        let (fps, busy) = meter.rates();
        let forward = meter.median(2);
        let forward_fps = if forward > 0.0 { 1e3 / forward } else { 0.0 };
        let (points, points_lost) = post
            .points
            .as_ref()
            .map(|p| (p.points.len(), p.points.iter().filter(|q| q.lost).count()))
            .unwrap_or((0, 0));
        let last = meter.recent.back().map(|r| r.0).unwrap_or_default();
        let (dropped, reconnects, status) = status;
        LiveStats {
            frames: meter.frames,
            fps,
            dropped,
            reconnects,
            stage_ms: StageMs {
                capture: meter.median(0),
                preprocess: meter.median(1),
                forward,
                propagate: meter.median(3),
                post: meter.median(4),
                total: last.iter().sum::<f64>() - last[3],
            },
            busy,
            forward_fps,
            of_forward: fps / forward_fps.max(1e-9),
            overlapped: self.overlapped,
            rendered: post.rendered.clone(),
            grid: post.grid,
            source: self.source.clone(),
            backend: self.backend.clone(),
            mode: mode_of(post),
            points,
            points_lost,
            status,
            ended: false,
        }
    }
}

/// `masks`, `points`, `similarity` joined by `+`, or `pca`.
fn mode_of(p: &Post) -> String {
    let m: Vec<&str> = [
        (p.mask.is_some(), "masks"),
        (p.points.is_some(), "points"),
        (p.query.is_some(), "similarity"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if m.is_empty() {
        "pca".into()
    } else {
        m.join("+")
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
