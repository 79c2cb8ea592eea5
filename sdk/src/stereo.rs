//! A dense-task score: nearest-neighbour patch correspondence on real rectified stereo pairs
//! with ground-truth disparity.
//!
//! For every left patch with a valid disparity `d` at its centre, the true match in the right
//! image is at `x - d` on the same row. The right patch whose features have the highest
//! cosine similarity is found over the whole right image; the match is correct when it lies
//! within one patch of the true position (both axes). The same metric scores any two models
//! (float vs quantised, teacher vs student).
//!
//! Pairs: scikit-image `motorcycle_left/right.png` + `motorcycle_disp.npy` (Middlebury 2014,
//! float disparity, inf = unknown) and opencv-doc `aloeL/R.jpg` + `aloeGT.png` (Middlebury
//! 2006, disparity in pixels as uint8, 0 = unknown).

use std::path::Path;

use dinoedge_runtime::RgbImage;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::image_io::load_rgb;
use crate::{Embedder, Features};

/// A rectified stereo pair with the left image's disparity (pixels, non-finite = unknown).
pub struct StereoPair {
    pub name: String,
    pub left: RgbImage,
    pub right: RgbImage,
    /// (H, W) of the left image; `x_right = x_left - d`.
    pub disparity: Vec<f32>,
}

/// The score of one model on one pair.
#[derive(Clone, Debug, Serialize)]
pub struct StereoScore {
    pub pair: String,
    /// Fraction of scored left patches whose match is within one patch of the truth.
    pub accuracy: f64,
    /// Median distance of the match to the truth, in patches.
    pub median_error: f64,
    pub scored_patches: usize,
    pub grid: (usize, usize),
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a 2-D little-endian f32 or f64 `.npy` array (C order).
pub fn read_npy_2d(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(invalid(path, "not a .npy file"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(invalid(path, format!("unsupported .npy version {v}"))),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + hlen)
            .ok_or_else(|| invalid(path, "truncated header"))?,
    )
    .map_err(|_| invalid(path, "header is not UTF-8"))?;
    let descr = if header.contains("'<f4'") {
        4
    } else if header.contains("'<f8'") {
        8
    } else {
        return Err(invalid(
            path,
            format!("only little-endian f4/f8 arrays are supported: {header}"),
        ));
    };
    if header.contains("'fortran_order': True") {
        return Err(invalid(path, "Fortran-ordered arrays are not supported"));
    }
    let shape_str = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| invalid(path, "no shape"))?;
    let dims: Vec<usize> = shape_str
        .trim_start_matches([' ', '('])
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let [h, w] = dims[..] else {
        return Err(invalid(
            path,
            format!("expected a 2-D array, shape {dims:?}"),
        ));
    };
    let data = &bytes[start + hlen..];
    if data.len() != h * w * descr {
        return Err(invalid(
            path,
            format!("{} data bytes for shape ({h}, {w})", data.len()),
        ));
    }
    let v = if descr == 4 {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect()
    };
    Ok((h, w, v))
}

/// scikit-image's Middlebury motorcycle pair (needs `motorcycle_disp.npy`, which
/// `scripts/fetch-assets.sh` extracts from the bundled `.npz`).
pub fn motorcycle(photos_dir: &Path) -> Result<StereoPair> {
    let left = load_rgb(&photos_dir.join("motorcycle_left.png"))?;
    let right = load_rgb(&photos_dir.join("motorcycle_right.png"))?;
    let disp_path = photos_dir.join("motorcycle_disp.npy");
    let (h, w, disparity) = read_npy_2d(&disp_path)?;
    if (h, w) != (left.height, left.width) {
        return Err(invalid(
            &disp_path,
            format!(
                "disparity is {w}x{h}, the left image {}x{}",
                left.width, left.height
            ),
        ));
    }
    Ok(StereoPair {
        name: "motorcycle".into(),
        left,
        right,
        disparity,
    })
}

/// opencv-doc's Middlebury aloe pair.
pub fn aloe(opencv_data: &Path) -> Result<StereoPair> {
    let left = load_rgb(&opencv_data.join("aloeL.jpg"))?;
    let right = load_rgb(&opencv_data.join("aloeR.jpg"))?;
    let gt_path = opencv_data.join("aloeGT.png");
    let gt = image::open(&gt_path)
        .map_err(|e| Error::Image {
            path: gt_path.clone(),
            reason: e.to_string(),
        })?
        .to_luma8();
    if (gt.width() as usize, gt.height() as usize) != (left.width, left.height) {
        return Err(invalid(
            &gt_path,
            "ground truth size differs from the left image",
        ));
    }
    let disparity = gt
        .into_raw()
        .into_iter()
        .map(|v| if v == 0 { f32::NAN } else { v as f32 })
        .collect();
    Ok(StereoPair {
        name: "aloe".into(),
        left,
        right,
        disparity,
    })
}

/// Every pair whose files are present under the asset cache (a missing pair is skipped; a
/// present but broken one is an error).
pub fn available_pairs() -> Result<Vec<StereoPair>> {
    let mut v = Vec::new();
    let photos = crate::assets::photos_dir();
    if photos.join("motorcycle_disp.npy").is_file() {
        v.push(motorcycle(&photos)?);
    }
    let ocv = crate::assets::opencv_data_dir();
    if ocv.join("aloeGT.png").is_file() {
        v.push(aloe(&ocv)?);
    }
    Ok(v)
}

fn normalized_rows(x: &[f32], d: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for r in out.chunks_exact_mut(d) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|v| *v /= n);
    }
    out
}

/// Scores features of the left and right images (same preprocessing, same grid).
pub fn score(pair: &StereoPair, left: &Features, right: &Features, patch: usize) -> StereoScore {
    let (gh, gw) = left.grid;
    let d = left.dim();
    let (lf, rf) = (
        normalized_rows(&left.last.patches.data, d),
        normalized_rows(&right.last.patches.data, d),
    );
    // Resized image size, and the scale back to the original pixels.
    let (rh, rw) = ((gh * patch) as f64, (gw * patch) as f64);
    let (sx, sy) = (pair.left.width as f64 / rw, pair.left.height as f64 / rh);
    let mut errors = Vec::new();
    let mut correct = 0usize;
    for i in 0..gh {
        for j in 0..gw {
            let (x0, y0) = (
                (j as f64 + 0.5) * patch as f64 * sx,
                (i as f64 + 0.5) * patch as f64 * sy,
            );
            let (px, py) = (x0 as usize, y0 as usize);
            if px >= pair.left.width || py >= pair.left.height {
                continue;
            }
            let disp = pair.disparity[py * pair.left.width + px] as f64;
            if !disp.is_finite() || disp <= 0.0 {
                continue;
            }
            // True position in right-patch coordinates (continuous).
            let jt = (x0 - disp) / sx / patch as f64 - 0.5;
            let it = i as f64;
            if jt < -0.5 || jt > gw as f64 - 0.5 {
                continue;
            }
            let q = &lf[(i * gw + j) * d..(i * gw + j + 1) * d];
            let (mut best, mut best_s) = (0usize, f32::NEG_INFINITY);
            for (k, r) in rf.chunks_exact(d).enumerate() {
                let s: f32 = q.iter().zip(r).map(|(a, b)| a * b).sum();
                if s > best_s {
                    best_s = s;
                    best = k;
                }
            }
            let (im, jm) = ((best / gw) as f64, (best % gw) as f64);
            let (dy, dx) = ((im - it).abs(), (jm - jt).abs());
            if dx <= 1.0 && dy <= 1.0 {
                correct += 1;
            }
            errors.push(dx.hypot(dy));
        }
    }
    errors.sort_by(|a, b| a.total_cmp(b));
    let n = errors.len();
    StereoScore {
        pair: pair.name.clone(),
        accuracy: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        median_error: if n == 0 { f64::NAN } else { errors[n / 2] },
        scored_patches: n,
        grid: (gh, gw),
    }
}

/// Embeds both images with `embedder` (use a dense mode so the aspect ratio is kept) and
/// scores the correspondences.
pub fn evaluate(embedder: &mut Embedder, pair: &StereoPair) -> Result<StereoScore> {
    let l = embedder.embed(&pair.left)?;
    let r = embedder.embed(&pair.right)?;
    Ok(score(pair, &l, &r, embedder.model().config().patch_size()))
}
