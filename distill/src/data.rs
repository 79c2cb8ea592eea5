//! Training images: a recursive folder scan with a held-out split, the augmentation of one
//! view (random resized crop, flip, colour jitter, grayscale), and the sample order.
//!
//! Every random choice is a pure function of `(seed, image, view)` or `(seed, epoch)`
//! ([`crate::rng`]), so any step's batch can be rebuilt anywhere: by a worker thread, after a
//! resume, or by `cache-teacher` ahead of time.

use std::path::{Path, PathBuf};

use dinoedge_runtime::resample::{Filter, resize_aa};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DistillError, Result};
use crate::rng::{Stream, rng};

/// File extensions read as images.
pub const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "pgm", "ppm", "pnm"];

/// One usable image of the data folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Path relative to the data folder, `/`-separated.
    pub rel: String,
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
}

/// A scanned data folder.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub train: Vec<ImageEntry>,
    pub holdout: Vec<ImageEntry>,
    /// Files with an image extension that could not be read, and why.
    pub skipped: Vec<(PathBuf, String)>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl Dataset {
    /// Scans `root` recursively. Images whose header cannot be read, or smaller than
    /// `min_side` pixels, are skipped and listed. A fraction `holdout` of the images (chosen
    /// by a hash of the relative path, so stable when files are added) is held out.
    pub fn scan(root: &Path, holdout: f64, min_side: u32) -> Result<Self> {
        let mut files = Vec::new();
        walk(root, &mut files)?;
        files.sort();
        let (mut train, mut held, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        for path in files {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let dims = image::ImageReader::open(&path)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| e.to_string())
                .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()));
            let (width, height) = match dims {
                Ok(d) => d,
                Err(e) => {
                    skipped.push((path, e));
                    continue;
                }
            };
            if width.min(height) < min_side {
                skipped.push((
                    path,
                    format!("{width}x{height} is smaller than {min_side} pixels"),
                ));
                continue;
            }
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let e = ImageEntry {
                rel,
                bytes,
                width,
                height,
            };
            if (fnv1a(e.rel.as_bytes()) % 10_000) < (holdout * 10_000.0).round() as u64 {
                held.push(e);
            } else {
                train.push(e);
            }
        }
        if train.is_empty() {
            let detail = match (held.len(), skipped.len()) {
                (0, 0) => String::new(),
                (h, s) => format!(" ({h} held out, {s} unreadable or too small)"),
            };
            return Err(DistillError::NoImages {
                dir: root.to_path_buf(),
                detail,
            });
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            train,
            holdout: held,
            skipped,
        })
    }

    pub fn path(&self, e: &ImageEntry) -> PathBuf {
        self.root.join(&e.rel)
    }

    /// A fingerprint of the training list (names and sizes), to tie caches and checkpoints
    /// to the data they were made from.
    pub fn fingerprint(&self) -> String {
        let mut h = 0u64;
        for e in &self.train {
            h = fnv1a(
                &[
                    h.to_le_bytes().as_slice(),
                    e.rel.as_bytes(),
                    &e.bytes.to_le_bytes(),
                ]
                .concat(),
            );
        }
        format!("{:016x}", h)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| DistillError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| DistillError::io(dir, e))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| DistillError::io(&path, e))?;
        if ft.is_dir() || (ft.is_symlink() && path.is_dir()) {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Decodes an image to 8-bit RGB, interleaved (gray and 16-bit images are converted).
pub fn decode(path: &Path) -> std::result::Result<(u32, u32, Vec<u8>), String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok((w, h, rgb.into_raw()))
}

/// Augmentation settings (torchvision's DINO defaults for global crops).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugConfig {
    /// Crop area range, as fractions of the image.
    pub scale: [f32; 2],
    /// Crop aspect-ratio range.
    pub ratio: [f32; 2],
    pub flip: f32,
    /// Probability of colour jitter, and its strengths.
    pub jitter: f32,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
    pub grayscale: f32,
}

impl Default for AugConfig {
    fn default() -> Self {
        AugConfig {
            scale: [0.32, 1.0],
            ratio: [0.75, 4.0 / 3.0],
            flip: 0.5,
            jitter: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            grayscale: 0.2,
        }
    }
}

/// The random choices of one view of one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// Crop box in source pixels: x, y, width, height.
    pub crop: [u32; 4],
    pub flip: bool,
    /// Factors (brightness, contrast, saturation, hue shift) and the order they apply in.
    pub jitter: Option<([f32; 4], [u8; 4])>,
    pub gray: bool,
}

impl View {
    /// The evaluation view: the centred square crop, nothing else.
    pub fn center(w: u32, h: u32) -> Self {
        let s = w.min(h);
        View {
            crop: [(w - s) / 2, (h - s) / 2, s, s],
            flip: false,
            jitter: None,
            gray: false,
        }
    }

    /// View `view` of image `image` (`w x h`), a pure function of its arguments.
    pub fn random(aug: &AugConfig, seed: u64, image: usize, view: u64, w: u32, h: u32) -> Self {
        let mut r = rng(seed, Stream::Augment, image as u64, view);
        let crop = random_resized_crop(&mut r, aug, w, h);
        let flip = r.random::<f32>() < aug.flip;
        let jitter = (r.random::<f32>() < aug.jitter).then(|| {
            let f = |r: &mut rand_chacha::ChaCha8Rng, s: f32| {
                if s > 0.0 {
                    r.random_range(1.0 - s..=1.0 + s).max(0.0)
                } else {
                    1.0
                }
            };
            let b = f(&mut r, aug.brightness);
            let c = f(&mut r, aug.contrast);
            let s = f(&mut r, aug.saturation);
            let hshift = if aug.hue > 0.0 {
                r.random_range(-aug.hue..=aug.hue)
            } else {
                0.0
            };
            let mut order = [0u8, 1, 2, 3];
            for i in (1..4).rev() {
                order.swap(i, r.random_range(0..=i));
            }
            ([b, c, s, hshift], order)
        });
        let gray = r.random::<f32>() < aug.grayscale;
        View {
            crop,
            flip,
            jitter,
            gray,
        }
    }
}

/// torchvision `RandomResizedCrop.get_params`: ten tries at a random area and log-uniform
/// aspect ratio, then the centred crop clamped to the ratio range.
fn random_resized_crop(r: &mut impl Rng, aug: &AugConfig, w: u32, h: u32) -> [u32; 4] {
    let area = (w * h) as f32;
    let (lr0, lr1) = (aug.ratio[0].ln(), aug.ratio[1].ln());
    for _ in 0..10 {
        let target = area * r.random_range(aug.scale[0]..=aug.scale[1]);
        let ratio = r.random_range(lr0..=lr1).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let y = r.random_range(0..=h - ch);
            let x = r.random_range(0..=w - cw);
            return [x, y, cw, ch];
        }
    }
    let in_ratio = w as f32 / h as f32;
    let (cw, ch) = if in_ratio < aug.ratio[0] {
        (w, ((w as f32 / aug.ratio[0]).round() as u32).min(h))
    } else if in_ratio > aug.ratio[1] {
        (((h as f32 * aug.ratio[1]).round() as u32).min(w), h)
    } else {
        (w, h)
    };
    [(w - cw) / 2, (h - ch) / 2, cw, ch]
}

/// Renders `view` of an RGB image (interleaved, `w x h`) at `size x size`: crop, bilinear
/// antialiased resize, flip, jitter, grayscale, then `(x - mean) / std`. Returns (3, size, size).
pub fn render(
    rgb: &[u8],
    w: u32,
    view: &View,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    let [x0, y0, cw, ch] = view.crop.map(|v| v as usize);
    let n = cw * ch;
    let mut planar = vec![0.0f32; 3 * n];
    for y in 0..ch {
        let row = &rgb[((y0 + y) * w as usize + x0) * 3..][..cw * 3];
        for x in 0..cw {
            for c in 0..3 {
                planar[c * n + y * cw + x] = row[x * 3 + c] as f32 * (1.0 / 255.0);
            }
        }
    }
    let mut img = resize_aa(&planar, 3, ch, cw, size, size, Filter::Bilinear);
    let plane = size * size;
    if view.flip {
        for c in 0..3 {
            for row in img[c * plane..(c + 1) * plane].chunks_exact_mut(size) {
                row.reverse();
            }
        }
    }
    if let Some((f, order)) = view.jitter {
        for op in order {
            match op {
                0 => img
                    .iter_mut()
                    .for_each(|v| *v = (*v * f[0]).clamp(0.0, 1.0)),
                1 => {
                    let mean = gray_of(&img, plane).iter().sum::<f32>() / plane as f32;
                    img.iter_mut()
                        .for_each(|v| *v = (f[1] * *v + (1.0 - f[1]) * mean).clamp(0.0, 1.0));
                }
                2 => {
                    let g = gray_of(&img, plane);
                    for c in 0..3 {
                        for (v, gv) in img[c * plane..(c + 1) * plane].iter_mut().zip(&g) {
                            *v = (f[2] * *v + (1.0 - f[2]) * gv).clamp(0.0, 1.0);
                        }
                    }
                }
                _ => shift_hue(&mut img, plane, f[3]),
            }
        }
    }
    if view.gray {
        let g = gray_of(&img, plane);
        for c in 0..3 {
            img[c * plane..(c + 1) * plane].copy_from_slice(&g);
        }
    }
    for c in 0..3 {
        img[c * plane..(c + 1) * plane]
            .iter_mut()
            .for_each(|v| *v = (*v - mean[c]) / std[c]);
    }
    img
}

/// ITU-R 601 luma, as torchvision's `rgb_to_grayscale`.
fn gray_of(img: &[f32], plane: usize) -> Vec<f32> {
    (0..plane)
        .map(|i| 0.299 * img[i] + 0.587 * img[plane + i] + 0.114 * img[2 * plane + i])
        .collect()
}

/// Rotates the hue by `shift` turns (HSV round trip, as torchvision's `adjust_hue`).
fn shift_hue(img: &mut [f32], plane: usize, shift: f32) {
    if shift == 0.0 {
        return;
    }
    for i in 0..plane {
        let (r, g, b) = (img[i], img[plane + i], img[2 * plane + i]);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let delta = max - min;
        if delta <= 0.0 {
            continue;
        }
        let s = delta / max;
        let mut h = if max == r {
            (g - b) / delta
        } else if max == g {
            2.0 + (b - r) / delta
        } else {
            4.0 + (r - g) / delta
        } / 6.0;
        h = (h + shift).rem_euclid(1.0);
        let (h6, v) = (h * 6.0, max);
        let k = h6.floor();
        let f = h6 - k;
        let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
        let (nr, ng, nb) = match k as i32 % 6 {
            0 => (v, t, p),
            1 => (q, v, p),
            2 => (p, v, t),
            3 => (p, q, v),
            4 => (t, p, v),
            _ => (v, p, q),
        };
        img[i] = nr;
        img[plane + i] = ng;
        img[2 * plane + i] = nb;
    }
}

/// The sample order: epoch `e` visits the training images in a permutation drawn from
/// `(seed, e)`; global sample `k` is position `k % n` of epoch `k / n`.
pub struct Sampler {
    seed: u64,
    n: usize,
    cached: std::sync::Mutex<Option<(u64, std::sync::Arc<Vec<u32>>)>>,
}

impl Sampler {
    pub fn new(seed: u64, n: usize) -> Self {
        Sampler {
            seed,
            n,
            cached: std::sync::Mutex::new(None),
        }
    }

    fn permutation(&self, epoch: u64) -> std::sync::Arc<Vec<u32>> {
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((e, p)) = &*c
            && *e == epoch
        {
            return p.clone();
        }
        let mut r = rng(self.seed, Stream::Order, epoch, 0);
        let mut p: Vec<u32> = (0..self.n as u32).collect();
        for i in (1..p.len()).rev() {
            p.swap(i, r.random_range(0..=i));
        }
        let p = std::sync::Arc::new(p);
        *c = Some((epoch, p.clone()));
        p
    }

    /// (training image index, epoch) of global sample `k`.
    pub fn sample(&self, k: u64) -> (usize, u64) {
        let epoch = k / self.n as u64;
        (
            self.permutation(epoch)[(k % self.n as u64) as usize] as usize,
            epoch,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_pure_functions_and_inside_the_image() {
        let aug = AugConfig::default();
        for i in 0..200 {
            let v = View::random(&aug, 7, i, 3, 640, 480);
            assert_eq!(v, View::random(&aug, 7, i, 3, 640, 480));
            let [x, y, w, h] = v.crop;
            assert!(w > 0 && h > 0 && x + w <= 640 && y + h <= 480, "{v:?}");
        }
        assert_ne!(
            View::random(&aug, 7, 0, 3, 640, 480),
            View::random(&aug, 7, 0, 4, 640, 480)
        );
    }

    #[test]
    fn sampler_visits_every_image_once_per_epoch() {
        let s = Sampler::new(1, 37);
        for e in 0..3u64 {
            let mut seen: Vec<usize> = (0..37).map(|k| s.sample(e * 37 + k).0).collect();
            seen.sort();
            assert_eq!(seen, (0..37).collect::<Vec<_>>());
        }
        assert_ne!(
            (0..37).map(|k| s.sample(k).0).collect::<Vec<_>>(),
            (0..37).map(|k| s.sample(37 + k).0).collect::<Vec<_>>()
        );
    }

    #[test]
    fn render_center_view_matches_plain_resize() {
        // A 4x2 image, centre square 2x2 at x = 1, resized to 2x2: the crop itself.
        let rgb: Vec<u8> = (0..4 * 2 * 3).map(|i| (i * 10) as u8).collect();
        let v = View::center(4, 2);
        assert_eq!(v.crop, [1, 0, 2, 2]);
        let out = render(&rgb, 4, &v, 2, [0.0; 3], [1.0; 3]);
        // Red channel of (y 0, x 1) is byte (0*4 + 1)*3 = 30.
        assert!((out[0] - 30.0 / 255.0).abs() < 1e-6);
        let hue = View {
            crop: [0, 0, 4, 2],
            flip: true,
            jitter: Some(([1.0, 1.0, 1.0, 0.0], [0, 1, 2, 3])),
            gray: false,
        };
        let a = render(&rgb, 4, &hue, 4, [0.0; 3], [1.0; 3]);
        let b = render(
            &rgb,
            4,
            &View {
                flip: false,
                jitter: None,
                ..hue.clone()
            },
            4,
            [0.0; 3],
            [1.0; 3],
        );
        // Identity jitter; flip mirrors rows.
        assert!((a[0] - b[3]).abs() < 1e-6);
    }
}
