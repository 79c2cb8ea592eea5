//! CPU reference against HF transformers (float64) on the committed random-weight fixtures
//! written by `tools/make_fixtures.py hf`: every family and variant, several input sizes,
//! last layer and every intermediate layer.
//!
//! Tolerance: max abs error <= 1e-4 x max(|reference|, 1). The reference is float64; our
//! f32 forwards differ by accumulated rounding only. Each case runs on the CPU reference
//! backend and on the fast CPU backend with every SIMD family this CPU supports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dinoedge_runtime::backend::cpu::isa::Isa;
use dinoedge_runtime::backend::cpu::{CpuBackend, ReferenceBackend};
use dinoedge_runtime::testing::compare;
use dinoedge_runtime::weights::TensorStore;
use dinoedge_runtime::{InferenceSession, Model, Precision, RunOptions, Session, Tensor};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/hf")
        .join(name)
}

fn tensor(store: &TensorStore, key: &str) -> Tensor {
    let t = store
        .get(key)
        .unwrap_or_else(|| panic!("reference has no {key}"));
    Tensor::new(t.shape.to_vec(), t.to_f32().unwrap()).unwrap()
}

/// The sessions every case runs on: the reference, and the fast backend per SIMD family.
fn sessions(model: &Arc<Model>, threads: usize) -> Vec<(String, Box<dyn InferenceSession>)> {
    let mut v: Vec<(String, Box<dyn InferenceSession>)> = vec![(
        "cpu-ref".into(),
        Box::new(
            Session::new(ReferenceBackend::new(Some(threads)).unwrap(), model.clone()).unwrap(),
        ),
    )];
    for isa in Isa::all_supported() {
        let be = CpuBackend::with_isa(Some(threads), Precision::F32, isa).unwrap();
        v.push((
            format!("cpu/{isa}"),
            Box::new(Session::new(be, model.clone()).unwrap()),
        ));
    }
    v
}

fn check_case(name: &str, threads: usize) {
    let dir = fixture(name);
    let model = Arc::new(Model::load(&dir).unwrap());
    for (backend, session) in sessions(&model, threads) {
        check_session(name, &backend, session, &model);
    }
}

fn check_session(name: &str, backend: &str, mut session: Box<dyn InferenceSession>, model: &Model) {
    let dir = fixture(name);
    let cfg = model.config().clone();
    let reference = TensorStore::open_files(&[dir.join("reference.safetensors")]).unwrap();
    assert_eq!(
        reference
            .metadata()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("dinoedge-fixtures-1")
    );
    let inputs: serde_json::Value =
        serde_json::from_str(&reference.metadata().unwrap()["inputs"]).unwrap();
    let all_layers: Vec<usize> = (0..cfg.num_layers).collect();
    for key in inputs.as_object().unwrap().keys() {
        let pixels = tensor(&reference, &format!("{key}.pixel_values"));
        let f = session
            .run(
                &pixels,
                &RunOptions {
                    capture_layers: all_layers.clone(),
                },
            )
            .unwrap();
        let want = tensor(&reference, &format!("{key}.last_hidden_state"));
        let (b, n, d) = (want.shape[0], want.shape[1], want.shape[2]);
        assert_eq!((f.batch(), f.dim()), (b, d), "{name}/{key}");
        assert_eq!(
            cfg.num_prefix_tokens() + f.grid.0 * f.grid.1,
            n,
            "{name}/{key}: token count"
        );
        let join = |lf: &dinoedge_runtime::LayerFeatures| -> Vec<f32> {
            let r = cfg.num_register_tokens;
            let hw = f.grid.0 * f.grid.1;
            let mut v = Vec::with_capacity(b * n * d);
            for i in 0..b {
                v.extend_from_slice(&lf.cls.data[i * d..(i + 1) * d]);
                v.extend_from_slice(&lf.registers.data[i * r * d..(i + 1) * r * d]);
                v.extend_from_slice(&lf.patches.data[i * hw * d..(i + 1) * hw * d]);
            }
            v
        };
        let c = compare(
            &format!("{backend} {name}/{key}/last"),
            &join(&f.last),
            &want.data,
            d,
            TOL,
        );
        println!("{c}");
        c.assert_ok();
        for lf in &f.intermediate {
            let want = tensor(&reference, &format!("{key}.layer{}", lf.layer));
            let c = compare(
                &format!("{backend} {name}/{key}/layer{}", lf.layer),
                &join(lf),
                &want.data,
                d,
                TOL,
            );
            println!("{c}");
            c.assert_ok();
        }
    }
}

#[test]
fn dinov3_mlp() {
    check_case("dinov3_mlp", 2);
}

#[test]
fn dinov3_gated_bf16_sharded() {
    check_case("dinov3_gated", 1);
}

#[test]
fn dinov3_no_registers_f16() {
    check_case("dinov3_noreg_f16", 2);
}

#[test]
fn dinov2_bicubic_positions() {
    check_case("dinov2", 2);
}

#[test]
fn dinov2_giant_style_swiglu_f16() {
    check_case("dinov2_swiglu", 3);
}

#[test]
fn dinov2_with_registers_antialiased_positions() {
    check_case("dinov2_reg", 2);
}
