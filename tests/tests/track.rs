//! Tracking and discovery with the real teacher on real pictures.
//!
//! - Label propagation on a sequence built from real images (the opencv-doc alphamat plant
//!   with its real matte, moved, scaled and partly occluded over a real photo): J&F must be
//!   clearly above copying the first mask to every frame.
//! - TokenCut on a real photo (scikit-image `coffee.png`) must box the cup and saucer.

use dinoedge::davis::{self, read_mask, write_mask};
use dinoedge::frames::{FolderSource, FrameSource};
use dinoedge::runtime::import::{import_onnx, write_model_dir};
use dinoedge::synth::{Motion, paste_sequence};
use dinoedge::tokencut::{TokenCutConfig, tokencut};
use dinoedge::track::{LabelPropagator, PropagationConfig};
use dinoedge::{Embedder, EmbedderOptions, InputMode, SessionOptions, image_io};
use dinoedge_tests::{PHOTOS, TEACHER_ONNX, asset};

const OPENCV: &str = "opencv-doc/usr/share/doc/opencv-doc/examples/data";

fn embedder(dir: &std::path::Path, size: usize) -> Embedder {
    Embedder::load(
        dir,
        &EmbedderOptions {
            session: SessionOptions {
                threads: Some(2),
                ..Default::default()
            },
            mode: InputMode::Dense(size),
            capture_layers: vec![],
        },
    )
    .unwrap()
}

/// The real teacher imported, and the real-object sequence (frames and ground-truth masks)
/// under one temporary folder; `None` (skipped) without the assets.
fn real_sequence() -> Option<(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf)> {
    let onnx = asset(TEACHER_ONNX)?;
    let alphamat = asset("alphamat")?;
    let ocv = asset(OPENCV)?;
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tmp.path().join("teacher");
    write_model_dir(&import_onnx(&onnx).unwrap(), &teacher, &onnx).unwrap();
    let gt = tmp.path().join("gt");
    paste_sequence(
        &alphamat.join("input_images/plant.jpg"),
        &alphamat.join("output_mattes/plant_result.png"),
        &ocv.join("building.jpg"),
        &ocv.join("fruits.jpg"),
        &gt,
        &Motion::default(),
    )
    .unwrap();
    Some((tmp, teacher, gt))
}

#[test]
fn label_propagation_tracks_a_real_object_with_ground_truth() {
    let Some((tmp, teacher, gt)) = real_sequence() else {
        return;
    };

    let mut emb = embedder(&teacher, 224);
    let mut src = FolderSource::open(&gt.join("frames")).unwrap();
    let first_mask = read_mask(&gt.join("masks/00000.png")).unwrap();
    let (pred, copy) = (tmp.path().join("pred"), tmp.path().join("copy"));
    track_into(&mut emb, &mut src, &first_mask, &pred, Some(&copy));
    let tracked = davis::evaluate(&gt.join("masks"), &pred).unwrap();
    let baseline = davis::evaluate(&gt.join("masks"), &copy).unwrap();
    eprintln!(
        "J&F: label propagation {:.3} (J {:.3}, F {:.3}); first mask copied {:.3}",
        tracked.jf_mean, tracked.j_mean, tracked.f_mean, baseline.jf_mean
    );
    assert!(tracked.j_mean > 0.6, "J {}", tracked.j_mean);
    assert!(
        tracked.jf_mean > baseline.jf_mean + 0.15,
        "{} vs copy {}",
        tracked.jf_mean,
        baseline.jf_mean
    );
}

/// Label propagation of `first_mask` through `src`, one mask per frame named after it under
/// `pred` (and the first mask copied under `copy`, the baseline).
fn track_into(
    emb: &mut Embedder,
    src: &mut dyn FrameSource,
    first_mask: &davis::Mask,
    pred: &std::path::Path,
    copy: Option<&std::path::Path>,
) {
    std::fs::create_dir_all(pred).unwrap();
    let first = src.next_frame().unwrap().unwrap();
    let f0 = emb.embed(&first.image).unwrap();
    let mut lp = LabelPropagator::new(
        PropagationConfig::default(),
        &f0.last.patches.data,
        f0.dim(),
        f0.grid,
        first_mask,
        Some(2),
    )
    .unwrap();
    write_mask(&pred.join(format!("{}.png", first.name)), first_mask).unwrap();
    if let Some(c) = copy {
        std::fs::create_dir_all(c).unwrap();
        write_mask(&c.join(format!("{}.png", first.name)), first_mask).unwrap();
    }
    while let Some(frame) = src.next_frame().unwrap() {
        let f = emb.embed(&frame.image).unwrap();
        let soft = lp.step(&f.last.patches.data).unwrap();
        write_mask(
            &pred.join(format!("{}.png", frame.name)),
            &lp.to_mask(&soft, frame.image.width, frame.image.height),
        )
        .unwrap();
        if let Some(c) = copy {
            write_mask(&c.join(format!("{}.png", frame.name)), first_mask).unwrap();
        }
    }
}

/// The same real sequence re-encoded (H.264 in MP4, MJPEG in AVI) and read through GStreamer's
/// decodebin tracks within 0.05 J&F of its JPEG folder, with masks named alike.
#[cfg(feature = "gstreamer")]
#[test]
fn gstreamer_clips_track_as_their_jpeg_folder() {
    use dinoedge::frames::{GstOptions, GstSpec, open_gst};
    let Some((tmp, teacher, gt)) = real_sequence() else {
        return;
    };
    let mut emb = embedder(&teacher, 224);
    let first_mask = read_mask(&gt.join("masks/00000.png")).unwrap();
    let folder = tmp.path().join("folder");
    let mut src = FolderSource::open(&gt.join("frames")).unwrap();
    track_into(&mut emb, &mut src, &first_mask, &folder, None);
    let base = davis::evaluate(&gt.join("masks"), &folder).unwrap();
    let n = std::fs::read_dir(gt.join("frames")).unwrap().count();
    for (name, encoder) in [
        ("clip.mp4", "jpegdec ! videoconvert ! x264enc ! mp4mux"),
        ("clip.avi", "avimux"),
    ] {
        let clip = tmp.path().join(name);
        let o = std::process::Command::new("gst-launch-1.0")
            .arg("-q")
            .args(
                format!(
                    "multifilesrc location={}/%05d.jpg index=0 stop-index={} caps=image/jpeg,framerate=10/1 ! {encoder} ! filesink location={}",
                    gt.join("frames").display(),
                    n - 1,
                    clip.display()
                )
                .split(' '),
            )
            .output()
            .expect("gst-launch-1.0 (gstreamer1.0-tools)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let pipeline = format!("filesrc location={} ! decodebin", clip.display());
        let mut src = open_gst(&GstSpec::Pipeline(pipeline), &GstOptions::default()).unwrap();
        let pred = tmp.path().join(name.replace('.', "-"));
        track_into(&mut emb, src.as_mut(), &first_mask, &pred, None);
        let s = davis::evaluate(&gt.join("masks"), &pred).unwrap();
        eprintln!(
            "J&F: JPEG folder {:.4}, {name} through GStreamer {:.4} ({} frames)",
            base.jf_mean, s.jf_mean, n
        );
        assert!(
            (s.jf_mean - base.jf_mean).abs() < 0.05,
            "{name}: {} vs {}",
            s.jf_mean,
            base.jf_mean
        );
    }
}

#[test]
fn tokencut_boxes_the_cup() {
    let Some(onnx) = asset(TEACHER_ONNX) else {
        return;
    };
    let Some(photos) = asset(PHOTOS) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tmp.path().join("teacher");
    write_model_dir(&import_onnx(&onnx).unwrap(), &teacher, &onnx).unwrap();
    let mut emb = embedder(&teacher, 224);
    let img = image_io::load_rgb(&photos.join("coffee.png")).unwrap();
    let px = emb.preprocess(&img).unwrap();
    let f = emb.embed_pixels(&px).unwrap();
    let (ih, iw) = (px.shape[2], px.shape[3]);
    let d = tokencut(
        &f.last.patches.data,
        f.dim(),
        f.grid,
        14,
        (iw, ih),
        &TokenCutConfig::default(),
    )
    .unwrap();
    let (sx, sy) = (img.width as f64 / iw as f64, img.height as f64 / ih as f64);
    let b = [
        d.bbox[0] as f64 * sx,
        d.bbox[1] as f64 * sy,
        d.bbox[2] as f64 * sx,
        d.bbox[3] as f64 * sy,
    ];
    // The cup with its saucer and spoon, drawn by hand on the 600x400 photo.
    let want = [70.0, 20.0, 480.0, 385.0];
    let inter = (b[2].min(want[2]) - b[0].max(want[0])).max(0.0)
        * (b[3].min(want[3]) - b[1].max(want[1])).max(0.0);
    let area = |r: &[f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let iou = inter / (area(&b) + area(&want) - inter);
    eprintln!("TokenCut box {b:?}, IoU with the hand-drawn box {iou:.3}");
    assert!(iou > 0.7, "box {b:?}, IoU {iou}");
}

#[test]
fn video_files_decode_through_ffmpeg() {
    let Some(ocv) = asset(OPENCV) else { return };
    if dinoedge::frames::ffmpeg_binary().is_none() {
        let msg =
            "no ffmpeg (scripts/fetch-assets.sh provides one; scripts/env.sh sets DINOEDGE_FFMPEG)";
        assert!(
            std::env::var("DINOEDGE_REQUIRE_ASSETS").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return;
    }
    // vtest.avi: 768x576 MS-MPEG4 pedestrians, decoded to RGB through an ffmpeg Y4M pipe.
    let mut src = dinoedge::frames::open(&ocv.join("vtest.avi")).unwrap();
    let a = src.next_frame().unwrap().unwrap();
    let b = src.next_frame().unwrap().unwrap();
    assert_eq!((a.image.width, a.image.height, b.index), (768, 576, 1));
    assert!(
        (b.timestamp.as_secs_f64() - 0.1).abs() < 1e-6,
        "10 fps: {:?}",
        b.timestamp
    );
    let mean: f64 = a.image.data.iter().map(|&v| v as f64).sum::<f64>() / a.image.data.len() as f64;
    assert!(
        mean > 40.0 && mean < 220.0,
        "a real frame, not a blank one: mean {mean}"
    );
    assert_ne!(a.image.data, b.image.data);
}
