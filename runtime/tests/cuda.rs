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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dinoedge_runtime::backend::cpu::ReferenceBackend;
use dinoedge_runtime::backend::cuda::{CudaBackend, KERNELS, compile, libraries_present};
use dinoedge_runtime::testing::compare;
use dinoedge_runtime::weights::TensorStore;
use dinoedge_runtime::{
    BackendKind, Model, Precision, RunOptions, RuntimeError, Session, SessionOptions, Tensor,
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
    let model = Arc::new(Model::load(fixture("dinov3_mlp")).unwrap());
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

/// `fixtures/hf/<name>`; `DINOEDGE_FIXTURES` overrides the folder when the test binary runs
/// away from its source tree (the GPU machine).
fn fixture(name: &str) -> PathBuf {
    std::env::var_os("DINOEDGE_FIXTURES")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures"),
            PathBuf::from,
        )
        .join("hf")
        .join(name)
}

fn inputs(dir: &Path) -> Vec<Tensor> {
    let reference = TensorStore::open_files(&[dir.join("reference.safetensors")]).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&reference.metadata().unwrap()["inputs"]).unwrap();
    meta.as_object()
        .unwrap()
        .keys()
        .map(|k| {
            let t = reference.get(&format!("{k}.pixel_values")).unwrap();
            Tensor::new(t.shape.to_vec(), t.to_f32().unwrap()).unwrap()
        })
        .collect()
}

const FAMILIES: [&str; 6] = [
    "dinov3_mlp",
    "dinov3_gated",
    "dinov3_noreg_f16",
    "dinov2",
    "dinov2_swiglu",
    "dinov2_reg",
];

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
    for name in FAMILIES {
        let model = Arc::new(Model::load(fixture(name)).unwrap());
        let opts = RunOptions {
            capture_layers: (0..model.config().num_layers).collect(),
        };
        let mut g = Session::new(
            CudaBackend::new(Precision::F32, None).unwrap(),
            model.clone(),
        )
        .unwrap();
        let mut c = Session::new(ReferenceBackend::new(Some(2)).unwrap(), model.clone()).unwrap();
        for x in inputs(&fixture(name)) {
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
        for name in FAMILIES {
            let model = Arc::new(Model::load(fixture(name)).unwrap());
            let mut g =
                Session::new(CudaBackend::new(precision, None).unwrap(), model.clone()).unwrap();
            let mut c =
                Session::new(ReferenceBackend::new(Some(2)).unwrap(), model.clone()).unwrap();
            for x in inputs(&fixture(name)) {
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
