//! `dinoedge info MODEL_DIR`

use std::path::PathBuf;

use clap::Args;
use dinoedge::runtime::{Model, Positions};
use dinoedge::Result;
use serde_json::json;

#[derive(Args)]
pub struct InfoArgs {
    /// HF model directory (config.json + safetensors).
    model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    let cfg = model.config();
    let store = model.store();
    let dtypes = store.dtype_counts();
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
        "model_dir": a.model.display().to_string(),
        "model_type": cfg.family.model_type(),
        "architecture": cfg.describe(),
        "parameters": model.num_parameters(),
        "dtypes": dtypes.iter().map(|(d, n)| json!({"dtype": d, "tensors": n})).collect::<Vec<_>>(),
        "weights_bytes": store.data_bytes(),
        "hidden_size": cfg.hidden_size,
        "layers": cfg.num_layers,
        "heads": cfg.num_heads,
        "head_dim": cfg.head_dim(),
        "mlp_hidden": cfg.intermediate_size,
        "patch_size": cfg.patch_size,
        "register_tokens": cfg.num_register_tokens,
        "layer_norm_eps": cfg.layer_norm_eps,
        "positions": positions,
        "grid_at_224": [gh, gw],
        "tokens_at_224": cfg.num_tokens(224, 224),
    });
    if a.json {
        println!("{v}");
        return Ok(());
    }
    let dt: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} ({n} tensors)")).collect();
    println!("model        {}", a.model.display());
    println!("architecture {}", cfg.describe());
    println!("model_type   {}", cfg.family.model_type());
    println!("parameters   {} ({:.1}M)", model.num_parameters(), model.num_parameters() as f64 / 1e6);
    println!("dtype        {}", dt.join(", "));
    println!("weights      {:.1} MiB", store.data_bytes() as f64 / (1 << 20) as f64);
    println!("heads        {} x {} dims, MLP {}", cfg.num_heads, cfg.head_dim(), cfg.intermediate_size);
    println!("positions    {positions}");
    println!("tokens @224  {} (1 CLS + {} registers + {gh}x{gw} patches)", cfg.num_tokens(224, 224), cfg.num_register_tokens);
    Ok(())
}
