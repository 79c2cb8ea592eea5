//! Fixture loading shared by the gradient tests (`grads.rs`, `cuda_trainer.rs`): a
//! random-weight student, its heads, pixels, targets and PyTorch's float64 gradients
//! (`tools/make_fixtures.py grads`).
#![allow(dead_code)]

use std::path::PathBuf;

use dinoedge_distill::checkpoint::TrainState;
use dinoedge_distill::loss::{LossWeights, Targets};
use dinoedge_distill::optim::AdamW;
use dinoedge_distill::params::{ParamId, ParamLayout};
use dinoedge_distill::trainer::{On, Shape, Trainer};
use dinoedge_runtime::Model;
use dinoedge_runtime::config::ModelConfig;
use dinoedge_runtime::models::vit::layout::{aliases, hub_location};
use dinoedge_runtime::weights::store::TensorStore;

/// `fixtures/grads/NAME` (`DINOEDGE_FIXTURES` points at `fixtures/` away from the source tree).
pub fn fixture(name: &str) -> PathBuf {
    std::env::var("DINOEDGE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures"))
        .join("grads")
        .join(name)
}

pub struct Case {
    pub cfg: ModelConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    pub refs: TensorStore,
    pub shape: [usize; 4],
}

pub fn t(store: &TensorStore, name: &str) -> Vec<f32> {
    store
        .get(name)
        .unwrap_or_else(|| panic!("fixture tensor {name}"))
        .to_f32()
        .unwrap()
}

pub fn load(name: &str) -> Case {
    let dir = fixture(name);
    let model = Model::load(&dir).unwrap();
    let cfg = model.config().clone();
    let refs = TensorStore::open_files(&[dir.join("grads.safetensors")]).unwrap();
    let hd: Vec<usize> = refs.get("head.0.weight").unwrap().shape.to_vec();
    let heads = if refs.get("head.2.weight").is_some() {
        3
    } else {
        2
    };
    let layout = ParamLayout::new(&cfg, &vec![(hd[1], hd[0]); heads]);
    let mut params = vec![0.0; layout.total];
    layout.load_model(&model, &mut params).unwrap();
    for h in 0..heads {
        for (id, key) in [
            (ParamId::HeadWeight(h), format!("head.{h}.weight")),
            (ParamId::HeadBias(h), format!("head.{h}.bias")),
        ] {
            layout
                .get_mut(&mut params, id)
                .copy_from_slice(&t(&refs, &key));
        }
    }
    let s: Vec<usize> = refs.get("pixel_values").unwrap().shape.to_vec();
    Case {
        cfg,
        layout,
        params,
        refs,
        shape: [s[0], s[1], s[2], s[3]],
    }
}

/// The reference gradient of a layout entry, under its hub name or a transformers alias, in
/// the order the layout stores it.
pub fn reference_grad(c: &Case, prefix: &str, id: ParamId, name: &str) -> Option<Vec<f32>> {
    let mut names = vec![name.to_string()];
    if let (ParamId::Model(p), ModelConfig::Vit(v)) = (id, &c.cfg) {
        names.push(hub_location(v, p).key);
        names.extend(aliases(v, p).into_iter().map(|l| l.key));
    }
    let e = c.layout.entries.iter().find(|e| e.id == id)?;
    names.iter().find_map(|n| {
        c.refs
            .get(&format!("{prefix}.grad.{n}"))
            .map(|t| e.from_hf(t.to_f32().unwrap()))
    })
}

/// The loss weights the fixtures' objective used.
pub fn weights() -> LossWeights {
    LossWeights {
        cls: 1.0,
        patch: 0.7,
        gram: 0.5,
        inter: 0.3,
    }
}

/// The fixture's targets (an intermediate one where the fixture has it).
pub fn targets(c: &Case) -> Targets {
    Targets {
        cls: t(&c.refs, "target.cls"),
        patches: t(&c.refs, "target.patches"),
        inter: c
            .refs
            .get("target.inter")
            .map(|_| t(&c.refs, "target.inter"))
            .into_iter()
            .collect(),
    }
}

/// A training state starting from `params` (EMA equal, moments zero).
pub fn state(params: &[f32]) -> TrainState {
    TrainState {
        step: 0,
        params: params.to_vec(),
        ema: params.to_vec(),
        adam: AdamW::new(params.len()),
    }
}

/// A trainer of the case's student on `on`, with the fixtures' intermediate output (block 0)
/// when `inter` and the fixture has one.
pub fn trainer(c: &Case, on: On, params: &[f32], recompute: bool, inter: bool) -> Trainer {
    let [b, _, h, w] = c.shape;
    let shape = Shape {
        batch: b,
        height: h,
        width: w,
        // ConvNeXt fixtures have no intermediate target.
        inter_layers: if inter && c.refs.get("target.inter").is_some() {
            vec![0]
        } else {
            Vec::new()
        },
        recompute,
        teacher_dim: c.refs.get("head.0.weight").unwrap().shape[0],
    };
    Trainer::new(on, &c.cfg, &c.layout, &state(params), &shape).unwrap()
}
