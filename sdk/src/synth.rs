//! Tracking ground truth from real pictures: a real object cut out with its real alpha matte
//! is pasted onto a real background and moved, scaled and partly occluded by a patch of
//! another real photo, frame after frame. The masks are exact by construction.
//! (No annotated real video exists in the package registries.)

use std::path::Path;

use dinoedge_runtime::RgbImage;

use crate::davis::{Mask, write_mask};
use crate::dense::resize_rgb;
use crate::error::{Error, Result};
use crate::image_io::load_rgb;

/// How the object moves.
#[derive(Clone, Copy, Debug)]
pub struct Motion {
    pub frames: usize,
    /// Object height at the first frame, as a fraction of the background height.
    pub start_height: f32,
    /// Scale factor reached at the last frame.
    pub end_scale: f32,
    /// Horizontal travel over the sequence, as a fraction of the background width.
    pub travel: f32,
    /// The occluder covers this fraction of the object's width at the middle frames.
    pub occlusion: f32,
}

impl Default for Motion {
    fn default() -> Self {
        Motion {
            frames: 12,
            start_height: 0.55,
            end_scale: 1.25,
            travel: 0.35,
            occlusion: 0.35,
        }
    }
}

fn alpha_of(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let img = image::open(path)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .to_luma8();
    let (w, h) = img.dimensions();
    Ok((
        w as usize,
        h as usize,
        img.into_raw().iter().map(|&v| v as f32 / 255.0).collect(),
    ))
}

/// Writes `frames/00000.jpg..` (JPEG) and `masks/00000.png..` (object id 1) under `out`.
pub fn paste_sequence(
    object: &Path,
    matte: &Path,
    background: &Path,
    occluder: &Path,
    out: &Path,
    m: &Motion,
) -> Result<()> {
    let obj = load_rgb(object)?;
    let (aw, ah, alpha) = alpha_of(matte)?;
    if (aw, ah) != (obj.width, obj.height) {
        return Err(Error::InvalidFile {
            path: matte.to_path_buf(),
            reason: format!(
                "matte is {aw}x{ah}, the object {}x{}",
                obj.width, obj.height
            ),
        });
    }
    let bg = load_rgb(background)?;
    let occ_src = load_rgb(occluder)?;
    let (fd, md) = (out.join("frames"), out.join("masks"));
    for d in [&fd, &md] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    // The object's bounding box in the matte, to crop empty margins.
    let (mut x0, mut y0, mut x1, mut y1) = (aw, ah, 0, 0);
    for y in 0..ah {
        for x in 0..aw {
            if alpha[y * aw + x] > 0.5 {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
            }
        }
    }
    if x1 <= x0 {
        return Err(Error::InvalidFile {
            path: matte.to_path_buf(),
            reason: "the matte is empty".into(),
        });
    }
    let (cw, ch) = (x1 - x0, y1 - y0);
    let crop_rgb = RgbImage {
        width: cw,
        height: ch,
        data: (y0..y1)
            .flat_map(|y| obj.data[(y * aw + x0) * 3..(y * aw + x1) * 3].to_vec())
            .collect(),
    };
    let crop_alpha: Vec<f32> = (y0..y1)
        .flat_map(|y| alpha[y * aw + x0..y * aw + x1].to_vec())
        .collect();
    let (bw, bh) = (bg.width, bg.height);
    for f in 0..m.frames {
        let t = f as f32 / (m.frames - 1).max(1) as f32;
        let scale = 1.0 + (m.end_scale - 1.0) * t;
        let oh = ((bh as f32 * m.start_height * scale) as usize).clamp(8, bh);
        let ow = ((cw as f32 * oh as f32 / ch as f32) as usize).clamp(8, bw);
        let o = resize_rgb(&crop_rgb, ow, oh);
        let a = crate::dense::upsample_planes(&crop_alpha, 1, (ch, cw), oh, ow);
        let left = ((bw as f32 * (0.08 + m.travel * t)) as usize).min(bw - ow);
        let top = (bh - oh) / 2 + ((t * std::f32::consts::PI).sin() * bh as f32 * 0.05) as usize;
        let top = top.min(bh - oh);
        let mut frame = bg.clone();
        let mut labels = vec![0u8; bw * bh];
        for y in 0..oh {
            for x in 0..ow {
                let al = a[y * ow + x].clamp(0.0, 1.0);
                let (by, bx) = (top + y, left + x);
                let i = (by * bw + bx) * 3;
                for c in 0..3 {
                    frame.data[i + c] = (frame.data[i + c] as f32 * (1.0 - al)
                        + o.data[(y * ow + x) * 3 + c] as f32 * al)
                        .round() as u8;
                }
                if al > 0.5 {
                    labels[by * bw + bx] = 1;
                }
            }
        }
        // The occluder slides in from the right over the middle third of the sequence.
        if (0.3..=0.75).contains(&t) {
            let occ_w = ((ow as f32 * m.occlusion) as usize).max(4);
            let occ_h = (oh as f32 * 0.7) as usize;
            let ox = left + ow - occ_w;
            let oy = top + oh / 6;
            let patch = resize_rgb(&occ_src, occ_w, occ_h);
            for y in 0..occ_h.min(bh - oy) {
                for x in 0..occ_w.min(bw - ox) {
                    let (by, bx) = (oy + y, ox + x);
                    frame.data[(by * bw + bx) * 3..(by * bw + bx) * 3 + 3]
                        .copy_from_slice(&patch.data[(y * occ_w + x) * 3..(y * occ_w + x) * 3 + 3]);
                    labels[by * bw + bx] = 0;
                }
            }
        }
        let name = format!("{f:05}");
        let jpg = fd.join(format!("{name}.jpg"));
        let buf =
            image::RgbImage::from_raw(bw as u32, bh as u32, frame.data.clone()).expect("sized");
        buf.save_with_format(&jpg, image::ImageFormat::Jpeg)
            .map_err(|e| Error::Image {
                path: jpg.clone(),
                reason: e.to_string(),
            })?;
        write_mask(
            &md.join(format!("{name}.png")),
            &Mask {
                width: bw,
                height: bh,
                labels,
            },
        )?;
    }
    Ok(())
}
