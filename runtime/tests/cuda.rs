//! The CUDA backend: its host code (planning, scratch, graph recording and replay) and every
//! kernel, on each device at hand (`DINOEDGE_CUDA_DEVICES`, default "emu,cuda"):
//!
//! - `cuda-emulated` always: the same kernel source built by the C++ compiler and run on the
//!   CPU (each CUDA thread a fiber; `mma.sync.m16n8k16` on fragments in the PTX ISA layout),
//!   so the whole inference path runs in CI without a GPU;
//! - a GPU with feature `cuda` where one is present (scripts/device-check-cuda.sh sets
//!   `DINOEDGE_CUDA_DEVICES=cuda DINOEDGE_REQUIRE_CUDA=1`).
//!
//! Bars: f32 against transformers' float64 outputs on every fixture, max abs error <= 1e-3 x
//! max(|reference|, 1) at every layer, on the direct run, the recorded run and the replay;
//! f16 and bf16 (tensor-core attention on sm_80+, and the CUDA-core kernel) mean patch
//! cosine >= 0.999 against the CPU reference.
//!
//! With feature `cuda` and no GPU (CI): every kernel compiles through NVRTC (the pip wheel
//! `nvidia-cuda-nvrtc`, `scripts/fetch-assets.sh --nvrtc`) for Turing (sm_75, without the
//! tensor-core attention), Jetson Orin (sm_87), Ampere (sm_80, sm_86), Ada (sm_89) and Hopper
//! (sm_90); a compile error fails with NVRTC's log; a machine without a driver gets a clear
//! "no usable CUDA installation" error, never a panic.

use std::path::Path;
use std::sync::Arc;

use dinoedge_runtime::dispatch::Backend;
use dinoedge_runtime::dispatch::cuda::{CudaBackend, CudaOptions};
use dinoedge_runtime::dispatch::reference::ReferenceBackend;
use dinoedge_runtime::models::convnext::ConvNext;
use dinoedge_runtime::models::vit::Vit;
use dinoedge_runtime::testing::{
    CONVNEXT_FIXTURES, FIXTURE_FAMILIES, assert_patch_cosines, check_against_transformers,
    fixture_dir, fixture_inputs,
};
use dinoedge_runtime::{
    BackendKind, Model, Precision, RunOptions, RuntimeError, Session, SessionOptions,
    create_session,
};

#[cfg(feature = "cuda")]
fn nvrtc_present() -> bool {
    dinoedge_runtime::backend::cuda::gpu::libraries_present()[1].1
}

#[cfg(feature = "cuda")]
#[test]
fn every_kernel_compiles_with_nvrtc() {
    use dinoedge_runtime::backend::cuda::gpu::compile;
    if !nvrtc_present() {
        let msg = "libnvrtc not found (scripts/fetch-assets.sh --nvrtc, then LD_LIBRARY_PATH=$DINOEDGE_ASSETS/nvrtc/nvidia/cu13/lib)";
        assert!(
            std::env::var("DINOEDGE_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let program = dinoedge_runtime::ops::cuda_program();
    for arch in ["sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90"] {
        let t = std::time::Instant::now();
        let ptx = compile(&program, arch).unwrap_or_else(|e| panic!("{e}"));
        for k in &program.kernels {
            assert!(
                ptx.contains(&format!(".entry {k}(")),
                "{arch}: kernel {k} missing from the PTX"
            );
        }
        // The tensor-core attention exists from sm_80 (and only there).
        let mma = ptx.matches("mma.sync.aligned.m16n8k16.row.col.f32").count();
        let sm: u32 = arch[3..].parse().unwrap();
        if sm >= 80 {
            assert!(mma > 0, "{arch}: no mma.sync in the tensor-core attention");
            assert!(ptx.contains(".f32.bf16.bf16.f32") && ptx.contains(".f32.f16.f16.f32"));
        } else {
            assert_eq!(
                mma, 0,
                "{arch} has no m16n8k16: the body must be compiled out"
            );
        }
        eprintln!(
            "{arch}: {} kernels, {} bytes of PTX, {mma} mma.sync, in {:.0} ms",
            program.kernels.len(),
            ptx.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}

#[test]
fn tensor_core_attention_is_chosen_where_it_exists() {
    use dinoedge_runtime::ops::attention::cuda::{mma_kernel, mma_shared_bytes};
    let kernels = dinoedge_runtime::ops::cuda_program().kernels;
    // Every released model's head dim (64; the 7B 128) and the fixtures' (16).
    for hd in [16, 32, 64, 128] {
        for (p, tag) in [(Precision::F16, "f16"), (Precision::BF16, "bf16")] {
            let k = mma_kernel(p, 90, hd).expect("tensor cores on sm_90");
            assert_eq!(k, format!("attention_forward_mma_{tag}_hd{hd}"));
            assert!(kernels.contains(&k), "{k} is not in the program");
            assert_eq!(mma_kernel(p, 87, hd), Some(k), "Jetson Orin is sm_87");
            assert_eq!(mma_kernel(p, 75, hd), None, "no m16n8k16 before sm_80");
        }
        // f32 sessions stay exact on CUDA cores.
        assert_eq!(mma_kernel(Precision::F32, 90, hd), None);
        // Within the 48 KiB a launch gets without opting in.
        assert!(mma_shared_bytes(hd) <= 48 << 10, "hd {hd}");
    }
    assert_eq!(mma_kernel(Precision::F16, 90, 80), None);
    assert_eq!(mma_kernel(Precision::F16, 90, 256), None);
}

#[cfg(feature = "cuda")]
#[test]
fn a_broken_kernel_reports_the_nvrtc_log() {
    use dinoedge_runtime::backend::cuda::device::Program;
    if !nvrtc_present() {
        eprintln!("SKIPPED: libnvrtc not found");
        return;
    }
    let program = Program {
        sources: vec![(
            "broken.cu",
            "extern \"C\" __global__ void k(float *x) { x[0] = undefined_name; }",
        )],
        kernels: vec!["k"],
    };
    let e = dinoedge_runtime::backend::cuda::gpu::compile(&program, "sm_87").unwrap_err();
    assert!(e.to_string().contains("undefined_name"), "{e}");
}

#[cfg(feature = "cuda")]
#[test]
fn no_driver_is_a_clear_error_not_a_panic() {
    if dinoedge_runtime::backend::cuda::gpu::libraries_present()[0].1 {
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

/// Without the feature, `cuda` says how to get it and names `cuda-emulated`.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let model = Arc::new(Model::load(fixture_dir("dinov3_mlp")).unwrap());
    let opts = SessionOptions {
        backend: BackendKind::Cuda,
        ..Default::default()
    };
    let msg = create_session(model, &opts)
        .err()
        .expect("no cuda")
        .to_string();
    assert!(
        msg.contains("--features cuda") && msg.contains("cuda-emulated"),
        "{msg}"
    );
}

/// The CUDA backends to check, with a label: the emulator, and the GPU where there is one.
fn devices(precision: Precision) -> Vec<(String, CudaBackend)> {
    let want = std::env::var("DINOEDGE_CUDA_DEVICES").unwrap_or_else(|_| "emu,cuda".into());
    let mut out = Vec::new();
    for (tag, emulated) in [("emu", true), ("cuda", false)] {
        if !want.split(',').any(|w| w == tag) || !(emulated || cfg!(feature = "cuda")) {
            continue;
        }
        let opts = CudaOptions::new(precision, None, emulated);
        match CudaBackend::new(&opts) {
            Ok(b) => {
                let label = format!("{} ({})", b.info().kind, b.device().name());
                out.push((label, b));
            }
            Err(e) if emulated => panic!("the emulator builds (needs a C++20 compiler): {e}"),
            Err(e) => {
                assert!(
                    std::env::var("DINOEDGE_REQUIRE_CUDA").as_deref() != Ok("1"),
                    "CUDA required: {e}"
                );
                eprintln!("cuda: SKIPPED ({e})");
            }
        }
    }
    out
}

/// Runs `f` with a fresh backend on each device (a session owns its backend).
fn each_device(precision: Precision, mut f: impl FnMut(&str, CudaBackend)) {
    for (label, be) in devices(precision) {
        f(&label, be);
    }
}

#[test]
fn f32_matches_transformers_on_every_fixture() {
    for name in FIXTURE_FAMILIES {
        each_device(Precision::F32, |label, be| {
            let model = Arc::new(Model::load(fixture_dir(name)).unwrap());
            let mut s = Session::<_, Vit>::new(be, model).unwrap();
            // Runs 1 (direct), 2 (recorded into a graph) and 3 (replayed) must all agree.
            let worst = check_against_transformers(name, label, &mut s, 1e-3, 3);
            let graphs = s.backend().recorded_graphs();
            println!("{label} f32 {name}: worst relative error {worst:.2e}, {graphs} graphs");
            assert!(graphs > 0, "{label} {name}: no forward was recorded");
        });
    }
}

/// ConvNeXt (dwconv, the channels-last im2col and token_pool kernels) against transformers at
/// every stage, direct, recorded and replayed; f16 and bf16 at mean patch cosine >= 0.999.
#[test]
fn convnext_matches_transformers_at_every_stage() {
    for name in CONVNEXT_FIXTURES {
        let model = Arc::new(Model::load(fixture_dir(name)).unwrap());
        each_device(Precision::F32, |label, be| {
            let mut s = Session::<_, ConvNext>::new(be, model.clone()).unwrap();
            let worst = check_against_transformers(name, label, &mut s, 1e-3, 3);
            let graphs = s.backend().recorded_graphs();
            println!("{label} f32 {name}: worst relative error {worst:.2e}, {graphs} graphs");
            assert!(graphs > 0, "{label} {name}: no forward was recorded");
        });
        let mut c =
            Session::<_, ConvNext>::new(ReferenceBackend::new(Some(2)).unwrap(), model.clone())
                .unwrap();
        for precision in [Precision::F16, Precision::BF16] {
            each_device(precision, |label, be| {
                let mut g = Session::<_, ConvNext>::new(be, model.clone()).unwrap();
                assert_patch_cosines(&format!("{label} {precision} {name}"), name, &mut g, &mut c);
            });
        }
    }
}

#[test]
fn half_precisions_keep_patch_cosine_above_0999() {
    for precision in [Precision::F16, Precision::BF16] {
        for name in FIXTURE_FAMILIES {
            let model = Arc::new(Model::load(fixture_dir(name)).unwrap());
            let hd = model.config().as_vit().unwrap().head_dim();
            let mut c =
                Session::<_, Vit>::new(ReferenceBackend::new(Some(2)).unwrap(), model.clone())
                    .unwrap();
            for tensor_cores in [true, false] {
                each_device(precision, |label, mut be| {
                    be.set_tensor_core_attention(tensor_cores);
                    let kernel = be.attention_kernel(hd);
                    // The emulator is an sm_80: f16 / bf16 get the tensor-core kernel.
                    if tensor_cores && be.sm() >= 80 {
                        assert!(kernel.contains("_mma_"), "{label} {name}: {kernel}");
                    }
                    let mut g = Session::<_, Vit>::new(be, model.clone()).unwrap();
                    let what = format!("{label} {precision} {name} {kernel}");
                    assert_patch_cosines(&what, name, &mut g, &mut c);
                });
            }
        }
    }
}

/// `cuda-emulated` through the public session API, as `embed --backend cuda-emulated` opens it.
#[test]
fn cuda_emulated_sessions_open_through_create_session() {
    let model = Arc::new(Model::load(fixture_dir("dinov3_gated")).unwrap());
    let opts = SessionOptions {
        backend: BackendKind::CudaEmulated,
        precision: Some(Precision::BF16),
        ..Default::default()
    };
    let mut s = create_session(model.clone(), &opts).unwrap();
    assert_eq!(s.info().kind, BackendKind::CudaEmulated);
    let x = &fixture_inputs(&fixture_dir("dinov3_gated")).unwrap()[0];
    let f = s.run(x, &RunOptions::default()).unwrap();
    assert!(f.last.patches.data.iter().all(|v| v.is_finite()));
}

// ---- Host-side planning (no GPU).

/// Tensor-core attention (the default in f16 / bf16) and the CUDA-core kernel against the CPU
/// at real sizes: the models in `DINOEDGE_CUDA_MODELS` (colon-separated; the device script
/// passes its random ViT-S/16 with 4 registers, head dim 64, and the ViT-7B, head dim 128) at
/// 224, 448 and 224 x 320. Models above 1B parameters compare the two kernels only (the CPU
/// forward of a 7B is minutes). The fixtures (head dim 16; with and without registers) run
/// through the tensor cores in `half_precisions_keep_patch_cosine_above_0999`.
#[test]
fn tensor_core_attention_matches_at_real_sizes() {
    let Ok(dirs) = std::env::var("DINOEDGE_CUDA_MODELS") else {
        eprintln!("SKIPPED: DINOEDGE_CUDA_MODELS not set (scripts/device-check-cuda.sh sets it)");
        return;
    };
    if !cfg!(feature = "cuda") {
        eprintln!("SKIPPED: real sizes run on a GPU only");
        return;
    }
    for dir in dirs.split(':').filter(|d| !d.is_empty()) {
        let model = Arc::new(Model::load(dir).unwrap());
        let big = model.num_parameters() > 1_000_000_000;
        let hd = model.config().as_vit().unwrap().head_dim();
        let sizes: &[(usize, usize)] = if big {
            &[(224, 224)]
        } else {
            &[(224, 224), (448, 448), (224, 320)]
        };
        let mut cpu =
            (!big).then(|| create_session(model.clone(), &SessionOptions::default()).unwrap());
        let precisions: &[Precision] = if big {
            &[Precision::BF16]
        } else {
            &[Precision::F16, Precision::BF16]
        };
        for &precision in precisions {
            let mut sessions = Vec::new();
            for tc in [true, false] {
                let opts = CudaOptions::new(precision, None, false);
                let Ok(mut be) = CudaBackend::new(&opts) else {
                    assert!(
                        std::env::var("DINOEDGE_REQUIRE_CUDA").as_deref() != Ok("1"),
                        "CUDA required"
                    );
                    eprintln!("SKIPPED: no GPU");
                    return;
                };
                be.set_tensor_core_attention(tc);
                let kernel = be.attention_kernel(hd);
                sessions.push((kernel, Session::<_, Vit>::new(be, model.clone()).unwrap()));
            }
            for &(h, w) in sizes {
                let n = 3 * h * w;
                // Deterministic pixels in the normalised range.
                let data = (0..n)
                    .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 4.0)
                    .collect();
                let x = dinoedge_runtime::tensor::Tensor::new(vec![1, 3, h, w], data).unwrap();
                let want = cpu
                    .as_mut()
                    .map(|c| c.run(&x, &RunOptions::default()).unwrap());
                let mut got = Vec::new();
                for (kernel, s) in sessions.iter_mut() {
                    let f = s.run(&x, &RunOptions::default()).unwrap();
                    if let Some(want) = &want {
                        let cos = dinoedge_runtime::tensor::mean_row_cosine(
                            &f.last.patches.data,
                            &want.last.patches.data,
                            want.dim(),
                        );
                        println!(
                            "cuda {precision} {dir} {h}x{w} {kernel}: mean patch cosine vs CPU {cos:.6}"
                        );
                        assert!(cos >= 0.999, "{precision} {kernel} {dir} {h}x{w}: {cos}");
                    }
                    got.push(f);
                }
                let cos = dinoedge_runtime::tensor::mean_row_cosine(
                    &got[0].last.patches.data,
                    &got[1].last.patches.data,
                    got[1].dim(),
                );
                println!(
                    "cuda {precision} {dir} {h}x{w}: {} vs {}: mean patch cosine {cos:.6}",
                    sessions[0].0, sessions[1].0
                );
                assert!(
                    cos >= 0.999,
                    "{precision} {dir} {h}x{w}: kernels disagree: {cos}"
                );
            }
        }
    }
}

fn vit7b() -> dinoedge_runtime::VitConfig {
    // The released ViT-7B/16 (HF dinov3_vit layout).
    dinoedge_runtime::VitConfig::from_json_str(
        r#"{"model_type": "dinov3_vit", "hidden_size": 4096, "intermediate_size": 8192, "num_hidden_layers": 40,
            "num_attention_heads": 32, "use_gated_mlp": true, "hidden_act": "silu", "num_register_tokens": 4,
            "query_bias": false, "value_bias": false, "patch_size": 16, "layerscale_value": 1.0, "rope_theta": 100.0}"#,
        Path::new("vit7b/config.json"),
    )
    .unwrap()
}

#[test]
fn memory_plan_of_the_7b_teacher() {
    use dinoedge_runtime::dispatch::cuda::plan::{linear_weight_count, memory_plan};
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
    use dinoedge_runtime::dispatch::cuda::plan::{linear_weight_count, memory_plan};
    for name in FIXTURE_FAMILIES {
        let model = Model::load(fixture_dir(name)).unwrap();
        let params = model.num_parameters() as u64;
        let cfg = model.config().as_vit().unwrap();
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
    use dinoedge_runtime::dispatch::cuda::plan::out_of_memory;
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
    use dinoedge_runtime::models::vit::forward::{Plan, PreparedModel, dims};
    // Recorded CUDA graphs are keyed by plan id: two shapes (or two plans of one shape) must
    // never share a key, or a replay would run the wrong shape.
    let model = Model::load(fixture_dir("dinov3_mlp")).unwrap();
    let be = ReferenceBackend::new(Some(1)).unwrap();
    let pm = PreparedModel::new(&be, &model).unwrap();
    let cfg = model.config().as_vit().unwrap();
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
    {
        let opts = CudaOptions::new(Precision::Int8, None, true);
        let e = CudaBackend::new(&opts).err().expect("int8 is CPU-only");
        assert!(e.to_string().contains("int8"), "{e}");
    }
}

/// A checkpoint tensor in a dtype the backend cannot take (F64 here) fails session creation
/// with the file, tensor and dtype named (the weights are converted on their way to the
/// device).
#[test]
fn wrong_dtype_in_the_checkpoint_names_file_tensor_and_dtype() {
    use safetensors::tensor::{Dtype, TensorView};
    let src = fixture_dir("dinov3_mlp");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let victim = "layer.0.attention.q_proj.weight";
    let shape = st.tensor(victim).unwrap().shape().to_vec();
    let n: usize = shape.iter().product();
    let f64s: Vec<u8> = (0..n)
        .flat_map(|i| (i as f64 * 1e-3).to_le_bytes())
        .collect();
    let mut views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != victim)
        .map(|(name, v)| {
            let view = TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap();
            (name, view)
        })
        .collect();
    views.push((
        victim.to_string(),
        TensorView::new(Dtype::F64, shape, &f64s).unwrap(),
    ));
    let path = tmp.path().join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let backend = BackendKind::CudaEmulated;
    let opts = SessionOptions {
        backend,
        precision: Some(Precision::BF16),
        ..Default::default()
    };
    let err = Model::load(tmp.path())
        .and_then(|m| create_session(Arc::new(m), &opts).map(|_| ()))
        .expect_err("an F64 weight must be refused");
    let msg = err.to_string();
    assert!(
        matches!(err, RuntimeError::UnsupportedDtype { .. }),
        "{msg}"
    );
    for part in [victim, "F64", "model.safetensors"] {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
    eprintln!("{backend:?}: {msg}");
}
