//! The live page's views, drawn only when a client watches them: the input at display
//! size, the PCA of the patch features, and the overlay view (similarity map, tracked
//! masks, tracked points) — each encoded as JPEG.

use dinoedge_runtime::RgbImage;

use crate::davis::{Mask, palette};
use crate::dense::{RgbResizer, blend, colormap, normalized, render_map};
use crate::error::Result;
use crate::pca::PcaBasis;
use crate::plot::{Marker, draw_markers};
use crate::track::PointTracker;

use super::View;

/// What one frame's views are drawn from.
pub(super) struct Scene<'a> {
    pub frame: &'a RgbImage,
    pub patches: &'a [f32],
    pub dim: usize,
    pub grid: (usize, usize),
    /// Normalised query feature of the similarity map.
    pub query: Option<&'a [f32]>,
    /// Tracked labels at display size.
    pub mask: Option<&'a Mask>,
    pub points: Option<&'a PointTracker>,
}

/// The JPEGs of the views in `want` (indexed by [`View`]), at `size` (display w, h).
pub(super) fn render(
    s: &Scene,
    basis: &mut Option<PcaBasis>,
    resizer: &mut RgbResizer,
    want: [bool; 3],
    (dw, dh): (usize, usize),
    quality: u8,
) -> Result<[Option<Vec<u8>>; 3]> {
    let mut out = [None, None, None];
    let input = (want[View::Input as usize] || want[View::Overlay as usize])
        .then(|| resizer.resize(s.frame, dw, dh));
    if want[View::Pca as usize] {
        let basis = match basis {
            Some(b) => b,
            None => basis.insert(PcaBasis::fit(s.patches, s.dim)?),
        };
        let pca = resizer.resize(&basis.render(s.patches, s.grid), dw, dh);
        out[View::Pca as usize] = Some(jpeg(&pca, quality));
    }
    if let Some(input) = input {
        if want[View::Overlay as usize] {
            out[View::Overlay as usize] = Some(jpeg(&overlay(s, &input), quality));
        }
        if want[View::Input as usize] {
            out[View::Input as usize] = Some(jpeg(&input, quality));
        }
    }
    Ok(out)
}

/// The input with the similarity map, the tracked masks and the points drawn over it.
fn overlay(s: &Scene, input: &RgbImage) -> RgbImage {
    let (dw, dh) = (input.width, input.height);
    let mut view = input.clone();
    if let Some(q) = s.query {
        let sims: Vec<f32> = normalized(s.patches, s.dim)
            .chunks_exact(s.dim)
            .map(|r| r.iter().zip(q).map(|(a, b)| a * b).sum())
            .collect();
        view = blend(&view, &render_map(&sims, s.grid, 0.0, 1.0, dw, dh), 0.6);
    }
    if let Some(m) = s.mask {
        // Half-tint the object pixels with their palette colour.
        let pal = palette();
        for (px, &l) in view.data.chunks_exact_mut(3).zip(&m.labels) {
            if l != 0 {
                let c = pal[l as usize];
                for (v, c) in px.iter_mut().zip(c) {
                    *v = ((*v as f32) * 0.5 + (c as f32) * 0.5).round() as u8;
                }
            }
        }
    }
    if let Some(pt) = s.points {
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
    view
}

/// Baseline JPEG. Views are at most [`MAX_VIEW_SIDE`] wide, inside the encoder's u16 sides;
/// an encoder error (none is expected for in-memory output) gives an empty view, which the
/// server answers as "no frame yet".
pub(super) fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let (Ok(w), Ok(h)) = (u16::try_from(img.width), u16::try_from(img.height)) else {
        return out;
    };
    let enc = jpeg_encoder::Encoder::new(&mut out, quality);
    if enc
        .encode(&img.data, w, h, jpeg_encoder::ColorType::Rgb)
        .is_err()
    {
        out.clear();
    }
    out
}

/// Widest view drawn (the display width is clamped to it).
pub const MAX_VIEW_SIDE: usize = 4096;

/// Nearest-neighbour resize of a label mask into `out` (its buffer reused).
pub(super) fn resize_mask_into(m: &Mask, w: usize, h: usize, out: &mut Mask) {
    out.width = w;
    out.height = h;
    out.labels.clear();
    out.labels.extend(
        (0..w * h).map(|i| m.labels[((i / w) * m.height / h) * m.width + (i % w) * m.width / w]),
    );
}
