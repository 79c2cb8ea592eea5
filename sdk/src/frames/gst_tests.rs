//! GStreamer source tests: test sources, clips encoded here, slow consumers, broken pipelines.

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_video::VideoFormat;

use super::gst::{missing_plugin, package_for_caps, unpack_rgb};
use super::*;
use crate::error::Error;

fn opts() -> GstOptions {
    GstOptions {
        timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

fn open(p: &str) -> crate::Result<GstSource> {
    GstSource::open(&GstSpec::Pipeline(p.into()), &opts())
}

/// Fails under DINOEDGE_REQUIRE_GSTREAMER=1 (CI) when `elements` are missing, else skips.
fn have(elements: &[&str]) -> bool {
    gst::init().unwrap();
    let missing: Vec<_> = elements
        .iter()
        .filter(|e| gst::ElementFactory::find(e).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("GStreamer elements {missing:?} are not installed");
    assert!(
        std::env::var("DINOEDGE_REQUIRE_GSTREAMER").as_deref() != Ok("1"),
        "{msg}"
    );
    eprintln!("SKIPPED: {msg}");
    false
}

/// Runs a pipeline to its end (the test's own encoder).
fn run_to_eos(text: &str) {
    gst::init().unwrap();
    let p = gst::parse::launch(text).unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the encoder finished");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{text}: {} ({:?})", e.error(), e.debug());
    }
    p.set_state(gst::State::Null).unwrap();
}

/// A frame whose red grows along x, green along y, blue with the frame index.
fn pattern(w: usize, h: usize, i: usize) -> image::RgbImage {
    image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb([
            (x as usize * 255 / (w - 1)) as u8,
            (y as usize * 255 / (h - 1)) as u8,
            ((i * 40) % 256) as u8,
        ])
    })
}

/// `n` PNG frames, then encoded by `encoder` (a gst-launch fragment) into `out`.
fn encode_clip(dir: &Path, n: usize, (w, h): (usize, usize), encoder: &str, out: &Path) {
    for i in 0..n {
        pattern(w, h, i)
            .save(dir.join(format!("{i:05}.png")))
            .unwrap();
    }
    run_to_eos(&format!(
        "multifilesrc location={}/%05d.png index=0 stop-index={} caps=image/png,framerate=10/1 ! pngdec ! videoconvert ! {encoder} ! filesink location={}",
        dir.display(),
        n - 1,
        out.display()
    ));
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn unpacks_every_sink_format_with_padded_rows() {
    // 2x2 pixels, rows padded to 12 bytes: (R, G, B) = (10k + 1, 10k + 2, 10k + 3).
    let px = |k: u8| [10 * k + 1, 10 * k + 2, 10 * k + 3];
    let want: Vec<u8> = (0..4).flat_map(px).collect();
    for (format, bpp, order) in [
        (VideoFormat::Rgb, 3, [0, 1, 2, 9]),
        (VideoFormat::Bgr, 3, [2, 1, 0, 9]),
        (VideoFormat::Rgbx, 4, [0, 1, 2, 3]),
        (VideoFormat::Rgba, 4, [0, 1, 2, 3]),
        (VideoFormat::Bgrx, 4, [2, 1, 0, 3]),
        (VideoFormat::Bgra, 4, [2, 1, 0, 3]),
    ] {
        let mut data = vec![0xEEu8; 24];
        for k in 0..4u8 {
            let (row, col) = (k as usize / 2, k as usize % 2);
            for c in 0..3 {
                data[row * 12 + col * bpp + order[c]] = px(k)[c];
            }
        }
        assert_eq!(
            unpack_rgb(&data, 12, 2, 2, format).as_deref(),
            Some(&want[..]),
            "{format:?}"
        );
        // One byte short of the last row.
        assert_eq!(
            unpack_rgb(&data[..12 + 2 * bpp - 1], 12, 2, 2, format),
            None
        );
    }
    assert_eq!(unpack_rgb(&[0; 24], 12, 2, 2, VideoFormat::I420), None);
    assert_eq!(
        unpack_rgb(&[0; 24], 5, 2, 2, VideoFormat::Rgb),
        None,
        "stride < row"
    );
}

#[test]
fn a_test_source_gives_every_frame_with_its_timestamp() {
    if !have(&["videotestsrc", "videoconvert", "appsink"]) {
        return;
    }
    let mut s = open("videotestsrc num-buffers=12 ! video/x-raw,width=66,height=50,framerate=30/1")
        .unwrap();
    assert!(!s.is_live());
    assert!(s.details().unwrap().contains("appsink name=dinoedge_sink"));
    let mut n = 0;
    while let Some(f) = s.next_frame().unwrap() {
        assert_eq!((f.index, f.name.as_str()), (n, format!("{n:05}").as_str()));
        assert_eq!(
            (f.image.width, f.image.height, f.image.data.len()),
            (66, 50, 66 * 50 * 3)
        );
        let want = Duration::from_nanos(n * 1_000_000_000 / 30);
        assert!(
            f.timestamp.abs_diff(want) < Duration::from_micros(1),
            "{:?}",
            f.timestamp
        );
        n += 1;
    }
    assert_eq!(n, 12);
    assert!(s.next_frame().unwrap().is_none(), "still ended");
}

#[test]
fn a_pipeline_with_its_own_appsink_is_used_as_is() {
    if !have(&["videotestsrc", "videoconvert", "appsink"]) {
        return;
    }
    let mut s = open(
        "videotestsrc num-buffers=3 pattern=red ! videoconvert ! video/x-raw,format=BGRx,width=32,height=16 ! appsink name=mine",
    )
    .unwrap();
    assert!(!s.details().unwrap().contains("dinoedge_sink"));
    let f = s.next_frame().unwrap().unwrap();
    assert_eq!((f.image.width, f.image.height), (32, 16));
    for px in f.image.data.chunks(3) {
        assert!(px[0] > 240 && px[1] < 15 && px[2] < 15, "red: {px:?}");
    }
}

#[test]
fn a_live_source_gives_the_newest_frame_to_a_slow_consumer() {
    if !have(&["videotestsrc", "videoconvert", "appsink"]) {
        return;
    }
    let mut s =
        open("videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=30/1").unwrap();
    assert!(s.is_live());
    let a = s.next_frame().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let b = s.next_frame().unwrap().unwrap();
    let c = s.next_frame().unwrap().unwrap();
    // The frame after a 400 ms stall is from its end (not the queued one after `a`), and
    // the next one follows at the camera's rate.
    let gap = b.timestamp - a.timestamp;
    assert!(
        gap >= Duration::from_millis(330),
        "stale frame after a stall: {gap:?}"
    );
    let step = c.timestamp - b.timestamp;
    assert!(
        step >= Duration::from_millis(20) && step <= Duration::from_millis(100),
        "{step:?}"
    );
}

#[test]
fn clips_decode_in_order_without_drops_and_match_their_frames() {
    let mut encoders = vec![];
    if have(&[
        "multifilesrc",
        "pngdec",
        "jpegenc",
        "avimux",
        "decodebin",
        "jpegdec",
        "avidemux",
    ]) {
        encoders.push(("mjpeg.avi", "jpegenc quality=95 ! avimux", 4.0));
    }
    if have(&["x264enc", "mp4mux", "qtdemux", "avdec_h264"]) {
        encoders.push(("h264.mp4", "x264enc pass=qual quantizer=10 ! mp4mux", 6.0));
    }
    let tmp = tempfile::tempdir().unwrap();
    let (n, w, h) = (9usize, 70usize, 46usize);
    for (name, encoder, tolerance) in encoders {
        let dir = tmp.path().join(name.replace('.', "-"));
        std::fs::create_dir(&dir).unwrap();
        let clip = tmp.path().join(name);
        encode_clip(&dir, n, (w, h), encoder, &clip);
        for spec in [
            GstSpec::Pipeline(format!(
                "filesrc location=\"{}\" ! decodebin",
                clip.display()
            )),
            GstSpec::Video(clip.clone()),
        ] {
            let mut s = GstSource::open(&spec, &opts()).unwrap();
            assert_eq!(s.len_hint(), Some(n), "{name}");
            let mut got = 0;
            while let Some(f) = s.next_frame().unwrap() {
                // A slow consumer: a file still gives every frame, in order.
                if got % 3 == 0 {
                    std::thread::sleep(Duration::from_millis(60));
                }
                let i = got;
                assert_eq!(f.index, i as u64);
                let want = Duration::from_millis(100 * i as u64);
                assert!(
                    f.timestamp.abs_diff(want) < Duration::from_millis(1),
                    "{name} frame {i}: {:?}",
                    f.timestamp
                );
                let d = mean_abs_diff(&f.image.data, pattern(w, h, i).as_raw());
                assert!(d < tolerance, "{name} frame {i}: mean |diff| {d}");
                got += 1;
            }
            assert_eq!(got, n, "{name}: every frame");
        }
    }
}

#[test]
fn a_live_source_that_ends_is_reopened() {
    if !have(&["videotestsrc", "videoconvert", "appsink"]) {
        return;
    }
    let text =
        "videotestsrc is-live=true num-buffers=3 ! video/x-raw,width=16,height=16,framerate=50/1";
    let src = open(text).unwrap();
    let reopen: Reopen = Box::new(move || Ok(Box::new(open(text)?) as Box<dyn FrameSource>));
    let l = LatestFrame::start(Box::new(src), Some(reopen));
    let mut frames = 0;
    while frames < 8 {
        if l.take(Duration::from_secs(10)).unwrap().is_some() {
            frames += 1;
        }
    }
    assert!(l.reconnects() >= 2, "reconnects {}", l.reconnects());
}

#[test]
fn broken_pipelines_are_clean_errors() {
    if !have(&["videotestsrc", "decodebin", "videoconvert", "appsink"]) {
        return;
    }
    match open("videotestsrc ! nosuchelement_dinoedge") {
        Err(Error::MissingPlugin { element, package }) => {
            assert_eq!(element, "nosuchelement_dinoedge");
            assert!(package.contains("gst-inspect-1.0"), "{package}");
        }
        other => panic!("{:?}", other.err()),
    }
    match GstSource::open(
        &GstSpec::Csi {
            sensor: 0,
            mode: CsiMode::default(),
        },
        &opts(),
    ) {
        Err(Error::MissingPlugin { element, package }) => {
            assert_eq!(element, "nvarguscamerasrc");
            assert!(package.contains("nvidia-l4t-gstreamer"), "{package}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => {} // A Jetson with a camera.
    }
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "not a video at all\n".repeat(100)).unwrap();
    for (pipeline, want) in [
        ("videotestsrc ! ! videoconvert", "cannot parse"),
        (
            "filesrc location=/nonexistent/dinoedge.mp4 ! decodebin",
            "failed to start",
        ),
        (
            &format!("filesrc location={} ! decodebin", text.display()),
            "failed to start",
        ),
        // Caps nothing can produce: negotiation fails.
        (
            "videotestsrc ! video/x-raw,format=NV12,width=8,height=8 ! identity ! video/x-raw,format=I420",
            "could not link",
        ),
        // Audio only: nothing reaches the video tail.
        ("audiotestsrc num-buffers=20 ! decodebin", "failed to start"),
        // Caps after caps: a syntax slip, not a missing plugin called `video`.
        (
            "videotestsrc ! video/x-raw,width=8 ! video/x-raw,height=8",
            "cannot parse",
        ),
    ] {
        let e = open(pipeline)
            .err()
            .unwrap_or_else(|| panic!("{pipeline} opened"));
        let msg = e.to_string();
        assert!(matches!(e, Error::Source { .. }), "{pipeline}: {msg}");
        assert!(msg.contains(want), "{pipeline}: {msg}");
        eprintln!("{pipeline}: {msg}");
    }
    // Validated before GStreamer runs.
    let e = GstSource::open(
        &GstSpec::Rtsp {
            url: "http://cam/stream".into(),
            latency_ms: 200,
        },
        &opts(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("rtsp://"), "{e}");
    assert!(GstSource::open(&GstSpec::Video("/nonexistent.mp4".into()), &opts()).is_err());
}

#[test]
fn frames_over_the_limit_are_refused_before_they_are_copied() {
    if !have(&["videotestsrc", "videoconvert", "appsink"]) {
        return;
    }
    let o = GstOptions {
        limits: dinoedge_runtime::InputLimits {
            max_pixels: 1000,
            ..Default::default()
        },
        ..opts()
    };
    let mut s = GstSource::open(
        &GstSpec::Pipeline("videotestsrc num-buffers=2 ! video/x-raw,width=64,height=48".into()),
        &o,
    )
    .unwrap();
    let e = s.next_frame().err().unwrap().to_string();
    assert!(e.contains("--max-pixels"), "{e}");
}

#[test]
fn a_missing_decoder_is_named_with_its_package() {
    gst::init().unwrap();
    let caps = gst::Caps::builder("video/x-h265")
        .field("stream-format", "byte-stream")
        .build();
    let msg = gst::message::Element::new(
        gst::Structure::builder("missing-plugin")
            .field("type", "decoder")
            .field("detail", &caps)
            .build(),
    );
    let gst::MessageView::Element(e) = msg.view() else {
        unreachable!()
    };
    assert_eq!(missing_plugin(e).as_deref(), Some("video/x-h265"));
    assert!(package_for_caps("video/x-h265").contains("gstreamer1.0-libav"));
    assert!(package_for_caps("video/x-vp9").contains("plugins-good"));
    let other = gst::message::Element::new(gst::Structure::builder("other").build());
    let gst::MessageView::Element(e) = other.view() else {
        unreachable!()
    };
    assert_eq!(missing_plugin(e), None);
}

#[test]
fn an_appsink_in_another_format_and_a_dropped_source_are_clean_errors() {
    if !have(&["videotestsrc", "videoconvert", "appsink"]) {
        return;
    }
    let mut s =
        open("videotestsrc num-buffers=2 ! video/x-raw,width=16,height=16 ! appsink caps=video/x-raw,format=I420")
            .unwrap();
    let e = s.next_frame().err().unwrap().to_string();
    assert!(e.contains("I420") && e.contains("not one of RGB"), "{e}");
    // A live source that ends fails, and keeps failing at once (it was stopped).
    let mut s = open(
        "videotestsrc is-live=true num-buffers=2 ! video/x-raw,width=16,height=16,framerate=50/1",
    )
    .unwrap();
    while s.next_frame().is_ok() {}
    let t = std::time::Instant::now();
    let e = s.next_frame().err().unwrap().to_string();
    assert!(e.contains("ended after 2 frames"), "{e}");
    assert!(t.elapsed() < Duration::from_millis(50));
}
