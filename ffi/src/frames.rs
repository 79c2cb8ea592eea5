//! Frame sources: image folders, video files, cameras.

use std::ffi::c_char;

use dinoedge::frames::{self, FrameSource};

use crate::dinoedge_status::{self, *};
use crate::session::dinoedge_image;
use crate::{Handle, c_str, destroy, guard, obj_mut, put};

/// A stream of frames. One thread at a time.
pub struct dinoedge_frames {
    src: Box<dyn FrameSource>,
}

impl Handle for dinoedge_frames {
    const NAME: &'static str = "dinoedge_frames";
}

/// Opens an image folder (natural order; jpg, png, pgm, ppm), a .y4m file, or another video
/// through ffmpeg. `path`: borrowed. `out`: destroy with `dinoedge_frames_destroy`.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_frames_open(
    path: *const c_char,
    out: *mut *mut dinoedge_frames,
) -> dinoedge_status {
    guard(|| {
        let p = c_str(path, "path")?;
        put(
            out,
            dinoedge_frames {
                src: frames::open(std::path::Path::new(p))?,
            },
        )
    })
}

/// Opens V4L2 camera `index` at about `width` x `height`, `fps` (library built with the
/// `camera` feature; otherwise DINOEDGE_ERR_UNSUPPORTED).
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_frames_open_camera(
    index: u32,
    width: u32,
    height: u32,
    fps: u32,
    out: *mut *mut dinoedge_frames,
) -> dinoedge_status {
    guard(|| {
        put(
            out,
            dinoedge_frames {
                src: frames::open_camera(index, width, height, fps)?,
            },
        )
    })
}

/// Reads the next frame into a new image (`*out`, destroy with `dinoedge_image_destroy`).
/// Returns DINOEDGE_END_OF_STREAM (with `*out` = NULL) after the last frame.
/// `timestamp_us` (may be NULL) receives the frame time in microseconds.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_frames_next(
    frames: *mut dinoedge_frames,
    out: *mut *mut dinoedge_image,
    timestamp_us: *mut u64,
) -> dinoedge_status {
    guard(|| {
        let f = obj_mut(frames, "frames")?;
        if out.is_null() {
            return Err(crate::Fail::arg("out is NULL"));
        }
        match f.src.next_frame()? {
            Some(frame) => {
                if !timestamp_us.is_null() {
                    // SAFETY: a valid pointer (caller contract).
                    unsafe { *timestamp_us = frame.timestamp.as_micros() as u64 };
                }
                put(out, dinoedge_image { image: frame.image })
            }
            None => {
                // SAFETY: checked non-NULL above.
                unsafe { *out = std::ptr::null_mut() };
                Ok(DINOEDGE_END_OF_STREAM)
            }
        }
    })
}

/// Destroys a frame source. NULL is a no-op (DINOEDGE_OK); a handle that is not a live one of this type
/// (destroyed already, or another kind) is left alone and gives DINOEDGE_ERR_INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_frames_destroy(frames: *mut dinoedge_frames) -> dinoedge_status {
    destroy(frames, "frames")
}
