//! Quantised model directories: written by `quant::quantize`, loaded by every backend, and
//! refused with a clear message when config and tensors disagree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dinoedge_runtime::quant::{self, QuantizeOptions, Smoothing};
use dinoedge_runtime::weights::TensorStore;
use dinoedge_runtime::weights::store::{f32_entry, write_safetensors};
use dinoedge_runtime::{
    ActivationScheme, BackendKind, Model, Precision, RunOptions, SessionOptions, Tensor,
    create_session,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/hf")
        .join(name)
}

fn inputs(model: &Model, n: usize) -> Vec<Tensor> {
    let cfg = model.config();
    let (h, w) = (4 * cfg.patch_size(), 3 * cfg.patch_size());
    (0..n)
        .map(|i| {
            let data = (0..3 * h * w)
                .map(|j| (((j * 31 + i * 17) % 97) as f32 / 48.0 - 1.0) * 1.5)
                .collect();
            Tensor::new(vec![1, 3, h, w], data).unwrap()
        })
        .collect()
}

fn run(
    model: &Arc<Model>,
    backend: BackendKind,
    precision: Option<Precision>,
    x: &Tensor,
) -> Vec<f32> {
    let mut s = create_session(
        model.clone(),
        &SessionOptions {
            backend,
            precision,
            threads: Some(2),
            adapter: None,
            ..Default::default()
        },
    )
    .unwrap();
    s.run(x, &RunOptions::default()).unwrap().last.patches.data
}

fn cosine(a: &[f32], b: &[f32], d: usize) -> f64 {
    dinoedge_runtime::tensor::mean_row_cosine(a, b, d)
}

#[test]
fn int8_models_load_and_run_on_every_cpu_backend() {
    for name in [
        "dinov3_mlp",
        "dinov3_gated",
        "dinov2_swiglu",
        "dinov2_reg",
        "dinov3_convnext",
    ] {
        let float = Arc::new(Model::load(fixture(name)).unwrap());
        let d = float.config().hidden_size();
        let calib =
            quant::calibrate(&float, &inputs(&float, 4), Some(2), "synthetic", |_| {}).unwrap();
        for activations in [
            ActivationScheme::DynamicPerToken,
            ActivationScheme::StaticPerTensor,
        ] {
            let opts = QuantizeOptions {
                precision: Precision::Int8,
                activations,
                smoothing: Smoothing::Auto,
                threads: Some(2),
            };
            let q = quant::quantize(&float, &opts, Some(&calib)).unwrap();
            let dir = tempfile::tempdir().unwrap();
            quant::write(&q, dir.path(), &fixture(name)).unwrap();
            let int8 = Arc::new(Model::load(dir.path()).unwrap());
            assert!(int8.is_quantized());
            let st = TensorStore::open_dir(dir.path()).unwrap();
            assert!(
                st.dtype_counts().iter().any(|(d, _)| d == "I8"),
                "{name}: no I8 tensors"
            );
            let x = &inputs(&float, 1)[0];
            let want = run(&float, BackendKind::CpuReference, None, x);
            // The reference dequantises weights; the fast backend runs the int8 kernels (its
            // default precision for an int8 model).
            let deq = run(&int8, BackendKind::CpuReference, None, x);
            let w8a8 = run(&int8, BackendKind::Cpu, None, x);
            let (c_deq, c_w8a8) = (cosine(&deq, &want, d), cosine(&w8a8, &want, d));
            println!(
                "{name} {activations:?}: weight-only cosine {c_deq:.5}, W8A8 cosine {c_w8a8:.5}"
            );
            assert!(
                c_deq > 0.995 && c_w8a8 > 0.98,
                "{name} {activations:?}: cosines {c_deq} {c_w8a8}"
            );
            // The fast backend in f32 runs the dequantised weights too, like the reference.
            let f32_fast = run(&int8, BackendKind::Cpu, Some(Precision::F32), x);
            assert!(cosine(&f32_fast, &deq, d) > 0.99999);
        }
    }
}

#[test]
fn f16_and_bf16_copies_match_the_float_model() {
    let float = Arc::new(Model::load(fixture("dinov2_reg")).unwrap());
    let x = &inputs(&float, 1)[0];
    let want = run(&float, BackendKind::CpuReference, None, x);
    for (precision, min_cos) in [(Precision::F16, 0.99999), (Precision::BF16, 0.9995)] {
        let q = quant::quantize(
            &float,
            &QuantizeOptions {
                precision,
                activations: ActivationScheme::DynamicPerToken,
                smoothing: Smoothing::Off,
                threads: Some(2),
            },
            None,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        quant::write(&q, dir.path(), &fixture("dinov2_reg")).unwrap();
        let m = Arc::new(Model::load(dir.path()).unwrap());
        let want_dtype = if precision == Precision::F16 {
            "F16"
        } else {
            "BF16"
        };
        assert!(
            m.store()
                .dtype_counts()
                .iter()
                .all(|(d, _)| d == want_dtype)
        );
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(text.contains(if precision == Precision::F16 {
            "float16"
        } else {
            "bfloat16"
        }));
        let c = cosine(&run(&m, BackendKind::CpuReference, None, x), &want, 32);
        assert!(c > min_cos, "{precision}: cosine {c}");
    }
}

/// Fixture `name` and its int8 copy (dynamic activations, no smoothing, no calibration),
/// with the options that made it.
fn plain_int8(name: &str) -> (Arc<Model>, QuantizeOptions, tempfile::TempDir) {
    let float = Arc::new(Model::load(fixture(name)).unwrap());
    let opts = QuantizeOptions {
        precision: Precision::Int8,
        activations: ActivationScheme::DynamicPerToken,
        smoothing: Smoothing::Off,
        threads: Some(2),
    };
    let q = quant::quantize(&float, &opts, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    quant::write(&q, dir.path(), &fixture(name)).unwrap();
    (float, opts, dir)
}

/// A ConvNeXt's int8 file: its pointwise and 2x2 downsampling convs I8 in HF's names and
/// shapes (the downsampling weights back in HF's (O, I, 2, 2) order after being quantised
/// in the im2col's channels-last order), the stem and depthwise convs in f32; each int8
/// weight dequantises to the float one within half a step of its output channel's scale.
#[test]
fn convnext_int8_files_keep_hf_names_shapes_and_orders() {
    let (_, _, dir) = plain_int8("dinov3_convnext");
    let fst = TensorStore::open_dir(&fixture("dinov3_convnext")).unwrap();
    let qst = TensorStore::open_dir(dir.path()).unwrap();
    let mut int8 = Vec::new();
    for name in fst.names() {
        let (f, t) = (fst.get(name).unwrap(), qst.get(name).unwrap());
        assert_eq!(f.shape, t.shape, "{name}");
        let quantized = name.contains("pointwise_conv") && name.ends_with("weight")
            || (name.contains("downsample_layers.1.weight") && !name.starts_with("stages.0."));
        if !quantized {
            assert_eq!(t.dtype, safetensors::Dtype::F32, "{name}");
            assert_eq!(f.to_f32().unwrap(), t.to_f32().unwrap(), "{name}");
            continue;
        }
        assert_eq!(t.dtype, safetensors::Dtype::I8, "{name}");
        int8.push(name.to_string());
        let scales = qst.get(&format!("{name}_scale")).unwrap().to_f32().unwrap();
        let (want, got) = (f.to_f32().unwrap(), t.to_i8().unwrap());
        let cols = want.len() / scales.len();
        for (i, (w, q)) in want.iter().zip(&got).enumerate() {
            let s = scales[i / cols];
            assert!(
                (w - *q as f32 * s).abs() <= 0.5 * s * 1.0001,
                "{name}[{i}]: {w} vs {q} x {s}"
            );
        }
    }
    assert!(int8.iter().any(|n| n.contains("downsample")), "{int8:?}");
    assert!(
        int8.iter().any(|n| n.contains("pointwise_conv2")),
        "{int8:?}"
    );
    let m = Model::load(dir.path()).unwrap();
    assert!(m.is_quantized());
    let section = m.config().quantization().unwrap();
    assert!(
        section.float_ops.iter().any(|o| o == "depthwise_conv"),
        "{section:?}"
    );

    // A missing scale is named.
    let missing = "stages.1.downsample_layers.1.weight_scale";
    let st = TensorStore::open_dir(dir.path()).unwrap();
    let entries: Vec<_> = st
        .names()
        .into_iter()
        .filter(|n| *n != missing)
        .map(|n| {
            let t = st.get(n).unwrap();
            (n.to_string(), t.shape.to_vec(), t.dtype, t.bytes.to_vec())
        })
        .collect();
    drop(st);
    let d = dir.path().join("no_scale");
    std::fs::create_dir_all(&d).unwrap();
    write_safetensors(&d.join("model.safetensors"), &entries, None).unwrap();
    std::fs::copy(dir.path().join("config.json"), d.join("config.json")).unwrap();
    let e = Model::load(&d).unwrap_err().to_string();
    assert!(e.contains("missing tensor") && e.contains(missing), "{e}");
}

#[test]
fn smoothing_is_applied_only_where_it_helps() {
    for name in ["dinov3_mlp", "dinov3_convnext"] {
        smoothing_is_applied_only_where_it_helps_in(name);
    }
}

fn smoothing_is_applied_only_where_it_helps_in(name: &str) {
    let float = Arc::new(Model::load(fixture(name)).unwrap());
    let calib = quant::calibrate(&float, &inputs(&float, 4), Some(2), "synthetic", |_| {}).unwrap();
    let q = quant::quantize(
        &float,
        &QuantizeOptions {
            precision: Precision::Int8,
            activations: ActivationScheme::DynamicPerToken,
            smoothing: Smoothing::Auto,
            threads: Some(2),
        },
        Some(&calib),
    )
    .unwrap();
    assert!(!q.sites.is_empty());
    for r in &q.sites {
        assert!(
            r.error_plain.is_some(),
            "{name} {}: calibration did not reach it",
            r.site
        );
        if let (Some(p), Some(s)) = (r.error_plain, r.error_smoothed) {
            assert!(
                s < 0.95 * p,
                "{}: smoothing applied without helping ({s} vs {p})",
                r.site
            );
        }
        if r.site.ends_with("o_proj") || r.site.ends_with("mlp_out") || r.site.ends_with("pw2") {
            assert!(
                r.alpha.is_none(),
                "{} has no LayerNorm to fold into",
                r.site
            );
        }
    }
}

#[test]
fn quantising_twice_and_mismatched_configs_are_refused() {
    let (float, opts, dir) = plain_int8("dinov3_mlp");
    let int8 = Model::load(dir.path()).unwrap();

    // Already quantised.
    let e = quant::quantize(&int8, &opts, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("already quantised"), "{e}");

    // Static activations without calibration.
    let e = quant::quantize(
        &float,
        &QuantizeOptions {
            activations: ActivationScheme::StaticPerTensor,
            ..opts.clone()
        },
        None,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("calibration"), "{e}");

    let cfg_text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let copy = |name: &str, config: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            dir.path().join("model.safetensors"),
            d.join("model.safetensors"),
        )
        .unwrap();
        std::fs::write(d.join("config.json"), config).unwrap();
        d
    };
    // int8 tensors, config without the section.
    let mut v: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
    v.as_object_mut().unwrap().remove("quantization");
    let e = Model::load(copy("no_section", &v.to_string()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("quantization mismatch")
            && e.contains("I8")
            && e.contains("no quantization section"),
        "{e}"
    );

    // Section says static, no input scales stored.
    let e = Model::load(copy(
        "static",
        &cfg_text.replace("dynamic_per_token", "static_per_tensor"),
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("missing tensor") && e.contains("input_scale"),
        "{e}"
    );

    // Unknown method.
    let e = Model::load(copy("method", &cfg_text.replace("dinoedge-w8a8", "gptq")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("quantization.method \"gptq\""), "{e}");

    // Float tensors under an int8 config.
    let d = dir.path().join("float_under_int8");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        fixture("dinov3_mlp").join("model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(d.join("config.json"), &cfg_text).unwrap();
    let e = Model::load(&d).unwrap_err().to_string();
    assert!(
        e.contains("declares an int8 model") && e.contains("F32"),
        "{e}"
    );

    // A scale tensor of the wrong length.
    let st = TensorStore::open_dir(dir.path()).unwrap();
    let entries: Vec<_> = st
        .names()
        .into_iter()
        .map(|n| {
            let t = st.get(n).unwrap();
            if n == "layer.0.attention.q_proj.weight_scale" {
                f32_entry(n, vec![3], &[1.0, 1.0, 1.0])
            } else {
                (n.to_string(), t.shape.to_vec(), t.dtype, t.bytes.to_vec())
            }
        })
        .collect();
    drop(st);
    let d = dir.path().join("bad_scale");
    std::fs::create_dir_all(&d).unwrap();
    write_safetensors(&d.join("model.safetensors"), &entries, None).unwrap();
    std::fs::write(d.join("config.json"), &cfg_text).unwrap();
    let e = Model::load(&d).unwrap_err().to_string();
    assert!(
        e.contains("q_proj.weight_scale") && e.contains("[32]") && e.contains("[3]"),
        "{e}"
    );

    // An int8 weight of -128 (outside the symmetric range; the AVX2 kernel cannot negate it).
    let st = TensorStore::open_dir(dir.path()).unwrap();
    let entries: Vec<_> = st
        .names()
        .into_iter()
        .map(|n| {
            let t = st.get(n).unwrap();
            let mut bytes = t.bytes.to_vec();
            if n == "layer.1.mlp.up_proj.weight" {
                bytes[5] = 0x80;
            }
            (n.to_string(), t.shape.to_vec(), t.dtype, bytes)
        })
        .collect();
    drop(st);
    let d = dir.path().join("minus_128");
    std::fs::create_dir_all(&d).unwrap();
    write_safetensors(&d.join("model.safetensors"), &entries, None).unwrap();
    std::fs::write(d.join("config.json"), &cfg_text).unwrap();
    let e = Model::load(&d).unwrap_err().to_string();
    assert!(
        e.contains("layer.1.mlp.up_proj.weight") && e.contains("-128") && e.contains("index 5"),
        "{e}"
    );
}
