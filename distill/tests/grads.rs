//! Gradients of the student and the distillation objective against PyTorch autograd
//! (fixtures from `tools/make_fixtures.py grads`, computed in float64), plus a
//! finite-difference spot check and thread-count independence.

mod common;

use std::rc::Rc;

use common::{Case, load, reference_grad, t, targets, trainer, weights};
use dinoedge_distill::trainer::On;
use dinoedge_distill::trainer::graph;
use dinoedge_runtime::dispatch::train::cpu::Ctx;

fn compare_grads(c: &Case, prefix: &str, g: &[f32], tol: f64) {
    let mut worst = (0.0f64, String::new());
    for e in &c.layout.entries {
        let got = &g[e.range.clone()];
        let Some(want) = reference_grad(c, prefix, e.id, &e.name) else {
            // Not reached by this loss (heads of the linear loss): must be zero.
            assert!(
                got.iter().all(|&v| v == 0.0),
                "{prefix}: {} has a gradient but torch has none",
                e.name
            );
            continue;
        };
        let num: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum::<f64>().sqrt();
        let rel = num / den.max(1e-20);
        assert!(
            rel < tol,
            "{prefix}: gradient of {} differs from torch: relative error {rel:.2e} (|ref| {den:.3e})",
            e.name
        );
        if rel > worst.0 {
            worst = (rel, e.name.clone());
        }
    }
    eprintln!(
        "{prefix}: worst relative gradient error {:.2e} ({})",
        worst.0, worst.1
    );
}

/// Runs forward + objective + backward; returns (loss, gradients, last_hidden_state).
fn objective_grads(c: &Case, ctx: &Rc<Ctx>, params: &[f32]) -> (f64, Vec<f32>, Vec<f32>) {
    objective_grads_with(c, ctx, params, false)
}

fn objective_grads_with(
    c: &Case,
    ctx: &Rc<Ctx>,
    params: &[f32],
    recompute: bool,
) -> (f64, Vec<f32>, Vec<f32>) {
    let tr = trainer(c, On::Cpu(ctx.clone()), params, recompute, true);
    let pixels = t(&c.refs, "pixel_values");
    let parts = tr
        .gradients_of(&pixels, &targets(c), &weights(), false)
        .unwrap();
    (parts.total, tr.gradients().unwrap(), tr.outputs().unwrap())
}

#[test]
fn gradients_match_pytorch_autograd() {
    // The readable reference kernels and the fast SIMD kernels, each against torch.
    for (kind, ctx) in [
        ("reference", Ctx::reference(Some(2)).unwrap()),
        ("fast", Ctx::new(Some(2)).unwrap()),
    ] {
        eprintln!("{kind} kernels:");
        check_against_torch(&ctx);
    }
}

fn check_against_torch(ctx: &Rc<Ctx>) {
    for name in ["dinov3_mlp", "dinov3_gated", "dinov3_convnext"] {
        let c = load(name);
        // 1. forward, then the gradient of sum(last_hidden_state * R).
        let tr = trainer(&c, On::Cpu(ctx.clone()), &c.params, false, false);
        tr.forward(&t(&c.refs, "pixel_values"), false).unwrap();
        let want = t(&c.refs, "lin.last_hidden_state");
        let err = tr
            .outputs()
            .unwrap()
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err < 2e-5,
            "{name}: training forward differs from transformers by {err}"
        );
        tr.backward_from(&t(&c.refs, "lin.R")).unwrap();
        compare_grads(&c, "lin", &tr.gradients().unwrap(), 1e-5);

        // 2. the full objective, heads included.
        let (loss, g, _) = objective_grads(&c, ctx, &c.params);
        let want_loss = t(&c.refs, "obj.loss")[0] as f64;
        assert!(
            (loss - want_loss).abs() < 1e-5 * want_loss.abs(),
            "{name}: loss {loss} vs torch {want_loss}"
        );
        compare_grads(&c, "obj", &g, 1e-5);
    }
}

#[test]
fn gradients_do_not_depend_on_thread_count() {
    for name in ["dinov3_gated", "dinov3_convnext"] {
        let c = load(name);
        let (_, g1, _) = objective_grads(&c, &Ctx::new(Some(1)).unwrap(), &c.params);
        let (_, g3, _) = objective_grads(&c, &Ctx::new(Some(3)).unwrap(), &c.params);
        assert!(
            g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: gradients differ between 1 and 3 threads"
        );
    }
}

/// Activation recomputation (`--recompute`) gives the same loss and gradients, bit for bit,
/// for plain and gated MLPs with an intermediate output, and keeps far fewer activations.
#[test]
fn recomputing_activations_changes_no_bit() {
    let ctx = Ctx::new(Some(2)).unwrap();
    for name in ["dinov3_mlp", "dinov3_gated"] {
        let c = load(name);
        let (l0, g0, o0) = objective_grads_with(&c, &ctx, &c.params, false);
        let (l1, g1, o1) = objective_grads_with(&c, &ctx, &c.params, true);
        assert_eq!(l0.to_bits(), l1.to_bits(), "{name}: loss");
        assert!(o0.iter().zip(&o1).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(
            g0.iter().zip(&g1).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: gradients differ with recomputation"
        );
    }
    let vits = dinoedge_distill::student::resolve("vit-s16").unwrap();
    let (all, re) = (
        graph::activation_bytes(&vits, 128, (224, 224), 0, false).unwrap(),
        graph::activation_bytes(&vits, 128, (224, 224), 0, true).unwrap(),
    );
    eprintln!(
        "vit-s16 batch 128 at 224: activations {:.2} GiB, recomputing {:.2} GiB",
        all as f64 / (1u64 << 30) as f64,
        re as f64 / (1u64 << 30) as f64
    );
    assert!(re * 4 < all, "{re} vs {all}");
}

#[test]
fn objective_gradient_matches_finite_differences() {
    let c = load("dinov3_mlp");
    let ctx = Ctx::new(Some(2)).unwrap();
    let (_, g, _) = objective_grads(&c, &ctx, &c.params);
    // One coordinate of a few kinds of parameter: LayerScale, norms, tokens, projections, heads.
    let picks = [
        "layer.1.layer_scale2.lambda1",
        "norm.weight",
        "embeddings.cls_token",
        "embeddings.register_tokens",
        "layer.0.attention.k_proj.weight",
        "layer.0.mlp.up_proj.bias",
        "head.1.weight",
        "head.2.bias",
    ];
    for name in picks {
        let e = c
            .layout
            .entries
            .iter()
            .find(|e| e.name.ends_with(name))
            .unwrap_or_else(|| panic!("{name}"));
        // The coordinate with the largest gradient, so the difference is well above f32 noise.
        let i = e
            .range
            .clone()
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        let h = 1e-2f32;
        let mut p = c.params.clone();
        p[i] += h;
        let (lp, _, _) = objective_grads(&c, &ctx, &p);
        p[i] -= 2.0 * h;
        let (lm, _, _) = objective_grads(&c, &ctx, &p);
        let fd = (lp - lm) / (2.0 * h as f64);
        let an = g[i] as f64;
        assert!(
            (fd - an).abs() < 2e-2 * an.abs().max(1e-3),
            "{name}: finite difference {fd:.6e} vs backward {an:.6e}"
        );
    }
}

/// Wrong sizes given to a trainer are errors that say what was expected, not panics.
#[test]
fn wrong_sizes_are_errors() {
    let c = load("dinov3_mlp");
    let tr = trainer(
        &c,
        On::Cpu(Ctx::new(Some(1)).unwrap()),
        &c.params,
        false,
        false,
    );
    let e = tr.forward(&[0.0; 7], false).unwrap_err().to_string();
    assert!(e.contains("7 pixel values"), "{e}");
    let e = tr.backward_from(&[0.0; 3]).unwrap_err().to_string();
    assert!(e.contains("output gradient of 3 values"), "{e}");
    let mut st = common::state(&c.params[1..]);
    let e = tr.save(&mut st).unwrap_err().to_string();
    assert!(e.contains("for a layout of"), "{e}");
}

/// The CPU trainer's bf16 GEMMs (AMX tiles or `vdpbf16ps`, f32 accumulation) against torch's
/// float64 autograd: the same losses and gradients up to bf16 rounding of the linears'
/// operands (8-bit mantissas): a relative L2 error under 5e-2 per parameter (measured worst
/// 2.1e-2, a q_proj weight) and 5e-3 on the loss (measured 4e-4); and still independent of
/// the thread count, bit for bit. Skipped where the CPU has
/// no bf16 dot products (the trainer refuses bf16 there, which is checked instead).
#[test]
fn bf16_gradients_stay_near_pytorch_autograd() {
    let ctx = match Ctx::bf16(Some(2)) {
        Ok(c) => c,
        Err(e) => {
            assert!(e.to_string().contains("--precision f32"), "{e}");
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    for name in ["dinov3_mlp", "dinov3_gated", "dinov3_convnext"] {
        let c = load(name);
        let (loss, g, _) = objective_grads(&c, &ctx, &c.params);
        let want_loss = t(&c.refs, "obj.loss")[0] as f64;
        let rel = (loss - want_loss).abs() / want_loss.abs();
        eprintln!("{name}: bf16 loss {loss} vs torch {want_loss} (relative {rel:.2e})");
        assert!(rel < 5e-3, "{name}: bf16 loss {loss} vs torch {want_loss}");
        compare_grads(&c, "obj", &g, 5e-2);
    }
    let c = load("dinov3_gated");
    let (_, g1, _) = objective_grads(&c, &Ctx::bf16(Some(1)).unwrap(), &c.params);
    let (_, g3, _) = objective_grads(&c, &Ctx::bf16(Some(3)).unwrap(), &c.params);
    assert!(
        g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()),
        "bf16 gradients differ between 1 and 3 threads"
    );
}

/// A ConvNeXt's parameters go into the trainer's orders (depthwise (49, C), downsampling
/// (O, 2, 2, C_in)) and come back out in HF's names, shapes and values unchanged.
#[test]
fn convnext_parameters_round_trip_through_the_trainer_layout() {
    use dinoedge_distill::params::ParamId;
    use dinoedge_runtime::models::convnext::layout::{hub_name, shape};
    let c = load("dinov3_convnext");
    let dinoedge_runtime::ModelConfig::ConvNext(cfg) = &c.cfg else {
        panic!("a ConvNeXt fixture")
    };
    let model = dinoedge_runtime::Model::load(common::fixture("dinov3_convnext")).unwrap();
    let hub = c.layout.hub_tensors(&c.cfg, &c.params).unwrap();
    let mut reordered = 0;
    for e in &c.layout.entries {
        let ParamId::ConvNext(p) = e.id else { continue };
        let want = model.tensor_f32(p).unwrap();
        let (_, shp, _, bytes) = hub.iter().find(|t| t.0 == hub_name(p)).expect("exported");
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(shp, &shape(cfg, p), "{}", e.name);
        assert_eq!(got, want, "{}", e.name);
        if e.transposed.is_some() {
            reordered += 1;
            assert_ne!(
                &c.params[e.range.clone()],
                &want[..],
                "{} is reordered",
                e.name
            );
        }
    }
    // 5 depthwise convs and 3 downsampling convs.
    assert_eq!(reordered, 8);
    assert_eq!(
        hub.len(),
        c.layout.entries.iter().filter(|e| e.id.is_model()).count()
    );
}
