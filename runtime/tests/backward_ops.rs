//! Backward of every op against central finite differences of its forward, and the fast
//! (GEMM-based) training forms against the readable references.
//!
//! Each check uses a random linear loss L = sum(out * R), so dL/dout = R, perturbs sampled
//! input coordinates by +-1e-2 and compares (L+ - L-) / 2e-2 with the backward's value.
//! Tolerance 5e-3 x (1 + |grad|): f32 forwards make the differences noisy at about 1e-4.

use dinoedge_runtime::backend::cpu::isa::Isa;
use dinoedge_runtime::backend::cpu::pool::Pool;
use dinoedge_runtime::config::Activation;
use dinoedge_runtime::ops::{Dims, activation, attention, layer_norm, rope, swiglu};

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Compares `grad` with finite differences of `loss` at sampled coordinates of `x`.
fn check(name: &str, x: &[f32], grad: &[f32], loss: impl Fn(&[f32]) -> f64, rng: &mut Rng) {
    let eps = 1e-2f32;
    for _ in 0..24 {
        let i = ((rng.f() + 1.0) * 0.5 * x.len() as f32) as usize % x.len();
        let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
        xp[i] += eps;
        xm[i] -= eps;
        let fd = (loss(&xp) - loss(&xm)) / (2.0 * eps as f64);
        let g = grad[i] as f64;
        assert!(
            (fd - g).abs() <= 5e-3 * (1.0 + g.abs()),
            "{name}[{i}]: backward {g}, finite difference {fd}"
        );
    }
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let mut rng = Rng(1);
    let (rows, cols) = (5, 24);
    let (x, w, b, r) = (
        rng.vec(rows * cols),
        rng.vec(cols),
        rng.vec(cols),
        rng.vec(rows * cols),
    );
    let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut out = vec![0.0; rows * cols];
        layer_norm::cpu::layer_norm_forward(&mut out, None, x, w, b, cols, 1e-5);
        dot(&out, &r)
    };
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    let mut out = vec![0.0; rows * cols];
    let c = layer_norm::cpu::LayerNormCache {
        mean: &mut mean,
        rstd: &mut rstd,
    };
    layer_norm::cpu::layer_norm_forward(&mut out, Some(c), &x, &w, &b, cols, 1e-5);
    let cache = layer_norm::cpu::LayerNormCache {
        mean: &mut mean,
        rstd: &mut rstd,
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
    layer_norm::cpu::layer_norm_backward(&mut dx, &mut dw, &mut db, &r, &x, &w, &cache, cols);
    check("ln dx", &x, &dx, |x| fwd(x, &w, &b), &mut rng);
    check("ln dw", &w, &dw, |w| fwd(&x, w, &b), &mut rng);
    check("ln db", &b, &db, |b| fwd(&x, &w, b), &mut rng);
}

#[test]
fn activation_and_swiglu_backward_match_finite_differences() {
    let mut rng = Rng(2);
    let n = 200;
    let x: Vec<f32> = rng.vec(n).iter().map(|v| v * 4.0).collect();
    let r = rng.vec(n);
    for act in [Activation::Gelu, Activation::GeluTanh, Activation::Silu] {
        let mut dx = vec![0.0; n];
        activation::cpu::activation_backward(&mut dx, &r, &x, act);
        check(
            &format!("{act:?}"),
            &x,
            &dx,
            |x| {
                x.iter()
                    .zip(&r)
                    .map(|(v, r)| activation::cpu::apply(act, *v) as f64 * *r as f64)
                    .sum()
            },
            &mut rng,
        );
    }
    let (rows, hidden) = (3, 16);
    let gu: Vec<f32> = rng.vec(rows * 2 * hidden).iter().map(|v| v * 3.0).collect();
    let r = rng.vec(rows * hidden);
    let mut dgu = vec![0.0; rows * 2 * hidden];
    swiglu::cpu::swiglu_backward(&mut dgu, &r, &gu, hidden, Activation::Silu);
    let fwd = |gu: &[f32]| {
        let mut out = vec![0.0; rows * hidden];
        swiglu::cpu::swiglu_forward(&mut out, gu, hidden, Activation::Silu);
        dot(&out, &r)
    };
    check("swiglu", &gu, &dgu, fwd, &mut rng);
}

fn dims(batch: usize, gh: usize, gw: usize, prefix: usize, dim: usize, heads: usize) -> Dims {
    Dims {
        batch,
        channels: 3,
        height: gh,
        width: gw,
        patch: 1,
        grid_h: gh,
        grid_w: gw,
        prefix,
        dim,
        heads,
        hidden: dim,
    }
}

#[test]
fn rope_backward_is_the_transpose() {
    let mut rng = Rng(3);
    let d = dims(2, 3, 4, 5, 32, 2);
    let (cos, sin) = rope::tables(d.grid_h, d.grid_w, d.head_dim(), 100.0);
    let (x, y) = (rng.vec(d.rows() * 3 * d.dim), rng.vec(d.rows() * 3 * d.dim));
    let mut rx = x.clone();
    rope::cpu::rope_forward(&mut rx, &cos, &sin, &d);
    let mut ry = y.clone();
    rope::cpu::rope_backward(&mut ry, &cos, &sin, &d);
    // <R x, y> == <x, Rᵀ y>
    let (a, b) = (dot(&rx, &y), dot(&x, &ry));
    assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
}

#[test]
fn attention_backward_matches_finite_differences_and_the_fast_forms() {
    let mut rng = Rng(4);
    let pool = Pool::new(2).unwrap();
    for d in [dims(2, 2, 3, 2, 16, 2), dims(1, 5, 5, 5, 64, 2)] {
        let qkv = rng.vec(d.rows() * 3 * d.dim);
        let r = rng.vec(d.rows() * d.dim);
        let lse_len = d.batch * d.heads * d.tokens();
        let (mut out, mut lse) = (vec![0.0; d.rows() * d.dim], vec![0.0; lse_len]);
        attention::cpu::attention_forward_lse(&mut out, &mut lse, &qkv, &d);
        let mut plain = vec![0.0; d.rows() * d.dim];
        attention::cpu::attention_forward(&mut plain, &qkv, &d);
        assert!(out.iter().zip(&plain).all(|(a, b)| (a - b).abs() < 1e-5));
        let mut dqkv = vec![0.0; qkv.len()];
        attention::cpu::attention_backward(&mut dqkv, &r, &qkv, &out, &lse, &d);
        let fwd = |qkv: &[f32]| {
            let mut o = vec![0.0; d.rows() * d.dim];
            attention::cpu::attention_forward(&mut o, qkv, &d);
            dot(&o, &r)
        };
        check("attention dqkv", &qkv, &dqkv, fwd, &mut rng);
        // Fast forms, every SIMD family.
        for isa in Isa::all_supported() {
            let (mut o2, mut l2) = (vec![0.0; out.len()], vec![0.0; lse_len]);
            attention::fast::attention_forward_lse(&pool, isa, &mut o2, &mut l2, &qkv, &d);
            let e = o2
                .iter()
                .zip(&out)
                .chain(l2.iter().zip(&lse))
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(e < 1e-5, "{isa} fast train forward: {e}");
            let mut dq2 = vec![f32::NAN; qkv.len()];
            attention::fast::attention_backward(&pool, isa, &mut dq2, &r, &qkv, &out, &lse, &d);
            let e = dq2
                .iter()
                .zip(&dqkv)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(e < 1e-5, "{isa} fast backward: {e}");
        }
    }
}

#[test]
fn matmul_backward_matches_finite_differences() {
    use dinoedge_runtime::ops::matmul::fast::train::{matmul_backward, matmul_forward_train};
    let mut rng = Rng(5);
    let pool = Pool::new(2).unwrap();
    let (rows, k, o) = (7, 13, 5);
    let (x, w, b, r) = (
        rng.vec(rows * k),
        rng.vec(o * k),
        rng.vec(o),
        rng.vec(rows * o),
    );
    for isa in Isa::all_supported() {
        let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut out = vec![0.0; rows * o];
            matmul_forward_train(
                &pool,
                isa,
                &mut Vec::new(),
                &mut out,
                o,
                x,
                w,
                Some(b),
                rows,
                k,
            );
            dot(&out, &r)
        };
        let (mut dx, mut dw, mut db) = (vec![0.0; rows * k], vec![0.0; o * k], vec![0.0; o]);
        let dinp = Some((&mut dx[..], false));
        matmul_backward(
            &pool,
            isa,
            &mut Vec::new(),
            dinp,
            &mut dw,
            Some(&mut db),
            &r,
            o,
            &x,
            &w,
            rows,
            k,
        );
        check(
            &format!("matmul dinp {isa}"),
            &x,
            &dx,
            |x| fwd(x, &w, &b),
            &mut rng,
        );
        check(
            &format!("matmul dweight {isa}"),
            &w,
            &dw,
            |w| fwd(&x, w, &b),
            &mut rng,
        );
        check(
            &format!("matmul dbias {isa}"),
            &b,
            &db,
            |b| fwd(&x, &w, b),
            &mut rng,
        );
    }
}

#[test]
fn residual_and_patch_embed_backward_match_finite_differences() {
    use dinoedge_runtime::ops::{patch_embed, residual};
    let mut rng = Rng(6);
    let pool = Pool::new(2).unwrap();
    // residual: x_out = x + gamma * y.
    let (rows, dim) = (9, 11);
    let (x, y, g, r) = (
        rng.vec(rows * dim),
        rng.vec(rows * dim),
        rng.vec(dim),
        rng.vec(rows * dim),
    );
    let fwd = |y: &[f32], g: &[f32]| {
        let mut out = x.clone();
        residual::cpu::residual_forward(&pool, &mut out, y, Some(g), dim);
        dot(&out, &r)
    };
    let (mut dy, mut dg) = (vec![0.0; rows * dim], vec![0.0; dim]);
    residual::cpu::residual_backward(&pool, &mut dy, &mut dg, &r, &y, &g);
    check("residual dy", &y, &dy, |y| fwd(y, &g), &mut rng);
    check("residual dgamma", &g, &dg, |g| fwd(&y, g), &mut rng);
    // patch_embed's assembly: x = [cls, registers, emb].
    let d = dims(2, 3, 4, 5, 8, 1);
    let (emb, cls, regs) = (
        rng.vec(d.batch * d.patches() * d.dim),
        rng.vec(d.dim),
        rng.vec(4 * d.dim),
    );
    let r = rng.vec(d.rows() * d.dim);
    let fwd = |emb: &[f32], cls: &[f32], regs: &[f32]| {
        let mut x = vec![0.0; d.rows() * d.dim];
        patch_embed::cpu::assemble_rows(&mut x, 0, emb, cls, regs, None, &d);
        dot(&x, &r)
    };
    let (mut de, mut dc, mut dr) = (vec![0.0; emb.len()], vec![0.0; d.dim], vec![0.0; 4 * d.dim]);
    patch_embed::cpu::patch_embed_backward(&mut de, &mut dc, &mut dr, &r, &d);
    check(
        "patch_embed demb",
        &emb,
        &de,
        |e| fwd(e, &cls, &regs),
        &mut rng,
    );
    check(
        "patch_embed dcls",
        &cls,
        &dc,
        |c| fwd(&emb, c, &regs),
        &mut rng,
    );
    check(
        "patch_embed dregisters",
        &regs,
        &dr,
        |g| fwd(&emb, &cls, g),
        &mut rng,
    );
}

/// The ConvNeXt ops: dwconv (din, dweight, dbias), token_pool and the channels-last im2col,
/// on maps narrower than the kernel and with rows past the last full patch.
#[test]
fn convnext_ops_backward_match_finite_differences() {
    use dinoedge_runtime::ops::dwconv::{DwDims, TAPS, cpu as dw};
    use dinoedge_runtime::ops::{patch_embed, token_pool};
    let mut rng = Rng(8);
    for (batch, height, width, channels) in [(2, 5, 9, 3), (1, 3, 2, 17)] {
        let d = DwDims {
            batch,
            height,
            width,
            channels,
        };
        let (x, w, b, r) = (
            rng.vec(d.len()),
            rng.vec(TAPS * channels),
            rng.vec(channels),
            rng.vec(d.len()),
        );
        let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut out = vec![0.0; d.len()];
            dw::dwconv_forward(&mut out, x, w, b, &d);
            dot(&out, &r)
        };
        // dweight and dbias accumulate: they start at 0.5, taken off after.
        let (mut dx, mut dw_, mut db) = (
            vec![f32::NAN; d.len()],
            vec![0.5; w.len()],
            vec![0.5; channels],
        );
        dw::dwconv_backward(&mut dx, &mut dw_, &mut db, &r, &x, &w, &d);
        dw_.iter_mut().chain(db.iter_mut()).for_each(|v| *v -= 0.5);
        check("dwconv din", &x, &dx, |x| fwd(x, &w, &b), &mut rng);
        check("dwconv dweight", &w, &dw_, |w| fwd(&x, w, &b), &mut rng);
        check("dwconv dbias", &b, &db, |b| fwd(&x, &w, b), &mut rng);
    }
    let (batch, cells, channels) = (2, 5, 7);
    let (x, r) = (
        rng.vec(batch * cells * channels),
        rng.vec(batch * (1 + cells) * channels),
    );
    let fwd = |x: &[f32]| {
        let mut out = vec![0.0; r.len()];
        token_pool::cpu::token_pool_forward(&mut out, x, batch, cells, channels);
        dot(&out, &r)
    };
    let mut dx = vec![f32::NAN; x.len()];
    token_pool::cpu::token_pool_backward(&mut dx, &r, batch, cells, channels);
    check("token_pool dinp", &x, &dx, fwd, &mut rng);
    let mut d = dims(2, 2, 3, 0, 8, 1);
    (d.channels, d.patch, d.height, d.width) = (5, 2, 5, 7);
    let x = rng.vec(d.batch * d.height * d.width * d.channels);
    let r = rng.vec(d.batch * d.patches() * d.patch_len());
    let fwd = |x: &[f32]| {
        let mut cols = vec![0.0; r.len()];
        patch_embed::cpu::patch_embed_forward_im2col_nhwc(&mut cols, x, &d);
        dot(&cols, &r)
    };
    let mut dx = vec![f32::NAN; x.len()];
    patch_embed::cpu::patch_embed_backward_im2col_nhwc(&mut dx, &r, &d);
    check("im2col_nhwc dx", &x, &dx, fwd, &mut rng);
}
