//! `CameraSource` (feature `camera`): a V4L2 camera through nokhwa.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Instant;

use super::*;
use nokhwa::Camera;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
};

/// A V4L2 camera (USB webcams, Jetson CSI through v4l2) via nokhwa. nokhwa's camera is
/// not `Send`, so it lives on its own capture thread, which hands over decoded frames.
pub struct CameraSource {
    index: u32,
    describe: String,
    rx: Receiver<Result<Frame>>,
    stop: Arc<AtomicBool>,
}

fn open_camera(index: u32, width: u32, height: u32, fps: u32) -> Result<Camera> {
    let want = CameraFormat::new(Resolution::new(width, height), FrameFormat::MJPEG, fps);
    let req = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(want));
    let mut camera = Camera::new(CameraIndex::Index(index), req).map_err(|e| Error::Camera {
        index,
        reason: e.to_string(),
    })?;
    camera.open_stream().map_err(|e| Error::Camera {
        index,
        reason: e.to_string(),
    })?;
    Ok(camera)
}

impl CameraSource {
    /// Opens camera `index` asking for `width x height` at `fps` in MJPEG (the closest
    /// format the camera offers is used).
    pub fn open(index: u32, width: u32, height: u32, fps: u32) -> Result<Self> {
        let (tx, rx) = sync_channel::<Result<Frame>>(1);
        let (otx, orx) = sync_channel::<Result<String>>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::Builder::new()
            .name(format!("dinoedge-camera-{index}"))
            .spawn(move || {
                let mut camera = match open_camera(index, width, height, fps) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = otx.send(Err(e));
                        return;
                    }
                };
                let f = camera.camera_format();
                let _ = otx.send(Ok(format!(
                    "camera {index} ({}x{} {} @ {} fps)",
                    f.width(),
                    f.height(),
                    f.format(),
                    f.frame_rate()
                )));
                let (start, mut count) = (Instant::now(), 0u64);
                while !s.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let frame = camera
                        .frame()
                        .map_err(|e| Error::Camera {
                            index,
                            reason: format!("capture failed (unplugged?): {e}"),
                        })
                        .and_then(|buf| {
                            buf.decode_image::<RgbFormat>().map_err(|e| Error::Camera {
                                index,
                                reason: format!("cannot decode frame: {e}"),
                            })
                        })
                        .map(|img| {
                            let (w, h) = img.dimensions();
                            count += 1;
                            Frame {
                                index: count - 1,
                                timestamp: start.elapsed(),
                                name: format!("{:05}", count - 1),
                                image: RgbImage {
                                    width: w as usize,
                                    height: h as usize,
                                    data: img.into_raw(),
                                },
                                capture_ms: t.elapsed().as_secs_f32() * 1e3,
                            }
                        });
                    let failed = frame.is_err();
                    if tx.send(frame).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Camera {
                index,
                reason: format!("cannot start the capture thread: {e}"),
            })?;
        let describe = orx.recv().map_err(|_| Error::Camera {
            index,
            reason: "the capture thread stopped".into(),
        })??;
        Ok(CameraSource {
            index,
            describe,
            rx,
            stop,
        })
    }
}

impl FrameSource for CameraSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        match self.rx.recv() {
            Ok(f) => f.map(Some),
            Err(_) => Err(Error::Camera {
                index: self.index,
                reason: "the camera stopped delivering frames".into(),
            }),
        }
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn is_live(&self) -> bool {
        true
    }
}

impl Drop for CameraSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
