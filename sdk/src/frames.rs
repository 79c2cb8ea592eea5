//! Frame sources: where video frames come from.
//!
//! - [`FolderSource`]: an image-sequence folder in natural order (jpg, png, pgm, ppm),
//!   including a DAVIS `JPEGImages/480p/<sequence>/` folder;
//! - [`Y4mSource`]: YUV4MPEG2 files, decoded natively;
//! - [`FfmpegSource`]: any other video through an `ffmpeg` subprocess (`$DINOEDGE_FFMPEG` or
//!   `ffmpeg` on the PATH) that streams Y4M to us;
//! - `CameraSource` (feature `camera`): a V4L2 camera through nokhwa.
//!
//! [`open`] picks one from a path. [`LatestFrame`] runs any source on its own thread and keeps
//! only the newest frame, so a slow consumer drops stale frames instead of falling behind.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dinoedge_runtime::{InputLimits, RgbImage};

use crate::error::{Error, Result};

/// One frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// 0-based position in the source.
    pub index: u64,
    /// Time since the source was opened when the frame was captured (camera) or decoded;
    /// for files, `index / fps` when the rate is known.
    pub timestamp: Duration,
    /// A name for outputs: the file stem for folders (`00000`), else the zero-padded index.
    pub name: String,
    pub image: RgbImage,
    /// Time spent reading and decoding this frame.
    pub capture_ms: f32,
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

/// Image files of a sequence folder, in natural order.
pub struct FolderSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    fps: Option<f64>,
    limits: InputLimits,
}

impl FolderSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && crate::assets::is_image_path(p))
            .collect();
        files.sort_by(|a, b| {
            natural_cmp(
                &a.file_name().unwrap_or_default().to_string_lossy(),
                &b.file_name().unwrap_or_default().to_string_lossy(),
            )
        });
        if files.is_empty() {
            // A DAVIS root: say which sequences exist.
            let davis = dir.join("JPEGImages/480p");
            let hint = if davis.is_dir() {
                let mut seqs: Vec<String> = std::fs::read_dir(&davis)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                seqs.sort();
                format!(
                    " (a DAVIS root: pass a sequence folder such as {})",
                    davis
                        .join(seqs.first().map(String::as_str).unwrap_or("<seq>"))
                        .display()
                )
            } else {
                String::new()
            };
            return Err(Error::InvalidFile {
                path: dir.to_path_buf(),
                reason: format!("no frames (jpg, png, pgm, ppm) in this folder{hint}"),
            });
        }
        Ok(FolderSource {
            dir: dir.to_path_buf(),
            files,
            next: 0,
            fps: None,
            limits: InputLimits::default(),
        })
    }

    /// Frames must fit `limits` (checked from each file's header before decoding).
    pub fn with_limits(mut self, limits: InputLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Timestamps as `index / fps` instead of decode time.
    pub fn with_fps(mut self, fps: f64) -> Self {
        self.fps = Some(fps);
        self
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl FrameSource for FolderSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(path) = self.files.get(self.next) else {
            return Ok(None);
        };
        let t = Instant::now();
        let image = crate::image_io::load_rgb_limited(path, &self.limits)?;
        let index = self.next as u64;
        self.next += 1;
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let timestamp = Duration::from_secs_f64(index as f64 / self.fps.unwrap_or(30.0));
        Ok(Some(Frame {
            index,
            timestamp,
            name,
            image,
            capture_ms: t.elapsed().as_secs_f32() * 1e3,
        }))
    }
    fn describe(&self) -> String {
        format!("{} ({} frames)", self.dir.display(), self.files.len())
    }
    fn len_hint(&self) -> Option<usize> {
        Some(self.files.len())
    }
}

/// A YUV4MPEG2 stream: 8-bit 4:2:0, 4:2:2, 4:4:4 or mono.
pub struct Y4mSource<R: Read + Send> {
    what: String,
    reader: BufReader<R>,
    width: usize,
    height: usize,
    chroma: (usize, usize),
    fps: f64,
    full_range: bool,
    index: u64,
    buf: Vec<u8>,
    /// Kept alive for ffmpeg streams.
    _child: Option<Child>,
}

fn y4m_err(what: &str, reason: impl Into<String>) -> Error {
    Error::InvalidFile {
        path: PathBuf::from(what),
        reason: reason.into(),
    }
}

impl Y4mSource<std::fs::File> {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_limited(path, &InputLimits::default())
    }

    /// Opens a Y4M file whose frames must fit `limits` (checked from the header, before any
    /// frame buffer is sized).
    pub fn open_limited(path: &Path, limits: &InputLimits) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Y4mSource::from_reader(f, path.display().to_string(), limits)
    }
}

/// A Y4M header line is a few dozen bytes; anything longer is not one.
const MAX_Y4M_LINE: u64 = 4096;

/// Reads one `\n`-terminated header line of at most [`MAX_Y4M_LINE`] bytes.
fn read_line_bounded(r: &mut impl BufRead, what: &str) -> Result<Vec<u8>> {
    let mut line = Vec::new();
    r.take(MAX_Y4M_LINE)
        .read_until(b'\n', &mut line)
        .map_err(|e| Error::io(what, e))?;
    if line.len() as u64 == MAX_Y4M_LINE && line.last() != Some(&b'\n') {
        return Err(y4m_err(
            what,
            format!("a header line is longer than {MAX_Y4M_LINE} bytes"),
        ));
    }
    Ok(line)
}

/// `F30000:1001` -> 29.97; a rate that is not a positive ratio of integers is refused.
fn parse_rate(val: &str, what: &str) -> Result<f64> {
    let bad = || {
        y4m_err(
            what,
            format!("bad frame rate F{val} (expected F<num>:<den>, both positive integers)"),
        )
    };
    let (a, b) = val.split_once(':').ok_or_else(bad)?;
    let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a == 0 || b == 0 {
        return Err(bad());
    }
    Ok(a as f64 / b as f64)
}

impl<R: Read + Send> Y4mSource<R> {
    /// A Y4M stream from any reader; `what` names it in errors.
    pub fn from_reader(r: R, what: String, limits: &InputLimits) -> Result<Self> {
        let mut reader = BufReader::new(r);
        let header = read_line_bounded(&mut reader, &what)?;
        let text = String::from_utf8_lossy(&header).trim_end().to_string();
        let mut parts = text.split(' ');
        if parts.next() != Some("YUV4MPEG2") {
            return Err(y4m_err(
                &what,
                "not a YUV4MPEG2 stream (the header must start with YUV4MPEG2)",
            ));
        }
        let (mut w, mut h, mut fps, mut chroma, mut full) =
            (0usize, 0usize, 30.0f64, (2usize, 2usize), false);
        for p in parts {
            // The first byte is the tag; a non-ASCII one (lossy-decoded garbage) is no tag.
            let (Some(tag), Some(val)) = (p.get(..1), p.get(1..)) else {
                continue;
            };
            match tag {
                "W" => {
                    w = val
                        .parse()
                        .map_err(|_| y4m_err(&what, format!("bad width {val:?}")))?
                }
                "H" => {
                    h = val
                        .parse()
                        .map_err(|_| y4m_err(&what, format!("bad height {val:?}")))?
                }
                "F" => fps = parse_rate(val, &what)?,
                "C" => {
                    chroma = match val {
                        "420" | "420jpeg" | "420paldv" | "420mpeg2" => (2, 2),
                        "422" => (2, 1),
                        "444" => (1, 1),
                        "mono" => (0, 0),
                        other => {
                            return Err(y4m_err(
                                &what,
                                format!(
                                    "unsupported colour space C{other} (8-bit 420, 422, 444 or mono)"
                                ),
                            ));
                        }
                    }
                }
                "X" => full |= val.eq_ignore_ascii_case("COLORRANGE=FULL"),
                _ => {}
            }
        }
        if w == 0 || h == 0 {
            return Err(y4m_err(&what, "the header has no W or H"));
        }
        limits.check_pixels(&what, w as u64, h as u64)?;
        Ok(Y4mSource {
            what,
            reader,
            width: w,
            height: h,
            chroma,
            fps,
            full_range: full,
            index: 0,
            buf: Vec::new(),
            _child: None,
        })
    }

    pub fn fps(&self) -> f64 {
        self.fps
    }

    fn frame_bytes(&self) -> usize {
        let (w, h) = (self.width, self.height);
        match self.chroma {
            (0, 0) => w * h,
            (sx, sy) => w * h + 2 * w.div_ceil(sx) * h.div_ceil(sy),
        }
    }
}

/// BT.601 YCbCr to RGB, limited (16-235) or full range.
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8, full: bool) -> [u8; 3] {
    let (y, cb, cr) = (y as f32, cb as f32 - 128.0, cr as f32 - 128.0);
    let (y, k) = if full {
        (y, 1.0)
    } else {
        ((y - 16.0) * (255.0 / 219.0), 255.0 / 224.0)
    };
    let (cb, cr) = (cb * k, cr * k);
    let c = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    [
        c(y + 1.402 * cr),
        c(y - 0.344_136 * cb - 0.714_136 * cr),
        c(y + 1.772 * cb),
    ]
}

impl<R: Read + Send> FrameSource for Y4mSource<R> {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let t = Instant::now();
        let line = read_line_bounded(&mut self.reader, &self.what)?;
        if line.is_empty() {
            return Ok(None);
        }
        if !line.starts_with(b"FRAME") {
            return Err(y4m_err(
                &self.what,
                format!("frame {}: expected a FRAME marker", self.index),
            ));
        }
        let size = self.frame_bytes();
        self.buf.resize(size, 0);
        self.reader.read_exact(&mut self.buf).map_err(|e| {
            y4m_err(
                &self.what,
                format!("frame {} is truncated: {e}", self.index),
            )
        })?;
        let (w, h) = (self.width, self.height);
        let mut rgb = vec![0u8; w * h * 3];
        let luma = &self.buf[..w * h];
        match self.chroma {
            (0, 0) => {
                for (i, &y) in luma.iter().enumerate() {
                    rgb[i * 3..i * 3 + 3].copy_from_slice(&ycbcr_to_rgb(
                        y,
                        128,
                        128,
                        self.full_range,
                    ));
                }
            }
            (sx, sy) => {
                let cw = w.div_ceil(sx);
                let plane = cw * h.div_ceil(sy);
                let (cb, cr) = (&self.buf[w * h..w * h + plane], &self.buf[w * h + plane..]);
                for r in 0..h {
                    for c in 0..w {
                        let ci = (r / sy) * cw + c / sx;
                        let px = ycbcr_to_rgb(luma[r * w + c], cb[ci], cr[ci], self.full_range);
                        rgb[(r * w + c) * 3..(r * w + c) * 3 + 3].copy_from_slice(&px);
                    }
                }
            }
        }
        let index = self.index;
        self.index += 1;
        Ok(Some(Frame {
            index,
            timestamp: Duration::from_secs_f64(index as f64 / self.fps),
            name: format!("{index:05}"),
            image: RgbImage {
                width: w,
                height: h,
                data: rgb,
            },
            capture_ms: t.elapsed().as_secs_f32() * 1e3,
        }))
    }
    fn describe(&self) -> String {
        format!(
            "{} ({}x{}, {:.2} fps)",
            self.what, self.width, self.height, self.fps
        )
    }
}

/// The ffmpeg binary: `$DINOEDGE_FFMPEG`, else `ffmpeg` on the PATH.
pub fn ffmpeg_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DINOEDGE_FFMPEG") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("ffmpeg"))
            .find(|p| p.is_file())
    })
}

/// Any container ffmpeg reads, decoded by an ffmpeg subprocess into a Y4M pipe.
pub struct FfmpegSource;

impl FfmpegSource {
    #[allow(clippy::new_ret_no_self)]
    pub fn open(path: &Path, limits: &InputLimits) -> Result<Y4mSource<std::process::ChildStdout>> {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let Some(ff) = ffmpeg_binary() else {
            return Err(Error::InvalidFile {
                path: path.to_path_buf(),
                reason: "this video format needs ffmpeg, which was not found (install it, e.g. `apt-get install ffmpeg`, or set DINOEDGE_FFMPEG to its path), or convert the video to .y4m or an image folder".into(),
            });
        };
        let mut child = Command::new(&ff)
            .args(["-loglevel", "error", "-nostdin", "-i"])
            .arg(path)
            .args([
                "-f",
                "yuv4mpegpipe",
                "-pix_fmt",
                "yuv444p",
                "-strict",
                "-1",
                "-",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(&ff, e))?;
        let stdout = child.stdout.take().expect("piped");
        let what = path.display().to_string();
        match Y4mSource::from_reader(stdout, what.clone(), limits) {
            Ok(mut s) => {
                s._child = Some(child);
                Ok(s)
            }
            Err(e @ Error::Runtime(dinoedge_runtime::RuntimeError::LimitExceeded { .. })) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
            Err(_) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let _ = child.wait();
                Err(Error::InvalidFile {
                    path: path.to_path_buf(),
                    reason: format!("ffmpeg could not decode it: {}", err.trim()),
                })
            }
        }
    }
}

impl<R: Read + Send> Drop for Y4mSource<R> {
    fn drop(&mut self) {
        if let Some(c) = &mut self._child {
            let _ = c.kill();
            let _ = c.wait();
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

#[cfg(feature = "camera")]
pub use camera::CameraSource;

#[cfg(feature = "camera")]
mod camera {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{Receiver, sync_channel};

    use super::*;
    use nokhwa::Camera;
    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::{
        CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
    };

    /// A V4L2 camera (USB webcams, Jetson CSI through v4l2) via nokhwa. nokhwa's camera is
    /// not `Send`, so it lives on its own capture thread, which hands over decoded frames.
    pub struct CameraSource {
        index: u32,
        describe: String,
        rx: Receiver<Result<Frame>>,
        stop: Arc<AtomicBool>,
    }

    fn open_camera(index: u32, width: u32, height: u32, fps: u32) -> Result<Camera> {
        let want = CameraFormat::new(Resolution::new(width, height), FrameFormat::MJPEG, fps);
        let req = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(want));
        let mut camera =
            Camera::new(CameraIndex::Index(index), req).map_err(|e| Error::Camera {
                index,
                reason: e.to_string(),
            })?;
        camera.open_stream().map_err(|e| Error::Camera {
            index,
            reason: e.to_string(),
        })?;
        Ok(camera)
    }

    impl CameraSource {
        /// Opens camera `index` asking for `width x height` at `fps` in MJPEG (the closest
        /// format the camera offers is used).
        pub fn open(index: u32, width: u32, height: u32, fps: u32) -> Result<Self> {
            let (tx, rx) = sync_channel::<Result<Frame>>(1);
            let (otx, orx) = sync_channel::<Result<String>>(1);
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            std::thread::Builder::new()
                .name(format!("dinoedge-camera-{index}"))
                .spawn(move || {
                    let mut camera = match open_camera(index, width, height, fps) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = otx.send(Err(e));
                            return;
                        }
                    };
                    let f = camera.camera_format();
                    let _ = otx.send(Ok(format!(
                        "camera {index} ({}x{} {} @ {} fps)",
                        f.width(),
                        f.height(),
                        f.format(),
                        f.frame_rate()
                    )));
                    let (start, mut count) = (Instant::now(), 0u64);
                    while !s.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let frame = camera
                            .frame()
                            .map_err(|e| Error::Camera {
                                index,
                                reason: format!("capture failed (unplugged?): {e}"),
                            })
                            .and_then(|buf| {
                                buf.decode_image::<RgbFormat>().map_err(|e| Error::Camera {
                                    index,
                                    reason: format!("cannot decode frame: {e}"),
                                })
                            })
                            .map(|img| {
                                let (w, h) = img.dimensions();
                                count += 1;
                                Frame {
                                    index: count - 1,
                                    timestamp: start.elapsed(),
                                    name: format!("{:05}", count - 1),
                                    image: RgbImage {
                                        width: w as usize,
                                        height: h as usize,
                                        data: img.into_raw(),
                                    },
                                    capture_ms: t.elapsed().as_secs_f32() * 1e3,
                                }
                            });
                        let failed = frame.is_err();
                        if tx.send(frame).is_err() || failed {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::Camera {
                    index,
                    reason: format!("cannot start the capture thread: {e}"),
                })?;
            let describe = orx.recv().map_err(|_| Error::Camera {
                index,
                reason: "the capture thread stopped".into(),
            })??;
            Ok(CameraSource {
                index,
                describe,
                rx,
                stop,
            })
        }
    }

    impl FrameSource for CameraSource {
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            match self.rx.recv() {
                Ok(f) => f.map(Some),
                Err(_) => Err(Error::Camera {
                    index: self.index,
                    reason: "the camera stopped delivering frames".into(),
                }),
            }
        }
        fn describe(&self) -> String {
            self.describe.clone()
        }
    }

    impl Drop for CameraSource {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
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

/// Shared state of [`LatestFrame`].
struct Slot {
    frame: Option<Frame>,
    /// Frames replaced before anyone took them.
    dropped: u64,
    ended: bool,
    error: Option<String>,
    stop: bool,
}

/// Runs a source on its own thread and keeps only its newest frame. `reopen` (for cameras)
/// is called with backoff when the source fails, so a camera that disappears and comes back
/// resumes instead of ending the stream.
pub struct LatestFrame {
    shared: Arc<(Mutex<Slot>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The source's description, for errors.
    name: String,
}

/// How to get a source again after a failure (None: failures end the stream).
pub type Reopen = Box<dyn FnMut() -> Result<Box<dyn FrameSource>> + Send>;

impl LatestFrame {
    pub fn start(mut source: Box<dyn FrameSource>, mut reopen: Option<Reopen>) -> Self {
        let name = source.describe();
        let shared = Arc::new((
            Mutex::new(Slot {
                frame: None,
                dropped: 0,
                ended: false,
                error: None,
                stop: false,
            }),
            Condvar::new(),
        ));
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let mut backoff = Duration::from_millis(200);
            loop {
                if s.0.lock().unwrap_or_else(|e| e.into_inner()).stop {
                    return;
                }
                match source.next_frame() {
                    Ok(Some(f)) => {
                        backoff = Duration::from_millis(200);
                        let mut slot = s.0.lock().unwrap_or_else(|e| e.into_inner());
                        if slot.frame.is_some() {
                            slot.dropped += 1;
                        }
                        slot.frame = Some(f);
                        s.1.notify_all();
                    }
                    Ok(None) => {
                        let mut slot = s.0.lock().unwrap_or_else(|e| e.into_inner());
                        slot.ended = true;
                        s.1.notify_all();
                        return;
                    }
                    Err(e) => {
                        let Some(r) = reopen.as_mut() else {
                            let mut slot = s.0.lock().unwrap_or_else(|e| e.into_inner());
                            slot.error = Some(e.to_string());
                            slot.ended = true;
                            s.1.notify_all();
                            return;
                        };
                        s.0.lock().unwrap_or_else(|e| e.into_inner()).error =
                            Some(format!("{e}; retrying in {:.1} s", backoff.as_secs_f64()));
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        if let Ok(src) = r() {
                            source = src;
                            s.0.lock().unwrap_or_else(|e| e.into_inner()).error = None;
                        }
                    }
                }
            }
        });
        LatestFrame {
            shared,
            thread: Some(thread),
            name,
        }
    }

    /// Waits (up to `timeout`) for a frame newer than the last one taken. `Ok(None)` when
    /// the stream ended; an error when it failed for good.
    pub fn take(&self, timeout: Duration) -> Result<Option<Frame>> {
        let (m, cv) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut slot = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(f) = slot.frame.take() {
                return Ok(Some(f));
            }
            if slot.ended {
                return match &slot.error {
                    Some(e) => Err(Error::Source {
                        name: self.name.clone(),
                        reason: format!("failed: {e}"),
                    }),
                    None => Ok(None),
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Source {
                    name: self.name.clone(),
                    reason: format!(
                        "no frame for {:.1} s{}",
                        timeout.as_secs_f64(),
                        slot.error
                            .as_ref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                });
            }
            slot = cv
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Frames dropped so far because the consumer was slower than the source.
    pub fn dropped(&self) -> u64 {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped
    }

    /// The current transient error (a camera being retried), if any.
    pub fn status(&self) -> Option<String> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .clone()
    }
}

impl Drop for LatestFrame {
    fn drop(&mut self) {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        if let Some(t) = self.thread.take() {
            // A blocked camera read may not return promptly; do not wait for it.
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec![
            "img10.png",
            "img2.png",
            "img1.png",
            "00010.jpg",
            "00002.jpg",
            "a",
            "img02.png",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            vec![
                "00002.jpg",
                "00010.jpg",
                "a",
                "img1.png",
                "img02.png",
                "img2.png",
                "img10.png"
            ]
        );
    }

    fn y4m(w: usize, h: usize, frames: usize, c: &str) -> Vec<u8> {
        let mut v = format!("YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C{c}\n").into_bytes();
        for f in 0..frames {
            v.extend_from_slice(b"FRAME\n");
            v.extend((0..w * h).map(|i| (16 + (i + f * 10) % 200) as u8));
            let cs = if c == "444" {
                w * h
            } else {
                w.div_ceil(2) * h.div_ceil(2)
            };
            v.extend(std::iter::repeat_n(128u8, 2 * cs));
        }
        v
    }

    #[test]
    fn y4m_frames_decode_to_gray_rgb() {
        let dir = tempfile::tempdir().unwrap();
        for c in ["420jpeg", "444"] {
            let p = dir.path().join(format!("a{c}.y4m"));
            std::fs::write(&p, y4m(5, 3, 2, c)).unwrap();
            let mut s = Y4mSource::open(&p).unwrap();
            let f0 = s.next_frame().unwrap().unwrap();
            assert_eq!((f0.image.width, f0.image.height), (5, 3));
            // Y 16 with neutral chroma is black in limited range; Y 17 a hair above.
            assert_eq!(&f0.image.data[..3], &[0, 0, 0]);
            assert!(f0.image.data[3] == f0.image.data[4] && f0.image.data[4] == f0.image.data[5]);
            let f1 = s.next_frame().unwrap().unwrap();
            assert_eq!(f1.index, 1);
            assert_eq!(f1.timestamp, Duration::from_millis(40));
            assert!(s.next_frame().unwrap().is_none());
        }
        let p = dir.path().join("cut.y4m");
        let mut b = y4m(5, 3, 1, "420jpeg");
        b.truncate(b.len() - 3);
        std::fs::write(&p, b).unwrap();
        let err = Y4mSource::open(&p)
            .unwrap()
            .next_frame()
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    struct Counter(u64);
    impl FrameSource for Counter {
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            std::thread::sleep(Duration::from_millis(2));
            self.0 += 1;
            if self.0 > 50 {
                return Ok(None);
            }
            Ok(Some(Frame {
                index: self.0,
                timestamp: Duration::ZERO,
                name: String::new(),
                image: RgbImage {
                    width: 1,
                    height: 1,
                    data: vec![0; 3],
                },
                capture_ms: 0.0,
            }))
        }
        fn describe(&self) -> String {
            "counter".into()
        }
    }

    #[test]
    fn slow_consumers_get_the_newest_frame() {
        let l = LatestFrame::start(Box::new(Counter(0)), None);
        let first = l.take(Duration::from_secs(5)).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(40));
        let later = l.take(Duration::from_secs(5)).unwrap().unwrap();
        assert!(
            later.index > first.index + 3,
            "{} then {}",
            first.index,
            later.index
        );
        assert!(l.dropped() > 0);
        while l.take(Duration::from_secs(5)).unwrap().is_some() {}
    }

    /// A camera that delivers `frames` frames and then fails (unplugged).
    struct Unplugged {
        frames: u64,
        sent: u64,
    }
    impl FrameSource for Unplugged {
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            if self.sent == self.frames {
                return Err(Error::Camera {
                    index: 0,
                    reason: "disappeared".into(),
                });
            }
            self.sent += 1;
            Counter(self.sent - 1).next_frame()
        }
        fn describe(&self) -> String {
            "unplugged".into()
        }
    }

    #[test]
    fn a_camera_that_disappears_is_reopened_with_backoff() {
        // The first reopen fails (still unplugged), the second brings a new camera.
        let mut attempts = 0;
        let reopen: Reopen = Box::new(move || {
            attempts += 1;
            if attempts == 1 {
                Err(Error::Camera {
                    index: 0,
                    reason: "no such camera".into(),
                })
            } else {
                Ok(Box::new(Unplugged { frames: 3, sent: 0 }) as Box<dyn FrameSource>)
            }
        });
        let t0 = Instant::now();
        let l = LatestFrame::start(Box::new(Unplugged { frames: 2, sent: 0 }), Some(reopen));
        let mut got = 0;
        let mut saw_status = false;
        while got < 4 {
            saw_status |= l
                .status()
                .is_some_and(|s| s.contains("disappeared") && s.contains("retrying"));
            match l.take(Duration::from_millis(50)) {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("the stream ended instead of reopening"),
                // Waits time out while the camera is away (the message then says why).
                Err(e) => assert!(e.to_string().contains("no frame for"), "{e}"),
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no frames after the reopen"
            );
        }
        // Frames kept coming after a failed and a successful reopen: 0.2 s then 0.4 s of
        // backoff at least.
        assert!(saw_status);
        assert!(
            t0.elapsed() >= Duration::from_millis(600),
            "{:?}",
            t0.elapsed()
        );
        // Without `reopen`, the failure ends the stream with the error.
        let l = LatestFrame::start(Box::new(Unplugged { frames: 1, sent: 0 }), None);
        assert!(l.take(Duration::from_secs(5)).unwrap().is_some());
        let e = l.take(Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("disappeared"), "{e}");
    }
}
