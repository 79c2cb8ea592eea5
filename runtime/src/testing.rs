//! Tensor comparison for parity tests and device checks, reporting evidence on failure
//! (the tensor, the max error, the first outlier and a few values), as llm.c's `check_tensor`.

/// Result of comparing a tensor against a reference.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub name: String,
    /// max |got - want|
    pub max_abs: f32,
    /// max |want|, the activation scale
    pub scale: f32,
    /// max_abs / max(scale, 1)
    pub rel: f32,
    /// Mean cosine similarity of rows of length `row` (1 when `row` is 0).
    pub mean_cosine: f64,
    pub first_outlier: Option<(usize, f32, f32)>,
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: max abs err {:.3e} at scale {:.3} (rel {:.3e}), mean row cosine {:.7}",
            self.name, self.max_abs, self.scale, self.rel, self.mean_cosine
        )?;
        if let Some((i, g, w)) = self.first_outlier {
            write!(f, "; first outlier at {i}: got {g}, want {w}")?;
        }
        Ok(())
    }
}

/// Compares `got` with `want`; `tol` bounds the error relative to max(|want|, 1), and rows
/// of length `row` give the mean cosine.
pub fn compare(name: &str, got: &[f32], want: &[f32], row: usize, tol: f32) -> Comparison {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: {} values vs {} in the reference",
        got.len(),
        want.len()
    );
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let limit = tol * scale.max(1.0);
    let mut max_abs = 0.0f32;
    let mut first = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs();
        if !(e <= limit) && first.is_none() {
            first = Some((i, *g, *w));
        }
        if !(e <= max_abs) {
            max_abs = e;
        }
    }
    let mean_cosine = if row == 0 {
        1.0
    } else {
        mean_row_cosine(got, want, row)
    };
    Comparison {
        name: name.to_string(),
        max_abs,
        scale,
        rel: max_abs / scale.max(1.0),
        mean_cosine,
        first_outlier: first,
    }
}

pub use crate::tensor::mean_row_cosine;

impl Comparison {
    /// Panics with the evidence when the comparison failed.
    pub fn assert_ok(&self) {
        assert!(
            self.first_outlier.is_none() && self.max_abs.is_finite(),
            "{self}"
        );
    }
}

/// The random-weight HF fixture families (`tools/make_fixtures.py hf`) every backend's parity
/// suite runs.
pub const FIXTURE_FAMILIES: [&str; 6] = [
    "dinov3_mlp",
    "dinov3_gated",
    "dinov3_noreg_f16",
    "dinov2",
    "dinov2_swiglu",
    "dinov2_reg",
];

/// The DINOv3 ConvNeXt fixtures (`tools/make_fixtures.py hf-convnext`): every backend's
/// parity suite runs them too, against transformers' float64 outputs.
pub const CONVNEXT_FIXTURES: [&str; 2] = ["dinov3_convnext", "dinov3_convnext_f16"];

/// `fixtures/hf/<name>`; `DINOEDGE_FIXTURES` overrides the folder when a test binary runs away
/// from its source tree (the GPU machine).
pub fn fixture_dir(name: &str) -> std::path::PathBuf {
    std::env::var_os("DINOEDGE_FIXTURES")
        .map_or_else(
            || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures"),
            std::path::PathBuf::from,
        )
        .join("hf")
        .join(name)
}

/// The `pixel_values` inputs stored beside a fixture's reference outputs.
pub fn fixture_inputs(dir: &std::path::Path) -> crate::Result<Vec<crate::Tensor>> {
    let path = dir.join("reference.safetensors");
    let reference = crate::weights::TensorStore::open_files(std::slice::from_ref(&path))?;
    let bad = |why: &str| crate::RuntimeError::input(path.display().to_string(), why.to_string());
    let names = reference
        .metadata()
        .and_then(|m| m.get("inputs"))
        .ok_or_else(|| bad("no `inputs` metadata"))?;
    let meta: serde_json::Value =
        serde_json::from_str(names).map_err(|e| bad(&format!("`inputs` metadata: {e}")))?;
    let keys = meta
        .as_object()
        .ok_or_else(|| bad("`inputs` is not an object"))?;
    keys.keys()
        .map(|k| {
            let t = reference
                .get(&format!("{k}.pixel_values"))
                .ok_or_else(|| bad(&format!("no tensor {k}.pixel_values")))?;
            crate::Tensor::new(t.shape.to_vec(), t.to_f32()?)
        })
        .collect()
}

fn reference_tensor(store: &crate::weights::TensorStore, key: &str) -> crate::Tensor {
    let t = store
        .get(key)
        .unwrap_or_else(|| panic!("reference has no {key}"));
    crate::Tensor::new(t.shape.to_vec(), t.to_f32().unwrap()).unwrap()
}

/// Runs every input stored with fixture `name` through `session`, `runs` times each (a
/// device with recorded launch sequences records on the second and replays on the third),
/// with every layer captured, and compares the last and each intermediate layer (CLS,
/// registers, patches in HF's token order) with transformers' float64 outputs: max abs error
/// <= `tol` x max(|reference|, 1). Prints each comparison; panics with the evidence on
/// failure; returns the worst relative error.
pub fn check_against_transformers(
    name: &str,
    label: &str,
    session: &mut dyn crate::InferenceSession,
    tol: f32,
    runs: usize,
) -> f32 {
    let dir = fixture_dir(name);
    let cfg = session.model().config().clone();
    let path = dir.join("reference.safetensors");
    let reference = crate::weights::TensorStore::open_files(&[path]).unwrap();
    let meta = reference.metadata().expect("fixture metadata");
    assert_eq!(
        meta.get("format").map(String::as_str),
        Some("dinoedge-fixtures-1")
    );
    let inputs: serde_json::Value = serde_json::from_str(&meta["inputs"]).unwrap();
    let opts = crate::RunOptions {
        capture_layers: (0..cfg.num_layers()).collect(),
    };
    let mut worst = 0.0f32;
    for key in inputs.as_object().unwrap().keys() {
        let pixels = reference_tensor(&reference, &format!("{key}.pixel_values"));
        for run in 1..=runs {
            let f = session.run(&pixels, &opts).unwrap();
            let want = reference_tensor(&reference, &format!("{key}.last_hidden_state"));
            let (b, n, d) = (want.shape[0], want.shape[1], want.shape[2]);
            assert_eq!((f.batch(), f.dim()), (b, d), "{name}/{key}");
            let hw = f.grid.0 * f.grid.1;
            assert_eq!(
                1 + cfg.num_register_tokens() + hw,
                n,
                "{name}/{key}: token count"
            );
            let r = cfg.num_register_tokens();
            // Each layer at its own width and grid (a ConvNeXt's stages differ).
            let join = |lf: &crate::LayerFeatures| -> Vec<f32> {
                let (d, hw) = (lf.cls.shape[1], lf.patches.shape[1] * lf.patches.shape[2]);
                let mut v = Vec::with_capacity(b * (1 + r + hw) * d);
                for i in 0..b {
                    v.extend_from_slice(&lf.cls.data[i * d..(i + 1) * d]);
                    v.extend_from_slice(&lf.registers.data[i * r * d..(i + 1) * r * d]);
                    v.extend_from_slice(&lf.patches.data[i * hw * d..(i + 1) * hw * d]);
                }
                v
            };
            let run_tag = if runs > 1 {
                format!(" run {run}")
            } else {
                String::new()
            };
            let mut check = |what: String, got: &[f32], want: &[f32], d: usize| {
                let c = compare(
                    &format!("{label} {name}/{key}/{what}{run_tag}"),
                    got,
                    want,
                    d,
                    tol,
                );
                println!("{c}");
                c.assert_ok();
                worst = worst.max(c.rel);
            };
            let last = reference_tensor(&reference, &format!("{key}.last_hidden_state"));
            check("last".into(), &join(&f.last), &last.data, d);
            if let Some(pooled) = reference.get(&format!("{key}.pooler_output")) {
                check(
                    "pooler".into(),
                    &f.last.cls.data,
                    &pooled.to_f32().unwrap(),
                    d,
                );
            }
            for lf in &f.intermediate {
                let d = lf.cls.shape[1];
                let want = match reference.get(&format!("{key}.layer{}", lf.layer)) {
                    Some(t) => t.to_f32().unwrap(),
                    // A ConvNeXt stage: HF's raw map (B, h, w, C); ours leads with its mean.
                    None => {
                        let t = reference_tensor(&reference, &format!("{key}.stage{}", lf.layer));
                        with_mean_token(&t.data, b, d)
                    }
                };
                check(format!("layer{}", lf.layer), &join(lf), &want, d);
            }
        }
    }
    worst
}

/// Mean patch cosine of `g` against the reference `c` on each input of fixture `name`: at
/// least 0.999 (the bar of 16-bit weights and GEMMs); `what` labels the printed lines.
pub fn assert_patch_cosines(
    what: &str,
    name: &str,
    g: &mut dyn crate::InferenceSession,
    c: &mut dyn crate::InferenceSession,
) {
    for x in fixture_inputs(&fixture_dir(name)).unwrap() {
        let (a, b) = (
            g.run(&x, &crate::RunOptions::default()).unwrap(),
            c.run(&x, &crate::RunOptions::default()).unwrap(),
        );
        let cos =
            crate::tensor::mean_row_cosine(&a.last.patches.data, &b.last.patches.data, b.dim());
        println!("{what} {:?}: mean patch cosine {cos:.6}", x.shape);
        assert!(cos >= 0.999, "{what} {:?}: {cos}", x.shape);
    }
}

/// `[mean of the cells, cells]` per image of `batch` maps (B, N, C), the mean in f64.
fn with_mean_token(cells: &[f32], batch: usize, channels: usize) -> Vec<f32> {
    let per = cells.len() / batch;
    let mut out = Vec::with_capacity(cells.len() + batch * channels);
    for img in cells.chunks_exact(per) {
        let n = (per / channels) as f64;
        out.extend((0..channels).map(|c| {
            (img.iter()
                .skip(c)
                .step_by(channels)
                .map(|&v| v as f64)
                .sum::<f64>()
                / n) as f32
        }));
        out.extend_from_slice(img);
    }
    out
}

/// Whether tests of the AMX kernels run here: true where the fast backend picks the tiles.
/// Elsewhere they are skipped with the reason printed; a CPU whose tiles the OS refused
/// fails instead when `DINOEDGE_REQUIRE_AMX=1` (a refusal costs users the fast path).
pub fn amx_here() -> bool {
    use crate::backend::cpu::amx::{cpu_has_amx, tiles_granted};
    use crate::backend::cpu::isa::Isa;
    if Isa::all_supported().contains(&Isa::Amx) {
        return true;
    }
    let why = if cpu_has_amx() && !tiles_granted() {
        "the CPU has AMX tiles but the OS refused the tile state"
    } else {
        "no AMX tiles (with AVX-512 VNNI and BF16) on this CPU"
    };
    assert!(
        std::env::var("DINOEDGE_REQUIRE_AMX").as_deref() != Ok("1"),
        "AMX required: {why}"
    );
    eprintln!("SKIPPED: {why}");
    false
}
