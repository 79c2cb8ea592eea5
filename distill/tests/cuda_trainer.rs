//! The CUDA trainer (the runtime's op kernels, `distill/src/cuda/{loss,optim}.cu` and the host
//! code) against
//! PyTorch autograd and the CPU trainer, on every device at hand: the CPU emulator of the
//! kernels always, and with `--features cuda` the GPU where one is present (the device
//! script runs this binary with `DINOEDGE_TRAINER_DEVICES=cuda DINOEDGE_REQUIRE_CUDA=1`).
//! With the feature, every kernel is also compiled by NVRTC for sm_75 to sm_90 (no GPU needed).
//!
//! Tolerances: f32 GEMMs, relative L2 error of every parameter's gradient < 1e-4 against
//! float64 autograd; bf16 GEMMs (the training mode; inputs rounded to 8 mantissa bits), < 5e-2
//! (measured: 2.1e-2 worst, a q_proj weight).

mod common;

use std::sync::Arc;

use common::{Case, load, reference_grad, state, t, targets, trainer, weights};

use dinoedge_distill::cuda::{Device, Elem};
use dinoedge_distill::loss::LossParts;
use dinoedge_distill::optim::OptimConfig;
use dinoedge_distill::trainer::{On, StepConfig, Stepped, Trainer};
use dinoedge_runtime::dispatch::train::cpu::Ctx;

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    num.sqrt() / den.sqrt().max(1e-20)
}

fn student(dev: &Arc<dyn Device>, c: &Case, ty: Elem, recompute: bool) -> Trainer {
    trainer(c, On::Device(dev.clone(), ty), &c.params, recompute, true)
}

/// The devices to check: `DINOEDGE_TRAINER_DEVICES` (default "emu,cuda").
fn devices() -> Vec<(&'static str, Arc<dyn Device>)> {
    let want = std::env::var("DINOEDGE_TRAINER_DEVICES").unwrap_or_else(|_| "emu,cuda".into());
    let mut out: Vec<(&'static str, Arc<dyn Device>)> = Vec::new();
    if want.contains("emu") {
        let emu = dinoedge_distill::cuda::open(true, None)
            .expect("the emulator builds (needs a C++20 compiler)");
        out.push(("emulated", emu));
    }
    #[cfg(feature = "cuda")]
    if want.contains("cuda") {
        match dinoedge_distill::cuda::open(false, None) {
            Ok(d) => {
                eprintln!("device: {}", d.name());
                out.push(("cuda", d));
            }
            Err(e) if std::env::var("DINOEDGE_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
                panic!("DINOEDGE_REQUIRE_CUDA=1 but no GPU: {e}")
            }
            Err(e) => eprintln!("cuda: SKIPPED ({e})"),
        }
    }
    out
}

#[test]
fn gradients_match_pytorch_autograd() {
    for (dn, dev) in devices() {
        for name in ["dinov3_mlp", "dinov3_gated", "dinov3_convnext"] {
            let c = load(name);
            let want_loss = t(&c.refs, "obj.loss")[0] as f64;
            // A ConvNeXt keeps its activations (no --recompute).
            let convnext = name.contains("convnext");
            for (ty, recompute, tol) in [
                (Elem::F32, false, 1e-4),
                (Elem::F32, true, 1e-4),
                (Elem::BF16, false, 5e-2),
            ] {
                if convnext && recompute {
                    continue;
                }
                let s = student(&dev, &c, ty, recompute);
                let parts = s
                    .gradients_of(&t(&c.refs, "pixel_values"), &targets(&c), &weights(), false)
                    .unwrap();
                let loss_err = (parts.total - want_loss).abs() / want_loss.abs();
                let g = s.gradients().unwrap();
                let mut worst = (0.0f64, String::new());
                for e in &c.layout.entries {
                    let got = &g[e.range.clone()];
                    let want = reference_grad(&c, "obj", e.id, &e.name)
                        .unwrap_or_else(|| vec![0.0; e.range.len()]);
                    let r = rel(got, &want);
                    assert!(
                        r < tol,
                        "{dn} {name} {ty:?} recompute={recompute}: gradient of {} off by {r:.2e} (tolerance {tol:e})",
                        e.name
                    );
                    if r > worst.0 {
                        worst = (r, e.name.clone());
                    }
                }
                eprintln!(
                    "{dn} {name} {ty:?} recompute={recompute}: loss off by {loss_err:.2e}, worst gradient {:.2e} ({})",
                    worst.0, worst.1
                );
                assert!(
                    loss_err < tol,
                    "{dn} {name} {ty:?}: loss {} vs torch {want_loss}",
                    parts.total
                );
            }
        }
    }
}

/// 20 steps of the whole update (clip, AdamW with decay, EMA) against the CPU trainer's.
#[test]
fn training_tracks_the_cpu_trainer_for_20_steps() {
    for (dn, dev) in devices() {
        track_20_steps(dn, &dev);
    }
}

fn track_20_steps(dn: &str, dev: &Arc<dyn Device>) {
    let c = load("dinov3_gated");
    let opt = OptimConfig {
        lr: 2e-3,
        warmup: 3,
        clip: 0.5,
        ..Default::default()
    };
    let (steps, pixels, tg) = (20, t(&c.refs, "pixel_values"), targets(&c));
    let w = weights();
    let sc = StepConfig {
        loss: &w,
        optim: &opt,
        heads_only: false,
        steps,
    };
    let run = |tr: &Trainer| -> Vec<(LossParts, f64)> {
        (0..steps)
            .map(
                |step| match tr.step(&sc, step, &pixels, &tg, None, 1).unwrap() {
                    Stepped::Done(parts, gn, _) => (parts, gn),
                    Stepped::Diverged(what) => panic!("step {step} diverged: {what}"),
                },
            )
            .collect()
    };
    let cpu = trainer(
        &c,
        On::Cpu(Ctx::new(Some(2)).unwrap()),
        &c.params,
        false,
        true,
    );
    let cpu_losses = run(&cpu);
    let mut st = state(&c.params);
    cpu.save(&mut st).unwrap();
    // The device, f32 GEMMs.
    let s = student(dev, &c, Elem::F32, false);
    for (step, ((parts, gn), (cpu_parts, cpu_gn))) in run(&s).iter().zip(&cpu_losses).enumerate() {
        let cpu_loss = cpu_parts.total;
        let (dl, dg) = (
            (parts.total - cpu_loss).abs() / cpu_loss,
            (gn - cpu_gn).abs() / cpu_gn,
        );
        assert!(
            dl < 1e-4 && dg < 1e-3,
            "{dn} step {step}: loss {} vs cpu {cpu_loss}, grad norm {gn} vs {cpu_gn}",
            parts.total
        );
    }
    let mut dev_state = state(&c.params);
    s.save(&mut dev_state).unwrap();
    let (rp, re) = (
        rel(&dev_state.params, &st.params),
        rel(&dev_state.ema, &st.ema),
    );
    eprintln!(
        "{dn}, 20 steps: loss {:.6} -> {:.6}; weights off by {rp:.2e}, EMA by {re:.2e}, moments by {:.2e}",
        cpu_losses[0].0.total,
        cpu_losses[steps - 1].0.total,
        rel(&dev_state.adam.v, &st.adam.v)
    );
    assert!(rp < 1e-4 && re < 1e-4, "{dn}: weights {rp:e}, EMA {re:e}");
    assert!(
        cpu_losses[steps - 1].0.total < cpu_losses[0].0.total,
        "the loss goes down"
    );
}

/// Every kernel compiles for Turing to Hopper (Jetson Orin is sm_87) with NVRTC from the
/// PyPI wheel; no GPU needed.
#[cfg(feature = "cuda")]
#[test]
fn every_kernel_compiles_with_nvrtc() {
    use dinoedge_runtime::backend::cuda::gpu::compile;
    // SAFETY: only dlopens libnvrtc.
    if !unsafe { cudarc_present() } {
        assert!(
            std::env::var("DINOEDGE_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
            "DINOEDGE_REQUIRE_NVRTC=1 but libnvrtc is not on the loader path"
        );
        eprintln!("nvrtc: SKIPPED (libnvrtc not found)");
        return;
    }
    let program = dinoedge_runtime::ops::cuda_training_program();
    for arch in ["sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90"] {
        let t0 = std::time::Instant::now();
        let ptx = compile(&program, arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        for k in &program.kernels {
            assert!(
                ptx.contains(&format!(".entry {k}(")),
                "{arch}: no entry point {k} in the PTX"
            );
        }
        eprintln!(
            "nvrtc {arch}: {} entry points, {} KB of PTX in {:.2} s",
            program.kernels.len(),
            ptx.len() / 1024,
            t0.elapsed().as_secs_f64()
        );
    }
}

#[cfg(feature = "cuda")]
unsafe fn cudarc_present() -> bool {
    dinoedge_runtime::backend::cuda::gpu::libraries_present()[1].1
}

/// Without a driver, opening the GPU is an error that names what is missing, not a panic.
#[cfg(feature = "cuda")]
#[test]
fn no_gpu_is_a_clear_error() {
    let present = dinoedge_runtime::backend::cuda::gpu::libraries_present();
    if present[0].1 {
        eprintln!("a driver is present: nothing to check");
        return;
    }
    let err = dinoedge_distill::cuda::open(false, None)
        .err()
        .expect("no driver, no device")
        .to_string();
    assert!(err.contains("libcuda"), "{err}");
}

/// NCCL (when libnccl.so.2 is on the loader path, e.g. the nvidia-nccl wheel's lib folder):
/// the library loads, every function the data-parallel path calls resolves, and it makes a
/// unique id without a GPU. Without it, data parallel on GPUs is a clear error.
#[cfg(feature = "cuda")]
#[test]
fn nccl_loads_with_the_functions_used() {
    use dinoedge_distill::parallel::nccl::probe;
    match probe() {
        Ok((version, nonzero)) => {
            eprintln!("nccl {version}: unique id with {nonzero} non-zero bytes");
            assert!(version.starts_with("2."), "{version}");
            assert!(nonzero > 0);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("libnccl.so.2 not found"), "{msg}");
            eprintln!("nccl: SKIPPED ({msg})");
        }
    }
}
