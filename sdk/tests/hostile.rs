//! The hardening audit's hostile inputs, each run through the release-built CLI under the
//! bounds the audit sets: 2.5 GB of address space (`ulimit -v 2500000`) and 60 s. Every case
//! must end as a clean error (exit status 1 or clap's 2, a message naming the file or option
//! and the limit, no panic, no partial output) or, where the input is legal, succeed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{bin, fixtures, s};

use dinoedge::runtime::config::VitConfig;
use dinoedge::runtime::models::vit::layout::hub_tensors;
use dinoedge::runtime::weights::store::write_safetensors;

/// Runs the CLI under `ulimit -v 2500000` with a 60 s watchdog.
fn bounded(args: &[&str]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -v 2500000 && exec \"$0\" \"$@\"")
        .arg(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn dinoedge");
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("dinoedge {args:?} ran past 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The case fails cleanly and its message contains every `expect` string.
fn refused(args: &[&str], expect: &[&str]) -> String {
    let out = bounded(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(
        matches!(code, Some(1) | Some(2)),
        "dinoedge {args:?} should fail cleanly, got {:?}:\n{err}",
        out.status
    );
    assert!(
        !err.contains("panicked")
            && !err.contains("internal error")
            && !err.contains("memory allocation"),
        "dinoedge {args:?}: {err}"
    );
    for e in expect {
        assert!(
            err.contains(e),
            "dinoedge {args:?}: expected {e:?} in:\n{err}"
        );
    }
    err
}

/// A random-weight model directory for `config` (JSON), written with the runtime's layout.
fn model_dir(dir: &Path, config: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let cfg = VitConfig::from_file(&dir.join("config.json")).unwrap();
    let mut k = 0u32;
    let tensors = hub_tensors(&cfg, |p| {
        let n: usize = dinoedge::runtime::models::vit::layout::shape(&cfg, p)
            .iter()
            .product();
        Ok((0..n)
            .map(|_| {
                k = k.wrapping_mul(1664525).wrapping_add(1013904223);
                (k >> 9) as f32 / (1u32 << 23) as f32 * 0.1 - 0.05
            })
            .collect())
    })
    .unwrap();
    write_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
    dir.to_path_buf()
}

fn small_model() -> PathBuf {
    fixtures().join("hf/dinov2")
}

fn png(path: &Path, w: u32, h: u32) {
    image::GrayImage::from_pixel(w, h, image::Luma([90]))
        .save(path)
        .unwrap();
}

fn nothing_written(dir: &Path, keep: &[&str]) {
    let extra: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "left behind in {}: {extra:?}",
        dir.display()
    );
}

#[test]
fn tiny_configs_that_ask_for_huge_memory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("layers");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type":"dinov3_vit","num_hidden_layers":100000000000}"#,
    )
    .unwrap();
    std::fs::write(d.join("model.safetensors"), b"").unwrap();
    refused(
        &["info", s(&d)],
        &["config.json", "num_hidden_layers", "limit"],
    );
    let img = tmp.path().join("a.png");
    png(&img, 32, 32);
    let out = tmp.path().join("f.safetensors");
    refused(
        &["embed", s(&d), s(&img), "--out", s(&out)],
        &["num_hidden_layers", "limit"],
    );
    // image_size = 2^32 * 14 wrapped grid^2 to 0.
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type":"dinov2","image_size":60129542144}"#,
    )
    .unwrap();
    refused(
        &["embed", s(&d), s(&img), "--out", s(&out)],
        &["image_size", "limit"],
    );
    assert!(!out.exists());
}

#[test]
fn onnx_files_that_name_absurd_layers_or_shapes_are_refused() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/onnx");
    let tmp = tempfile::tempdir().unwrap();
    for case in [
        "layer_index_1e11",
        "dims_exceed_data",
        "zero_d_packed_weight",
    ] {
        let onnx = tmp.path().join(format!("{case}.onnx"));
        std::fs::copy(corpus.join(case), &onnx).unwrap();
        let out = tmp.path().join(format!("{case}-out"));
        let r = bounded(&["import-onnx", s(&onnx), "--out", s(&out)]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!err.contains("panicked"), "{case}: {err}");
        if !r.status.success() {
            assert!(err.contains(&format!("{case}.onnx")), "{case}: {err}");
            assert!(!out.exists(), "{case}: partial output");
        }
    }
}

#[test]
fn images_frames_and_masks_above_the_limits_are_refused_before_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let m = small_model();
    let out = t.join("f.safetensors");
    // A 20000 x 20000 grey PNG (a few hundred KB): fixed and dense mode.
    let big = t.join("big.png");
    png(&big, 20000, 20000);
    for dense in [false, true] {
        let mut args = vec!["embed", s(&m), s(&big), "--out", s(&out)];
        if dense {
            args.push("--dense");
        }
        refused(&args, &["big.png", "--max-pixels"]);
    }
    // A 14 x 9000 strip in dense mode: too many tokens, refused at once.
    let strip = t.join("strip.png");
    png(&strip, 14, 9000);
    refused(
        &["embed", s(&m), s(&strip), "--out", s(&out), "--dense"],
        &["strip.png", "--max-tokens"],
    );
    // ...and accepted when the user raises the limit (here only checked to get past it).
    let raised = bounded(&[
        "embed",
        s(&m),
        s(&strip),
        "--out",
        s(&out),
        "--dense",
        "--size",
        "14",
        "--max-tokens",
        "100000",
    ]);
    assert!(
        raised.status.success(),
        "{}",
        String::from_utf8_lossy(&raised.stderr)
    );
    std::fs::remove_file(&out).unwrap();
    // Y4M headers: huge, wrapping, and a non-finite rate.
    let frames_out = t.join("masks");
    let mask = t.join("mask.png");
    common::mask_file(&mask, 8, 6, 5);
    for (name, header, expect) in [
        (
            "huge.y4m",
            "YUV4MPEG2 W100000 H100000 F25:1 C420jpeg\n",
            "--max-pixels",
        ),
        (
            "wrap.y4m",
            "YUV4MPEG2 W4294967296 H4294967296 F25:1 C444\n",
            "--max-pixels",
        ),
        ("inf.y4m", "YUV4MPEG2 W8 H6 F1:inf C444\n", "frame rate"),
    ] {
        let p = t.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(b"FRAME\n").unwrap();
        f.write_all(&[0u8; 1024]).unwrap();
        drop(f);
        refused(
            &[
                "track",
                "--model",
                s(&m),
                "--frames",
                s(&p),
                "--mask",
                s(&mask),
                "--out",
                s(&frames_out),
            ],
            &[name, expect],
        );
        refused(
            &["live", "--model", s(&m), "--video", s(&p), "--bench"],
            &[name],
        );
    }
    assert!(!frames_out.exists(), "track created --out for a failed run");
    // A mask PNG declaring 100000 x 100000.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/mask");
    let huge_mask = t.join("huge-mask.png");
    std::fs::copy(corpus.join("declares_100000x100000"), &huge_mask).unwrap();
    let frames = t.join("frames");
    std::fs::create_dir(&frames).unwrap();
    png(&frames.join("0.png"), 8, 6);
    refused(
        &[
            "track",
            "--model",
            s(&m),
            "--frames",
            s(&frames),
            "--mask",
            s(&huge_mask),
            "--out",
            s(&frames_out),
        ],
        &["huge-mask.png", "--max-pixels"],
    );
    assert!(!frames_out.exists());
}

#[test]
fn a_head_dim_beyond_the_kernels_is_refused_at_session_creation() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model_dir(
        &tmp.path().join("hd300"),
        r#"{"model_type":"dinov3_vit","hidden_size":600,"num_attention_heads":2,"num_hidden_layers":1,"intermediate_size":32,"patch_size":16}"#,
    );
    let img = tmp.path().join("a.png");
    png(&img, 32, 32);
    let out = tmp.path().join("f.safetensors");
    for backend in ["cpu", "cpu-ref"] {
        refused(
            &[
                "embed",
                s(&m),
                s(&img),
                "--out",
                s(&out),
                "--backend",
                backend,
            ],
            &["head dim 300", "256"],
        );
    }
    assert!(!out.exists());
}

#[test]
fn garbage_inputs_are_errors_not_silent_results() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let m = small_model();
    let out = t.join("f.safetensors");
    // pixel_values full of NaN.
    let px = t.join("px.safetensors");
    let nan: Vec<f32> = vec![f32::NAN; 3 * 28 * 28];
    write_safetensors(
        &px,
        &[dinoedge::runtime::weights::store::f32_entry(
            "pixel_values",
            vec![1, 3, 28, 28],
            &nan,
        )],
        None,
    )
    .unwrap();
    refused(
        &["embed", s(&m), "--pixels", s(&px), "--out", s(&out)],
        &["pixel_values", "not finite"],
    );
    // A JPEG cut to a third of its length (a photo-sized one: its headers are all there,
    // and the decoder would fill the missing rows with grey).
    let jpg = t.join("cut.jpg");
    let mut k = 7u32;
    image::RgbImage::from_fn(640, 480, |x, y| {
        k = k.wrapping_mul(1103515245).wrapping_add(12345);
        image::Rgb([
            (x / 3) as u8 ^ (k >> 24) as u8,
            (y / 2) as u8,
            (k >> 16) as u8,
        ])
    })
    .save(&jpg)
    .unwrap();
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() / 3]).unwrap();
    refused(
        &["embed", s(&m), s(&jpg), "--out", s(&out)],
        &["cut.jpg", "end-of-image"],
    );
    // NaN and infinite float options.
    for (flag, v) in [
        ("--temperature", "NaN"),
        ("--temperature", "inf"),
        ("--temperature", "0"),
    ] {
        refused(
            &[
                "track",
                "--model",
                s(&m),
                "--frames",
                s(t),
                "--mask",
                s(&jpg),
                "--out",
                s(&t.join("o")),
                flag,
                v,
            ],
            &[flag],
        );
    }
    // preprocessor_config.json with std 0.
    let m2 = t.join("m2");
    std::fs::create_dir(&m2).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(m.join(f), m2.join(f)).unwrap();
    }
    std::fs::write(
        m2.join("preprocessor_config.json"),
        r#"{"image_std":[0.2,0,0.2]}"#,
    )
    .unwrap();
    let img = t.join("ok.png");
    png(&img, 32, 32);
    refused(
        &["embed", s(&m2), s(&img), "--out", s(&out)],
        &["preprocessor_config.json", "image_std"],
    );
    assert!(!out.exists());
}

#[test]
fn int8_scales_must_be_finite_and_positive() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("q8");
    let r = bounded(&[
        "quantize",
        s(&small_model()),
        "--precision",
        "int8",
        "--smoothquant",
        "off",
        "--out",
        s(&q),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Rewrite one weight_scale tensor with NaN, inf, 0 in place (same length).
    let path = q.join("model.safetensors");
    let store =
        dinoedge::runtime::weights::TensorStore::open_files(std::slice::from_ref(&path)).unwrap();
    let name = store
        .names()
        .into_iter()
        .find(|n| n.ends_with("weight_scale"))
        .unwrap()
        .to_string();
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let off = header[&name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + header_len;
    for (k, v) in [f32::NAN, f32::INFINITY, 0.0].iter().enumerate() {
        bytes[off + 4 * k..off + 4 * k + 4].copy_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    let img = tmp.path().join("a.png");
    png(&img, 32, 32);
    refused(
        &[
            "embed",
            s(&q),
            s(&img),
            "--out",
            s(&tmp.path().join("f.safetensors")),
        ],
        &[&name, "finite and positive"],
    );
}

#[test]
fn outputs_never_destroy_inputs_or_models_and_failures_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let m = t.join("m");
    std::fs::create_dir(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(small_model().join(f), m.join(f)).unwrap();
    }
    let before = std::fs::read(m.join("model.safetensors")).unwrap();
    // --out is the model itself: refused even with --force.
    for force in [false, true] {
        let mut args = vec!["quantize", s(&m), "--precision", "f16", "--out", s(&m)];
        if force {
            args.push("--force");
        }
        refused(&args, &["refusing to write here", "input"]);
    }
    assert_eq!(std::fs::read(m.join("model.safetensors")).unwrap(), before);
    // --out holds a sharded model: refused without --force; with it, replaced whole (no
    // stale index shadows the new weights).
    let sharded = t.join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    std::fs::write(sharded.join("config.json"), "{}").unwrap();
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        r#"{"weight_map":{}}"#,
    )
    .unwrap();
    refused(
        &[
            "quantize",
            s(&m),
            "--precision",
            "f16",
            "--out",
            s(&sharded),
        ],
        &["already holds a model", "--force"],
    );
    let r = bounded(&[
        "quantize",
        s(&m),
        "--precision",
        "f16",
        "--out",
        s(&sharded),
        "--force",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!sharded.join("model.safetensors.index.json").exists());
    assert!(dinoedge::Model::load(&sharded).is_ok());
    nothing_written(t, &["m", "sharded"]);
    // embed --pca into a directory: refused before the features are written.
    let img = t.join("a.png");
    png(&img, 32, 32);
    let out = t.join("f.safetensors");
    refused(
        &["embed", s(&m), s(&img), "--out", s(&out), "--pca", s(t)],
        &["--pca", "directory"],
    );
    assert!(!out.exists());
    // track fails on frame 3 (another size): --out is not created, nothing is left.
    let frames = t.join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..4 {
        png(
            &frames.join(format!("{i}.png")),
            if i == 3 { 40 } else { 32 },
            32,
        );
    }
    let mask = t.join("mask.png");
    common::mask_file(&mask, 32, 32, 3);
    let masks = t.join("masks");
    refused(
        &[
            "track",
            "--model",
            s(&m),
            "--frames",
            s(&frames),
            "--mask",
            s(&mask),
            "--out",
            s(&masks),
            "--size",
            "28",
        ],
        &["frame 3"],
    );
    assert!(!masks.exists(), "partial masks left behind");
    nothing_written(t, &["m", "sharded", "a.png", "frames", "mask.png"]);
}

#[test]
fn import_onnx_reads_external_data_next_to_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("onnx/external");
    let out = tmp.path().join("imported");
    let r = bounded(&["import-onnx", s(&src.join("dinov2.onnx")), "--out", s(&out)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Equal to the import of the same graph with embedded weights.
    let inline = tmp.path().join("inline");
    let r = bounded(&[
        "import-onnx",
        s(&fixtures().join("onnx/dinov2.onnx")),
        "--out",
        s(&inline),
    ]);
    assert!(r.status.success());
    let a = dinoedge::Model::load(&out).unwrap();
    let b = dinoedge::Model::load(&inline).unwrap();
    for p in dinoedge::runtime::models::vit::layout::params(a.config().as_vit().unwrap()) {
        assert_eq!(a.tensor_f32(p).unwrap(), b.tensor_f32(p).unwrap(), "{p:?}");
    }
    // Without its data file: an error naming the file, nothing written.
    let lone = tmp.path().join("lone");
    std::fs::create_dir(&lone).unwrap();
    std::fs::copy(src.join("dinov2.onnx"), lone.join("dinov2.onnx")).unwrap();
    let out2 = tmp.path().join("x");
    refused(
        &[
            "import-onnx",
            s(&lone.join("dinov2.onnx")),
            "--out",
            s(&out2),
        ],
        &["dinov2.onnx"],
    );
    assert!(!out2.exists());
}

/// `dinoedge live` under `ulimit -n 64` with 80 idle connections: accepting pauses while
/// descriptors run out, and the server answers again once they are back.
#[test]
fn the_live_server_outlives_descriptor_exhaustion() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..4 {
        png(&frames.join(format!("{i}.png")), 64, 48);
    }
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(bin())
        .args([
            "live",
            "--model",
            s(&small_model()),
            "--frames",
            s(&frames),
            "--loop",
            "--fps",
            "5",
            "--size",
            "28",
            "--serve",
            "127.0.0.1:0",
            "--duration",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let addr = common::server_addr(&mut err);
    let stats = |addr: &str| common::get(addr, "/stats");
    assert_eq!(stats(&addr), 200);
    let idle: Vec<_> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(idle);
    let t1 = Instant::now();
    while stats(&addr) != 200 {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "the server stopped serving"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server process exited"
    );
    let _ = child.kill();
    let _ = child.wait();
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    assert!(!rest.contains("panicked"), "{rest}");
}
