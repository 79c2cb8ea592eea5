//! The model definition: one DINOv3 / DINOv2 forward pass, written once against [`Backend`].
//!
//! ```text
//! x = patch_embed(pixels)                       im2col, matmul, then [CLS, registers, patches]
//!                                               (+ pos, DINOv2)
//! for each block:
//!     h   = layer_norm(x; norm1)
//!     qkv = matmul(h; [Wq; Wk; Wv])              fused q, k, v projections
//!     rope(qkv)                                   DINOv3 only, patch tokens only
//!     x  += ls1 * matmul(attention(qkv); Wo)     LayerScale + residual: the matmul epilogue
//!     h   = layer_norm(x; norm2)
//!     x  += ls2 * mlp(h)                          plain: down(act(up h)); gated: down(act(gate h) * up h)
//! out = layer_norm(x; final norm)
//! ```
//!
//! [`PreparedModel`] holds the weights converted once for a backend; [`Plan`] holds every
//! buffer for one input shape, so a forward allocates nothing.

use crate::config::{MlpKind, Positions, VitConfig};
use crate::dispatch::{Backend, Epilogue, HostLinear};
use crate::error::{Result, RuntimeError};
use crate::model::{Int8Weight, Model};
use crate::models::Architecture;
use crate::models::vit::layout::{LayerParam as L, Param};
use crate::ops::{self, Dims};
use crate::resample;

/// The ops a forward of `cfg` issues, for [`Backend::supports`].
pub fn ops_used(cfg: &VitConfig) -> Vec<crate::dispatch::Op> {
    use crate::dispatch::Op;
    let attention = Op::Attention {
        head_dim: cfg.head_dim(),
        heads: cfg.num_heads,
    };
    let mut ops = vec![Op::PatchEmbed, Op::LayerNorm, Op::Matmul, attention];
    if matches!(cfg.positions, Positions::Rope { .. }) {
        ops.push(Op::Rope);
    }
    if matches!(cfg.mlp, MlpKind::Gated(_)) {
        ops.push(Op::Swiglu);
    }
    ops
}

/// One transformer block's weights on a backend.
pub struct PreparedLayer<B: Backend> {
    pub norm1: (B::Buffer, B::Buffer),
    /// (3D, D): q, k, v rows in that order; absent biases are zeros.
    pub qkv: B::Linear,
    pub o: B::Linear,
    pub ls1: B::Buffer,
    pub norm2: (B::Buffer, B::Buffer),
    /// Plain MLP: up (I, D). Gated: [gate; up] (2I, D).
    pub mlp_in: B::Linear,
    pub mlp_out: B::Linear,
    pub ls2: B::Buffer,
}

/// All weights of a model, converted once into a backend's layout.
pub struct PreparedModel<B: Backend> {
    pub config: VitConfig,
    pub patch: B::Linear,
    pub cls: B::Buffer,
    pub registers: Option<B::Buffer>,
    /// DINOv2 position table (1 + g*g, D) on the host; resampled per input grid.
    pub pos_table: Option<Vec<f32>>,
    pub layers: Vec<PreparedLayer<B>>,
    pub norm: (B::Buffer, B::Buffer),
}

/// Stacks several (rows, K) weights and their optional biases into one Linear (and their
/// int8 forms, for int8 models: the parts share one input, hence one input scale).
fn stacked_linear(
    model: &Model,
    name: String,
    parts: &[(Param, Option<Param>)],
    in_features: usize,
) -> Result<HostLinear> {
    let mut weight = Vec::new();
    let mut bias = Vec::new();
    let mut any_bias = false;
    let mut out_features = 0;
    let mut int8: Option<Int8Weight> = None;
    for &(w, b) in parts {
        let wv = model.tensor_f32(w)?;
        let rows = wv.len() / in_features;
        out_features += rows;
        weight.extend_from_slice(&wv);
        match b {
            Some(b) => {
                any_bias = true;
                bias.extend(model.tensor_f32(b)?);
            }
            None => bias.extend(std::iter::repeat_n(0.0, rows)),
        }
        if let Some(q) = model.int8(w)? {
            let acc = int8.get_or_insert(Int8Weight {
                q: Vec::new(),
                scales: Vec::new(),
                input_scale: None,
            });
            acc.q.extend_from_slice(&q.q);
            acc.scales.extend_from_slice(&q.scales);
            acc.input_scale = match (acc.input_scale, q.input_scale) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
    Ok(HostLinear {
        name,
        out_features,
        in_features,
        weight,
        bias: any_bias.then_some(bias),
        int8,
    })
}

impl<B: Backend> PreparedModel<B> {
    /// Converts every parameter of `model` for `backend`.
    pub fn new(backend: &B, model: &Model) -> Result<Self> {
        let cfg = <super::Vit as Architecture>::config(model.config())?.clone();
        let d = cfg.hidden_size;
        let i = cfg.intermediate_size;
        let bias = |flag: bool, p: Param| flag.then_some(p);
        let vec = |p: Param| -> Result<B::Buffer> { backend.upload(&model.tensor_f32(p)?) };
        let patch = backend.linear(HostLinear {
            name: "patch_embed".into(),
            out_features: d,
            in_features: cfg.num_channels * cfg.patch_size * cfg.patch_size,
            weight: model.tensor_f32(Param::PatchWeight)?,
            bias: Some(model.tensor_f32(Param::PatchBias)?),
            int8: None,
        })?;
        let registers = if cfg.num_register_tokens > 0 {
            Some(vec(Param::RegisterTokens)?)
        } else {
            None
        };
        let pos_table = match cfg.positions {
            Positions::Learned { .. } => Some(model.tensor_f32(Param::PosEmbed)?),
            Positions::Rope { .. } => None,
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = |lp| Param::Layer(l, lp);
            let qkv = stacked_linear(
                model,
                format!("layer.{l}.qkv"),
                &[
                    (p(L::QWeight), bias(cfg.query_bias, p(L::QBias))),
                    (p(L::KWeight), bias(cfg.key_bias, p(L::KBias))),
                    (p(L::VWeight), bias(cfg.value_bias, p(L::VBias))),
                ],
                d,
            )?;
            let o = stacked_linear(
                model,
                format!("layer.{l}.o_proj"),
                &[(p(L::OWeight), bias(cfg.proj_bias, p(L::OBias)))],
                d,
            )?;
            let mlp_in = match cfg.mlp {
                MlpKind::Plain(_) => stacked_linear(
                    model,
                    format!("layer.{l}.mlp_in"),
                    &[(p(L::UpWeight), bias(cfg.mlp_bias, p(L::UpBias)))],
                    d,
                )?,
                MlpKind::Gated(_) => stacked_linear(
                    model,
                    format!("layer.{l}.mlp_in"),
                    &[
                        (p(L::GateWeight), bias(cfg.mlp_bias, p(L::GateBias))),
                        (p(L::UpWeight), bias(cfg.mlp_bias, p(L::UpBias))),
                    ],
                    d,
                )?,
            };
            let mlp_out = stacked_linear(
                model,
                format!("layer.{l}.mlp_out"),
                &[(p(L::DownWeight), bias(cfg.mlp_bias, p(L::DownBias)))],
                i,
            )?;
            layers.push(PreparedLayer {
                norm1: (vec(p(L::Norm1Weight))?, vec(p(L::Norm1Bias))?),
                qkv: backend.linear(qkv)?,
                o: backend.linear(o)?,
                ls1: vec(p(L::LayerScale1))?,
                norm2: (vec(p(L::Norm2Weight))?, vec(p(L::Norm2Bias))?),
                mlp_in: backend.linear(mlp_in)?,
                mlp_out: backend.linear(mlp_out)?,
                ls2: vec(p(L::LayerScale2))?,
            });
        }
        Ok(PreparedModel {
            patch,
            cls: vec(Param::ClsToken)?,
            registers,
            pos_table,
            layers,
            norm: (vec(Param::NormWeight)?, vec(Param::NormBias)?),
            config: cfg,
        })
    }
}

/// Sizes of a forward for `batch` images of `height x width` pixels.
pub fn dims(cfg: &VitConfig, batch: usize, height: usize, width: usize) -> Dims {
    let (grid_h, grid_w) = cfg.grid(height, width);
    Dims {
        batch,
        channels: cfg.num_channels,
        height,
        width,
        patch: cfg.patch_size,
        grid_h,
        grid_w,
        prefix: cfg.num_prefix_tokens(),
        dim: cfg.hidden_size,
        heads: cfg.num_heads,
        hidden: cfg.intermediate_size,
    }
}

/// The DINOv2 position table (1 + gh*gw, D) for a grid, resampled as HF does.
pub fn position_table(cfg: &VitConfig, table: &[f32], grid_h: usize, grid_w: usize) -> Vec<f32> {
    let Positions::Learned { grid, antialias } = cfg.positions else {
        return Vec::new();
    };
    let d = cfg.hidden_size;
    if (grid_h, grid_w) == (grid, grid) {
        return table.to_vec();
    }
    // (g*g, D) -> planar (D, g, g), resize, -> (gh*gw, D).
    let patch = &table[d..];
    let mut planar = vec![0.0f32; d * grid * grid];
    for p in 0..grid * grid {
        for c in 0..d {
            planar[c * grid * grid + p] = patch[p * d + c];
        }
    }
    let resized = if antialias {
        resample::resize_aa(
            &planar,
            d,
            grid,
            grid,
            grid_h,
            grid_w,
            resample::Filter::Bicubic,
        )
    } else {
        resample::bicubic(&planar, d, grid, grid, grid_h, grid_w)
    };
    let n = grid_h * grid_w;
    let mut out = Vec::with_capacity((1 + n) * d);
    out.extend_from_slice(&table[..d]);
    for p in 0..n {
        out.extend((0..d).map(|c| resized[c * n + p]));
    }
    out
}

/// Every buffer of one forward at `d` with `captures` captured blocks: (name, f32 elements),
/// in allocation order. [`Plan::new`] allocates exactly these, and the CUDA memory plan
/// (`dispatch::cuda::plan`) sums them, so the two cannot drift apart.
pub fn buffer_table(cfg: &VitConfig, d: &Dims, captures: usize) -> Vec<(&'static str, usize)> {
    let (rows, dim, i) = (d.rows(), d.dim, d.hidden);
    let gated = matches!(cfg.mlp, MlpKind::Gated(_));
    let mut t = vec![
        ("pixels", d.batch * d.channels * d.height * d.width),
        ("patch cols", d.batch * d.patches() * d.patch_len()),
        ("patch emb", d.batch * d.patches() * dim),
        ("x", rows * dim),
        ("h", rows * dim),
        ("qkv", rows * 3 * dim),
        ("attn", rows * dim),
        ("mlp", rows * if gated { 2 * i } else { i }),
    ];
    if gated {
        t.push(("mlp_act", rows * i));
    }
    t.push(("out", rows * dim));
    t.extend((0..captures).map(|_| ("captured", rows * dim)));
    match cfg.positions {
        Positions::Rope { .. } => {
            let n = d.patches() * d.head_dim();
            t.extend([("rope cos", n), ("rope sin", n)]);
        }
        Positions::Learned { .. } => t.push(("positions", (1 + d.patches()) * dim)),
    }
    t
}

/// Every buffer of one forward for fixed dims.
pub struct Plan<B: Backend> {
    /// Unique per plan (backends key recorded forwards by it).
    pub id: u64,
    pub dims: Dims,
    /// Block indices whose (final-normed) output is kept, in request order.
    pub capture: Vec<usize>,
    pub pixels: B::Buffer,
    cols: B::Buffer,
    emb: B::Buffer,
    x: B::Buffer,
    h: B::Buffer,
    qkv: B::Buffer,
    attn: B::Buffer,
    mlp: B::Buffer,
    mlp_act: Option<B::Buffer>,
    pub out: B::Buffer,
    pub captured: Vec<B::Buffer>,
    rope: Option<(B::Buffer, B::Buffer)>,
    pos: Option<B::Buffer>,
}

impl<B: Backend> Plan<B> {
    pub fn new(backend: &B, m: &PreparedModel<B>, dims: Dims, capture: &[usize]) -> Result<Self> {
        let cfg = &m.config;
        if let Some(&bad) = capture.iter().find(|&&l| l >= cfg.num_layers) {
            return Err(RuntimeError::input(
                "layers",
                format!(
                    "layer {bad} requested, the model has {} (0..{})",
                    cfg.num_layers, cfg.num_layers
                ),
            ));
        }
        backend.reserve(&dims)?;
        let mut table =
            <super::Vit as Architecture>::buffer_table(cfg, &dims, capture.len()).into_iter();
        // The table's entries in order: allocated, or uploaded (tables), each checked
        // against its planned size.
        let mut next = |name: &str, data: Option<&[f32]>| -> Result<B::Buffer> {
            let (n, len) = table.next().expect("the plan lists every buffer");
            debug_assert_eq!(n, name, "buffer order");
            match data {
                Some(v) => {
                    debug_assert_eq!(v.len(), len, "{name}: planned size");
                    backend.upload(v)
                }
                None => backend.alloc(len),
            }
        };
        let gated = matches!(cfg.mlp, MlpKind::Gated(_));
        let pixels = next("pixels", None)?;
        let (cols, emb) = (next("patch cols", None)?, next("patch emb", None)?);
        let (x, h) = (next("x", None)?, next("h", None)?);
        let (qkv, attn, mlp) = (next("qkv", None)?, next("attn", None)?, next("mlp", None)?);
        let mlp_act = if gated {
            Some(next("mlp_act", None)?)
        } else {
            None
        };
        let out = next("out", None)?;
        let captured = capture
            .iter()
            .map(|_| next("captured", None))
            .collect::<Result<_>>()?;
        let (mut rope, mut pos) = (None, None);
        match cfg.positions {
            Positions::Rope { theta } => {
                let (c, s) = ops::rope::tables(dims.grid_h, dims.grid_w, dims.head_dim(), theta);
                rope = Some((next("rope cos", Some(&c))?, next("rope sin", Some(&s))?));
            }
            Positions::Learned { .. } => {
                if let Some(t) = &m.pos_table {
                    let table = position_table(cfg, t, dims.grid_h, dims.grid_w);
                    pos = Some(next("positions", Some(&table))?);
                }
            }
        }
        Ok(Plan {
            id: crate::models::next_plan_id(),
            dims,
            capture: capture.to_vec(),
            pixels,
            cols,
            emb,
            x,
            h,
            qkv,
            attn,
            mlp,
            mlp_act,
            out,
            captured,
            rope,
            pos,
        })
    }
}

/// Runs the forward pass on `plan.pixels`, leaving the final-normed tokens in `plan.out`
/// and captured blocks in `plan.captured`.
pub fn forward<B: Backend>(be: &B, m: &PreparedModel<B>, p: &mut Plan<B>) -> Result<()> {
    let id = p.id;
    crate::models::run_recorded(be, id, || forward_ops(be, m, p))
}

fn forward_ops<B: Backend>(be: &B, m: &PreparedModel<B>, p: &mut Plan<B>) -> Result<()> {
    let cfg = &m.config;
    let d = p.dims;
    let rows = d.rows();
    let dim = d.dim;
    let eps = cfg.layer_norm_eps as f32;
    // patch_embed: im2col, the convolution as a matmul, then [CLS, registers, patches].
    be.patch_embed_im2col(&mut p.cols, &p.pixels, &d)?;
    let patches = d.batch * d.patches();
    be.matmul(&mut p.emb, &p.cols, &m.patch, patches, Epilogue::Store)?;
    be.patch_embed_assemble(
        &mut p.x,
        &p.emb,
        &m.cls,
        m.registers.as_ref(),
        p.pos.as_ref(),
        &d,
    )?;
    for (l, layer) in m.layers.iter().enumerate() {
        // Attention half: x += ls1 * o_proj(attention(rope(qkv(norm1(x))))).
        be.layer_norm(
            &mut p.h,
            &p.x,
            &layer.norm1.0,
            &layer.norm1.1,
            rows,
            dim,
            eps,
        )?;
        be.matmul(&mut p.qkv, &p.h, &layer.qkv, rows, Epilogue::Store)?;
        if let Some((cos, sin)) = &p.rope {
            be.rope(&mut p.qkv, cos, sin, &d)?;
        }
        be.attention(&mut p.attn, &p.qkv, &d)?;
        be.matmul(
            &mut p.x,
            &p.attn,
            &layer.o,
            rows,
            Epilogue::Residual(&layer.ls1),
        )?;
        // MLP half: x += ls2 * mlp(norm2(x)).
        be.layer_norm(
            &mut p.h,
            &p.x,
            &layer.norm2.0,
            &layer.norm2.1,
            rows,
            dim,
            eps,
        )?;
        match cfg.mlp {
            MlpKind::Plain(act) => {
                be.matmul(&mut p.mlp, &p.h, &layer.mlp_in, rows, Epilogue::Act(act))?;
                be.matmul(
                    &mut p.x,
                    &p.mlp,
                    &layer.mlp_out,
                    rows,
                    Epilogue::Residual(&layer.ls2),
                )?;
            }
            MlpKind::Gated(act) => {
                let mlp_act = p.mlp_act.as_mut().expect("gated plan has mlp_act");
                be.matmul(&mut p.mlp, &p.h, &layer.mlp_in, rows, Epilogue::Store)?;
                be.swiglu(mlp_act, &p.mlp, rows, d.hidden, act)?;
                be.matmul(
                    &mut p.x,
                    mlp_act,
                    &layer.mlp_out,
                    rows,
                    Epilogue::Residual(&layer.ls2),
                )?;
            }
        }
        for (k, _) in p.capture.iter().enumerate().filter(|(_, c)| **c == l) {
            be.layer_norm(
                &mut p.captured[k],
                &p.x,
                &m.norm.0,
                &m.norm.1,
                rows,
                dim,
                eps,
            )?;
        }
    }
    be.layer_norm(&mut p.out, &p.x, &m.norm.0, &m.norm.1, rows, dim, eps)?;
    be.synchronize()
}
