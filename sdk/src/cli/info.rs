//! `dinoedge info MODEL_DIR`

use std::path::PathBuf;

use clap::Args;
use dinoedge::runtime::{Model, ModelConfig, Positions};
use dinoedge::{BackendKind, Result};
use serde_json::json;

#[derive(Args)]
pub struct InfoArgs {
    /// HF model directory (config.json + safetensors).
    model: Option<PathBuf>,
    /// Also describe a backend: wgpu lists the adapters and the one a session would use.
    #[arg(long, value_parser = super::parse_backend)]
    backend: Option<BackendKind>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    if let Some(b) = a.backend {
        backend_info(b, a.json, a.model.as_deref())?;
    }
    let Some(model_dir) = &a.model else {
        if a.backend.is_none() {
            return Err(dinoedge::Error::InvalidArgument(
                "give a MODEL_DIR, --backend, or both".into(),
            ));
        }
        return Ok(());
    };
    model_info(model_dir, a.json)
}

fn backend_info(b: BackendKind, json: bool, model_dir: Option<&std::path::Path>) -> Result<()> {
    let _ = model_dir;
    match b {
        BackendKind::Cpu | BackendKind::CpuReference => {
            let isa = dinoedge::runtime::backend::cpu::isa::Isa::detect();
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            if json {
                println!(
                    "{}",
                    json!({"backend": b.to_string(), "isa": isa.name(), "threads": threads})
                );
            } else {
                println!(
                    "backend      {b}: {} CPU, {isa} kernels, {threads} threads",
                    std::env::consts::ARCH
                );
            }
            Ok(())
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            use dinoedge::runtime::backend::wgpu::list_adapters;
            use dinoedge::runtime::dispatch::wgpu::WgpuBackend;
            let adapters = list_adapters();
            let chosen = WgpuBackend::new(dinoedge::Precision::F32, None)
                .map(|b| b.adapter_info().name.clone());
            if json {
                let list: Vec<_> = adapters
                    .iter()
                    .map(|a| json!({"index": a.index, "name": a.name, "backend": a.backend, "type": a.device_type, "driver": a.driver, "shader_f16": a.shader_f16,
                        "max_storage_buffer_binding_size": a.max_storage_buffer_binding_size, "max_buffer_size": a.max_buffer_size, "max_compute_workgroup_storage_size": a.max_compute_workgroup_storage_size}))
                    .collect();
                println!(
                    "{}",
                    json!({"backend": "wgpu", "adapters": list, "selected": chosen.as_ref().ok()})
                );
            } else {
                for ad in &adapters {
                    println!(
                        "adapter {}    {} ({}, {}), driver {}, shader_f16 {}, max storage binding {} MiB",
                        ad.index,
                        ad.name,
                        ad.backend,
                        ad.device_type,
                        ad.driver,
                        ad.shader_f16,
                        ad.max_storage_buffer_binding_size >> 20
                    );
                }
            }
            match chosen {
                Ok(name) => {
                    if !json {
                        println!(
                            "selected     {name} (override: --adapter NAME|INDEX or DINOEDGE_WGPU_ADAPTER)"
                        );
                    }
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => cuda_info(json, model_dir),
        BackendKind::CudaEmulated => {
            // Opening builds (or finds cached) the emulated kernels: this checks the C++
            // compiler too.
            let program = dinoedge::runtime::ops::cuda_program();
            let dev = dinoedge::runtime::backend::cuda::open(&program, true, None)?;
            let kernels = program.kernels.len();
            if json {
                println!(
                    "{}",
                    json!({"backend": b.to_string(), "device": dev.name(), "sm": dev.sm(), "kernels": kernels})
                );
            } else {
                println!("backend      {b}: {} ({kernels} kernels)", dev.name());
            }
            Ok(())
        }
        #[allow(unreachable_patterns)]
        other => Err(dinoedge::runtime::RuntimeError::BackendUnavailable {
            backend: other.to_string(),
            reason: format!(
                "not compiled into this build (available: {})",
                dinoedge::runtime::session::compiled_backends().join(", ")
            ),
        }
        .into()),
    }
}

fn model_info(model_dir: &std::path::Path, json_out: bool) -> Result<()> {
    let model = Model::load(model_dir)?;
    let cfg = model.config();
    let store = model.store();
    let dtypes = store.dtype_counts();
    let (gh, gw) = cfg.grid(224, 224);
    // One section per architecture: JSON fields, and the lines the text form prints.
    let (fields, lines) = match cfg {
        ModelConfig::Vit(c) => vit_section(c),
        ModelConfig::ConvNext(c) => convnext_section(c),
    };
    let mut v = json!({
        "model_dir": model_dir.display().to_string(),
        "model_type": cfg.model_type(),
        "architecture": cfg.describe(),
        "parameters": model.num_parameters(),
        "dtypes": dtypes.iter().map(|(d, n)| json!({"dtype": d, "tensors": n})).collect::<Vec<_>>(),
        "weights_bytes": store.data_bytes(),
        "hidden_size": cfg.hidden_size(),
        "grid_at_224": [gh, gw],
        "tokens_at_224": cfg.num_tokens(224, 224),
    });
    if let (Some(o), serde_json::Value::Object(extra)) = (v.as_object_mut(), fields) {
        o.extend(extra);
    }
    if json_out {
        println!("{v}");
        return Ok(());
    }
    let dt: Vec<String> = dtypes
        .iter()
        .map(|(d, n)| format!("{d} ({n} tensors)"))
        .collect();
    println!("model        {}", model_dir.display());
    println!("architecture {}", cfg.describe());
    println!("model_type   {}", cfg.model_type());
    println!(
        "parameters   {} ({:.1}M)",
        model.num_parameters(),
        model.num_parameters() as f64 / 1e6
    );
    println!("dtype        {}", dt.join(", "));
    println!(
        "weights      {:.1} MiB",
        store.data_bytes() as f64 / (1 << 20) as f64
    );
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

fn vit_section(cfg: &dinoedge::runtime::config::VitConfig) -> (serde_json::Value, Vec<String>) {
    let (gh, gw) = cfg.grid(224, 224);
    let positions = match cfg.positions {
        Positions::Rope { theta } => format!("RoPE on patch q/k, theta {theta}"),
        Positions::Learned { grid, antialias } => format!(
            "learned {grid}x{grid} table ({} px native), bicubic{} resampling",
            grid * cfg.patch_size,
            if antialias { " antialiased" } else { "" }
        ),
    };
    let v = json!({
        "layers": cfg.num_layers,
        "heads": cfg.num_heads,
        "head_dim": cfg.head_dim(),
        "mlp_hidden": cfg.intermediate_size,
        "patch_size": cfg.patch_size,
        "register_tokens": cfg.num_register_tokens,
        "layer_norm_eps": cfg.layer_norm_eps,
        "positions": positions,
    });
    let lines = vec![
        format!(
            "heads        {} x {} dims, MLP {}",
            cfg.num_heads,
            cfg.head_dim(),
            cfg.intermediate_size
        ),
        format!("positions    {positions}"),
        format!(
            "tokens @224  {} (1 CLS + {} registers + {gh}x{gw} patches)",
            cfg.num_tokens(224, 224),
            cfg.num_register_tokens
        ),
    ];
    (v, lines)
}

fn convnext_section(
    cfg: &dinoedge::runtime::config::ConvNextConfig,
) -> (serde_json::Value, Vec<String>) {
    let grids = cfg.stage_grids(224, 224);
    let v = json!({
        "hidden_sizes": cfg.hidden_sizes,
        "depths": cfg.depths,
        "stride": cfg.stride(),
        "stage_grids_at_224": grids,
        "layer_norm_eps": cfg.layer_norm_eps,
        "register_tokens": 0,
    });
    let stages: Vec<String> = cfg
        .hidden_sizes
        .iter()
        .zip(&cfg.depths)
        .zip(&grids)
        .enumerate()
        .map(|(s, ((c, d), g))| format!("{s}: {d} x {c}-d @ {}x{}", g.0, g.1))
        .collect();
    let (gh, gw) = cfg.grid(224, 224);
    let lines = vec![
        format!(
            "stages @224  {} (--layers 0 to {})",
            stages.join(", "),
            grids.len() - 1
        ),
        format!(
            "tokens @224  {} (1 pooled + {gh}x{gw} cells, stride {})",
            cfg.num_tokens(224, 224),
            cfg.stride()
        ),
    ];
    (v, lines)
}

/// GPU memory a model needs on cuda: weights per precision, activations per input shape.
#[cfg(feature = "cuda")]
fn cuda_info(json_out: bool, model_dir: Option<&std::path::Path>) -> Result<()> {
    use dinoedge::runtime::backend::cuda::gpu::libraries_present;
    let libs = libraries_present();
    let program = dinoedge::runtime::ops::cuda_program();
    let device = dinoedge::runtime::backend::cuda::open(&program, false, None);
    let gib = |b: f64| b / 1073741824.0;
    let mut plan = Vec::new();
    let mut head_dim = None;
    if let Some(dir) = model_dir {
        use dinoedge::runtime::dispatch::cuda::plan::memory_plan;
        let model = Model::load(dir)?;
        // The memory plan is the ViT's (the CUDA plan module); other models get none.
        let vit = model.config().as_vit();
        head_dim = vit.map(|c| c.head_dim());
        let params = model.num_parameters() as u64;
        let sizes: &[(usize, usize)] = if vit.is_some() {
            &[(1, 224), (32, 224), (1, 448)]
        } else {
            &[]
        };
        for &(batch, size) in sizes {
            let cfg = vit.expect("sizes only for ViTs");
            let mut totals = serde_json::Map::new();
            let mut row = json!({"batch": batch, "size": size});
            for p in [dinoedge::Precision::F32, dinoedge::Precision::F16] {
                let m = memory_plan(cfg, params, p, batch, size, size);
                let key = if p == dinoedge::Precision::F32 {
                    "f32"
                } else {
                    "f16_bf16"
                };
                totals.insert(key.into(), json!({"weights_gib": gib(m.weights as f64), "activations_gib": gib(m.activations as f64),
                    "scratch_gib": gib(m.scratch as f64), "total_gib": gib(m.total() as f64)}));
            }
            row["precisions"] = serde_json::Value::Object(totals);
            plan.push(row);
        }
    }
    let dev = device.as_ref().ok().map(|d| {
        let arch = format!("sm_{}", d.sm());
        let name = d.name().trim_end_matches(&format!(" ({arch})")).to_string();
        let (free, total) = d.memory().unwrap_or((0, 0));
        // The attention kernel f16 / bf16 sessions of this model get on this GPU.
        let attention = head_dim.map(|hd| {
            dinoedge::runtime::ops::attention::cuda::mma_kernel(dinoedge::Precision::F16, d.sm(), hd)
                .map_or("CUDA cores (attention)".to_string(), |k| format!("tensor cores ({k})"))
        });
        json!({"name": name, "arch": arch, "free_gib": gib(free as f64), "total_gib": gib(total as f64), "attention_f16_bf16": attention})
    });
    if json_out {
        println!(
            "{}",
            json!({"backend": "cuda", "libraries": libs.iter().map(|(n, ok)| json!({"name": n, "found": ok})).collect::<Vec<_>>(), "device": dev, "memory_plan": plan})
        );
    } else {
        for (n, ok) in libs {
            println!(
                "library      {n}: {}",
                if ok { "found" } else { "NOT FOUND" }
            );
        }
        match &dev {
            Some(d) => {
                println!(
                    "device       {} ({}), {:.1} GiB free of {:.1} GiB",
                    d["name"].as_str().unwrap_or(""),
                    d["arch"].as_str().unwrap_or(""),
                    d["free_gib"].as_f64().unwrap_or(0.0),
                    d["total_gib"].as_f64().unwrap_or(0.0)
                );
                if let Some(a) = d["attention_f16_bf16"].as_str() {
                    println!("attention    f16/bf16: {a}; f32: CUDA cores");
                }
            }
            None => println!(
                "device       none: {}",
                device
                    .as_ref()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            ),
        }
        for p in &plan {
            for (key, name) in [("f32", "f32"), ("f16_bf16", "f16/bf16")] {
                let q = &p["precisions"][key];
                let g = |k: &str| q[k].as_f64().unwrap_or(0.0);
                println!(
                    "memory plan  batch {} at {}px, {name}: {:.2} GiB = weights {:.2} + activations {:.2} + GEMM scratch {:.2}",
                    p["batch"],
                    p["size"],
                    g("total_gib"),
                    g("weights_gib"),
                    g("activations_gib"),
                    g("scratch_gib")
                );
            }
        }
    }
    Ok(())
}
