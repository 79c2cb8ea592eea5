//! The wgpu backend against the CPU reference, on whatever adapter wgpu finds (in CI: Mesa
//! lavapipe, a software Vulkan). Tolerances:
//! - f32: max abs error <= 1e-3 x max(|reference|, 1), every layer of every fixture family,
//!   square, non-square and batch-2 inputs;
//! - f16 weights: mean patch cosine >= 0.999.
//!
//! Without any adapter the tests print SKIPPED (and fail under DINOEDGE_REQUIRE_WGPU=1).

use std::sync::Arc;

use dinoedge_runtime::dispatch::reference::ReferenceBackend;
use dinoedge_runtime::dispatch::wgpu::WgpuBackend;
use dinoedge_runtime::dispatch::{Backend, Epilogue, HostLinear};
use dinoedge_runtime::models::convnext::ConvNext;
use dinoedge_runtime::models::vit::Vit;
use dinoedge_runtime::testing::{
    CONVNEXT_FIXTURES, FIXTURE_FAMILIES, assert_patch_cosines, check_against_transformers, compare,
    fixture_dir, fixture_inputs,
};
use dinoedge_runtime::{Activation, InputLimits, Model, Precision, RunOptions, Session, Tensor};

fn backend(precision: Precision) -> Option<WgpuBackend> {
    match WgpuBackend::new(precision, None) {
        Ok(b) => Some(b),
        Err(e) => {
            if std::env::var("DINOEDGE_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("wgpu required but unavailable: {e}");
            }
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

#[test]
fn f32_matches_the_cpu_reference_on_every_fixture() {
    let Some(_probe) = backend(Precision::F32) else {
        return;
    };
    for name in FIXTURE_FAMILIES {
        let model = Arc::new(Model::load(fixture_dir(name)).unwrap());
        let layers: Vec<usize> = (0..model.config().num_layers()).collect();
        let opts = RunOptions {
            capture_layers: layers,
        };
        let mut gpu = Session::<_, Vit>::new(
            WgpuBackend::new(Precision::F32, None).unwrap(),
            model.clone(),
        )
        .unwrap();
        let mut cpu =
            Session::<_, Vit>::new(ReferenceBackend::new(Some(2)).unwrap(), model.clone()).unwrap();
        for x in fixture_inputs(&fixture_dir(name)).unwrap() {
            let (g, c) = (gpu.run(&x, &opts).unwrap(), cpu.run(&x, &opts).unwrap());
            let d = c.dim();
            for (gl, cl) in std::iter::once((&g.last, &c.last))
                .chain(g.intermediate.iter().zip(&c.intermediate))
            {
                for (what, a, b) in [
                    ("cls", &gl.cls, &cl.cls),
                    ("registers", &gl.registers, &cl.registers),
                    ("patches", &gl.patches, &cl.patches),
                ] {
                    let cmp = compare(
                        &format!("wgpu {name} {:?} layer {} {what}", x.shape, cl.layer),
                        &a.data,
                        &b.data,
                        d,
                        1e-3,
                    );
                    cmp.assert_ok();
                }
            }
            println!("{name} {:?}: ok (grid {:?})", x.shape, g.grid);
        }
    }
}

/// ConvNeXt (dwconv, the channels-last im2col and token_pool in WGSL) against transformers'
/// float64 outputs: f32 at every stage within 1e-3; f16 weights at mean patch cosine >= 0.999
/// against the CPU reference.
#[test]
fn convnext_matches_transformers_at_every_stage() {
    let Some(_probe) = backend(Precision::F32) else {
        return;
    };
    for name in CONVNEXT_FIXTURES {
        let model = Arc::new(Model::load(fixture_dir(name)).unwrap());
        let be = WgpuBackend::new(Precision::F32, None).unwrap();
        let mut gpu = Session::<_, ConvNext>::new(be, model.clone()).unwrap();
        let worst = check_against_transformers(name, "wgpu", &mut gpu, 1e-3, 2);
        println!("wgpu f32 {name}: worst relative error {worst:.2e}");
        let Ok(be) = WgpuBackend::new(Precision::F16, None) else {
            continue;
        };
        let mut half = Session::<_, ConvNext>::new(be, model.clone()).unwrap();
        let mut cpu =
            Session::<_, ConvNext>::new(ReferenceBackend::new(Some(2)).unwrap(), model).unwrap();
        assert_patch_cosines(&format!("wgpu f16 {name}"), name, &mut half, &mut cpu);
    }
}

#[test]
fn f16_weights_keep_patch_cosine_above_0999() {
    let Some(probe) = backend(Precision::F32) else {
        return;
    };
    drop(probe);
    let be = match WgpuBackend::new(Precision::F16, None) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED f16: {e}");
            return;
        }
    };
    drop(be);
    for name in FIXTURE_FAMILIES {
        let model = Arc::new(Model::load(fixture_dir(name)).unwrap());
        let mut gpu = Session::<_, Vit>::new(
            WgpuBackend::new(Precision::F16, None).unwrap(),
            model.clone(),
        )
        .unwrap();
        let mut cpu =
            Session::<_, Vit>::new(ReferenceBackend::new(Some(2)).unwrap(), model.clone()).unwrap();
        assert_patch_cosines(&format!("wgpu f16 {name}"), name, &mut gpu, &mut cpu);
    }
}

#[test]
fn matmul_kernel_edges_and_epilogues() {
    let Some(be) = backend(Precision::F32) else {
        return;
    };
    let mut seed = 11u32;
    let mut rnd = || {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
    };
    for (r, k, o) in [
        (1, 1, 1),
        (3, 17, 5),
        (65, 33, 130),
        (200, 64, 64),
        (64, 100, 63),
    ] {
        let x: Vec<f32> = (0..r * k).map(|_| rnd()).collect();
        let w: Vec<f32> = (0..o * k).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..o).map(|_| rnd()).collect();
        let gamma: Vec<f32> = (0..o).map(|_| rnd()).collect();
        let resid: Vec<f32> = (0..r * o).map(|_| rnd()).collect();
        let host = HostLinear {
            name: "t".into(),
            out_features: o,
            in_features: k,
            weight: w.clone(),
            bias: Some(b.clone()),
            int8: None,
        };
        let lin = be.linear(host).unwrap();
        let (xb, gb) = (be.upload(&x).unwrap(), be.upload(&gamma).unwrap());
        for (epi_name, cpu_epi) in [("store", 0), ("gelu", 1), ("residual", 2)] {
            let mut out = be.upload(&resid).unwrap();
            let epi = match cpu_epi {
                0 => Epilogue::Store,
                1 => Epilogue::Act(Activation::Gelu),
                _ => Epilogue::Residual(&gb),
            };
            be.matmul(&mut out, &xb, &lin, r, epi).unwrap();
            let mut got = vec![0.0; r * o];
            be.read(&out, &mut got).unwrap();
            let mut want = resid.clone();
            let e = match cpu_epi {
                0 => dinoedge_runtime::ops::matmul::Epi::Store,
                1 => dinoedge_runtime::ops::matmul::Epi::Act(Activation::Gelu),
                _ => dinoedge_runtime::ops::matmul::Epi::Residual(&gamma),
            };
            dinoedge_runtime::ops::matmul::cpu::matmul_forward(
                &mut want,
                &x,
                &w,
                Some(&b),
                k,
                o,
                e,
            );
            compare(
                &format!("wgpu matmul {r}x{k}x{o} {epi_name}"),
                &got,
                &want,
                0,
                1e-5,
            )
            .assert_ok();
        }
    }
}

#[test]
fn inputs_beyond_the_device_limits_are_a_clear_error() {
    let Some(be) = backend(Precision::F32) else {
        return;
    };
    let limit = be.adapter_limits().max_storage_buffer_binding_size as usize;
    let model = Arc::new(Model::load(fixture_dir("dinov3_mlp")).unwrap());
    // The device's limit, not the session's token limit, is what this checks.
    let mut s = Session::<_, Vit>::new(be, model)
        .unwrap()
        .with_limits(InputLimits {
            max_tokens: usize::MAX,
            ..Default::default()
        });
    // A pixel buffer just over the binding limit.
    let side = (((limit / 4 / 3) as f64).sqrt() as usize + 16) / 16 * 16;
    let x = Tensor::zeros(vec![1, 3, side, side]);
    let e = s
        .run(&x, &RunOptions::default())
        .expect_err("too large")
        .to_string();
    assert!(
        e.contains("max_storage_buffer_binding_size") && e.contains("smaller input"),
        "{e}"
    );
}
