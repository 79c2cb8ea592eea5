//! All trainable values in one flat f32 vector (student parameters, then the projection
//! heads), with a named view per parameter. Flat storage makes AdamW, EMA, clipping and
//! checkpoints single loops over one buffer.

use std::collections::HashMap;
use std::ops::Range;

use dinoedge_runtime::config::VitConfig;
use dinoedge_runtime::models::vit::layout::{self, HubTensor, LayerParam as L, Param};

use crate::error::Result;
use crate::rng::{Stream, rng, trunc_normal};

/// A trainable tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamId {
    Model(Param),
    /// Projection head `h` (0 = CLS, 1 = patches, 2.. = intermediate layers): weight (out, in).
    HeadWeight(usize),
    HeadBias(usize),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub id: ParamId,
    pub name: String,
    pub range: Range<usize>,
    pub shape: Vec<usize>,
    /// Receives weight decay (matrices only: not norms, biases, LayerScale, tokens).
    pub decay: bool,
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub entries: Vec<Entry>,
    pub total: usize,
    index: HashMap<ParamId, usize>,
}

impl ParamLayout {
    /// The student's parameters (HF order; no mask token) and heads mapping its width to the
    /// teacher's: `heads[h] = (in, out)`.
    pub fn new(cfg: &VitConfig, heads: &[(usize, usize)]) -> Self {
        let mut entries = Vec::new();
        let mut total = 0;
        let mut push = |id: ParamId, name: String, shape: Vec<usize>, decay: bool| {
            let len: usize = shape.iter().product();
            entries.push(Entry {
                id,
                name,
                range: total..total + len,
                shape,
                decay,
            });
            total += len;
        };
        for p in layout::params(cfg) {
            let decay = matches!(
                p,
                Param::PatchWeight
                    | Param::Layer(
                        _,
                        L::QWeight
                            | L::KWeight
                            | L::VWeight
                            | L::OWeight
                            | L::GateWeight
                            | L::UpWeight
                            | L::DownWeight
                    )
            );
            push(
                ParamId::Model(p),
                layout::hub_location(cfg, p).key,
                layout::shape(cfg, p),
                decay,
            );
        }
        for (h, &(i, o)) in heads.iter().enumerate() {
            push(
                ParamId::HeadWeight(h),
                format!("head.{h}.weight"),
                vec![o, i],
                true,
            );
            push(
                ParamId::HeadBias(h),
                format!("head.{h}.bias"),
                vec![o],
                false,
            );
        }
        let index = entries.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        ParamLayout {
            entries,
            total,
            index,
        }
    }

    pub fn range(&self, id: ParamId) -> Range<usize> {
        self.entries[self.index[&id]].range.clone()
    }

    pub fn has(&self, id: ParamId) -> bool {
        self.index.contains_key(&id)
    }

    pub fn get<'a>(&self, v: &'a [f32], id: ParamId) -> &'a [f32] {
        &v[self.range(id)]
    }

    pub fn get_mut<'a>(&self, v: &'a mut [f32], id: ParamId) -> &'a mut [f32] {
        &mut v[self.range(id)]
    }

    /// Per value: weight decay applies (what the optimizer reads).
    pub fn decay_flags(&self) -> Vec<bool> {
        let mut flags = vec![false; self.total];
        for e in &self.entries {
            flags[e.range.clone()].fill(e.decay);
        }
        flags
    }

    /// The model part of the vector (student parameters, no heads).
    pub fn model_len(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.id, ParamId::Model(_)))
            .map(|e| e.range.len())
            .sum()
    }

    /// Initial values: Linear, patch and token tensors truncated-normal with std 0.02 (as HF
    /// initialises DINOv3), LayerNorm 1 / 0, biases 0, LayerScale `ls_init`, heads with
    /// std 1/sqrt(in) so projections start at unit scale.
    pub fn init(&self, seed: u64, ls_init: f32) -> Vec<f32> {
        let mut v = vec![0.0f32; self.total];
        for (k, e) in self.entries.iter().enumerate() {
            let dst = &mut v[e.range.clone()];
            let mut r = rng(seed, Stream::Init, k as u64, 0);
            match e.id {
                ParamId::Model(p) => match p {
                    Param::NormWeight | Param::Layer(_, L::Norm1Weight | L::Norm2Weight) => {
                        dst.fill(1.0)
                    }
                    Param::Layer(_, L::LayerScale1 | L::LayerScale2) => dst.fill(ls_init),
                    Param::PatchWeight
                    | Param::ClsToken
                    | Param::RegisterTokens
                    | Param::MaskToken => {
                        dst.iter_mut().for_each(|x| *x = trunc_normal(&mut r, 0.02))
                    }
                    _ if e.decay => dst.iter_mut().for_each(|x| *x = trunc_normal(&mut r, 0.02)),
                    _ => dst.fill(0.0),
                },
                ParamId::HeadWeight(_) => {
                    let std = 1.0 / (e.shape[1] as f32).sqrt();
                    dst.iter_mut().for_each(|x| *x = trunc_normal(&mut r, std));
                }
                ParamId::HeadBias(_) => dst.fill(0.0),
            }
        }
        v
    }

    /// Fills the model part of `v` from a loaded runtime model of the same architecture
    /// (heads are left as they are).
    pub fn load_model(&self, model: &dinoedge_runtime::Model, v: &mut [f32]) -> Result<()> {
        for e in &self.entries {
            if let ParamId::Model(p) = e.id {
                let data = model.tensor_f32(p)?;
                if data.len() != e.range.len() {
                    return Err(crate::DistillError::Mismatch {
                        path: model.dir().to_path_buf(),
                        reason: format!(
                            "{} has {} values, the student needs {:?}",
                            e.name,
                            data.len(),
                            e.shape
                        ),
                    });
                }
                v[e.range.clone()].copy_from_slice(&data);
            }
        }
        Ok(())
    }

    /// The student's tensors in HF `dinov3_vit` layout (mask token written as zeros).
    pub fn hub_tensors(&self, cfg: &VitConfig, v: &[f32]) -> Result<Vec<HubTensor>> {
        Ok(layout::hub_tensors(cfg, |p| {
            let id = ParamId::Model(p);
            if self.has(id) {
                Ok(self.get(v, id).to_vec())
            } else {
                Err(dinoedge_runtime::RuntimeError::input(
                    format!("{p:?}"),
                    "not trained",
                ))
            }
        })?)
    }

    /// The heads' tensors (`head.{h}.weight`, `head.{h}.bias`).
    pub fn head_tensors(&self, v: &[f32]) -> Vec<HubTensor> {
        self.entries
            .iter()
            .filter(|e| !matches!(e.id, ParamId::Model(_)))
            .map(|e| {
                dinoedge_runtime::weights::store::f32_entry(
                    e.name.clone(),
                    e.shape.clone(),
                    &v[e.range.clone()],
                )
            })
            .collect()
    }
}
