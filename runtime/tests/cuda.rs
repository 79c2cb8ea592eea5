//! The CUDA backend.
//!
//! Without a GPU (CI): every kernel compiles through NVRTC (the pip wheel
//! `nvidia-cuda-nvrtc`, `scripts/fetch-assets.sh --nvrtc`) for Jetson Orin (sm_87), Ampere
//! (sm_80, sm_86) and Hopper (sm_90); a compile error fails with NVRTC's log; and a machine
//! without a driver gets a clear "no usable CUDA installation" error, never a panic.
//!
//! With a GPU (scripts/device-check-cuda.sh): every fixture family against the CPU reference,
//! f32 max abs error <= 1e-3 x max(|reference|, 1) at every layer; f16 and bf16 mean patch
//! cosine >= 0.999; graphs replayed (third and later runs) give the same features.
#![cfg(feature = "cuda")]

use std::path::Path;
use std::sync::Arc;

use dinoedge_runtime::backend::cpu::ReferenceBackend;
use dinoedge_runtime::backend::cuda::{CudaBackend, KERNELS, compile, libraries_present};
use dinoedge_runtime::testing::{FIXTURE_FAMILIES, compare, fixture_dir, fixture_inputs};
use dinoedge_runtime::{
    BackendKind, Model, Precision, RunOptions, RuntimeError, Session, SessionOptions,
    create_session,
};

fn nvrtc_present() -> bool {
    libraries_present()[1].1
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !nvrtc_present() {
        let msg = "libnvrtc not found (scripts/fetch-assets.sh --nvrtc, then LD_LIBRARY_PATH=$DINOEDGE_ASSETS/nvrtc/nvidia/cu13/lib)";
        assert!(
            std::env::var("DINOEDGE_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return;
    }
    for arch in ["sm_80", "sm_86", "sm_87", "sm_90"] {
        let t = std::time::Instant::now();
        let ptx = compile(arch).unwrap_or_else(|e| panic!("{e}"));
        for k in KERNELS {
            assert!(
                ptx.contains(&format!(".entry {k}(")),
                "{arch}: kernel {k} missing from the PTX"
            );
        }
        eprintln!(
            "{arch}: {} kernels, {} bytes of PTX in {:.0} ms",
            KERNELS.len(),
            ptx.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}

#[test]
fn a_broken_kernel_reports_the_nvrtc_log() {
    if !nvrtc_present() {
        eprintln!("SKIPPED: libnvrtc not found");
        return;
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec!["--gpu-architecture=sm_87".into()],
        ..Default::default()
    };
    let e = cudarc::nvrtc::compile_ptx_with_opts(
        "extern \"C\" __global__ void k(float *x) { x[0] = undefined_name; }",
        opts,
    )
    .unwrap_err();
    assert!(format!("{e:?}").contains("undefined_name"), "{e:?}");
}

#[test]
fn no_driver_is_a_clear_error_not_a_panic() {
    if libraries_present()[0].1 {
        eprintln!("SKIPPED: this machine has libcuda (the device check covers the GPU path)");
        return;
    }
    let model = Arc::new(Model::load(fixture_dir("dinov3_mlp")).unwrap());
    let opts = SessionOptions {
        backend: BackendKind::Cuda,
        ..Default::default()
    };
    let err = create_session(model, &opts)
        .err()
        .expect("no session without a driver");
    assert!(
        matches!(err, RuntimeError::BackendUnavailable { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("libcuda") && msg.contains("cuda"), "{msg}");
}

fn gpu(precision: Precision) -> Option<CudaBackend> {
    match CudaBackend::new(precision, None) {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(
                std::env::var("DINOEDGE_REQUIRE_CUDA").as_deref() != Ok("1"),
                "CUDA required: {e}"
            );
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

#[test]
fn f32_matches_the_cpu_reference_on_every_fixture() {
    let Some(probe) = gpu(Precision::F32) else {
        return;
    };
    let (name, arch) = probe.device();
    eprintln!("device: {name} ({arch})");
    drop(probe);
    for name in FIXTURE_FAMILIES {
        let model = Arc::new(Model::load(fixture_dir(name)).unwrap());
        let opts = RunOptions {
            capture_layers: (0..model.config().num_layers).collect(),
        };
        let mut g = Session::new(
            CudaBackend::new(Precision::F32, None).unwrap(),
            model.clone(),
        )
        .unwrap();
        let mut c = Session::new(ReferenceBackend::new(Some(2)).unwrap(), model.clone()).unwrap();
        for x in fixture_inputs(&fixture_dir(name)).unwrap() {
            let want = c.run(&x, &opts).unwrap();
            // Runs 1 (direct), 2 (captured into a graph) and 3 (graph replay) must all agree.
            for run in 1..=3 {
                let got = g.run(&x, &opts).unwrap();
                let mut worst = 0.0f32;
                for (gl, cl) in std::iter::once((&got.last, &want.last))
                    .chain(got.intermediate.iter().zip(&want.intermediate))
                {
                    for (what, a, b) in [
                        ("cls", &gl.cls, &cl.cls),
                        ("registers", &gl.registers, &cl.registers),
                        ("patches", &gl.patches, &cl.patches),
                    ] {
                        let cmp = compare(
                            &format!(
                                "cuda {name} {:?} run {run} layer {} {what}",
                                x.shape, cl.layer
                            ),
                            &a.data,
                            &b.data,
                            want.dim(),
                            1e-3,
                        );
                        worst = worst.max(cmp.max_abs);
                        cmp.assert_ok();
                    }
                }
                println!(
                    "cuda f32 {name} {:?} run {run}: max abs error {worst:.2e}",
                    x.shape
                );
            }
        }
    }
}

#[test]
fn half_precisions_keep_patch_cosine_above_0999() {
    let Some(probe) = gpu(Precision::F16) else {
        return;
    };
    drop(probe);
    for precision in [Precision::F16, Precision::BF16] {
        for name in FIXTURE_FAMILIES {
            let model = Arc::new(Model::load(fixture_dir(name)).unwrap());
            let mut g =
                Session::new(CudaBackend::new(precision, None).unwrap(), model.clone()).unwrap();
            let mut c =
                Session::new(ReferenceBackend::new(Some(2)).unwrap(), model.clone()).unwrap();
            for x in fixture_inputs(&fixture_dir(name)).unwrap() {
                let (a, b) = (
                    g.run(&x, &RunOptions::default()).unwrap(),
                    c.run(&x, &RunOptions::default()).unwrap(),
                );
                let cos = dinoedge_runtime::tensor::mean_row_cosine(
                    &a.last.patches.data,
                    &b.last.patches.data,
                    b.dim(),
                );
                println!(
                    "cuda {precision} {name} {:?}: mean patch cosine {cos:.6}",
                    x.shape
                );
                assert!(cos >= 0.999, "{precision} {name}: {cos}");
            }
        }
    }
}

// ---- Host-side planning (no GPU).

fn vit7b() -> dinoedge_runtime::ModelConfig {
    // The released ViT-7B/16 (HF dinov3_vit layout).
    dinoedge_runtime::ModelConfig::from_json_str(
        r#"{"model_type": "dinov3_vit", "hidden_size": 4096, "intermediate_size": 8192, "num_hidden_layers": 40,
            "num_attention_heads": 32, "use_gated_mlp": true, "hidden_act": "silu", "num_register_tokens": 4,
            "query_bias": false, "value_bias": false, "patch_size": 16, "layerscale_value": 1.0, "rope_theta": 100.0}"#,
        Path::new("vit7b/config.json"),
    )
    .unwrap()
}

#[test]
fn memory_plan_of_the_7b_teacher() {
    use dinoedge_runtime::backend::cuda::plan::{linear_weight_count, memory_plan};
    let cfg = vit7b();
    // The published parameter count (6,716M); Linear weights are nearly all of it.
    let params = 6_716_000_000u64;
    let linear = linear_weight_count(&cfg);
    assert!(linear > params * 99 / 100 && linear < params, "{linear}");
    let bf16 = memory_plan(&cfg, params, Precision::BF16, 32, 224, 224);
    let f32 = memory_plan(&cfg, params, Precision::F32, 32, 224, 224);
    eprintln!(
        "ViT-7B/16 bf16, batch 32 at 224: {bf16:?}, total {}",
        bf16.total()
    );
    // 13.4 GB of bf16 weights, twice that in f32; activations do not depend on precision.
    assert!(
        (bf16.weights as f64 / 1e9 - 13.43).abs() < 0.05,
        "{}",
        bf16.weights
    );
    assert!((f32.weights as f64 / bf16.weights as f64 - 2.0).abs() < 0.01);
    assert_eq!(bf16.activations, f32.activations);
    // f32 needs only the accumulator (rows x dim); f16 / bf16 add a 16-bit copy of the widest
    // GEMM input (rows x MLP hidden).
    let rows = 32 * 201u64;
    assert_eq!(f32.scratch, rows * 4096 * 4);
    assert_eq!(bf16.scratch, rows * 4096 * 4 + rows * 8192 * 2);
    // Batch 32 at 224: 32 x 201 tokens; the gated MLP (3 x 8192 f32 per row) dominates.
    let act_lower = rows * (7 * 4096 + 3 * 8192) * 4;
    assert!(
        bf16.activations >= act_lower && bf16.activations < act_lower * 12 / 10,
        "{}",
        bf16.activations
    );
    // About 15.2 GB in all: one 80 GB H100 holds it with room for a student; an 8 GB Orin does not.
    assert!(
        bf16.total() > 15_000_000_000 && bf16.total() < 16_000_000_000,
        "{}",
        bf16.total()
    );
    // Growing the batch grows activations and scratch linearly, not the weights.
    let b64 = memory_plan(&cfg, params, Precision::BF16, 64, 224, 224);
    assert_eq!(b64.weights, bf16.weights);
    assert_eq!(b64.scratch, 2 * bf16.scratch);
}

#[test]
fn memory_plan_matches_the_fixture_checkpoints() {
    use dinoedge_runtime::backend::cuda::plan::{linear_weight_count, memory_plan};
    for name in FIXTURE_FAMILIES {
        let model = Model::load(fixture_dir(name)).unwrap();
        let params = model.num_parameters() as u64;
        let cfg = model.config();
        let linear = linear_weight_count(cfg);
        // Everything else (norms, biases, tokens, LayerScale, positions) is small.
        assert!(
            linear < params && linear * 2 > params,
            "{name}: {linear} of {params}"
        );
        let p = memory_plan(cfg, params, Precision::F16, 2, 64, 48);
        assert_eq!(p.weights, linear * 2 + (params - linear) * 4, "{name}");
        assert!(p.activations > 0 && p.scratch > 0);
    }
}

#[test]
fn out_of_memory_names_what_needed_and_free() {
    use dinoedge_runtime::backend::cuda::plan::out_of_memory;
    let e = out_of_memory(
        "the weights of vit7b (6716000000 parameters in bf16)",
        13_432_000_000,
        7_000_000_000,
        8 << 30,
    );
    let msg = e.to_string();
    for want in [
        "vit7b",
        "13432000000 bytes",
        "12.51 GiB",
        "7000000000 bytes",
        "6.52 GiB",
        "8.00 GiB",
        "smaller batch",
    ] {
        assert!(msg.contains(want), "{want:?} missing from {msg}");
    }
}

#[test]
fn each_input_shape_gets_its_own_graph_key() {
    use dinoedge_runtime::forward::{Plan, PreparedModel, dims};
    // Recorded CUDA graphs are keyed by plan id: two shapes (or two plans of one shape) must
    // never share a key, or a replay would run the wrong shape.
    let model = Model::load(fixture_dir("dinov3_mlp")).unwrap();
    let be = ReferenceBackend::new(Some(1)).unwrap();
    let pm = PreparedModel::new(&be, &model).unwrap();
    let cfg = model.config();
    let a = Plan::new(&be, &pm, dims(cfg, 1, 64, 64), &[]).unwrap();
    let b = Plan::new(&be, &pm, dims(cfg, 1, 64, 48), &[]).unwrap();
    let c = Plan::new(&be, &pm, dims(cfg, 1, 64, 64), &[]).unwrap();
    assert!(a.id != b.id && a.id != c.id && b.id != c.id);
}

#[test]
fn unsupported_precision_and_bad_gpu_index_are_clear_errors() {
    let model = Arc::new(Model::load(fixture_dir("dinov3_mlp")).unwrap());
    let opts = SessionOptions {
        backend: BackendKind::Cuda,
        adapter: Some("first".into()),
        ..Default::default()
    };
    let msg = create_session(model, &opts)
        .err()
        .expect("a GPU index is a number")
        .to_string();
    assert!(msg.contains("GPU index"), "{msg}");
    if libraries_present().iter().all(|l| l.1) {
        let e = CudaBackend::new(Precision::Int8, None)
            .err()
            .expect("int8 is CPU-only");
        assert!(e.to_string().contains("int8"), "{e}");
    }
}
