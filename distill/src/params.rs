//! All trainable values in one flat f32 vector (student parameters, then the projection
//! heads), with a named view per parameter. Flat storage makes AdamW, EMA, clipping and
//! checkpoints single loops over one buffer.
//!
//! A ConvNeXt's depthwise weights are kept tap-major (49, C) and its downsampling conv
//! weights as (O, 2, 2, C_in), the orders its ops read; they are transposed from and to HF's
//! order when loaded and exported.

use std::collections::HashMap;
use std::ops::Range;

use dinoedge_runtime::config::{ModelConfig, VitConfig};
use dinoedge_runtime::models::convnext::config::ConvNextConfig;
use dinoedge_runtime::models::convnext::layout::{
    self as cnx, BlockParam as CB, DownParam as CD, Param as CParam,
};
use dinoedge_runtime::models::vit::layout::{self, HubTensor, LayerParam as L, Param};
use dinoedge_runtime::ops::dwconv::TAPS;
use dinoedge_runtime::weights::store::f32_entry;

use crate::error::Result;
use crate::rng::{Stream, rng, trunc_normal};

/// A trainable tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamId {
    /// A ViT student's parameter.
    Model(Param),
    /// A ConvNeXt student's parameter.
    ConvNext(CParam),
    /// Projection head `h` (0 = CLS, 1 = patches, 2.. = intermediate layers): weight (out, in).
    HeadWeight(usize),
    HeadBias(usize),
}

impl Entry {
    /// Values in HF's order as this entry stores them.
    pub fn from_hf(&self, hf: Vec<f32>) -> Vec<f32> {
        match self.transposed {
            Some(t) => transpose_blocks(&hf, t),
            None => hf,
        }
    }

    /// This entry's stored values in HF's order.
    pub fn to_hf(&self, stored: &[f32]) -> Vec<f32> {
        match self.transposed {
            Some((b, r, c)) => transpose_blocks(stored, (b, c, r)),
            None => stored.to_vec(),
        }
    }
}

impl ParamId {
    /// A parameter of the student itself (not of a head).
    pub fn is_model(&self) -> bool {
        matches!(self, ParamId::Model(_) | ParamId::ConvNext(_))
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub id: ParamId,
    pub name: String,
    pub range: Range<usize>,
    /// The shape as stored (HF's, but for the ConvNeXt's reordered conv weights).
    pub shape: Vec<usize>,
    /// Receives weight decay (matrices only: not norms, biases, LayerScale, tokens).
    pub decay: bool,
    /// Stored transposed from HF's order: the HF tensor as `(blocks, rows, cols)` row-major
    /// matrices, each kept as (cols, rows) (the ConvNeXt's conv weights).
    pub transposed: Option<(usize, usize, usize)>,
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub entries: Vec<Entry>,
    pub total: usize,
    index: HashMap<ParamId, usize>,
}

impl ParamLayout {
    /// The student's parameters (HF order; no mask token; a ConvNeXt's conv weights reordered,
    /// see the module docs) and heads mapping its width to the teacher's: `heads[h] = (in,
    /// out)`.
    pub fn new(cfg: &ModelConfig, heads: &[(usize, usize)]) -> Self {
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
                transposed: None,
            });
            total += len;
        };
        match cfg {
            ModelConfig::Vit(c) => vit_entries(c, &mut push),
            ModelConfig::ConvNext(c) => convnext_entries(c, &mut push),
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
        if let ModelConfig::ConvNext(c) = cfg {
            for e in &mut entries {
                if let ParamId::ConvNext(p) = e.id {
                    e.transposed = convnext_transpose(c, p);
                }
            }
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
            .filter(|e| e.id.is_model())
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
                ParamId::ConvNext(p) => match p {
                    CParam::NormWeight
                    | CParam::Down(_, CD::NormWeight)
                    | CParam::Block(_, _, CB::NormWeight) => dst.fill(1.0),
                    CParam::Block(_, _, CB::Gamma) => dst.fill(ls_init),
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
            let data = match e.id {
                ParamId::Model(p) => model.tensor_f32(p)?,
                ParamId::ConvNext(p) => model.tensor_f32(p)?,
                _ => continue,
            };
            {
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
                v[e.range.clone()].copy_from_slice(&e.from_hf(data));
            }
        }
        Ok(())
    }

    /// The student's tensors in HF layout (`dinov3_vit` with the mask token written as zeros,
    /// or `dinov3_convnext`).
    pub fn hub_tensors(&self, cfg: &ModelConfig, v: &[f32]) -> Result<Vec<HubTensor>> {
        let cfg = match cfg {
            ModelConfig::Vit(c) => c,
            ModelConfig::ConvNext(c) => return Ok(self.convnext_tensors(c, v)),
        };
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

    /// A ConvNeXt's tensors under their hub names, in HF's order.
    fn convnext_tensors(&self, cfg: &ConvNextConfig, v: &[f32]) -> Vec<HubTensor> {
        self.entries
            .iter()
            .filter_map(|e| match e.id {
                ParamId::ConvNext(p) => Some((e, p)),
                _ => None,
            })
            .map(|(e, p)| {
                let data = e.to_hf(&v[e.range.clone()]);
                f32_entry(e.name.clone(), cnx::shape(cfg, p), &data)
            })
            .collect()
    }

    /// The heads' tensors (`head.{h}.weight`, `head.{h}.bias`).
    pub fn head_tensors(&self, v: &[f32]) -> Vec<HubTensor> {
        self.entries
            .iter()
            .filter(|e| !e.id.is_model())
            .map(|e| f32_entry(e.name.clone(), e.shape.clone(), &v[e.range.clone()]))
            .collect()
    }
}

type Push<'a> = dyn FnMut(ParamId, String, Vec<usize>, bool) + 'a;

/// A ViT's parameters in HF order (no mask token).
fn vit_entries(cfg: &VitConfig, push: &mut Push) {
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
}

/// A ConvNeXt's parameters in HF order, its conv weights in the ops' orders.
fn convnext_entries(cfg: &ConvNextConfig, push: &mut Push) {
    for p in cnx::params(cfg) {
        let decay = matches!(
            p,
            CParam::Down(_, CD::ConvWeight)
                | CParam::Block(_, _, CB::DwWeight | CB::Pw1Weight | CB::Pw2Weight)
        );
        let hf = cnx::shape(cfg, p);
        let shape = match p {
            CParam::Block(..) if decay && hf.len() == 4 => vec![TAPS, hf[0]],
            CParam::Down(s, CD::ConvWeight) if s > 0 => vec![hf[0], hf[2], hf[3], hf[1]],
            _ => hf,
        };
        push(ParamId::ConvNext(p), cnx::hub_name(p), shape, decay);
    }
}

/// How a ConvNeXt parameter's stored order relates to HF's: `(blocks, rows, cols)` of the
/// HF tensor read as `blocks` row-major (rows, cols) matrices, each stored transposed.
fn convnext_transpose(cfg: &ConvNextConfig, p: CParam) -> Option<(usize, usize, usize)> {
    let c = |s: usize| cfg.hidden_sizes[s];
    match p {
        CParam::Block(s, _, CB::DwWeight) => Some((1, c(s), TAPS)),
        CParam::Down(s, CD::ConvWeight) if s > 0 => Some((c(s), c(s - 1), 4)),
        _ => None,
    }
}

/// Each of `blocks` (rows, cols) matrices of `v` transposed.
fn transpose_blocks(v: &[f32], (blocks, rows, cols): (usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for b in 0..blocks {
        let (src, dst) = (&v[b * rows * cols..], &mut out[b * rows * cols..]);
        for r in 0..rows {
            for c in 0..cols {
                dst[c * rows + r] = src[r * cols + c];
            }
        }
    }
    out
}
