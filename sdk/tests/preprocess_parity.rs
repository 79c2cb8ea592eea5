//! Our preprocessing against HF's image processors (torchvision backend), on a synthetic
//! picture written by `tools/make_fixtures.py preprocess`.
//!
//! - DINOv3 (float bilinear antialias): max abs error <= 1e-5 after normalisation.
//! - DINOv2 (8-bit bicubic antialias with int16 fixed-point weights, center crop): exact up
//!   to float rounding of the fused normalisation (<= 1e-5).
//! - The fused video-frame path (`FramePreprocessor`, the live pipeline's) on the same
//!   references: <= 2e-5 (its own bound against our exact path is 1e-5), and the features
//!   it gives against those of the exact path.

use std::path::{Path, PathBuf};

use dinoedge::image_io::load_rgb;
use dinoedge::runtime::preprocess::{IMAGENET_MEAN, IMAGENET_STD, Preprocessor, Resize};
use dinoedge::runtime::testing::compare;
use dinoedge::runtime::weights::TensorStore;
use dinoedge::runtime::{Features, FramePreprocessor, Tensor};
use dinoedge::{Embedder, EmbedderOptions, InputMode};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/preprocess")
}

fn check(name: &str, resize: Resize) {
    let img = load_rgb(&dir().join("synthetic.png")).unwrap();
    let pre = Preprocessor {
        resize,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    let got = pre.run(&img).unwrap();
    compare_to_hf(name, &got, 1e-5);
    let mut frames = FramePreprocessor::new(pre);
    let mut fused = Tensor::empty();
    frames.run_into(&img, &mut fused).unwrap();
    compare_to_hf(name, &fused, 2e-5);
}

fn compare_to_hf(name: &str, got: &Tensor, tol: f32) {
    let reference = TensorStore::open_files(&[dir().join("reference.safetensors")]).unwrap();
    let want = reference.get(name).unwrap();
    assert_eq!(got.shape, want.shape, "{name}");
    let c = compare(name, &got.data, &want.to_f32().unwrap(), 0, tol);
    println!("{c}");
    c.assert_ok();
}

#[test]
fn dinov3_default_224() {
    check(
        "dinov3_224",
        Resize::Exact {
            height: 224,
            width: 224,
        },
    );
}

#[test]
fn dinov3_non_square_downscale_and_upscale() {
    check(
        "dinov3_48x64",
        Resize::Exact {
            height: 48,
            width: 64,
        },
    );
}

#[test]
fn dinov2_shortest_edge_256_crop_224() {
    check(
        "dinov2_224",
        Resize::ShortestEdgeCrop {
            shortest: 256,
            crop_height: 224,
            crop_width: 224,
        },
    );
}

#[test]
fn dinov2_small_shortest_edge_and_crop() {
    check(
        "dinov2_28",
        Resize::ShortestEdgeCrop {
            shortest: 40,
            crop_height: 28,
            crop_width: 28,
        },
    );
}

#[test]
fn frames_give_the_features_of_the_exact_path() {
    let img = load_rgb(&dir().join("synthetic.png")).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf/dinov3_mlp");
    let mut emb = Embedder::load(
        &model,
        &EmbedderOptions {
            mode: InputMode::Dense(48),
            ..Default::default()
        },
    )
    .unwrap();
    let exact = emb.embed(&img).unwrap();
    let (mut px, mut f) = (Tensor::empty(), Features::empty());
    for _ in 0..2 {
        emb.preprocess_frame_into(&img, &mut px).unwrap();
        emb.embed_pixels_into(&px, &mut f).unwrap();
    }
    assert_eq!(f.grid, exact.grid);
    let c = compare(
        "patches",
        &f.last.patches.data,
        &exact.last.patches.data,
        0,
        1e-4,
    );
    println!("{c}");
    c.assert_ok();
}
