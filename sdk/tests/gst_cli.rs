//! The GStreamer sources through the CLI (feature `gstreamer`): `live --gst ... --bench`,
//! `track` on a clip encoded here against the same frames from a folder, `embed --gst`,
//! `--verbose`, and broken pipelines as clean errors.

use std::path::Path;
use std::process::Command;

mod common;

use common::{fails, ok, s};
use dinoedge::davis::{Mask, write_mask};

fn model() -> std::path::PathBuf {
    common::fixtures().join("hf/dinov2")
}

/// gst-launch-1.0 (gstreamer1.0-tools), or a skip (a failure under DINOEDGE_REQUIRE_GSTREAMER=1).
fn gst_launch(args: &str) -> bool {
    let Ok(o) = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(args.split(' '))
        .output()
    else {
        let msg = "gst-launch-1.0 missing (apt-get install gstreamer1.0-tools)";
        assert!(
            std::env::var("DINOEDGE_REQUIRE_GSTREAMER").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return false;
    };
    assert!(
        o.status.success(),
        "gst-launch-1.0 {args}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    true
}

/// 10 JPEG frames 96x64 (a square moving right) named 00000.jpg.., and the first mask.
fn clip(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let f = dir.join("frames");
    std::fs::create_dir_all(&f).unwrap();
    let inside =
        |i: u32, x: u32, y: u32| (10 + 4 * i..38 + 4 * i).contains(&x) && (18..46).contains(&y);
    for i in 0..10 {
        image::RgbImage::from_fn(96, 64, |x, y| {
            if inside(i, x, y) {
                image::Rgb([250, 200, 40])
            } else {
                image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
            }
        })
        .save(f.join(format!("{i:05}.jpg")))
        .unwrap();
    }
    let mask = dir.join("first.png");
    let labels = (0..96 * 64)
        .map(|k| inside(0, k % 96, k / 96) as u8)
        .collect();
    write_mask(
        &mask,
        &Mask {
            width: 96,
            height: 64,
            labels,
        },
    )
    .unwrap();
    (f, mask)
}

#[test]
fn live_bench_runs_on_a_test_source() {
    let m = model();
    let out = ok(&[
        "live",
        "--model",
        s(&m),
        "--gst",
        "videotestsrc ! video/x-raw,width=160,height=120,framerate=30/1",
        "--bench",
        "--bench-frames",
        "4",
        "--size",
        "56",
        "--verbose",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["frames"], 4, "{out}");
    // A live test source too (latest-frame semantics).
    let out = ok(&[
        "live",
        "--model",
        s(&m),
        "--gst",
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1",
        "--bench",
        "--bench-frames",
        "3",
        "--size",
        "56",
    ]);
    assert!(out.contains("\"frames\":3"), "{out}");
}

#[test]
fn track_reads_a_clip_as_it_reads_its_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let (frames, mask) = clip(tmp.path());
    let avi = tmp.path().join("clip.avi");
    // The JPEG frames muxed as they are (MJPEG in AVI), at 10 fps.
    if !gst_launch(&format!(
        "multifilesrc location={}/%05d.jpg index=0 stop-index=9 caps=image/jpeg,framerate=10/1 ! avimux ! filesink location={}",
        s(&frames),
        s(&avi)
    )) {
        return;
    }
    let m = model();
    let (a, b) = (tmp.path().join("from-frames"), tmp.path().join("from-gst"));
    let args = |src: &[&str], out: &Path| {
        let mut v: Vec<String> = [
            "track",
            "--model",
            s(&m),
            "--mask",
            s(&mask),
            "--size",
            "64",
            "--out",
            s(out),
        ]
        .map(String::from)
        .to_vec();
        v.extend(src.iter().map(|x| x.to_string()));
        v
    };
    ok(&args(&["--frames", s(&frames)], &a));
    let pipeline = format!("filesrc location={} ! decodebin", s(&avi));
    ok(&args(&["--gst", &pipeline], &b));
    let c = tmp.path().join("from-video");
    ok(&args(&["--video", s(&avi), "--verbose"], &c));
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&a).len(), 10);
    assert_eq!(
        names(&a),
        names(&b),
        "the same mask names, so eval-davis scores both alike"
    );
    // Both against the folder's masks: the decoders differ only in JPEG rounding.
    let score = ok(&["eval-davis", "--gt", s(&a), "--pred", s(&b)]);
    eprintln!("{score}");
    let jf: f64 = serde_json::from_str::<serde_json::Value>(score.trim().lines().last().unwrap())
        .unwrap()["jf_mean"]
        .as_f64()
        .unwrap();
    assert!(jf > 0.95, "{score}");
}

#[test]
fn embed_stacks_the_frames_of_a_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("f.safetensors");
    ok(&[
        "embed",
        s(&model()),
        "--gst",
        "videotestsrc num-buffers=5 ! video/x-raw,width=64,height=48",
        "--max-frames",
        "3",
        "--dense",
        "--size",
        "32",
        "--out",
        s(&out),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(t.tensor("cls").unwrap().shape()[0], 3);
    // A live source needs a frame count.
    let err = fails(&[
        "embed",
        s(&model()),
        "--gst",
        "videotestsrc is-live=true",
        "--out",
        s(&out),
    ]);
    assert!(err.contains("--max-frames"), "{err}");
    // One source only.
    let o = common::run(&[
        "embed",
        s(&model()),
        "--gst",
        "videotestsrc",
        "--csi",
        "0",
        "--out",
        s(&out),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn track_needs_a_frame_count_for_a_live_source() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mask) = clip(tmp.path());
    let err = fails(&[
        "track",
        "--model",
        s(&model()),
        "--gst",
        "videotestsrc is-live=true ! video/x-raw,width=96,height=64",
        "--mask",
        s(&mask),
        "--out",
        s(&tmp.path().join("out")),
    ]);
    assert!(err.contains("--max-frames"), "{err}");
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn broken_pipelines_are_clean_errors() {
    let m = model();
    for (pipeline, want) in [
        (
            "videotestsrc ! nosuchelement_dinoedge",
            "`nosuchelement_dinoedge` is not installed",
        ),
        (
            "filesrc location=/nonexistent/clip.mp4 ! decodebin",
            "failed to start",
        ),
        ("videotestsrc ! ! !", "cannot parse"),
    ] {
        let err = fails(&["live", "--model", s(&m), "--gst", pipeline, "--bench"]);
        assert!(err.contains(want), "{pipeline}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let err = fails(&["live", "--model", s(&m), "--csi", "0", "--bench"]);
    assert!(
        err.contains("nvarguscamerasrc") && err.contains("JetPack"),
        "{err}"
    );
    let err = fails(&["live", "--model", s(&m), "--rtsp", "http://cam", "--bench"]);
    assert!(err.contains("rtsp://"), "{err}");
    let o = common::run(&[
        "live",
        "--model",
        s(&m),
        "--csi",
        "0",
        "--csi-mode",
        "720p",
        "--bench",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("WIDTHxHEIGHT@FPS"), "{err}");
}
