//! CPU reference against HF transformers (float64) on the committed random-weight fixtures
//! written by `tools/make_fixtures.py hf`: every family and variant, several input sizes,
//! last layer and every intermediate layer (a ConvNeXt's: the pooled output and every
//! stage's raw map, at batch 2, non-square and not a multiple of 32).
//!
//! Tolerance: max abs error <= 1e-4 x max(|reference|, 1). The reference is float64; our
//! f32 forwards differ by accumulated rounding only. Each case runs on the CPU reference
//! backend and on the fast CPU backend with every SIMD family this CPU supports.

use std::sync::Arc;

use dinoedge_runtime::backend::cpu::isa::Isa;
use dinoedge_runtime::dispatch::cpu::CpuBackend;
use dinoedge_runtime::dispatch::reference::ReferenceBackend;
use dinoedge_runtime::models::Architecture;
use dinoedge_runtime::models::convnext::ConvNext;
use dinoedge_runtime::models::vit::Vit;
use dinoedge_runtime::testing::{check_against_transformers, fixture_dir};
use dinoedge_runtime::{InferenceSession, Model, Precision, Session};

const TOL: f32 = 1e-4;

/// The sessions every case runs on: the reference, and the fast backend per SIMD family.
fn sessions<A: Architecture>(
    model: &Arc<Model>,
    threads: usize,
) -> Vec<(String, Box<dyn InferenceSession>)> {
    let mut v: Vec<(String, Box<dyn InferenceSession>)> = vec![(
        "cpu-ref".into(),
        Box::new(
            Session::<_, A>::new(ReferenceBackend::new(Some(threads)).unwrap(), model.clone())
                .unwrap(),
        ),
    )];
    for isa in Isa::all_supported() {
        let be = CpuBackend::with_isa(Some(threads), Precision::F32, isa).unwrap();
        v.push((
            format!("cpu/{isa}"),
            Box::new(Session::<_, A>::new(be, model.clone()).unwrap()),
        ));
    }
    v
}

fn check_case(name: &str, threads: usize) {
    check_arch::<Vit>(name, threads)
}

fn check_arch<A: Architecture>(name: &str, threads: usize) {
    let model = Arc::new(Model::load(fixture_dir(name)).unwrap());
    for (backend, mut session) in sessions::<A>(&model, threads) {
        check_against_transformers(name, &backend, &mut *session, TOL, 1);
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

#[test]
fn dinov3_convnext_every_stage() {
    check_arch::<ConvNext>("dinov3_convnext", 2);
}

#[test]
fn dinov3_convnext_f16() {
    check_arch::<ConvNext>("dinov3_convnext_f16", 1);
}
