//! Quantisation of the real teacher on real photos: the targets of the quantisation issue.
//!
//! - f16: mean patch cosine to f32 >= 0.999.
//! - int8 W8A8 (calibrated SmoothQuant, dynamic activations): mean patch cosine >= 0.99,
//!   stereo correspondence accuracy within 2 points of f32 on every real pair, file size
//!   <= 0.3x the f32 file.

use std::sync::Arc;

use dinoedge::compare::{average, layer_cosines};
use dinoedge::runtime::import::{import_onnx, write_model_dir};
use dinoedge::runtime::quant::{self, QuantizeOptions, Smoothing};
use dinoedge::runtime::{ActivationScheme, Preprocessor};
use dinoedge::{
    Embedder, EmbedderOptions, InputMode, Model, Precision, SessionOptions, assets, image_io,
    stereo,
};
use dinoedge_tests::{TEACHER_ONNX, asset};

fn size(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len()
}

#[test]
fn real_teacher_quantisation_meets_its_targets() {
    let Some(onnx) = asset(TEACHER_ONNX) else {
        return;
    };
    let Some(_) = asset("scikit-image/skimage/data/motorcycle_disp.npy") else {
        return;
    };
    let Some(_) = asset("opencv-doc/usr/share/doc/opencv-doc/examples/data/aloeGT.png") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let float_dir = tmp.path().join("f32");
    write_model_dir(&import_onnx(&onnx).unwrap(), &float_dir, &onnx).unwrap();
    let float = Arc::new(Model::load(&float_dir).unwrap());

    let photos = assets::default_photos();
    assert!(
        photos.len() >= 6,
        "expected the real photos, found {photos:?}"
    );
    let pre = Preprocessor::for_model(float.config(), None, 224).unwrap();
    let pixels: Vec<_> = photos
        .iter()
        .map(|p| pre.run(&image_io::load_rgb(p).unwrap()).unwrap())
        .collect();
    let calib = quant::calibrate(&float, &pixels, Some(2), "scikit-image photos", |_| {}).unwrap();

    let layers: Vec<usize> = (0..float.config().num_layers()).collect();
    let embedder = |m: &Arc<Model>, precision, mode| {
        Embedder::from_model(
            m.clone(),
            &EmbedderOptions {
                session: SessionOptions {
                    precision,
                    threads: Some(2),
                    ..Default::default()
                },
                mode,
                capture_layers: layers.clone(),
            },
        )
        .unwrap()
    };
    let pairs = stereo::available_pairs().unwrap();
    assert_eq!(pairs.len(), 2, "motorcycle and aloe pairs");
    let mut ref_fixed = embedder(&float, Some(Precision::F32), InputMode::Fixed(224));
    let mut ref_dense = embedder(&float, Some(Precision::F32), InputMode::Dense(448));
    let ref_stereo: Vec<_> = pairs
        .iter()
        .map(|p| stereo::evaluate(&mut ref_dense, p).unwrap())
        .collect();

    for (precision, min_cos) in [(Precision::F16, 0.999), (Precision::Int8, 0.99)] {
        let opts = QuantizeOptions {
            precision,
            activations: ActivationScheme::DynamicPerToken,
            smoothing: Smoothing::Auto,
            threads: Some(2),
        };
        let q = quant::quantize(&float, &opts, Some(&calib)).unwrap();
        let dir = tmp.path().join(precision.to_string());
        quant::write(&q, &dir, &float_dir).unwrap();
        let qm = Arc::new(Model::load(&dir).unwrap());
        let mut qe = embedder(&qm, None, InputMode::Fixed(224));
        let per_image: Vec<_> = photos
            .iter()
            .map(|p| {
                let img = image_io::load_rgb(p).unwrap();
                layer_cosines(&ref_fixed.embed(&img).unwrap(), &qe.embed(&img).unwrap())
            })
            .collect();
        let cos = average(&per_image);
        let last = cos.last().unwrap();
        let ratio = size(&dir) as f64 / size(&float_dir) as f64;
        println!(
            "{precision}: final patch cosine {:.5}, CLS cosine {:.5}, size ratio {ratio:.3}",
            last.patches, last.cls
        );
        assert!(
            last.patches >= min_cos,
            "{precision}: patch cosine {}",
            last.patches
        );
        let mut qd = embedder(&qm, None, InputMode::Dense(448));
        for (p, r) in pairs.iter().zip(&ref_stereo) {
            let s = stereo::evaluate(&mut qd, p).unwrap();
            println!(
                "  stereo {}: {:.2}% vs f32 {:.2}%",
                p.name,
                s.accuracy * 100.0,
                r.accuracy * 100.0
            );
            assert!(
                (s.accuracy - r.accuracy).abs() * 100.0 <= 2.0,
                "{precision} {}: {} vs {}",
                p.name,
                s.accuracy,
                r.accuracy
            );
            assert!(
                r.accuracy > 0.3,
                "the float teacher should find many correspondences on {}",
                p.name
            );
        }
        if precision == Precision::Int8 {
            assert!(ratio <= 0.3, "int8 file is {ratio:.3}x the f32 file");
        }
    }
}
