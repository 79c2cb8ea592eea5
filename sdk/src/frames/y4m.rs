//! [`Y4mSource`]: YUV4MPEG2 files, decoded natively (also the stream ffmpeg writes us).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use dinoedge_runtime::{InputLimits, RgbImage};

use crate::error::{Error, Result};

use super::*;

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
    pub(super) _child: Option<Child>,
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
        let image = RgbImage {
            width: w,
            height: h,
            data: rgb,
        };
        let timestamp = Duration::from_secs_f64(index as f64 / self.fps);
        Ok(Some(Frame::numbered(
            index,
            timestamp,
            image,
            t.elapsed().as_secs_f32() * 1e3,
        )))
    }
    fn describe(&self) -> String {
        format!(
            "{} ({}x{}, {:.2} fps)",
            self.what, self.width, self.height, self.fps
        )
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
