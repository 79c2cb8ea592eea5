//! ONNX import: the fixture models exported by `tools/make_fixtures.py onnx-export` are
//! imported, written in HF layout, reloaded, and must reproduce HF's reference outputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dinoedge_runtime::import::{import_onnx, write_model_dir};
use dinoedge_runtime::testing::compare;
use dinoedge_runtime::weights::TensorStore;
use dinoedge_runtime::{Model, RunOptions, SessionOptions, Tensor, VitConfig, create_session};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn roundtrip(name: &str) {
    let onnx = fixtures().join("onnx").join(format!("{name}.onnx"));
    let imp = import_onnx(&onnx).unwrap();
    println!("{name}: {:?}", imp.notes);
    let original =
        VitConfig::from_file(&fixtures().join("hf").join(name).join("config.json")).unwrap();
    assert_eq!(
        imp.config, original,
        "inferred config differs from the exported model's"
    );
    let out = tempfile::tempdir().unwrap();
    write_model_dir(&imp, out.path(), &onnx).unwrap();
    let model = Arc::new(Model::load(out.path()).unwrap());
    let mut s = create_session(model, &SessionOptions::default()).unwrap();
    let reference = TensorStore::open_files(&[fixtures()
        .join("hf")
        .join(name)
        .join("reference.safetensors")])
    .unwrap();
    for key in ["sq", "rect"] {
        let get = |k: &str| {
            let t = reference.get(&format!("{key}.{k}")).unwrap();
            Tensor::new(t.shape.to_vec(), t.to_f32().unwrap()).unwrap()
        };
        let f = s.run(&get("pixel_values"), &RunOptions::default()).unwrap();
        let want = get("last_hidden_state");
        let d = f.dim();
        // Compare the patch tokens (the last grid*grid rows of each image).
        let hw = f.grid.0 * f.grid.1;
        let n = want.shape[1];
        let mut want_patches = Vec::new();
        for b in 0..f.batch() {
            want_patches.extend_from_slice(&want.data[(b * n + n - hw) * d..(b + 1) * n * d]);
        }
        let c = compare(
            &format!("{name}/{key}"),
            &f.last.patches.data,
            &want_patches,
            d,
            1e-4,
        );
        println!("{c}");
        c.assert_ok();
    }
}

#[test]
fn dinov2_export_round_trips() {
    roundtrip("dinov2");
}

#[test]
fn dinov3_export_round_trips() {
    roundtrip("dinov3_mlp");
}

#[test]
fn unknown_graph_is_a_clear_error() {
    let e = import_onnx(&fixtures().join("onnx/not_a_vit.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an HF DINOv2/DINOv3 backbone"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x08\x07garbage that is not protobuf \xff\xff\xff").unwrap();
    let e = import_onnx(&junk).unwrap_err().to_string();
    assert!(
        e.contains("junk.onnx") && e.contains("cannot import ONNX"),
        "{e}"
    );
    let e = import_onnx(&dir.path().join("missing.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.onnx"), "{e}");
    // A folder (or FIFO, device) is refused before anything is read from it.
    std::fs::create_dir(dir.path().join("folder.onnx")).unwrap();
    let e = import_onnx(&dir.path().join("folder.onnx"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("folder.onnx") && e.contains("not a regular file"),
        "{e}"
    );
}

/// A DINOv3 ConvNeXt export (named convs and norms, anonymous pointwise MatMuls) imports to
/// the exported model's config, and the written directory matches transformers at every
/// stage.
#[test]
fn convnext_export_round_trips() {
    use dinoedge_runtime::import::{Import, import_model, write_import};
    let name = "dinov3_convnext";
    let onnx = fixtures().join("onnx").join(format!("{name}.onnx"));
    let imp = import_model(&onnx).unwrap();
    println!("{name}: {:?}", imp.notes());
    let Import::ConvNext(c) = &imp else {
        panic!("not read as a ConvNeXt: {imp:?}")
    };
    let original = dinoedge_runtime::config::ModelConfig::from_file(
        &fixtures().join("hf").join(name).join("config.json"),
    )
    .unwrap();
    assert_eq!(
        dinoedge_runtime::config::ModelConfig::ConvNext(c.config.clone()),
        original
    );
    let out = tempfile::tempdir().unwrap();
    write_import(&imp, out.path(), &onnx).unwrap();
    let model = Arc::new(Model::load(out.path()).unwrap());
    let mut s = create_session(model, &SessionOptions::default()).unwrap();
    dinoedge_runtime::testing::check_against_transformers(name, "imported", &mut *s, 1e-4, 1);
}

/// A stage with block 1 but no block 0 is refused, naming the stray tensor, not imported
/// without its block.
#[test]
fn convnext_with_a_missing_block_is_refused() {
    let onnx = fixtures().join("onnx/convnext_gap.onnx");
    let e = dinoedge_runtime::import::import_model(&onnx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stages.0.layers.1.gamma") && e.contains("stages.0.layers.0.gamma"),
        "{e}"
    );
}
