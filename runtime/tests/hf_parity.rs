//! CPU reference against HF transformers (float64) on the committed random-weight fixtures
//! written by `tools/make_fixtures.py hf`: every family and variant, several input sizes,
//! last layer and every intermediate layer.
//!
//! Tolerance: max abs error <= 1e-4 x max(|reference|, 1). The reference is float64; our
//! f32 forward differs by accumulated rounding only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dinoedge_runtime::testing::compare;
use dinoedge_runtime::weights::TensorStore;
use dinoedge_runtime::{Model, RunOptions, SessionOptions, Tensor, create_session};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf").join(name)
}

fn tensor(store: &TensorStore, key: &str) -> Tensor {
    let t = store.get(key).unwrap_or_else(|| panic!("reference has no {key}"));
    Tensor::new(t.shape.to_vec(), t.to_f32().unwrap()).unwrap()
}

fn check_case(name: &str, threads: usize) {
    let dir = fixture(name);
    let model = Arc::new(Model::load(&dir).unwrap());
    let cfg = model.config().clone();
    let reference = TensorStore::open_files(&[dir.join("reference.safetensors")]).unwrap();
    assert_eq!(reference.metadata().and_then(|m| m.get("format")).map(String::as_str), Some("dinoedge-fixtures-1"));
    let inputs: serde_json::Value = serde_json::from_str(&reference.metadata().unwrap()["inputs"]).unwrap();
    let mut session = create_session(model, &SessionOptions { threads: Some(threads), ..Default::default() }).unwrap();
    let all_layers: Vec<usize> = (0..cfg.num_layers).collect();
    for key in inputs.as_object().unwrap().keys() {
        let pixels = tensor(&reference, &format!("{key}.pixel_values"));
        let f = session.run(&pixels, &RunOptions { capture_layers: all_layers.clone() }).unwrap();
        let want = tensor(&reference, &format!("{key}.last_hidden_state"));
        let (b, n, d) = (want.shape[0], want.shape[1], want.shape[2]);
        assert_eq!((f.batch(), f.dim()), (b, d), "{name}/{key}");
        assert_eq!(cfg.num_prefix_tokens() + f.grid.0 * f.grid.1, n, "{name}/{key}: token count");
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
        let c = compare(&format!("{name}/{key}/last"), &join(&f.last), &want.data, d, TOL);
        println!("{c}");
        c.assert_ok();
        for lf in &f.intermediate {
            let want = tensor(&reference, &format!("{key}.layer{}", lf.layer));
            let c = compare(&format!("{name}/{key}/layer{}", lf.layer), &join(lf), &want.data, d, TOL);
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
