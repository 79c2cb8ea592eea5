//! The DINOv3 ConvNeXt beyond f32 parity (`hf_parity.rs`, `wgpu_parity.rs` and `cuda.rs`
//! check every stage against transformers): the fast CPU backend's reduced precisions
//! against the reference, and bad input (a missing or mis-shaped tensor, an input under
//! 32 px, a stage that does not exist, an int8 section over float weights), each a clear
//! error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dinoedge_runtime::config::{ActivationScheme, QuantConfig};
use dinoedge_runtime::testing::{fixture_dir, fixture_inputs};
use dinoedge_runtime::{
    BackendKind, Model, Precision, RunOptions, SessionOptions, Tensor, create_session,
};

fn session(
    model: &Arc<Model>,
    backend: BackendKind,
    precision: Precision,
) -> Box<dyn dinoedge_runtime::InferenceSession> {
    let opts = SessionOptions {
        backend,
        precision: Some(precision),
        threads: Some(2),
        ..Default::default()
    };
    create_session(model.clone(), &opts).unwrap()
}

/// f16 and bf16 keep mean patch cosine >= 0.999 against the reference, int8 >= 0.99, at
/// the last stage and at a captured one (random weights: a harder case than trained ones,
/// whose activations are smoother).
#[test]
fn reduced_precisions_on_the_fast_cpu_backend() {
    let model = Arc::new(Model::load(fixture_dir("dinov3_convnext")).unwrap());
    let mut reference = session(&model, BackendKind::CpuReference, Precision::F32);
    let opts = RunOptions {
        capture_layers: vec![2],
    };
    for (precision, bar) in [
        (Precision::F32, 0.999_999),
        (Precision::F16, 0.999),
        (Precision::BF16, 0.999),
        (Precision::Int8, 0.99),
    ] {
        let mut fast = session(&model, BackendKind::Cpu, precision);
        for x in fixture_inputs(&fixture_dir("dinov3_convnext")).unwrap() {
            let (a, b) = (
                fast.run(&x, &opts).unwrap(),
                reference.run(&x, &opts).unwrap(),
            );
            for (what, p, q) in [
                ("last", &a.last, &b.last),
                ("stage 2", &a.intermediate[0], &b.intermediate[0]),
            ] {
                let d = q.cls.shape[1];
                let cos =
                    dinoedge_runtime::tensor::mean_row_cosine(&p.patches.data, &q.patches.data, d);
                println!(
                    "cpu {precision} {:?} {what}: mean patch cosine {cos:.6}",
                    x.shape
                );
                assert!(
                    cos >= bar,
                    "{precision} {what} {:?}: {cos} < {bar}",
                    x.shape
                );
            }
        }
    }
}

/// The stride-16 map users ask for is stage 2, (B, H/16, W/16, C2), with the mean as `cls`.
#[test]
fn stages_have_their_own_grid_and_width() {
    let model = Arc::new(Model::load(fixture_dir("dinov3_convnext")).unwrap());
    let mut s = session(&model, BackendKind::Cpu, Precision::F32);
    let x = Tensor::new(vec![1, 3, 96, 64], vec![0.25; 3 * 96 * 64]).unwrap();
    let f = s
        .run(
            &x,
            &RunOptions {
                capture_layers: vec![0, 2],
            },
        )
        .unwrap();
    assert_eq!(f.grid, (3, 2));
    assert_eq!(f.last.patches.shape, [1, 3, 2, 40]);
    assert_eq!(f.last.registers.shape, [1, 0, 40]);
    assert_eq!(f.intermediate[0].patches.shape, [1, 24, 16, 16]);
    assert_eq!(f.intermediate[1].patches.shape, [1, 6, 4, 32]);
    assert_eq!(f.intermediate[1].cls.shape, [1, 32]);
}

fn copy_fixture(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir("dinov3_convnext").join(f), to.join(f)).unwrap();
    }
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("model");
    (t, d)
}

/// Rewrites the fixture's weights through `edit` (name -> tensor).
fn with_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, v.shape().to_vec(), data)
        })
        .collect();
    edit(&mut tensors);
    let raws: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&raws)
        .map(|((n, s, _), raw)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), raw);
            (n.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn a_missing_stage_tensor_is_named() {
    let (_t, dir) = scratch();
    copy_fixture(&dir);
    with_tensors(&dir, |t| {
        t.retain(|(n, _, _)| n != "stages.2.layers.0.pointwise_conv1.weight")
    });
    let e = Model::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("stages.2.layers.0.pointwise_conv1.weight") && e.contains("[128, 32]"),
        "{e}"
    );
}

#[test]
fn a_mis_shaped_tensor_is_named_with_both_shapes() {
    let (_t, dir) = scratch();
    copy_fixture(&dir);
    with_tensors(&dir, |t| {
        let dw = t
            .iter_mut()
            .find(|(n, _, _)| n == "stages.1.layers.1.depthwise_conv.weight")
            .unwrap();
        dw.1 = vec![24, 1, 49];
    });
    let e = Model::load(&dir).unwrap_err().to_string();
    assert!(e.contains("stages.1.layers.1.depthwise_conv.weight"), "{e}");
    assert!(
        e.contains("[24, 1, 7, 7]") && e.contains("[24, 1, 49]"),
        "{e}"
    );
}

#[test]
fn inputs_under_32_px_and_unknown_stages_are_refused() {
    let model = Arc::new(Model::load(fixture_dir("dinov3_convnext")).unwrap());
    let mut s = session(&model, BackendKind::Cpu, Precision::F32);
    let small = Tensor::new(vec![1, 3, 31, 64], vec![0.0; 3 * 31 * 64]).unwrap();
    let e = s
        .run(&small, &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("64x31") && e.contains("32x32"), "{e}");
    let ok = Tensor::new(vec![1, 3, 32, 32], vec![0.0; 3 * 32 * 32]).unwrap();
    let e = s
        .run(
            &ok,
            &RunOptions {
                capture_layers: vec![4],
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("stage 4") && e.contains("0 to 3"), "{e}");
}

/// An int8 section over float tensors names the first tensor that should be I8.
#[test]
fn an_int8_section_over_float_weights_is_refused() {
    let (_t, dir) = scratch();
    copy_fixture(&dir);
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["quantization"] =
        serde_json::to_value(QuantConfig::w8a8(ActivationScheme::DynamicPerToken)).unwrap();
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    let e = Model::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("int8 model") && e.contains("weight") && e.contains("not I8"),
        "{e}"
    );
}
