//! Dense views: PCA picture, similarity map, TokenCut discovery.

use dinoedge::dense::resize_rgb;
use dinoedge::dense::{patch_at, similarity_map};
use dinoedge::pca::PcaBasis;
use dinoedge::tokencut::{TokenCutConfig, tokencut};

use crate::dinoedge_status::{self, *};
use crate::session::dinoedge_features;
use crate::{Fail, Handle, arg_mut, copy_out, destroy, guard, obj, put};

/// A PCA basis (three principal directions of patch features), fitted once and kept, so
/// colours stay stable over a video.
pub struct dinoedge_pca {
    basis: PcaBasis,
}

impl Handle for dinoedge_pca {
    const NAME: &'static str = "dinoedge_pca";
}

/// Patch rows of the first image, their dimension and the grid.
type Patches<'a> = (&'a [f32], usize, (usize, usize));

/// The first image's patches of a features object.
fn patches(f: &dinoedge_features) -> Result<Patches<'_>, Fail> {
    let dim = f.f.dim();
    let (gh, gw) = f.f.grid;
    Ok((&f.f.last.patches.data[..gh * gw * dim], dim, (gh, gw)))
}

/// Fits a PCA basis on the patches of `reference` (its first image).
/// `out`: destroy with `dinoedge_pca_destroy`.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_pca_create(
    reference: *const dinoedge_features,
    out: *mut *mut dinoedge_pca,
) -> dinoedge_status {
    guard(|| {
        let (p, dim, _) = patches(obj(reference, "reference")?)?;
        put(
            out,
            dinoedge_pca {
                basis: PcaBasis::fit(p, dim)?,
            },
        )
    })
}

/// Renders `features` (first image) with the basis as an RGB8 picture of `width` x `height`
/// (bilinear from the patch grid) into `rgb`, which holds `capacity` bytes
/// (`width * height * 3` needed; rows are tightly packed).
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_pca_render(
    pca: *const dinoedge_pca,
    features: *const dinoedge_features,
    width: u32,
    height: u32,
    rgb: *mut u8,
    capacity: usize,
) -> dinoedge_status {
    guard(|| {
        let b = obj(pca, "pca")?;
        let (p, dim, grid) = patches(obj(features, "features")?)?;
        if dim != b.basis.mean.len() {
            return Err(Fail::arg(format!(
                "features have dimension {dim}, the PCA basis {}",
                b.basis.mean.len()
            )));
        }
        if width == 0 || height == 0 {
            return Err(Fail::arg("width and height must be at least 1"));
        }
        let img = resize_rgb(&b.basis.render(p, grid), width as usize, height as usize);
        copy_out(&img.data, rgb, capacity, std::ptr::null_mut(), "rgb")
    })
}

/// Destroys a PCA basis. NULL is a no-op (DINOEDGE_OK); a handle that is not a live one of this type
/// (destroyed already, or another kind) is left alone and gives DINOEDGE_ERR_INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_pca_destroy(pca: *mut dinoedge_pca) -> dinoedge_status {
    destroy(pca, "pca")
}

/// Cosine similarity of every patch to the patch under the point (`x`, `y`), given as
/// fractions of the model input's width and height in [0, 1] (the whole image, except
/// that FIXED-mode DINOv2 models see a centre crop). Writes `grid_height * grid_width`
/// floats in [-1, 1] (row-major) to `out` (`capacity` floats); size query as
/// `dinoedge_features_copy`.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_similarity_map(
    features: *const dinoedge_features,
    x: f32,
    y: f32,
    out: *mut f32,
    capacity: usize,
    needed: *mut usize,
) -> dinoedge_status {
    guard(|| {
        let (p, dim, grid) = patches(obj(features, "features")?)?;
        if !(0.0..=1.0).contains(&x) || !(0.0..=1.0).contains(&y) {
            return Err(Fail::arg(format!(
                "point ({x}, {y}) is outside [0, 1] x [0, 1]"
            )));
        }
        let q = patch_at(x * grid.1 as f32, y * grid.0 as f32, (grid.1, grid.0), grid);
        copy_out(
            &similarity_map(p, dim, q),
            out,
            capacity,
            needed,
            "similarity map",
        )
    })
}

/// The object TokenCut finds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct dinoedge_discovery {
    /// Box in pixels of the original image (before resizing or cropping): x0, y0
    /// (inclusive), x1, y1 (exclusive).
    pub box_x0: u32,
    pub box_y0: u32,
    pub box_x1: u32,
    pub box_y1: u32,
    /// Object patches, of grid_height * grid_width.
    pub patches: u32,
    pub grid_height: u32,
    pub grid_width: u32,
}

/// TokenCut object discovery on `features` (first image) with affinity threshold `tau`
/// (0.2 in the paper). Writes the result to `result` and, when `patch_mask` is not NULL, one
/// byte per patch (1 = object) into it (`capacity` bytes, grid_height * grid_width needed).
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_discover(
    features: *const dinoedge_features,
    tau: f32,
    result: *mut dinoedge_discovery,
    patch_mask: *mut u8,
    capacity: usize,
) -> dinoedge_status {
    guard(|| {
        let f = obj(features, "features")?;
        let (p, dim, grid) = patches(f)?;
        let r = arg_mut(result, "result")?;
        let d = tokencut(
            p,
            dim,
            grid,
            f.patch,
            f.input_size,
            &TokenCutConfig {
                tau,
                ..Default::default()
            },
        )?;
        let (sx, sy, ox, oy) = f.to_image;
        let (iw, ih) = (f.image_size.0 as f64, f.image_size.1 as f64);
        let x = |v: usize| ((v as f64 + ox) * sx).round().clamp(0.0, iw) as u32;
        let y = |v: usize| ((v as f64 + oy) * sy).round().clamp(0.0, ih) as u32;
        *r = dinoedge_discovery {
            box_x0: x(d.bbox[0]),
            box_y0: y(d.bbox[1]),
            box_x1: x(d.bbox[2]),
            box_y1: y(d.bbox[3]),
            patches: d.mask.iter().filter(|&&m| m).count() as u32,
            grid_height: grid.0 as u32,
            grid_width: grid.1 as u32,
        };
        if !patch_mask.is_null() {
            let bytes: Vec<u8> = d.mask.iter().map(|&m| m as u8).collect();
            copy_out(
                &bytes,
                patch_mask,
                capacity,
                std::ptr::null_mut(),
                "patch_mask",
            )?;
        }
        Ok(DINOEDGE_OK)
    })
}
