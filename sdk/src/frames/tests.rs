use std::time::{Duration, Instant};

use super::*;

#[test]
fn natural_order() {
    let mut v = vec![
        "img10.png",
        "img2.png",
        "img1.png",
        "00010.jpg",
        "00002.jpg",
        "a",
        "img02.png",
    ];
    v.sort_by(|a, b| natural_cmp(a, b));
    assert_eq!(
        v,
        vec![
            "00002.jpg",
            "00010.jpg",
            "a",
            "img1.png",
            "img02.png",
            "img2.png",
            "img10.png"
        ]
    );
}

fn y4m(w: usize, h: usize, frames: usize, c: &str) -> Vec<u8> {
    let mut v = format!("YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C{c}\n").into_bytes();
    for f in 0..frames {
        v.extend_from_slice(b"FRAME\n");
        v.extend((0..w * h).map(|i| (16 + (i + f * 10) % 200) as u8));
        let cs = if c == "444" {
            w * h
        } else {
            w.div_ceil(2) * h.div_ceil(2)
        };
        v.extend(std::iter::repeat_n(128u8, 2 * cs));
    }
    v
}

#[test]
fn y4m_frames_decode_to_gray_rgb() {
    let dir = tempfile::tempdir().unwrap();
    for c in ["420jpeg", "444"] {
        let p = dir.path().join(format!("a{c}.y4m"));
        std::fs::write(&p, y4m(5, 3, 2, c)).unwrap();
        let mut s = Y4mSource::open(&p).unwrap();
        let f0 = s.next_frame().unwrap().unwrap();
        assert_eq!((f0.image.width, f0.image.height), (5, 3));
        // Y 16 with neutral chroma is black in limited range; Y 17 a hair above.
        assert_eq!(&f0.image.data[..3], &[0, 0, 0]);
        assert!(f0.image.data[3] == f0.image.data[4] && f0.image.data[4] == f0.image.data[5]);
        let f1 = s.next_frame().unwrap().unwrap();
        assert_eq!(f1.index, 1);
        assert_eq!(f1.timestamp, Duration::from_millis(40));
        assert!(s.next_frame().unwrap().is_none());
    }
    let p = dir.path().join("cut.y4m");
    let mut b = y4m(5, 3, 1, "420jpeg");
    b.truncate(b.len() - 3);
    std::fs::write(&p, b).unwrap();
    let err = Y4mSource::open(&p)
        .unwrap()
        .next_frame()
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
}

struct Counter(u64);
impl FrameSource for Counter {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        std::thread::sleep(Duration::from_millis(2));
        self.0 += 1;
        if self.0 > 50 {
            return Ok(None);
        }
        Ok(Some(Frame {
            index: self.0,
            timestamp: Duration::ZERO,
            name: String::new(),
            image: RgbImage {
                width: 1,
                height: 1,
                data: vec![0; 3],
            },
            capture_ms: 0.0,
        }))
    }
    fn describe(&self) -> String {
        "counter".into()
    }
}

#[test]
fn slow_consumers_get_the_newest_frame() {
    let l = LatestFrame::start(Box::new(Counter(0)), None);
    let first = l.take(Duration::from_secs(5)).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(40));
    let later = l.take(Duration::from_secs(5)).unwrap().unwrap();
    assert!(
        later.index > first.index + 3,
        "{} then {}",
        first.index,
        later.index
    );
    assert!(l.dropped() > 0);
    while l.take(Duration::from_secs(5)).unwrap().is_some() {}
}

/// A camera that delivers `frames` frames and then fails (unplugged).
struct Unplugged {
    frames: u64,
    sent: u64,
}
impl FrameSource for Unplugged {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.sent == self.frames {
            return Err(Error::Camera {
                index: 0,
                reason: "disappeared".into(),
            });
        }
        self.sent += 1;
        Counter(self.sent - 1).next_frame()
    }
    fn describe(&self) -> String {
        "unplugged".into()
    }
}

#[test]
fn a_camera_that_disappears_is_reopened_with_backoff() {
    // The first reopen fails (still unplugged), the second brings a new camera.
    let mut attempts = 0;
    let reopen: Reopen = Box::new(move || {
        attempts += 1;
        if attempts == 1 {
            Err(Error::Camera {
                index: 0,
                reason: "no such camera".into(),
            })
        } else {
            Ok(Box::new(Unplugged { frames: 3, sent: 0 }) as Box<dyn FrameSource>)
        }
    });
    let t0 = Instant::now();
    let l = LatestFrame::start(Box::new(Unplugged { frames: 2, sent: 0 }), Some(reopen));
    let mut got = 0;
    let mut saw_status = false;
    while got < 4 {
        saw_status |= l
            .status()
            .is_some_and(|s| s.contains("disappeared") && s.contains("retrying"));
        match l.take(Duration::from_millis(50)) {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("the stream ended instead of reopening"),
            // Waits time out while the camera is away (the message then says why).
            Err(e) => assert!(e.to_string().contains("no frame for"), "{e}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no frames after the reopen"
        );
    }
    // Frames kept coming after a failed and a successful reopen: 0.2 s then 0.4 s of
    // backoff at least.
    assert!(saw_status);
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    // Without `reopen`, the failure ends the stream with the error.
    let l = LatestFrame::start(Box::new(Unplugged { frames: 1, sent: 0 }), None);
    assert!(l.take(Duration::from_secs(5)).unwrap().is_some());
    let e = l.take(Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("disappeared"), "{e}");
}

#[test]
fn gst_presets_print_the_pipelines_jetson_users_run() {
    assert_eq!(
        "1920x1080@60".parse::<CsiMode>().unwrap(),
        CsiMode {
            width: 1920,
            height: 1080,
            fps: 60
        }
    );
    for bad in [
        "1920x1080",
        "0x720@30",
        "1280x720@0",
        "axb@c",
        "1280x720@30x",
    ] {
        let e = bad.parse::<CsiMode>().unwrap_err().to_string();
        assert!(e.contains("--csi-mode") && e.contains(bad), "{e}");
    }
    let csi = GstSpec::Csi {
        sensor: 1,
        mode: CsiMode::default(),
    };
    assert_eq!(
        csi.head(),
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=(int)1280,height=(int)720,framerate=(fraction)30/1,format=(string)NV12"
    );
    let rtsp = GstSpec::Rtsp {
        url: "rtsp://cam.local:554/stream".into(),
        latency_ms: DEFAULT_RTSP_LATENCY_MS,
    };
    assert_eq!(
        rtsp.head(),
        "rtspsrc location=\"rtsp://cam.local:554/stream\" latency=2000 drop-on-latency=true ! application/x-rtp,media=video ! decodebin"
    );
    assert!(csi.is_camera_or_stream() && rtsp.is_camera_or_stream());
    // Quotes and backslashes in a path stay inside the quoted value.
    let v = GstSpec::Video(r#"/tmp/a "b"\c.mp4"#.into());
    assert_eq!(
        v.head(),
        r#"filesrc location="/tmp/a \"b\"\\c.mp4" ! decodebin"#
    );
    assert_eq!(
        GstSpec::Pipeline(" videotestsrc ! ".into()).head(),
        "videotestsrc"
    );
    assert!(GstSpec::Pipeline("  ".into()).validate().is_err());
    assert!(
        GstSpec::Rtsp {
            url: "http://x".into(),
            latency_ms: 0
        }
        .validate()
        .is_err()
    );
}

#[cfg(not(feature = "gstreamer"))]
#[test]
fn gst_sources_explain_how_to_get_them() {
    let e = open_gst(
        &GstSpec::Pipeline("videotestsrc".into()),
        &GstOptions::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("--features gstreamer"), "{e}");
}
