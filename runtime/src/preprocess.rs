//! Image preprocessing that matches HF's image processors (torchvision backend):
//!
//! - DINOv3 (`DINOv3ViTImageProcessor`): rescale to [0, 1], bilinear antialiased resize to
//!   size x size on float data, ImageNet normalise.
//! - DINOv2 (`BitImageProcessor` as configured for `facebook/dinov2-*`): 8-bit bicubic
//!   antialiased resize of the shortest edge to 256/224 x size, center crop size x size,
//!   rescale + normalise.
//! - Dense mode (ours): keep the aspect ratio, short side to `size`, each side rounded to a
//!   multiple of the patch, so camera frames of any shape give an undistorted grid.
//!
//! `preprocessor_config.json` in the model directory, when present, supplies mean and std.

use std::path::Path;

use crate::config::ModelConfig;
use crate::error::{Result, RuntimeError};
use crate::resample::{Filter, resize_aa, resize_aa_u8};
use crate::tensor::Tensor;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// An 8-bit RGB image, interleaved (H, W, 3).
#[derive(Clone, Debug)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * 3 {
            return Err(RuntimeError::input(
                "image",
                format!(
                    "{width}x{height} RGB needs {} bytes, got {}",
                    width * height * 3,
                    data.len()
                ),
            ));
        }
        if width == 0 || height == 0 {
            return Err(RuntimeError::input("image", "empty image"));
        }
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }

    /// Planar (3, H, W) copy.
    fn planar(&self) -> Vec<u8> {
        let n = self.width * self.height;
        let mut out = vec![0u8; 3 * n];
        for (i, px) in self.data.chunks_exact(3).enumerate() {
            out[i] = px[0];
            out[n + i] = px[1];
            out[2 * n + i] = px[2];
        }
        out
    }
}

/// How the image is resized.
#[derive(Clone, Debug, PartialEq)]
pub enum Resize {
    /// Exactly `height x width`, float bilinear antialias (DINOv3 processor).
    Exact { height: usize, width: usize },
    /// Shortest edge to `shortest` with 8-bit bicubic antialias, then a center crop
    /// (DINOv2 processor).
    ShortestEdgeCrop {
        shortest: usize,
        crop_height: usize,
        crop_width: usize,
    },
    /// Keep the aspect ratio: short side about `short_side`, both sides multiples of `patch`.
    Dense {
        short_side: usize,
        patch: usize,
        filter: Filter,
    },
}

/// Which HF image processor a model comes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessorKind {
    /// DINOv3's: an exact resize, bilinear.
    Dinov3,
    /// DINOv2's (`BitImageProcessor`): shortest edge, centre crop, bicubic.
    Dinov2,
}

/// A complete preprocessing recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessor {
    pub resize: Resize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocessor {
    /// The HF processor of the model's family at input size `size` (224 for the released
    /// checkpoints), with mean and std from `preprocessor_config.json` when `dir` has one.
    pub fn for_model(cfg: &ModelConfig, dir: Option<&Path>, size: usize) -> Result<Self> {
        if size < cfg.patch_size() {
            return Err(RuntimeError::ImageTooSmall {
                height: size,
                width: size,
                patch: cfg.patch_size(),
            });
        }
        let resize = match cfg.processor() {
            ProcessorKind::Dinov3 => Resize::Exact {
                height: size,
                width: size,
            },
            ProcessorKind::Dinov2 => Resize::ShortestEdgeCrop {
                shortest: (size as f64 * 256.0 / 224.0).round() as usize,
                crop_height: size,
                crop_width: size,
            },
        };
        let (mean, std) = mean_std(dir)?;
        Ok(Preprocessor { resize, mean, std })
    }

    /// Dense mode: aspect-preserving, short side about `size`, sides multiples of the patch.
    pub fn dense(cfg: &ModelConfig, dir: Option<&Path>, size: usize) -> Result<Self> {
        let filter = match cfg.processor() {
            ProcessorKind::Dinov3 => Filter::Bilinear,
            ProcessorKind::Dinov2 => Filter::Bicubic,
        };
        let (mean, std) = mean_std(dir)?;
        Ok(Preprocessor {
            resize: Resize::Dense {
                short_side: size.max(cfg.patch_size()),
                patch: cfg.patch_size(),
                filter,
            },
            mean,
            std,
        })
    }

    /// Output `(height, width)` for an input of `h x w` pixels.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        match self.resize {
            Resize::Exact { height, width } => (height, width),
            Resize::ShortestEdgeCrop {
                crop_height,
                crop_width,
                ..
            } => (crop_height, crop_width),
            Resize::Dense {
                short_side, patch, ..
            } => dense_size(h, w, short_side, patch),
        }
    }

    /// Where a model-input pixel lies in the original `w x h` image: `image = (input +
    /// offset) * scale`, as (scale_x, scale_y, offset_x, offset_y) (a crop has offsets).
    pub fn input_to_image(&self, h: usize, w: usize) -> (f64, f64, f64, f64) {
        match self.resize {
            Resize::Exact { height, width } => {
                (w as f64 / width as f64, h as f64 / height as f64, 0.0, 0.0)
            }
            Resize::Dense {
                short_side, patch, ..
            } => {
                let (oh, ow) = dense_size(h, w, short_side, patch);
                (w as f64 / ow as f64, h as f64 / oh as f64, 0.0, 0.0)
            }
            Resize::ShortestEdgeCrop {
                shortest,
                crop_height,
                crop_width,
            } => {
                let (rh, rw) = shortest_edge_size(h, w, shortest);
                let start = |size: usize, crop: usize| {
                    if crop > size {
                        -(((crop - size) / 2) as f64)
                    } else {
                        ((size - crop) / 2) as f64
                    }
                };
                (
                    w as f64 / rw as f64,
                    h as f64 / rh as f64,
                    start(rw, crop_width),
                    start(rh, crop_height),
                )
            }
        }
    }

    /// Preprocesses one image into `pixel_values` (1, 3, H, W).
    pub fn run(&self, img: &RgbImage) -> Result<Tensor> {
        let (h, w) = (img.height, img.width);
        let planar = img.planar();
        let (oh, ow, data) = match self.resize {
            Resize::Exact { height, width } => {
                // DINOv3: rescale first, then resize in float (HF's order).
                let f: Vec<f32> = planar.iter().map(|&v| v as f32 * (1.0 / 255.0)).collect();
                (
                    height,
                    width,
                    resize_aa(&f, 3, h, w, height, width, Filter::Bilinear),
                )
            }
            Resize::Dense {
                short_side,
                patch,
                filter,
            } => {
                let (oh, ow) = dense_size(h, w, short_side, patch);
                let f: Vec<f32> = planar.iter().map(|&v| v as f32 * (1.0 / 255.0)).collect();
                (oh, ow, resize_aa(&f, 3, h, w, oh, ow, filter))
            }
            Resize::ShortestEdgeCrop {
                shortest,
                crop_height,
                crop_width,
            } => {
                let (rh, rw) = shortest_edge_size(h, w, shortest);
                let resized = if (rh, rw) == (h, w) {
                    planar
                } else {
                    resize_aa_u8(&planar, 3, h, w, rh, rw, Filter::Bicubic)
                };
                let cropped = center_crop(&resized, 3, rh, rw, crop_height, crop_width);
                // Rescale and normalise fused, as HF does for uint8 input: (x - 255 m) / (255 s).
                (
                    crop_height,
                    crop_width,
                    cropped.iter().map(|&v| v as f32).collect(),
                )
            }
        };
        let scale255 = matches!(self.resize, Resize::ShortestEdgeCrop { .. });
        let plane = oh * ow;
        let mut out = data;
        for c in 0..3 {
            let (m, s) = if scale255 {
                (
                    (self.mean[c] as f64 * 255.0) as f32,
                    (self.std[c] as f64 * 255.0) as f32,
                )
            } else {
                (self.mean[c], self.std[c])
            };
            for v in &mut out[c * plane..(c + 1) * plane] {
                *v = (*v - m) / s;
            }
        }
        Tensor::new(vec![1, 3, oh, ow], out)
    }
}

/// HF `get_resize_output_image_size(..., default_to_square=False)`: short side to `size`,
/// long side `int(size * long / short)`.
pub fn shortest_edge_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    if h <= w {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    } else {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    }
}

/// Aspect-preserving size with the short side about `short` and both sides multiples of `patch`.
pub fn dense_size(h: usize, w: usize, short: usize, patch: usize) -> (usize, usize) {
    let scale = short as f64 / h.min(w) as f64;
    let snap = |x: usize| {
        (((x as f64 * scale) / patch as f64).round() as usize)
            .max(1)
            .saturating_mul(patch)
    };
    (snap(h), snap(w))
}

/// HF's torchvision-backend `center_crop`: offset `int((size - crop) / 2)` (truncated),
/// zero padding of (crop - size) // 2 before where the crop is larger than the image.
fn center_crop(src: &[u8], c: usize, h: usize, w: usize, ch: usize, cw: usize) -> Vec<u8> {
    let start = |size: usize, crop: usize| -> i64 {
        if crop > size {
            -(((crop - size) / 2) as i64)
        } else {
            ((size - crop) / 2) as i64
        }
    };
    let (top, left) = (start(h, ch), start(w, cw));
    let mut out = vec![0u8; c * ch * cw];
    for k in 0..c {
        for y in 0..ch {
            let sy = top + y as i64;
            if sy < 0 || sy >= h as i64 {
                continue;
            }
            for x in 0..cw {
                let sx = left + x as i64;
                if sx >= 0 && sx < w as i64 {
                    out[(k * ch + y) * cw + x] = src[(k * h + sy as usize) * w + sx as usize];
                }
            }
        }
    }
    out
}

fn mean_std(dir: Option<&Path>) -> Result<([f32; 3], [f32; 3])> {
    let Some(dir) = dir else {
        return Ok((IMAGENET_MEAN, IMAGENET_STD));
    };
    let path = dir.join("preprocessor_config.json");
    if !path.is_file() {
        return Ok((IMAGENET_MEAN, IMAGENET_STD));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| RuntimeError::io(&path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| RuntimeError::InvalidConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
        match v.get(key) {
            None => Ok(default),
            Some(a) => {
                let a = a.as_array().filter(|a| a.len() == 3).ok_or_else(|| {
                    RuntimeError::InvalidConfig {
                        path: path.clone(),
                        reason: format!("{key} must be a list of 3 numbers"),
                    }
                })?;
                let mut out = [0.0; 3];
                for (o, x) in out.iter_mut().zip(a) {
                    *o = x.as_f64().ok_or_else(|| RuntimeError::InvalidConfig {
                        path: path.clone(),
                        reason: format!("{key} must hold numbers"),
                    })? as f32;
                }
                Ok(out)
            }
        }
    };
    let (mean, std) = (
        triple("image_mean", IMAGENET_MEAN)?,
        triple("image_std", IMAGENET_STD)?,
    );
    // Normalising divides by std: zero, negative or non-finite values make every pixel
    // infinite or NaN.
    if let Some(c) = (0..3).find(|&c| !(mean[c].is_finite() && std[c].is_finite() && std[c] > 0.0))
    {
        return Err(RuntimeError::InvalidConfig {
            path: path.clone(),
            reason: format!(
                "channel {c}: image_mean {} and image_std {} must be finite, with image_std > 0",
                mean[c], std[c]
            ),
        });
    }
    Ok((mean, std))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(shortest_edge_size(61, 97, 256), (256, 407));
        assert_eq!(shortest_edge_size(480, 640, 256), (256, 341));
        assert_eq!(dense_size(480, 640, 224, 16), (224, 304));
        assert_eq!(dense_size(5, 9000, 224, 14), (224, 403200));
    }

    #[test]
    fn a_zero_or_nan_std_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("preprocessor_config.json");
        for std in ["[0.2, 0.0, 0.2]", "[0.2, -1, 0.2]"] {
            std::fs::write(&p, format!(r#"{{"image_std": {std}}}"#)).unwrap();
            let e = mean_std(Some(dir.path())).unwrap_err().to_string();
            assert!(
                e.contains("preprocessor_config.json") && e.contains("image_std"),
                "{e}"
            );
        }
        std::fs::write(&p, r#"{"image_std": [0.2, 0.3, 0.2]}"#).unwrap();
        assert_eq!(mean_std(Some(dir.path())).unwrap().1, [0.2, 0.3, 0.2]);
    }

    #[test]
    fn center_crop_truncates_like_hf() {
        // width 341 -> 224: int((341 - 224) / 2) = 58; 347 -> 61.
        let src: Vec<u8> = (0..341).map(|x| (x % 256) as u8).collect();
        assert_eq!(center_crop(&src, 1, 1, 341, 1, 224)[0], 58);
        let src: Vec<u8> = (0..347).map(|x| (x % 256) as u8).collect();
        assert_eq!(center_crop(&src, 1, 1, 347, 1, 224)[0], 61);
        // Larger crop: zero padding before.
        assert_eq!(center_crop(&[7, 8], 1, 1, 2, 1, 5), vec![0, 7, 8, 0, 0]);
    }
}
