//! DAVIS-format masks (indexed palette PNGs, one object id per pixel) and the DAVIS 2017
//! semi-supervised scores: J (region IoU) and F (boundary F-measure with a tolerance of
//! 0.008 of the image diagonal), as the davis2017-evaluation toolkit computes them.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use dinoedge_runtime::InputLimits;
use dinoedge_runtime::fsutil::write_atomic_with;
use serde::Serialize;

use crate::error::{Error, Result};

/// An object-id map: `labels[y * width + x]`, 0 = background.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub labels: Vec<u8>,
}

impl Mask {
    /// Object ids present, ascending, background excluded.
    pub fn objects(&self) -> Vec<u8> {
        let mut seen = [false; 256];
        self.labels.iter().for_each(|&l| seen[l as usize] = true);
        (1..=255u8).filter(|&l| seen[l as usize]).collect()
    }
}

/// The DAVIS / PASCAL VOC palette: colour of index i from its bits.
pub fn palette() -> [[u8; 3]; 256] {
    let mut p = [[0u8; 3]; 256];
    for (i, c) in p.iter_mut().enumerate() {
        let (mut id, mut r, mut g, mut b) = (i, 0u8, 0u8, 0u8);
        for j in 0..8 {
            r |= ((id & 1) as u8) << (7 - j);
            g |= (((id >> 1) & 1) as u8) << (7 - j);
            b |= (((id >> 2) & 1) as u8) << (7 - j);
            id >>= 3;
        }
        *c = [r, g, b];
    }
    p
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a mask PNG: indexed (the DAVIS format: indices are object ids), 8-bit gray (values
/// are ids; a 0/255 mask is object 1), or RGB in the DAVIS palette.
pub fn read_mask(path: &Path) -> Result<Mask> {
    read_mask_limited(path, &InputLimits::default())
}

/// As [`read_mask`], refusing a PNG whose header declares more than `limits.max_pixels`
/// (before any pixel buffer exists).
pub fn read_mask_limited(path: &Path, limits: &InputLimits) -> Result<Mask> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let bytes_cap = limits.max_pixels.saturating_mul(4).min(usize::MAX as u64) as usize;
    let mut dec = png::Decoder::new_with_limits(
        std::io::BufReader::new(file),
        png::Limits { bytes: bytes_cap },
    );
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec
        .read_info()
        .map_err(|e| bad(path, format!("not a readable PNG: {e}")))?;
    let (w, h) = (reader.info().width, reader.info().height);
    limits.check_pixels(&path.display().to_string(), w as u64, h as u64)?;
    let mut buf = vec![
        0u8;
        reader
            .output_buffer_size()
            .ok_or_else(|| bad(path, "PNG too large"))?
    ];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(path, format!("cannot decode: {e}")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let depth = info.bit_depth as usize;
    let row = info.line_size;
    let sample = |y: usize, x: usize, bits: usize| -> u8 {
        let bitpos = x * bits;
        let byte = buf[y * row + bitpos / 8];
        ((byte >> (8 - bits - bitpos % 8)) & ((1u16 << bits) - 1) as u8) as u8
    };
    let labels: Vec<u8> = match (info.color_type, depth) {
        (png::ColorType::Indexed, 1 | 2 | 4 | 8) => (0..h)
            .flat_map(|y| (0..w).map(move |x| (y, x)))
            .map(|(y, x)| sample(y, x, depth))
            .collect(),
        (png::ColorType::Grayscale, 8) => {
            let raw: Vec<u8> = (0..h)
                .flat_map(|y| buf[y * row..y * row + w].to_vec())
                .collect();
            let mut vals: Vec<u8> = raw.iter().copied().filter(|&v| v != 0).collect();
            vals.sort_unstable();
            vals.dedup();
            if vals == [255] {
                raw.iter().map(|&v| (v == 255) as u8).collect()
            } else {
                raw
            }
        }
        (png::ColorType::Rgb | png::ColorType::Rgba, 8) => {
            let ch = if info.color_type == png::ColorType::Rgb {
                3
            } else {
                4
            };
            let pal = palette();
            let mut out = Vec::with_capacity(w * h);
            for y in 0..h {
                for x in 0..w {
                    let px = &buf[y * row + x * ch..y * row + x * ch + 3];
                    let id = pal.iter().position(|c| c == px).ok_or_else(|| bad(path, format!("pixel ({x}, {y}) has colour {px:?}, which is not in the DAVIS palette; save masks as indexed PNGs")))?;
                    out.push(id as u8);
                }
            }
            out
        }
        (ct, d) => {
            return Err(bad(
                path,
                format!(
                    "unsupported mask format {ct:?} {d}-bit (use an indexed or 8-bit gray PNG)"
                ),
            ));
        }
    };
    Ok(Mask {
        width: w,
        height: h,
        labels,
    })
}

/// Writes a mask as an indexed PNG with the DAVIS palette, atomically.
pub fn write_mask(path: &Path, m: &Mask) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut enc =
            png::Encoder::new(BufWriter::new(&mut bytes), m.width as u32, m.height as u32);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(palette().iter().flatten().copied().collect::<Vec<u8>>());
        let mut w = enc.write_header().map_err(|e| bad(path, e.to_string()))?;
        w.write_image_data(&m.labels)
            .map_err(|e| bad(path, e.to_string()))?;
    }
    write_atomic_with(path, |f| std::io::Write::write_all(f, &bytes))?;
    Ok(())
}

/// Region similarity J: IoU of two binary masks (1 when both are empty).
pub fn jaccard(pred: &[bool], gt: &[bool]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (&p, &g) in pred.iter().zip(gt) {
        inter += (p && g) as usize;
        union += (p || g) as usize;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// 1-pixel boundaries of a binary mask, as davis2017's `_seg2bmap` (offset half a pixel
/// towards the origin).
pub fn boundary(m: &[bool], w: usize, h: usize) -> Vec<bool> {
    let at = |y: usize, x: usize| -> bool { y < h && x < w && m[y * w + x] };
    let mut b = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let s = m[y * w + x];
            let (e, so, se) = (at(y, x + 1), at(y + 1, x), at(y + 1, x + 1));
            b[y * w + x] = if y == h - 1 && x == w - 1 {
                false
            } else if y == h - 1 {
                s ^ e
            } else if x == w - 1 {
                s ^ so
            } else {
                (s ^ e) | (s ^ so) | (s ^ se)
            };
        }
    }
    b
}

/// Dilation by a disk of radius r (skimage `disk(r)`: x² + y² <= r²).
fn dilate(b: &[bool], w: usize, h: usize, r: i64) -> Vec<bool> {
    let offsets: Vec<(i64, i64)> = (-r..=r)
        .flat_map(|dy| (-r..=r).map(move |dx| (dy, dx)))
        .filter(|(dy, dx)| dy * dy + dx * dx <= r * r)
        .collect();
    let mut out = vec![false; w * h];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            if b[(y * w as i64 + x) as usize] {
                for (dy, dx) in &offsets {
                    let (yy, xx) = (y + dy, x + dx);
                    if yy >= 0 && xx >= 0 && yy < h as i64 && xx < w as i64 {
                        out[(yy * w as i64 + xx) as usize] = true;
                    }
                }
            }
        }
    }
    out
}

/// Boundary F-measure with tolerance `ceil(0.008 * diagonal)` pixels.
pub fn f_measure(pred: &[bool], gt: &[bool], w: usize, h: usize) -> f64 {
    let r = (0.008 * ((w * w + h * h) as f64).sqrt()).ceil() as i64;
    let (bp, bg) = (boundary(pred, w, h), boundary(gt, w, h));
    let (dp, dg) = (dilate(&bp, w, h, r), dilate(&bg, w, h, r));
    let n_fg = bp.iter().filter(|&&v| v).count();
    let n_gt = bg.iter().filter(|&&v| v).count();
    let (precision, recall) = match (n_fg, n_gt) {
        (0, 0) => (1.0, 1.0),
        (0, _) => (1.0, 0.0),
        (_, 0) => (0.0, 1.0),
        _ => {
            let fg_match = bp.iter().zip(&dg).filter(|(a, b)| **a && **b).count();
            let gt_match = bg.iter().zip(&dp).filter(|(a, b)| **a && **b).count();
            (fg_match as f64 / n_fg as f64, gt_match as f64 / n_gt as f64)
        }
    };
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// Scores of one object of one sequence.
#[derive(Clone, Debug, Serialize)]
pub struct ObjectScore {
    pub sequence: String,
    pub object: u8,
    pub j: f64,
    pub f: f64,
    pub frames: usize,
}

/// The result of [`evaluate`].
#[derive(Clone, Debug, Serialize)]
pub struct DavisScore {
    pub objects: Vec<ObjectScore>,
    pub j_mean: f64,
    pub f_mean: f64,
    pub jf_mean: f64,
}

fn pngs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    v.sort_by(|a, b| crate::frames::natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(v)
}

/// Scores predicted masks against ground truth. `gt` holds one sequence (PNGs) or one folder
/// per sequence; `pred` mirrors it, with the same file names. As in davis2017-evaluation, the
/// first and last frames are not scored (the first is the given mask), and every object of
/// the first ground-truth frame counts, per sequence.
pub fn evaluate(gt: &Path, pred: &Path) -> Result<DavisScore> {
    let mut seqs: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    if !pngs(gt)?.is_empty() {
        seqs.push((
            gt.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            gt.to_path_buf(),
            pred.to_path_buf(),
        ));
    } else {
        let rd = std::fs::read_dir(gt).map_err(|e| Error::io(gt, e))?;
        let mut dirs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            let name = d
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            seqs.push((name.clone(), d, pred.join(&name)));
        }
    }
    if seqs.is_empty() {
        return Err(bad(
            gt,
            "no ground-truth PNGs (one sequence) or sequence folders",
        ));
    }
    let mut objects = Vec::new();
    for (name, gdir, pdir) in seqs {
        let files = pngs(&gdir)?;
        if files.len() < 3 {
            return Err(bad(
                &gdir,
                format!(
                    "{} frames: DAVIS scoring skips the first and last frame, so at least 3 are needed",
                    files.len()
                ),
            ));
        }
        let first = read_mask(&files[0])?;
        let ids = first.objects();
        if ids.is_empty() {
            return Err(bad(
                &files[0],
                "the first ground-truth frame has no objects",
            ));
        }
        let mut sums = vec![(0.0f64, 0.0f64); ids.len()];
        let scored = &files[1..files.len() - 1];
        for f in scored {
            let g = read_mask(f)?;
            let pf = pdir.join(f.file_name().unwrap_or_default());
            if !pf.is_file() {
                return Err(bad(&pf, format!("missing prediction for {}", f.display())));
            }
            let p = read_mask(&pf)?;
            if (p.width, p.height) != (g.width, g.height) {
                return Err(bad(
                    &pf,
                    format!(
                        "is {}x{}, the ground truth {}x{}",
                        p.width, p.height, g.width, g.height
                    ),
                ));
            }
            for (k, &id) in ids.iter().enumerate() {
                let pm: Vec<bool> = p.labels.iter().map(|&l| l == id).collect();
                let gm: Vec<bool> = g.labels.iter().map(|&l| l == id).collect();
                sums[k].0 += jaccard(&pm, &gm);
                sums[k].1 += f_measure(&pm, &gm, g.width, g.height);
            }
        }
        for (k, &id) in ids.iter().enumerate() {
            let n = scored.len() as f64;
            objects.push(ObjectScore {
                sequence: name.clone(),
                object: id,
                j: sums[k].0 / n,
                f: sums[k].1 / n,
                frames: scored.len(),
            });
        }
    }
    let n = objects.len() as f64;
    let j_mean = objects.iter().map(|o| o.j).sum::<f64>() / n;
    let f_mean = objects.iter().map(|o| o.f).sum::<f64>() / n;
    Ok(DavisScore {
        objects,
        j_mean,
        f_mean,
        jf_mean: (j_mean + f_mean) / 2.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(w: usize, h: usize, x0: usize, y0: usize, x1: usize, y1: usize) -> Vec<bool> {
        (0..h)
            .flat_map(|y| (0..w).map(move |x| x >= x0 && x < x1 && y >= y0 && y < y1))
            .collect()
    }

    #[test]
    fn palette_matches_davis() {
        let p = palette();
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[1], [128, 0, 0]);
        assert_eq!(p[2], [0, 128, 0]);
        assert_eq!(p[3], [128, 128, 0]);
        assert_eq!(p[4], [0, 0, 128]);
    }

    #[test]
    fn jaccard_known_values() {
        let a = rect(10, 10, 0, 0, 4, 10); // 40 px
        let b = rect(10, 10, 2, 0, 6, 10); // 40 px, overlap 20
        assert!((jaccard(&a, &b) - 20.0 / 60.0).abs() < 1e-12);
        assert_eq!(jaccard(&a, &a), 1.0);
        assert_eq!(jaccard(&[false; 4], &[false; 4]), 1.0);
    }

    #[test]
    fn boundary_is_seg2bmap() {
        // A 2x2 square at (1,1) in 4x4: seg2bmap marks pixels whose right, lower or lower-right
        // neighbour differs.
        let m = rect(4, 4, 1, 1, 3, 3);
        let b = boundary(&m, 4, 4);
        let got: Vec<u8> = b.iter().map(|&v| v as u8).collect();
        #[rustfmt::skip]
        let want = vec![
            1, 1, 1, 0,
            1, 0, 1, 0,
            1, 1, 1, 0,
            0, 0, 0, 0,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn f_measure_known_values() {
        // 100x100: tolerance ceil(0.008 * 141.4) = 2 px.
        let gt = rect(100, 100, 20, 20, 60, 60);
        assert_eq!(f_measure(&gt, &gt, 100, 100), 1.0);
        // Shifted by 2 px: every boundary pixel is within tolerance.
        let near = rect(100, 100, 22, 20, 62, 60);
        assert_eq!(f_measure(&near, &gt, 100, 100), 1.0);
        // Far away: no boundary pixel matches.
        let far = rect(100, 100, 70, 70, 90, 90);
        assert_eq!(f_measure(&far, &gt, 100, 100), 0.0);
        // Empty prediction: precision 1, recall 0.
        assert_eq!(f_measure(&vec![false; 10000], &gt, 100, 100), 0.0);
        // Shifted by 4 px horizontally: only the horizontal edges (minus their ends) match.
        let shifted = rect(100, 100, 24, 20, 64, 60);
        let f = f_measure(&shifted, &gt, 100, 100);
        assert!(f > 0.4 && f < 0.6, "{f}");
    }

    #[test]
    fn masks_round_trip_and_sequences_score() {
        let dir = tempfile::tempdir().unwrap();
        let (gt, pred) = (dir.path().join("gt"), dir.path().join("pred"));
        std::fs::create_dir_all(&gt).unwrap();
        std::fs::create_dir_all(&pred).unwrap();
        let w = 50;
        let obj = |x0: usize, id: u8| -> Vec<u8> {
            rect(w, w, x0, 10, x0 + 20, 30)
                .iter()
                .map(|&b| if b { id } else { 0 })
                .collect()
        };
        for f in 0..4 {
            let g = Mask {
                width: w,
                height: w,
                labels: obj(5 + f, 1),
            };
            write_mask(&gt.join(format!("{f:05}.png")), &g).unwrap();
            assert_eq!(read_mask(&gt.join(format!("{f:05}.png"))).unwrap(), g);
            // Prediction lags 10 px: IoU of two 20x20 squares offset by 10 = 200 / 600.
            write_mask(
                &pred.join(format!("{f:05}.png")),
                &Mask {
                    width: w,
                    height: w,
                    labels: obj(15 + f, 1),
                },
            )
            .unwrap();
        }
        let s = evaluate(&gt, &pred).unwrap();
        assert_eq!(s.objects.len(), 1);
        assert_eq!(s.objects[0].frames, 2);
        assert!((s.j_mean - 1.0 / 3.0).abs() < 1e-12, "{}", s.j_mean);
        assert!(s.f_mean < 0.7);
        assert!((s.jf_mean - (s.j_mean + s.f_mean) / 2.0).abs() < 1e-12);
    }
}
