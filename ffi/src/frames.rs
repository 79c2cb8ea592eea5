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

/// Opens a GStreamer pipeline in gst-launch syntax (library built with the `gstreamer`
/// feature; otherwise DINOEDGE_ERR_UNSUPPORTED), e.g. "filesrc location=clip.mp4 ! decodebin"
/// or, on a Jetson, "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,
/// height=720,framerate=30/1". The conversion to RGB and an appsink are appended unless the
/// pipeline has an appsink. Live sources (cameras, RTSP) keep only the newest frame, so a slow
/// reader skips frames instead of falling behind; files give every frame in order. A live
/// source that drops returns DINOEDGE_ERR_SOURCE from `dinoedge_frames_next`: destroy it and
/// open it again to reconnect. An element of the pipeline that is not installed, or a codec
/// decodebin finds no decoder for, gives DINOEDGE_ERR_UNSUPPORTED (`dinoedge_last_error()`
/// names it and the package that ships it); a pipeline that cannot start gives
/// DINOEDGE_ERR_SOURCE with GStreamer's error and debug text. `timeout_ms`: the longest wait for the pipeline to start and then
/// for each frame (0: 20 s). `pipeline`: borrowed. `out`: destroy with `dinoedge_frames_destroy`.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn dinoedge_frames_open_gst(
    pipeline: *const c_char,
    timeout_ms: u32,
    out: *mut *mut dinoedge_frames,
) -> dinoedge_status {
    guard(|| {
        let p = c_str(pipeline, "pipeline")?;
        let opts = frames::GstOptions {
            timeout: match timeout_ms {
                0 => frames::GstOptions::default().timeout,
                ms => std::time::Duration::from_millis(ms as u64),
            },
            ..Default::default()
        };
        put(
            out,
            dinoedge_frames {
                src: frames::open_gst(&frames::GstSpec::Pipeline(p.into()), &opts)?,
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
