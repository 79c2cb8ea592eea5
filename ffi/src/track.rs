//! Video object tracking by label propagation.

use dinoedge::davis::Mask;
use dinoedge::track::{LabelPropagator, PropagationConfig, SoftLabels};

use crate::dinoedge_status::{self, *};
use crate::session::dinoedge_features;
use crate::{Fail, Handle, arg_mut, check_size, copy_out, destroy, guard, obj, obj_mut, put};

/// Label propagation state: first-frame masks followed through a video.
pub struct dinoedge_tracker {
    lp: LabelPropagator,
    soft: Option<SoftLabels>,
    first: Mask,
}

impl Handle for dinoedge_tracker {
    const NAME: &'static str = "dinoedge_tracker";
}

/// Options of `dinoedge_tracker_create` (DINO's defaults from
/// `dinoedge_tracker_default_options`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct dinoedge_tracker_options {
    /// `sizeof(dinoedge_tracker_options)`.
    pub struct_size: usize,
    /// Votes per patch (5).
    pub topk: u32,
    /// Past frames kept as context besides the first (7).
    pub n_last: u32,
    /// Neighbourhood half-size in patches (12); 0 = the whole frame.
    pub neighborhood: u32,
    /// Softmax temperature of the votes (0.1).
    pub temperature: f32,
    /// Threads for the similarity products; 0 = all cores.
    pub threads: u32,
}

/// Fills `options` with DINO's defaults.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_tracker_default_options(
    options: *mut dinoedge_tracker_options,
) -> dinoedge_status {
    guard(|| {
        let o = arg_mut(options, "options")?;
        *o = dinoedge_tracker_options {
            struct_size: std::mem::size_of::<dinoedge_tracker_options>(),
            topk: 5,
            n_last: 7,
            neighborhood: 12,
            temperature: 0.1,
            threads: 0,
        };
        Ok(DINOEDGE_OK)
    })
}

/// Starts a tracker from the first frame's features and its object mask.
///
/// - `mask`: borrowed; `height` rows of `stride` bytes, one object id per pixel (0 =
///   background), at the size of the image the features were computed from.
/// - `options`: borrowed; NULL = defaults.
/// - `out`: destroy with `dinoedge_tracker_destroy`.
///
/// Errors: DINOEDGE_ERR_INVALID_ARGUMENT for a mask without objects or of another size.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_tracker_create(
    first: *const dinoedge_features,
    mask: *const u8,
    width: u32,
    height: u32,
    stride: usize,
    options: *const dinoedge_tracker_options,
    out: *mut *mut dinoedge_tracker,
) -> dinoedge_status {
    guard(|| {
        let f = obj(first, "first")?;
        if mask.is_null() {
            return Err(Fail::arg("mask is NULL"));
        }
        let (w, h) = (width as usize, height as usize);
        if (w, h) != f.image_size {
            return Err(Fail::arg(format!(
                "the mask is {w}x{h} but the first frame is {}x{}",
                f.image_size.0, f.image_size.1
            )));
        }
        if stride < w {
            return Err(Fail::arg(format!(
                "stride {stride} is smaller than the width {w}"
            )));
        }
        let mut o = dinoedge_tracker_options {
            struct_size: 0,
            topk: 5,
            n_last: 7,
            neighborhood: 12,
            temperature: 0.1,
            threads: 0,
        };
        if !options.is_null() {
            // SAFETY: the caller's struct starts with its size.
            let size = unsafe { std::ptr::read_unaligned(options as *const usize) };
            check_size(
                size,
                std::mem::size_of::<dinoedge_tracker_options>(),
                "dinoedge_tracker_options",
            )?;
            o = unsafe { *options };
        }
        // SAFETY: `height` rows of `stride` bytes (caller contract).
        let labels: Vec<u8> = (0..h)
            .flat_map(|y| unsafe { std::slice::from_raw_parts(mask.add(y * stride), w) }.to_vec())
            .collect();
        let m = Mask {
            width: w,
            height: h,
            labels,
        };
        let cfg = PropagationConfig {
            topk: o.topk as usize,
            n_last: o.n_last as usize,
            neighborhood: (o.neighborhood > 0).then_some(o.neighborhood as usize),
            temperature: o.temperature,
        };
        let (gh, gw) = f.f.grid;
        let dim = f.f.dim();
        let lp = LabelPropagator::new(
            cfg,
            &f.f.last.patches.data[..gh * gw * dim],
            dim,
            (gh, gw),
            &m,
            (o.threads > 0).then_some(o.threads as usize),
        )?;
        put(
            out,
            dinoedge_tracker {
                lp,
                soft: None,
                first: m,
            },
        )
    })
}

/// Propagates the masks to the next frame (its features, same grid as the first).
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_tracker_step(
    tracker: *mut dinoedge_tracker,
    frame: *const dinoedge_features,
) -> dinoedge_status {
    guard(|| {
        let t = obj_mut(tracker, "tracker")?;
        let f = obj(frame, "frame")?;
        let (gh, gw) = f.f.grid;
        if (gh, gw) != t.lp.grid() {
            return Err(Fail::arg(format!(
                "frame grid {gh}x{gw} differs from the first frame's {}x{}",
                t.lp.grid().0,
                t.lp.grid().1
            )));
        }
        t.soft = Some(t.lp.step(&f.f.last.patches.data[..gh * gw * f.f.dim()])?);
        Ok(DINOEDGE_OK)
    })
}

/// The current mask (the first mask before any step) at `width` x `height`, one object id
/// per byte, rows tightly packed, into `out` (`capacity` bytes).
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_tracker_mask(
    tracker: *const dinoedge_tracker,
    width: u32,
    height: u32,
    out: *mut u8,
    capacity: usize,
) -> dinoedge_status {
    guard(|| {
        let t = obj(tracker, "tracker")?;
        if width == 0 || height == 0 {
            return Err(Fail::arg("width and height must be at least 1"));
        }
        let (w, h) = (width as usize, height as usize);
        let m = match &t.soft {
            Some(s) => t.lp.to_mask(s, w, h),
            None => {
                let f = &t.first;
                Mask {
                    width: w,
                    height: h,
                    labels: (0..w * h)
                        .map(|i| {
                            f.labels[((i / w) * f.height / h) * f.width + (i % w) * f.width / w]
                        })
                        .collect(),
                }
            }
        };
        copy_out(&m.labels, out, capacity, std::ptr::null_mut(), "mask")
    })
}

/// Destroys a tracker. NULL is a no-op (DINOEDGE_OK); a handle that is not a live one of this type
/// (destroyed already, or another kind) is left alone and gives DINOEDGE_ERR_INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_tracker_destroy(tracker: *mut dinoedge_tracker) -> dinoedge_status {
    destroy(tracker, "tracker")
}

/// Reads a mask PNG (DAVIS indexed PNG, 8-bit gray, or RGB in the DAVIS palette) as one
/// object id per pixel into `out` (`capacity` bytes). `width` and `height` receive the size;
/// with `out` = NULL only the size is reported (a size query).
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_mask_read(
    path: *const std::ffi::c_char,
    out: *mut u8,
    capacity: usize,
    width: *mut u32,
    height: *mut u32,
) -> dinoedge_status {
    guard(|| {
        let p = crate::c_str(path, "path")?;
        let m = dinoedge::davis::read_mask(std::path::Path::new(p))?;
        let (w, h) = (arg_mut(width, "width")?, arg_mut(height, "height")?);
        (*w, *h) = (m.width as u32, m.height as u32);
        if out.is_null() {
            return Ok(DINOEDGE_OK);
        }
        copy_out(&m.labels, out, capacity, std::ptr::null_mut(), "mask")
    })
}

/// Writes a mask (`height` rows of `width` object ids, tightly packed) as a DAVIS indexed PNG,
/// atomically.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_mask_write(
    path: *const std::ffi::c_char,
    labels: *const u8,
    width: u32,
    height: u32,
) -> dinoedge_status {
    guard(|| {
        let p = crate::c_str(path, "path")?;
        if labels.is_null() || width == 0 || height == 0 {
            return Err(Fail::arg("labels is NULL or the size is 0"));
        }
        let n = width as usize * height as usize;
        // SAFETY: `labels` holds width * height bytes (caller contract).
        let l = unsafe { std::slice::from_raw_parts(labels, n) }.to_vec();
        dinoedge::davis::write_mask(
            std::path::Path::new(p),
            &Mask {
                width: width as usize,
                height: height as usize,
                labels: l,
            },
        )?;
        Ok(DINOEDGE_OK)
    })
}
