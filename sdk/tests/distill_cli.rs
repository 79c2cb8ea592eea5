//! `dinoedge distill` end to end on a small random teacher (the DINOv2 fixture) and
//! synthetic images: outputs, kill-and-resume bit-exactness, the teacher cache, eval, and
//! every bad input of the issue (empty data, unalignable grids, NaN, full disk, resuming
//! with another config).

mod common;

use common::{bin, fails, fixtures, ok, run};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dinoedge::runtime::weights::TensorStore;

/// Synthetic photos-like images: smooth colour fields with a few rectangles.
fn make_images(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..n {
        let (w, h) = (48 + (i % 5) as u32 * 8, 40 + (i % 3) as u32 * 8);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let inside = (x as usize + i * 7) % 37 < 15 && (y as usize + i * 3) % 29 < 12;
            let base = [
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((i * 40) % 256) as u8,
            ];
            if inside {
                [255 - base[0], base[2], base[1]].into()
            } else {
                base.into()
            }
        });
        let sub = if i % 2 == 0 { "" } else { "sub/" };
        img.save(dir.join(format!("{sub}img{i:03}.png"))).unwrap();
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    teacher: PathBuf,
    student: PathBuf,
    data: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let data = root.join("data");
    make_images(&data, 24);
    let student = root.join("student.json");
    std::fs::write(
        &student,
        r#"{"model_type":"dinov3_vit","hidden_size":32,"num_hidden_layers":2,"num_attention_heads":2,"intermediate_size":64,"patch_size":16,"num_register_tokens":4,"layer_norm_eps":1e-5,"rope_theta":100.0,"query_bias":true,"key_bias":false,"value_bias":true}"#,
    )
    .unwrap();
    Setup {
        _tmp: tmp,
        teacher: fixtures().join("hf/dinov2"),
        student,
        data,
        root,
    }
}

impl Setup {
    /// `distill cache-teacher` into `cache` at the runs' size and holdout, then `extra`.
    fn cache_args(&self, cache: &Path, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "distill",
            "cache-teacher",
            "--teacher",
            self.teacher.to_str().unwrap(),
            "--data",
            self.data.to_str().unwrap(),
            "--out",
            cache.to_str().unwrap(),
            "--size",
            "32",
            "--holdout",
            "0.2",
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    }

    /// The run's arguments; an option in `extra` replaces the default of the same name.
    fn args(&self, out: &Path, extra: &[&str]) -> Vec<String> {
        let defaults = [
            ("--teacher", self.teacher.to_str().unwrap()),
            ("--student", self.student.to_str().unwrap()),
            ("--data", self.data.to_str().unwrap()),
            ("--out", out.to_str().unwrap()),
            ("--size", "32"),
            ("--batch", "4"),
            ("--holdout", "0.2"),
            ("--warmup", "5"),
            ("--threads", "2"),
            ("--workers", "2"),
            ("--log-every", "1"),
        ];
        let mut v = vec!["distill".to_string()];
        for (k, val) in defaults {
            if !extra.contains(&k) {
                v.push(k.into());
                v.push(val.into());
            }
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let st = TensorStore::open_files(&[path.to_path_buf()]).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| (n.clone(), st.get(&n).unwrap().bytes.to_vec()))
        .collect()
}

fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v.get("step")?.as_u64()?, v.get("loss")?.as_f64()?))
        })
        .collect()
}

#[test]
fn a_run_writes_the_student_metrics_plot_and_checkpoints() {
    let s = setup();
    let out = s.root.join("run");
    let stdout = ok(&s.args(&out, &["--steps", "12", "--checkpoint-every", "5"]));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["finished"], true);
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "distill_heads.safetensors",
        "metrics.jsonl",
        "loss.png",
        "loss.svg",
        "run.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    // Every logged step has step, loss, lr; checkpoints at 10 and 12 (keep 2).
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("loss").is_some())
        .collect();
    assert_eq!(steps.len(), 12);
    assert!(
        steps
            .iter()
            .all(|v| v["lr"].as_f64().unwrap() > 0.0 && v["step"].as_u64().is_some())
    );
    let mut ck: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ck.sort();
    assert_eq!(ck, vec!["latest", "step-00000010", "step-00000012"]);
    // The exported student is a runtime model.
    let info = ok(&["info", out.to_str().unwrap()]);
    assert!(info.contains("dinov3_vit"), "{info}");
    // eval reads it back with its heads.
    let e = ok::<String>(&[
        "distill".into(),
        "eval".into(),
        "--teacher".into(),
        s.teacher.to_str().unwrap().into(),
        "--student".into(),
        out.to_str().unwrap().into(),
        "--stereo-size".into(),
        "0".into(),
        s.data.to_str().unwrap().into(),
    ]);
    assert!(
        e.contains("held-out cosine to the teacher (24 images"),
        "{e}"
    );
    // --holdout-of evaluates on exactly the images the run held out (the same split).
    let e = ok::<String>(&[
        "distill".into(),
        "eval".into(),
        "--teacher".into(),
        s.teacher.to_str().unwrap().into(),
        "--student".into(),
        out.to_str().unwrap().into(),
        "--stereo-size".into(),
        "0".into(),
        "--holdout-of".into(),
        s.data.to_str().unwrap().into(),
        "--holdout".into(),
        "0.2".into(),
    ]);
    let held = dinoedge_distill::data::Dataset::scan(&s.data, 0.2, 16)
        .unwrap()
        .holdout
        .len();
    assert!(held > 0 && held < 24, "{held}");
    assert!(
        e.contains(&format!("held-out cosine to the teacher ({held} images")),
        "{e}"
    );
    // Re-running into the same --out without --resume is refused.
    let err = fails(&s.args(&out, &["--steps", "12"]));
    assert!(
        err.contains("already holds a run") && err.contains("--resume"),
        "{err}"
    );
}

#[test]
fn killed_run_resumes_bit_for_bit() {
    let s = setup();
    let steps = "300";
    let reference = s.root.join("uninterrupted");
    ok(&s.args(&reference, &["--steps", steps, "--checkpoint-every", "20"]));

    let out = s.root.join("killed");
    let mut child = Command::new(bin())
        .args(s.args(&out, &["--steps", steps, "--checkpoint-every", "20"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !out.join("checkpoints/latest").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    let killed_at: usize = latest.trim().trim_start_matches("step-").parse().unwrap();
    assert!(
        killed_at < 300,
        "the run finished before it could be killed"
    );
    assert!(!out.join("model.safetensors").exists());

    let stdout = ok(&s.args(
        &out,
        &["--steps", steps, "--checkpoint-every", "20", "--resume"],
    ));
    assert!(
        stdout.contains(&format!("\"first_step\":{killed_at}")),
        "{stdout}"
    );
    assert_eq!(
        tensors(&out.join("model.safetensors")),
        tensors(&reference.join("model.safetensors")),
        "resumed weights differ"
    );
    assert_eq!(
        tensors(&out.join("distill_heads.safetensors")),
        tensors(&reference.join("distill_heads.safetensors"))
    );
    assert_eq!(losses(&out), losses(&reference), "resumed losses differ");
}

#[test]
fn stop_after_then_resume_equals_one_run_and_a_changed_config_is_refused() {
    let s = setup();
    let one = s.root.join("one");
    ok(&s.args(&one, &["--steps", "16", "--checkpoint-every", "8"]));
    let two = s.root.join("two");
    ok(&s.args(
        &two,
        &[
            "--steps",
            "16",
            "--checkpoint-every",
            "8",
            "--stop-after",
            "6",
        ],
    ));
    assert!(!two.join("model.safetensors").exists());
    let err = fails(&s.args(
        &two,
        &[
            "--steps",
            "16",
            "--checkpoint-every",
            "8",
            "--resume",
            "--lr",
            "1e-3",
        ],
    ));
    assert!(
        err.contains("cannot resume") && err.contains("optim"),
        "{err}"
    );
    let err = fails(&s.args(&two, &["--steps", "20", "--resume"]));
    assert!(
        err.contains("cannot resume") && err.contains("steps"),
        "{err}"
    );
    ok(&s.args(
        &two,
        &["--steps", "16", "--checkpoint-every", "8", "--resume"],
    ));
    assert_eq!(
        tensors(&two.join("model.safetensors")),
        tensors(&one.join("model.safetensors"))
    );
}

#[test]
fn cached_teacher_features_train_like_the_online_teacher() {
    let s = setup();
    let cache = s.root.join("cache");
    let c = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["--views", "2", "--images-per-shard", "7"];
        v.extend(extra);
        s.cache_args(&cache, &v)
    };
    let stdout = ok(&c(&[]));
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(j["views"], 2);
    assert!(cache.join("index.json").is_file() && cache.join("shard-00000.safetensors").is_file());
    // A second run reuses the complete shards.
    ok(&c(&[]));
    let out = s.root.join("cached");
    let stdout = ok(&s.args(&out, &["--steps", "10", "--cache", cache.to_str().unwrap()]));
    assert!(stdout.contains("\"finished\":true"));
    // A run whose augmentation differs from the cache's is refused, naming the field.
    let err = fails(&s.args(
        &s.root.join("x"),
        &[
            "--steps",
            "10",
            "--cache",
            cache.to_str().unwrap(),
            "--crop-min",
            "0.5",
        ],
    ));
    assert!(
        err.contains("another setup") && err.contains("aug"),
        "{err}"
    );
    // Intermediate targets need the teacher layer in the cache.
    let err = fails(&s.args(
        &s.root.join("y"),
        &[
            "--steps",
            "10",
            "--cache",
            cache.to_str().unwrap(),
            "--w-inter",
            "1",
            "--inter",
            "1:1",
        ],
    ));
    assert!(err.contains("teacher layer 1 is not cached"), "{err}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let s = setup();
    let empty = s.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "no images here").unwrap();
    let mut a = s.args(&s.root.join("o1"), &["--steps", "5"]);
    let i = a.iter().position(|x| x == "--data").unwrap();
    a[i + 1] = empty.to_str().unwrap().into();
    let err = fails(&a);
    assert!(err.contains("no images") && err.contains("empty"), "{err}");

    let err = fails(&s.args(&s.root.join("o2"), &["--steps", "5", "--size", "40"]));
    assert!(
        err.contains("--size 40") && err.contains("cannot be aligned"),
        "{err}"
    );
    let err = fails(&s.args(
        &s.root.join("o3"),
        &["--steps", "5", "--teacher-size", "30"],
    ));
    assert!(
        err.contains("--teacher-size 30") && err.contains("cannot be aligned"),
        "{err}"
    );
    let err = fails(&s.args(&s.root.join("o4"), &["--steps", "5", "--resume"]));
    assert!(err.contains("no checkpoint"), "{err}");
    let mut a = s.args(&s.root.join("o5"), &["--steps", "5"]);
    let i = a.iter().position(|x| x == "--student").unwrap();
    a[i + 1] = "vit-huge99".into();
    let err = fails(&a);
    assert!(
        err.contains("vit-ti16") && err.contains("not a named size"),
        "{err}"
    );
    let err = fails(&s.args(&s.root.join("o6"), &["--steps", "5", "--backend", "cuda"]));
    // Without the feature: rebuild; with it but no GPU: the missing driver is named.
    assert!(
        err.contains("rebuild with --features cuda") || err.contains("libcuda"),
        "{err}"
    );
}

/// A ConvNeXt student from a config.json: trained, resumed bit for bit, exported in HF
/// `dinov3_convnext` layout (loadable by every command), and the options only a ViT has
/// refused with a message naming them.
#[test]
fn convnext_student_trains_resumes_exports_and_refuses_vit_only_options() {
    let s = setup();
    let cfg = s.root.join("convnext.json");
    std::fs::write(
        &cfg,
        r#"{"model_type":"dinov3_convnext","hidden_sizes":[8,16,16,24],"depths":[1,1,2,1]}"#,
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let base = ["--student", c, "--size", "64"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }
    let whole = s.root.join("whole");
    ok(&s.args(&whole, &with(&base, &["--steps", "6"])));
    let split = s.root.join("split");
    ok(&s.args(&split, &with(&base, &["--steps", "6", "--stop-after", "3"])));
    ok(&s.args(&split, &with(&base, &["--steps", "6", "--resume"])));
    assert_eq!(losses(&whole).len(), 6);
    assert_eq!(losses(&split), losses(&whole));
    for f in ["model.safetensors", "distill_heads.safetensors"] {
        assert_eq!(tensors(&split.join(f)), tensors(&whole.join(f)), "{f}");
    }
    assert_eq!(
        read_json(&whole.join("config.json"))["model_type"],
        "dinov3_convnext"
    );
    let st = TensorStore::open_files(&[whole.join("model.safetensors")]).unwrap();
    // HF's shapes, not the trainer's (49, C) and (O, 2, 2, C_in) orders.
    let shape = |n: &str| st.get(n).unwrap().shape.to_vec();
    assert_eq!(
        shape("stages.0.layers.0.depthwise_conv.weight"),
        [8, 1, 7, 7]
    );
    assert_eq!(shape("stages.1.downsample_layers.1.weight"), [16, 8, 2, 2]);
    ok(&["info", whole.to_str().unwrap()].map(String::from));

    // A teacher cache for the ConvNeXt's stride-32 grid trains it too.
    let cache = s.root.join("cache");
    let mut a = s.cache_args(&cache, &["--student", c, "--views", "2"]);
    let i = a.iter().position(|x| x == "--size").unwrap();
    a[i + 1] = "64".into();
    ok(&a);
    let cached = s.root.join("cached");
    ok(&s.args(
        &cached,
        &with(&base, &["--steps", "2", "--cache", cache.to_str().unwrap()]),
    ));

    let e1 = ["--student", c, "--steps", "2", "--size", "48"];
    let err = fails(&s.args(&s.root.join("e1"), &e1));
    assert!(
        err.contains("--size 48") && err.contains("patch 32"),
        "{err}"
    );
    let err = fails(&s.args(
        &s.root.join("e2"),
        &with(&base, &["--steps", "2", "--recompute"]),
    ));
    assert!(
        err.contains("--recompute") && err.contains("ConvNeXt"),
        "{err}"
    );
    let err = fails(&s.args(
        &s.root.join("e3"),
        &with(&base, &["--steps", "2", "--inter", "0:1"]),
    ));
    assert!(err.contains("--inter") && err.contains("ConvNeXt"), "{err}");
    let err = fails(&s.args(
        &s.root.join("e5"),
        &with(&base, &["--steps", "2", "--w-inter", "0.5"]),
    ));
    assert!(
        err.contains("--w-inter") && err.contains("ConvNeXt"),
        "{err}"
    );
    std::fs::write(
        &cfg,
        r#"{"model_type":"dinov3_convnext","hidden_sizes":[8,16,16],"depths":[1,1,2,1]}"#,
    )
    .unwrap();
    let err = fails(&s.args(&s.root.join("e4"), &with(&base, &["--steps", "2"])));
    assert!(
        err.contains("hidden_sizes") && err.contains("depths"),
        "{err}"
    );
}

#[test]
fn diverging_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let s = setup();
    let out = s.root.join("nan");
    let err = fails(&s.args(
        &out,
        &[
            "--steps",
            "20",
            "--lr",
            "1e30",
            "--warmup",
            "1",
            "--checkpoint-every",
            "1",
            "--clip",
            "0",
        ],
    ));
    assert!(
        err.contains("at step") && err.contains("training stopped"),
        "{err}"
    );
    let step: usize = err
        .split("at step ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), format!("step-{:08}", step - 1), "{err}");
    assert!(err.contains(latest.trim()), "{err}");
}

#[test]
fn full_disk_while_checkpointing_keeps_the_old_checkpoint() {
    let s = setup();
    let out = s.root.join("disk");
    ok(&s.args(
        &out,
        &[
            "--steps",
            "20",
            "--checkpoint-every",
            "10",
            "--stop-after",
            "10",
        ],
    ));
    let before = tensors(&out.join("checkpoints/step-00000010/state.safetensors"));
    // Resume with a file-size limit far below the checkpoint's size: writes fail with EFBIG.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\"")
        .arg(bin())
        .args(s.args(
            &out,
            &["--steps", "20", "--checkpoint-every", "10", "--resume"],
        ));
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("state.safetensors") && err.to_lowercase().contains("file too large"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("checkpoints/latest"))
            .unwrap()
            .trim(),
        "step-00000010"
    );
    assert_eq!(
        tensors(&out.join("checkpoints/step-00000010/state.safetensors")),
        before
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // With space again, the run resumes and finishes.
    ok(&s.args(
        &out,
        &["--steps", "20", "--checkpoint-every", "10", "--resume"],
    ));
}

/// `--student a --student b`: one teacher forward per batch feeds both; each student's run
/// (weights, heads, losses) equals its run alone bit for bit, a multi-student run stops and
/// resumes like a single one, and a student given twice is refused.
#[test]
fn two_students_from_one_teacher_equal_their_single_runs() {
    let s = setup();
    let wide = s.root.join("wide.json");
    std::fs::write(
        &wide,
        r#"{"model_type":"dinov3_vit","hidden_size":48,"num_hidden_layers":3,"num_attention_heads":3,"intermediate_size":96,"patch_size":16,"num_register_tokens":4,"layer_norm_eps":1e-5,"rope_theta":100.0,"query_bias":true,"key_bias":false,"value_bias":true}"#,
    )
    .unwrap();
    let (small, wide) = (s.student.to_str().unwrap(), wide.to_str().unwrap());
    let common = [
        "--steps",
        "12",
        "--checkpoint-every",
        "6",
        "--eval-every",
        "6",
    ];
    let both = s.root.join("both");
    let mut args = vec!["--student", small, "--student", wide];
    args.extend(common);
    let stdout = ok(&s.args(&both, &args));
    let reports: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2, "{stdout}");
    assert!(reports.iter().all(|r| r["finished"] == true));

    for (json, name) in [(small, "student"), (wide, "wide")] {
        let alone = s.root.join(format!("alone-{name}"));
        let mut args = vec!["--student", json];
        args.extend(common);
        ok(&s.args(&alone, &args));
        let dir = both.join(name);
        for f in ["model.safetensors", "distill_heads.safetensors"] {
            assert_eq!(
                tensors(&dir.join(f)),
                tensors(&alone.join(f)),
                "{name}: {f} differs from its single run"
            );
        }
        assert_eq!(losses(&dir), losses(&alone), "{name}: losses differ");
        assert_eq!(losses(&dir).len(), 12);
        assert!(dir.join("loss.png").is_file() && dir.join("checkpoints").is_dir());
        assert!(dir.join("loss.svg").is_file());
    }

    // Stopped after 7 steps, resumed: the same two students.
    let resumed = s.root.join("resumed");
    let mut first = args_with(&[small, wide], &common);
    first.extend(["--stop-after", "7"]);
    ok(&s.args(&resumed, &first));
    let mut second = args_with(&[small, wide], &common);
    second.push("--resume");
    let stdout = ok(&s.args(&resumed, &second));
    assert!(stdout.contains("\"first_step\":7"), "{stdout}");
    for name in ["student", "wide"] {
        assert_eq!(
            tensors(&resumed.join(name).join("model.safetensors")),
            tensors(&both.join(name).join("model.safetensors")),
            "{name}: resumed multi-student run differs"
        );
    }

    let err = fails(&s.args(
        &s.root.join("dup"),
        &["--student", small, "--student", small, "--steps", "2"],
    ));
    assert!(err.contains("given twice"), "{err}");
    // The default intermediate pair is a student's middle block: ambiguous across depths.
    let err = fails(&s.args(
        &s.root.join("depths"),
        &[
            "--student",
            small,
            "--student",
            wide,
            "--steps",
            "2",
            "--w-inter",
            "1",
        ],
    ));
    assert!(
        err.contains("different depths") && err.contains("--inter"),
        "{err}"
    );
    // A group whose students stopped at different steps says how to bring them level.
    let uneven = s.root.join("uneven");
    ok(&s.args(
        &uneven,
        &args_with(&[small, wide], &["--steps", "12", "--stop-after", "4"]),
    ));
    ok(&s.args(
        &uneven.join("wide"),
        &[
            "--student",
            wide,
            "--steps",
            "12",
            "--stop-after",
            "2",
            "--resume",
        ],
    ));
    let err = fails(&s.args(
        &uneven,
        &args_with(&[small, wide], &["--steps", "12", "--resume"]),
    ));
    assert!(
        err.contains("cannot resume together")
            && err.contains("--stop-after 2")
            && err.contains(uneven.join("student").to_str().unwrap()),
        "{err}"
    );
}

fn args_with<'a>(students: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::new();
    for s in students {
        v.extend(["--student", s]);
    }
    v.extend(rest);
    v
}

/// `--teacher-backend` / `--teacher-precision`: a 16-bit teacher is recorded in the cache
/// index and in run.json (online and from the cache), a resume under another teacher
/// precision is refused naming it, and a backend this machine cannot run is a clear error.
#[test]
fn the_teacher_backend_and_precision_are_recorded_and_checked() {
    let s = setup();
    let out = s.root.join("f16");
    ok(&s.args(&out, &["--steps", "4", "--teacher-precision", "f16"]));
    let run = read_json(&out.join("run.json"));
    assert_eq!(run["teacher_compute"], "cpu f16");
    let err = fails(&s.args(&out, &["--steps", "8", "--resume"]));
    assert!(
        err.contains("cannot resume") && err.contains("teacher_compute"),
        "{err}"
    );
    // The default f32 CPU teacher records nothing (run.json as before).
    let plain = s.root.join("plain");
    ok(&s.args(&plain, &["--steps", "2"]));
    let run = read_json(&plain.join("run.json"));
    assert!(run.get("teacher_compute").is_none(), "{run}");

    let cache = s.root.join("cache");
    ok(&s.cache_args(&cache, &["--views", "1", "--teacher-precision", "f16"]));
    let index = read_json(&cache.join("index.json"));
    assert_eq!(index["teacher_compute"], "cpu f16");
    let cached = s.root.join("cached");
    ok(&s.args(
        &cached,
        &["--steps", "2", "--cache", cache.to_str().unwrap()],
    ));
    let run = read_json(&cached.join("run.json"));
    assert_eq!(run["teacher_compute"], "cpu f16");

    let err = fails(&s.args(
        &s.root.join("gpu"),
        &["--steps", "2", "--teacher-backend", "cuda"],
    ));
    assert!(err.contains("cuda"), "{err}");
    eprintln!("--teacher-backend cuda here: {}", err.trim());
}

/// `--recompute` trains the same student bit for bit, and the run states its activation
/// memory both ways.
#[test]
fn recompute_trains_the_same_student_and_reports_memory() {
    let s = setup();
    let plain = s.root.join("plain");
    ok(&s.args(&plain, &["--steps", "6"]));
    let re = s.root.join("re");
    let out = run(&s.args(&re, &["--steps", "6", "--recompute"]));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GiB recomputing") && stderr.contains("without --recompute"),
        "{stderr}"
    );
    for f in ["model.safetensors", "distill_heads.safetensors"] {
        assert_eq!(tensors(&re.join(f)), tensors(&plain.join(f)), "{f}");
    }
    assert_eq!(losses(&re), losses(&plain));
}

/// The CUDA trainer (its kernels emulated on the CPU, f32 GEMMs) trains the same student as
/// the CPU trainer, and checkpoints move between them: 3 steps on one, 3 more on the other.
#[test]
fn cuda_trainer_checkpoints_resume_on_the_cpu_and_back() {
    let s = setup();
    let cpu = s.root.join("cpu");
    ok(&s.args(&cpu, &["--steps", "6"]));
    let want = losses(&cpu);
    assert_eq!(want.len(), 6);
    for (name, first, then) in [
        ("gpu-cpu", "cuda-emulated", "cpu"),
        ("cpu-gpu", "cpu", "cuda-emulated"),
    ] {
        let out = s.root.join(name);
        let first_args = [
            "--steps",
            "6",
            "--stop-after",
            "3",
            "--backend",
            first,
            "--precision",
            "f32",
        ];
        let o = run(&s.args(&out, &first_args));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        if first != "cpu" {
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(
                stderr.contains("training on cuda kernels emulated"),
                "{stderr}"
            );
        }
        ok(&s.args(
            &out,
            &[
                "--steps",
                "6",
                "--resume",
                "--backend",
                then,
                "--precision",
                "f32",
            ],
        ));
        let got = losses(&out);
        assert_eq!(got.len(), 6, "{name}");
        for ((step, a), (_, b)) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-4 * b.abs(),
                "{name} step {step}: {a} vs cpu {b}"
            );
        }
        let end = |dir: &Path| read_json(&dir.join("run.json"))["steps"].clone();
        assert_eq!(end(&out), end(&cpu));
        // The exported students agree with the CPU run's.
        let (a, b) = (
            tensors(&out.join("model.safetensors")),
            tensors(&cpu.join("model.safetensors")),
        );
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            let f = |t: &[u8]| -> Vec<f32> {
                t.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            };
            let (x, y) = (f(ta), f(tb));
            let err = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
            assert!(
                err < 1e-4,
                "{name}: {na} differs from the CPU run's by {err}"
            );
        }
    }
    // bf16 GEMMs (the GPU default) train too, close to the f32 run.
    let bf = s.root.join("bf16");
    ok(&s.args(&bf, &["--steps", "6", "--backend", "cuda-emulated"]));
    let got = losses(&bf);
    for ((step, a), (_, b)) in got.iter().zip(&want) {
        assert!(
            (a - b).abs() < 2e-2 * b.abs(),
            "bf16 step {step}: {a} vs cpu {b}"
        );
    }
    eprintln!("losses cpu {want:?}\nbf16 {got:?}");

    // bf16 GEMMs on the CPU trainer (AMX tiles or AVX512_BF16) train close to f32 too; a CPU
    // without them refuses, naming the way out.
    let cb = s.root.join("cpu-bf16");
    let out = run(&s.args(&cb, &["--steps", "6", "--precision", "bf16"]));
    if out.status.success() {
        let got = losses(&cb);
        assert_eq!(got.len(), want.len());
        for ((step, a), (_, b)) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() < 2e-2 * b.abs(),
                "cpu bf16 step {step}: {a} vs cpu f32 {b}"
            );
        }
        eprintln!("cpu bf16 {got:?}");
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--precision f32"), "{err}");
    }
}

/// `--nproc 2`: two processes with half of every batch each, gradients summed over TCP,
/// train the student of one process with the whole batch (CPU trainer, and the CUDA trainer
/// emulated). A rank that dies stops the run, naming the rank, with the last checkpoint
/// intact; `--resume` then finishes it.
#[test]
fn two_processes_train_like_one_and_a_lost_rank_keeps_the_checkpoint() {
    let s = setup();
    let one = s.root.join("one");
    ok(&s.args(&one, &["--steps", "6", "--checkpoint-every", "2"]));
    let want = losses(&one);
    let close = |name: &str, got: &[(u64, f64)], tol: f64| {
        assert_eq!(got.len(), want.len(), "{name}");
        for ((step, a), (_, b)) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() < tol * b.abs(),
                "{name} step {step}: {a} vs one process {b}"
            );
        }
    };
    let two = s.root.join("two");
    let stderr = String::from_utf8_lossy(
        &run(&s.args(
            &two,
            &["--steps", "6", "--checkpoint-every", "2", "--nproc", "2"],
        ))
        .stderr,
    )
    .into_owned();
    assert!(
        stderr.contains("data parallel, 2 images per rank (tcp"),
        "{stderr}"
    );
    close("--nproc 2", &losses(&two), 1e-5);
    assert!(
        !two.join(".rendezvous").exists(),
        "the rendezvous directory is removed"
    );

    let emu = s.root.join("emu");
    let args = [
        "--steps",
        "6",
        "--nproc",
        "2",
        "--backend",
        "cuda-emulated",
        "--precision",
        "f32",
    ];
    ok(&s.args(&emu, &args));
    close("--nproc 2 cuda-emulated", &losses(&emu), 1e-4);

    // Rank 1 dies after step 3; the checkpoint of step 2 survives and the run resumes.
    let lost = s.root.join("lost");
    let out = Command::new(bin())
        .args(s.args(
            &lost,
            &["--steps", "6", "--checkpoint-every", "2", "--nproc", "2"],
        ))
        .env("DINOEDGE_FAULT_EXIT", "1:3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rank 1 of 2 stopped (exit status: 3)")
            && err.contains("step-00000002")
            && err.contains("--resume"),
        "{err}"
    );
    ok(&s.args(
        &lost,
        &[
            "--steps",
            "6",
            "--checkpoint-every",
            "2",
            "--nproc",
            "2",
            "--resume",
        ],
    ));
    close("resumed after a lost rank", &losses(&lost), 1e-5);
    let err = fails(&s.args(&s.root.join("odd"), &["--steps", "2", "--nproc", "3"]));
    assert!(
        err.contains("--batch 4 does not split over --nproc 3"),
        "{err}"
    );
    // Each rank takes the GPU of its index on the machine: one --gpu for all is refused.
    let gpu = ["--steps", "2", "--nproc", "2", "--gpu", "1"];
    let err = fails(&s.args(&s.root.join("gpu"), &gpu));
    assert!(
        err.contains("--gpu picks the GPU of a single process"),
        "{err}"
    );
}

/// Rewrites the `step` metadata of a checkpoint's state file in place (same length).
fn set_checkpoint_step(dir: &Path, step: &str) {
    let p = dir.join("state.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"]["step"] = serde_json::Value::String(step.into());
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
}

#[test]
fn hostile_checkpoints_are_refused_or_skipped_with_a_warning() {
    let s = setup();
    let out = s.root.join("run");
    ok(&s.args(
        &out,
        &["--steps", "4", "--checkpoint-every", "2", "--keep", "3"],
    ));
    let ck = out.join("checkpoints");
    // A checkpoint past --steps (2^64 - 1): refused, naming the step and the limit.
    set_checkpoint_step(&ck.join("step-00000004"), "18446744073709551615");
    let err = fails(&s.args(
        &out,
        &["--steps", "4", "--checkpoint-every", "2", "--resume"],
    ));
    assert!(err.contains("past this run's --steps 4"), "{err}");
    // `latest` naming another run's checkpoint is ignored: the run's own newest is used.
    set_checkpoint_step(&ck.join("step-00000004"), "4");
    std::fs::write(
        ck.join("latest"),
        s.root.join("elsewhere/step-00000099").display().to_string(),
    )
    .unwrap();
    // The newest is corrupt: the run resumes from step 2 and says so.
    std::fs::write(
        ck.join("step-00000004/state.safetensors"),
        b"not a checkpoint",
    )
    .unwrap();
    let out2 = run(&s.args(
        &out,
        &["--steps", "4", "--checkpoint-every", "2", "--resume"],
    ));
    let err = String::from_utf8_lossy(&out2.stderr);
    assert!(out2.status.success(), "{err}");
    assert!(
        err.contains("skipped an unreadable checkpoint") && err.contains("step-00000004"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out2.stdout);
    assert!(stdout.contains("\"first_step\":2"), "{stdout}");
}

#[test]
fn rogue_connections_to_the_rendezvous_neither_stop_nor_join_the_run() {
    use std::io::Write;
    let s = setup();
    let out = s.root.join("rogue");
    let rdv = out.join(".rendezvous");
    // A local process that finds the port: garbage, silence, and a fake rank 1 without the
    // secret, while the real ranks join.
    let attacker = std::thread::spawn({
        let rdv = rdv.clone();
        move || {
            let t0 = Instant::now();
            let port = loop {
                if let Ok(p) = std::fs::read_to_string(rdv.join("tcp-port")) {
                    break p.trim().to_string();
                }
                if t0.elapsed() > Duration::from_secs(120) {
                    return 0;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let addr = format!("127.0.0.1:{port}");
            let mut hits = 0;
            if let Ok(mut c) = std::net::TcpStream::connect(&addr) {
                let _ = c.write_all(&6073139484287059271u64.to_le_bytes());
                hits += 1;
            }
            let _silent = std::net::TcpStream::connect(&addr);
            if let Ok(mut c) = std::net::TcpStream::connect(&addr) {
                let mut hello = b"DINORDV1".to_vec();
                hello.extend_from_slice(&1u64.to_le_bytes());
                hello.extend_from_slice(&[7u8; 32]);
                let _ = c.write_all(&hello);
                let _ = c.write_all(&[0u8; 32]);
                hits += 1;
            }
            std::thread::sleep(Duration::from_secs(6));
            hits
        }
    });
    let t0 = Instant::now();
    let r = run(&s.args(&out, &["--steps", "2", "--nproc", "2"]));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(120));
    assert!(
        attacker.join().unwrap() > 0,
        "the attacker never found the port"
    );
    #[cfg(unix)]
    {
        // The secret and the port file lived in a private directory (removed at the end).
        assert!(!rdv.exists());
    }
}
