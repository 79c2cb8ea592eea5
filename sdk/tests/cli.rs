//! The `dinoedge` CLI contract (other checks rely on exactly this), and its bad-input paths:
//! each bad input gives a clear message, exit status 1, no panic, and no output file.

mod common;

use common::{fails, fixtures, ok, run, s};

use std::path::{Path, PathBuf};
use std::process::Command;

use dinoedge::runtime::testing::compare;
use dinoedge::runtime::weights::TensorStore;
use dinoedge::runtime::weights::store::{f32_entry, write_safetensors};

/// A writable copy of a fixture model.
fn copy_model(name: &str, to: &Path) -> PathBuf {
    let src = fixtures().join("hf").join(name);
    let dst = to.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn info_reports_architecture_parameters_and_tokens() {
    let out = ok(&["info", s(&fixtures().join("hf/dinov3_mlp"))]);
    assert!(
        out.contains("DINOv3 ViT/16 (32-d, 2 layers, 2 heads, gelu MLP 96, 4 registers)"),
        "{out}"
    );
    assert!(out.contains("tokens @224  201"), "{out}");
    assert!(out.contains("F32"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "info",
        s(&fixtures().join("hf/dinov3_gated")),
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["tokens_at_224"], 201);
    assert_eq!(v["dtypes"][0]["dtype"], "BF16");
    assert_eq!(v["parameters"].as_u64().unwrap() as usize, {
        let m = dinoedge::Model::load(fixtures().join("hf/dinov3_gated")).unwrap();
        m.num_parameters()
    });
}

/// `embed --pixels` on input `case` of HF fixture `name` with `extra` arguments: checks the
/// output tensors' shapes; returns (features in HF token order, transformers' output, dim).
fn embed_fixture(
    name: &str,
    case: &str,
    tmp: &Path,
    extra: &[&str],
) -> (Vec<f32>, Vec<f32>, usize) {
    let dir = fixtures().join("hf").join(name);
    let reference = TensorStore::open_files(&[dir.join("reference.safetensors")]).unwrap();
    let px = reference.get(&format!("{case}.pixel_values")).unwrap();
    let px_path = tmp.join(format!("{name}_{case}_pixels.safetensors"));
    let entry = f32_entry("pixel_values", px.shape.to_vec(), &px.to_f32().unwrap());
    write_safetensors(&px_path, &[entry], None).unwrap();
    let out_path = tmp.join(format!("{name}_{case}_features.safetensors"));
    let mut args = vec![
        "embed",
        s(&dir),
        "--pixels",
        s(&px_path),
        "--out",
        s(&out_path),
    ];
    args.extend_from_slice(extra);
    ok(&args);
    let feats = TensorStore::open_files(&[out_path]).unwrap();
    let want = reference.get(&format!("{case}.last_hidden_state")).unwrap();
    let (b, n, d) = (want.shape[0], want.shape[1], want.shape[2]);
    let cfg = dinoedge::Model::load(&dir).unwrap().config().clone();
    let r = cfg.num_register_tokens();
    let (h, w) = cfg.grid(px.shape[2], px.shape[3]);
    assert_eq!(feats.get("cls").unwrap().shape, &[b, d]);
    assert_eq!(feats.get("registers").unwrap().shape, &[b, r, d]);
    assert_eq!(feats.get("patches").unwrap().shape, &[b, h, w, d]);
    assert_eq!(1 + r + h * w, n);
    let mut got = Vec::new();
    let (cls, regs, patches) = (
        feats.get("cls").unwrap().to_f32().unwrap(),
        feats.get("registers").unwrap().to_f32().unwrap(),
        feats.get("patches").unwrap().to_f32().unwrap(),
    );
    for i in 0..b {
        got.extend_from_slice(&cls[i * d..(i + 1) * d]);
        got.extend_from_slice(&regs[i * r * d..(i + 1) * r * d]);
        got.extend_from_slice(&patches[i * h * w * d..(i + 1) * h * w * d]);
    }
    (got, want.to_f32().unwrap(), d)
}

#[test]
fn embed_pixels_writes_the_contracted_tensors_matching_hf() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, case) in [("dinov3_mlp", "crop"), ("dinov2_reg", "rect")] {
        let (got, want, d) = embed_fixture(name, case, tmp.path(), &["--threads", "1"]);
        let c = compare(name, &got, &want, d, 1e-4);
        println!("{c}");
        c.assert_ok();
    }
}

/// The CUDA inference path from the CLI on the emulator, on every fixture: f32 within 1e-3
/// of transformers, and bf16 (tensor-core attention) with mean token cosine >= 0.999.
#[test]
fn embed_on_cuda_emulated_matches_hf_on_every_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    for name in dinoedge::runtime::testing::FIXTURE_FAMILIES {
        let dir = fixtures().join("hf").join(name);
        let reference = TensorStore::open_files(&[dir.join("reference.safetensors")]).unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&reference.metadata().unwrap()["inputs"]).unwrap();
        let case = meta.as_object().unwrap().keys().next().unwrap().clone();
        let be = ["--backend", "cuda-emulated"];
        let (got, want, d) = embed_fixture(name, &case, tmp.path(), &be);
        let c = compare(
            &format!("cuda-emulated f32 {name}/{case}"),
            &got,
            &want,
            d,
            1e-3,
        );
        println!("{c}");
        c.assert_ok();
        let bf16 = ["--backend", "cuda-emulated", "--precision", "bf16"];
        let (got, want, d) = embed_fixture(name, &case, tmp.path(), &bf16);
        let c = compare(
            &format!("cuda-emulated bf16 {name}/{case}"),
            &got,
            &want,
            d,
            1.0,
        );
        println!("{c}");
        assert!(c.mean_cosine >= 0.999, "{c}");
    }
    let last = ok(&[
        "bench",
        s(&fixtures().join("hf/dinov3_gated")),
        "--backend",
        "cuda-emulated",
        "--size",
        "32",
        "--iters",
        "2",
        "--warmup",
        "1",
    ]);
    let v: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(v["backend"].as_str(), Some("cuda-emulated"), "{last}");
    let info = ok(&["info", "--backend", "cuda-emulated"]);
    assert!(
        info.contains("emulated") && info.contains("kernels"),
        "{info}"
    );
}

#[test]
fn embed_images_with_pca_and_intermediate_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let img = fixtures().join("preprocess/synthetic.png"); // 97 x 61
    let out = tmp.path().join("f.safetensors");
    let pca = tmp.path().join("pca.png");
    let stdout = ok(&[
        "embed",
        s(&fixtures().join("hf/dinov2_reg")),
        s(&img),
        s(&img),
        "--size",
        "56",
        "--out",
        s(&out),
        "--pca",
        s(&pca),
        "--layers",
        "0",
    ]);
    assert!(stdout.contains("cls[:4]"), "{stdout}");
    let f = TensorStore::open_files(std::slice::from_ref(&out)).unwrap();
    assert_eq!(f.get("patches").unwrap().shape, &[2, 4, 4, 32]);
    assert_eq!(f.get("registers").unwrap().shape, &[2, 4, 32]);
    assert_eq!(f.get("layer0.patches").unwrap().shape, &[2, 4, 4, 32]);
    assert!(f.metadata().unwrap()["inputs"].contains("synthetic.png"));
    // Two images: numbered pictures at the image's own size.
    for k in 0..2 {
        let p = image::open(tmp.path().join(format!("pca-{k}.png"))).unwrap();
        assert_eq!((p.width(), p.height()), (97, 61));
    }
    // Dense mode keeps the aspect ratio: 97x61 with short side 28 and patch 14 -> 28 x 42.
    ok(&[
        "embed",
        s(&fixtures().join("hf/dinov2_reg")),
        s(&img),
        "--dense",
        "--size",
        "28",
        "--out",
        s(&out),
    ]);
    let f = TensorStore::open_files(&[out]).unwrap();
    assert_eq!(f.get("patches").unwrap().shape, &[1, 2, 3, 32]);
}

#[test]
fn bench_prints_median_p90_and_a_final_json_line() {
    let out = ok(&[
        "bench",
        s(&fixtures().join("hf/dinov3_gated")),
        "--size",
        "64",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
    ]);
    let last = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "median_ms",
        "p90_ms",
        "backend",
        "precision",
        "threads",
        "size",
        "batch",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from {last}");
    }
    assert_eq!(
        (
            v["backend"].as_str(),
            v["precision"].as_str(),
            v["threads"].as_u64(),
            v["size"].as_u64(),
            v["batch"].as_u64()
        ),
        (Some("cpu"), Some("f32"), Some(1), Some(64), Some(1))
    );
    assert!(
        v["median_ms"].as_f64().unwrap() > 0.0
            && v["p90_ms"].as_f64().unwrap() >= v["median_ms"].as_f64().unwrap() * 0.999
    );
    assert!(out.contains("median"));
}

#[test]
fn import_onnx_then_info() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("imported");
    let stdout = ok(&[
        "import-onnx",
        s(&fixtures().join("onnx/dinov2.onnx")),
        "--out",
        s(&out),
    ]);
    assert!(stdout.contains("DINOv2 ViT/14"), "{stdout}");
    assert!(ok(&["info", s(&out)]).contains("model_type   dinov2"));
    let err = fails(&[
        "import-onnx",
        s(&fixtures().join("onnx/not_a_vit.onnx")),
        "--out",
        s(&tmp.path().join("x")),
    ]);
    assert!(err.contains("not an HF DINOv2/DINOv3 backbone"), "{err}");
    assert!(!tmp.path().join("x").exists());
}

/// Runs `embed` on a broken input and checks the message and that nothing was written.
fn embed_fails(model: &Path, image: &Path, tmp: &Path, expect: &[&str]) {
    let out = tmp.join("never.safetensors");
    let err = fails(&["embed", s(model), s(image), "--out", s(&out)]);
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
    assert!(!out.exists(), "output written despite the error");
    let leftovers: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn bad_inputs_give_clear_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let img = fixtures().join("preprocess/synthetic.png");

    // Truncated safetensors.
    let m = copy_model("dinov3_mlp", &t.join("truncated"));
    let st = m.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&st)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    embed_fails(
        &m,
        &img,
        t,
        &["model.safetensors", "corrupt safetensors", "truncated"],
    );

    // Garbage header.
    std::fs::write(&st, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    embed_fails(&m, &img, t, &["model.safetensors", "corrupt safetensors"]);

    // Config and weights disagree: the tensor, both shapes and the file are named.
    let m = copy_model("dinov3_mlp", &t.join("shapes"));
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 100");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    embed_fails(
        &m,
        &img,
        t,
        &[
            "layer.0.mlp.up_proj.weight",
            "[96, 32]",
            "[100, 32]",
            "model.safetensors",
        ],
    );

    // Unknown model type.
    let m = copy_model("dinov3_mlp", &t.join("unknown"));
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("\"dinov3_vit\"", "\"vit_mae\"");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    embed_fails(
        &m,
        &img,
        t,
        &["unknown model_type \"vit_mae\"", "config.json"],
    );

    // Missing config.
    let m = copy_model("dinov3_mlp", &t.join("noconfig"));
    std::fs::remove_file(m.join("config.json")).unwrap();
    embed_fails(&m, &img, t, &["no config.json"]);

    // Missing and extra tensors.
    let m = copy_model("dinov3_mlp", &t.join("missing"));
    let store = TensorStore::open_files(&[m.join("model.safetensors")]).unwrap();
    let mut entries: Vec<_> = store
        .names()
        .into_iter()
        .filter(|n| *n != "layer.1.norm2.bias")
        .map(|n| {
            let t = store.get(n).unwrap();
            f32_entry(n, t.shape.to_vec(), &t.to_f32().unwrap())
        })
        .collect();
    drop(store);
    write_safetensors(&m.join("model.safetensors"), &entries, None).unwrap();
    embed_fails(
        &m,
        &img,
        t,
        &["missing tensor \"layer.1.norm2.bias\"", "[32]"],
    );
    entries.push(f32_entry("layer.1.norm2.bias", vec![32], &[0.0; 32]));
    entries.push(f32_entry("head.weight", vec![10, 32], &[0.0; 320]));
    write_safetensors(&m.join("model.safetensors"), &entries, None).unwrap();
    embed_fails(
        &m,
        &img,
        t,
        &["unexpected tensor \"head.weight\"", "[10, 32]"],
    );

    // Not an image.
    let model = fixtures().join("hf/dinov3_mlp");
    let not_image = t.join("notes.png");
    std::fs::write(&not_image, "this is text, not a PNG").unwrap();
    embed_fails(&model, &not_image, t, &["notes.png", "cannot read image"]);
    embed_fails(&model, &t.join("absent.jpg"), t, &["absent.jpg"]);

    // Smaller than one patch (16 x 16 for this model).
    let tiny = t.join("tiny.png");
    image::RgbImage::from_pixel(12, 40, image::Rgb([9, 9, 9]))
        .save(&tiny)
        .unwrap();
    embed_fails(&model, &tiny, t, &["12x40", "smaller than one 16x16 patch"]);
    // ... also as preprocessed pixels.
    let px = t.join("px.safetensors");
    write_safetensors(
        &px,
        &[f32_entry(
            "pixel_values",
            vec![1, 3, 8, 64],
            &vec![0.0; 3 * 8 * 64],
        )],
        None,
    )
    .unwrap();
    let err = fails(&[
        "embed",
        s(&model),
        "--pixels",
        s(&px),
        "--out",
        s(&t.join("never.safetensors")),
    ]);
    assert!(err.contains("smaller than one 16x16 patch"), "{err}");
    // Pixels file without the tensor.
    write_safetensors(
        &px,
        &[f32_entry(
            "images",
            vec![1, 3, 32, 32],
            &vec![0.0; 3 * 32 * 32],
        )],
        None,
    )
    .unwrap();
    let err = fails(&[
        "embed",
        s(&model),
        "--pixels",
        s(&px),
        "--out",
        s(&t.join("never.safetensors")),
    ]);
    assert!(err.contains("no tensor named \"pixel_values\""), "{err}");

    // Unsupported precision / backend give a clear error too (bf16 runs on the fast CPU
    // backend, on every family; the reference is f32 only).
    let err = fails(&[
        "embed",
        s(&model),
        s(&img),
        "--out",
        s(&t.join("never.safetensors")),
        "--backend",
        "cpu-ref",
        "--precision",
        "bf16",
    ]);
    assert!(err.contains("cpu-ref") && err.contains("bf16"), "{err}");
    let err = fails(&[
        "embed",
        s(&model),
        s(&img),
        "--out",
        s(&t.join("never.safetensors")),
        "--backend",
        "cpu-ref",
        "--precision",
        "int8",
    ]);
    assert!(err.contains("cpu-ref") && err.contains("f32"), "{err}");
    let err = fails(&[
        "embed",
        s(&model),
        s(&img),
        "--out",
        s(&t.join("never.safetensors")),
        "--backend",
        "cuda",
    ]);
    assert!(err.contains("backend cuda unavailable"), "{err}");
    assert!(!t.join("never.safetensors").exists());
}

#[test]
fn quantize_and_eval_quant_on_a_fixture() {
    quantize_and_eval_quant("dinov2_reg", "56", "28", "layer.0.qkv", 2);
}

/// A ConvNeXt too: its pointwise and downsampling convs calibrated (the site table names
/// them), and eval-quant comparing the first three stages and the output.
#[test]
fn quantize_and_eval_quant_on_a_convnext_fixture() {
    quantize_and_eval_quant("dinov3_convnext", "96", "64", "stages.1.downsample", 4);
}

fn quantize_and_eval_quant(name: &str, size: &str, stereo: &str, site: &str, layers: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = fixtures().join("hf").join(name);
    let img = fixtures().join("preprocess/synthetic.png");
    let calib = t.join("calib");
    std::fs::create_dir_all(&calib).unwrap();
    for i in 0..3 {
        std::fs::copy(&img, calib.join(format!("frame{i}.png"))).unwrap();
    }
    std::fs::write(calib.join("notes.txt"), "not an image").unwrap();
    std::fs::write(calib.join("broken.jpg"), "not a jpeg either").unwrap();
    let q8 = t.join("q8");
    let out = ok(&[
        "quantize",
        s(&model),
        "--precision",
        "int8",
        "--calib",
        s(&calib),
        "--activations",
        "static",
        "--calib-size",
        size,
        "--out",
        s(&q8),
        "--threads",
        "2",
    ]);
    assert!(out.contains(site) && out.contains("int8"), "{out}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q8.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization"]["activations"], "static_per_tensor");
    assert_eq!(cfg["quantization"]["calibration"]["images"], 3);
    let out = ok(&[
        "eval-quant",
        s(&model),
        s(&q8),
        s(&img),
        "--size",
        size,
        "--stereo-size",
        stereo,
    ]);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["precision"], "int8");
    assert!(v["final_patch_cosine"].as_f64().unwrap() > 0.98, "{out}");
    // Weights only (not the fixture's expected outputs): int8 blocks, float embeddings and
    // norms, which in these tiny models are a third of the bytes.
    assert!(v["size_bytes"]["ratio"].as_f64().unwrap() < 0.7, "{out}");
    assert_eq!(v["layers"].as_array().unwrap().len(), layers, "{out}");
    // The int8 model runs through embed with its own precision by default.
    let f = t.join("f.safetensors");
    ok(&["embed", s(&q8), s(&img), "--size", size, "--out", s(&f)]);
    let f16 = t.join("f16");
    ok(&[
        "quantize",
        s(&model),
        "--precision",
        "f16",
        "--out",
        s(&f16),
    ]);
    assert!(ok(&["info", s(&f16)]).contains("F16"));
}

#[test]
fn quantize_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = fixtures().join("hf/dinov3_mlp");
    // A calibration folder with no images at all, and one whose images are all unreadable.
    let empty = t.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "no images here").unwrap();
    let err = fails(&[
        "quantize",
        s(&model),
        "--precision",
        "int8",
        "--calib",
        s(&empty),
        "--out",
        s(&t.join("q")),
    ]);
    assert!(err.contains("no image files"), "{err}");
    let broken = t.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("a.png"), "not a png").unwrap();
    std::fs::write(broken.join("b.jpg"), "not a jpeg").unwrap();
    let err = fails(&[
        "quantize",
        s(&model),
        "--precision",
        "int8",
        "--calib",
        s(&broken),
        "--out",
        s(&t.join("q")),
    ]);
    assert!(
        err.contains("no readable calibration images") && err.contains("2 files tried"),
        "{err}"
    );
    assert!(!t.join("q").exists());
    // Quantising an int8 model again.
    let q8 = t.join("q8");
    ok(&[
        "quantize",
        s(&model),
        "--precision",
        "int8",
        "--smoothquant",
        "off",
        "--out",
        s(&q8),
    ]);
    let err = fails(&[
        "quantize",
        s(&q8),
        "--precision",
        "int8",
        "--out",
        s(&t.join("again")),
    ]);
    assert!(err.contains("already quantized"), "{err}");
    let err = fails(&[
        "quantize",
        s(&model),
        "--precision",
        "int8",
        "--smoothquant",
        "2",
        "--out",
        s(&t.join("x")),
    ]);
    assert!(err.contains("--smoothquant"), "{err}");
}

#[test]
fn wgpu_backend_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = fixtures().join("hf/dinov2_reg");
    let img = fixtures().join("preprocess/synthetic.png");
    let out = t.join("f.safetensors");
    if !cfg!(feature = "wgpu") {
        let err = fails(&[
            "embed",
            s(&model),
            s(&img),
            "--out",
            s(&out),
            "--backend",
            "wgpu",
        ]);
        assert!(
            err.contains("backend wgpu unavailable") && err.contains("--features wgpu"),
            "{err}"
        );
        return;
    }
    // No adapter at all: a clear error, no output.
    let o = Command::new(env!("CARGO_BIN_EXE_dinoedge"))
        .args([
            "embed",
            s(&model),
            s(&img),
            "--out",
            s(&out),
            "--backend",
            "wgpu",
        ])
        .env("WGPU_BACKEND", "vulkan")
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("backend wgpu unavailable") && err.contains("no GPU adapter"),
        "{err}"
    );
    assert!(!out.exists());
    // With the adapter this machine has (lavapipe in CI).
    let info = run(&["info", "--backend", "wgpu"]);
    if !info.status.success() {
        let e = String::from_utf8_lossy(&info.stderr);
        assert!(
            std::env::var("DINOEDGE_REQUIRE_WGPU").as_deref() != Ok("1"),
            "wgpu required: {e}"
        );
        eprintln!("SKIPPED: {e}");
        return;
    }
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("adapter 0") && text.contains("selected"),
        "{text}"
    );
    let stdout = ok(&[
        "embed",
        s(&model),
        s(&img),
        "--size",
        "56",
        "--out",
        s(&out),
        "--backend",
        "wgpu",
    ]);
    assert!(stdout.contains("cls[:4]"));
    let f = TensorStore::open_files(std::slice::from_ref(&out)).unwrap();
    assert_eq!(f.metadata().unwrap()["backend"], "wgpu");
    let cpu_out = t.join("c.safetensors");
    ok(&[
        "embed",
        s(&model),
        s(&img),
        "--size",
        "56",
        "--out",
        s(&cpu_out),
        "--backend",
        "cpu-ref",
    ]);
    let c = TensorStore::open_files(std::slice::from_ref(&cpu_out)).unwrap();
    for name in ["cls", "registers", "patches"] {
        compare(
            name,
            &f.get(name).unwrap().to_f32().unwrap(),
            &c.get(name).unwrap().to_f32().unwrap(),
            32,
            1e-3,
        )
        .assert_ok();
    }
    let last = ok(&[
        "bench",
        s(&model),
        "--backend",
        "wgpu",
        "--size",
        "56",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--precision",
        "f16",
    ]);
    let v: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(
        (v["backend"].as_str(), v["precision"].as_str()),
        (Some("wgpu"), Some("f16"))
    );
}
