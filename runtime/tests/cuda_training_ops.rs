//! The CUDA forms of the training ops (the trainer's forward with saved state, and every
//! backward) against the CPU references of the same names, on odd shapes: one token, widths
//! that are no multiple of a tile, head dims 16 to 128, tall matrices whose column sums take
//! several row chunks. Runs on the emulator always and on a GPU where there is one
//! (`DINOEDGE_CUDA_DEVICES`, default "emu,cuda"), so every training kernel runs in CI (the
//! trainer's own tests use the fixtures' head dim 16 only).
//!
//! Tolerance: error = max |got - want| / max(max |want|, 1) <= 1e-5 in f32 (sums in another
//! order; measured worst 1.0e-6, the hd-128 attention backward); bf16 products: mean row
//! cosine >= 0.9999 (measured worst 0.999996).

use std::sync::Arc;

use dinoedge_runtime::backend::cpu::pool::Pool;
use dinoedge_runtime::backend::cuda::device::{
    DevPtr, Device, DeviceBuffer, Elem, bytes, bytes_mut,
};
use dinoedge_runtime::config::Activation;
use dinoedge_runtime::ops::{self, Dims, activation, attention, column_sum, layer_norm};
use dinoedge_runtime::ops::{matmul, patch_embed, residual, rope, swiglu};
use dinoedge_runtime::testing::compare;

struct Rng(u64);

impl Rng {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

/// A device and helpers to move host vectors to and from it.
struct Dev {
    label: String,
    dev: Arc<dyn Device>,
    keep: std::cell::RefCell<Vec<DeviceBuffer>>,
}

impl Dev {
    fn up(&self, v: &[f32]) -> DevPtr {
        let b = DeviceBuffer::new(&self.dev, v.len().max(1), 4, "test").unwrap();
        self.dev.upload(b.ptr, bytes(v)).unwrap();
        let p = b.ptr;
        self.keep.borrow_mut().push(b);
        p
    }

    fn zeros(&self, n: usize) -> DevPtr {
        self.up(&vec![0.0; n])
    }

    fn down(&self, p: DevPtr, n: usize) -> Vec<f32> {
        let mut v = vec![0.0f32; n];
        self.dev.download(p, bytes_mut(&mut v)).unwrap();
        v
    }

    fn d(&self) -> &dyn Device {
        &*self.dev
    }

    fn check(&self, what: &str, got_at: DevPtr, want: &[f32], row: usize) {
        let got = self.down(got_at, want.len());
        let c = compare(&format!("{} {what}", self.label), &got, want, row, 1e-5);
        println!("{c}");
        c.assert_ok();
    }
}

fn devices() -> Vec<Dev> {
    let want = std::env::var("DINOEDGE_CUDA_DEVICES").unwrap_or_else(|_| "emu,cuda".into());
    let program = ops::cuda_program();
    let mut out = Vec::new();
    for (tag, emulated) in [("emu", true), ("cuda", false)] {
        if !want.split(',').any(|w| w == tag) || !(emulated || cfg!(feature = "cuda")) {
            continue;
        }
        match dinoedge_runtime::backend::cuda::open(&program, emulated, None) {
            Ok(dev) => out.push(Dev {
                label: dev.name(),
                dev,
                keep: Default::default(),
            }),
            Err(e) if emulated => panic!("the CUDA emulator builds (a C++20 compiler): {e}"),
            Err(e) => {
                assert!(
                    std::env::var("DINOEDGE_REQUIRE_CUDA").as_deref() != Ok("1"),
                    "CUDA required: {e}"
                );
                eprintln!("cuda: SKIPPED ({e})");
            }
        }
    }
    out
}

fn dims(batch: usize, (gh, gw): (usize, usize), prefix: usize, dim: usize, heads: usize) -> Dims {
    Dims {
        batch,
        channels: 3,
        height: gh * 16 + 5,
        width: gw * 16 + 3,
        patch: 16,
        grid_h: gh,
        grid_w: gw,
        prefix,
        dim,
        heads,
        hidden: 2 * dim,
    }
}

#[test]
fn layer_norm_forward_with_cache_and_backward() {
    for dev in devices() {
        // 300 rows: the weight gradients' column sums take several row chunks.
        for (rows, cols) in [(1, 1), (7, 17), (300, 130)] {
            let mut r = Rng(rows as u64);
            let (x, w, b, dy) = (
                r.vec(rows * cols, 3.0),
                r.vec(cols, 1.0),
                r.vec(cols, 1.0),
                r.vec(rows * cols, 1.0),
            );
            let mut out = vec![0.0; rows * cols];
            let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
            let c = layer_norm::cpu::LayerNormCache {
                mean: &mut mean,
                rstd: &mut rstd,
            };
            layer_norm::cpu::layer_norm_forward(&mut out, Some(c), &x, &w, &b, cols, 1e-6);
            let cache = layer_norm::cpu::LayerNormCache {
                mean: &mut mean,
                rstd: &mut rstd,
            };
            let (mut dx, mut dw, mut db) =
                (vec![0.0; rows * cols], vec![0.5; cols], vec![0.5; cols]);
            layer_norm::cpu::layer_norm_backward(
                &mut dx, &mut dw, &mut db, &dy, &x, &w, &cache, cols,
            );
            let (xg, wg, bg, dyg) = (dev.up(&x), dev.up(&w), dev.up(&b), dev.up(&dy));
            let c = layer_norm::cuda::LayerNormCache {
                mean: dev.zeros(rows),
                rstd: dev.zeros(rows),
            };
            let og = dev.zeros(rows * cols);
            layer_norm::cuda::layer_norm_forward(
                dev.d(),
                og,
                Some(c),
                xg,
                wg,
                bg,
                rows,
                cols,
                1e-6,
            )
            .unwrap();
            dev.check(&format!("layer_norm_forward {rows}x{cols}"), og, &out, cols);
            dev.check("layer_norm mean", c.mean, cache.mean, 1);
            dev.check("layer_norm rstd", c.rstd, cache.rstd, 1);
            let partial = dev.zeros(column_sum::cuda::partial_len(cols));
            let (dxg, dwg, dbg) = (
                dev.zeros(rows * cols),
                dev.up(&vec![0.5; cols]),
                dev.up(&vec![0.5; cols]),
            );
            layer_norm::cuda::layer_norm_backward(
                dev.d(),
                partial,
                dxg,
                dwg,
                dbg,
                dyg,
                xg,
                wg,
                c,
                rows,
                cols,
            )
            .unwrap();
            dev.check(
                &format!("layer_norm_backward dinp {rows}x{cols}"),
                dxg,
                &dx,
                cols,
            );
            dev.check("layer_norm_backward dweight (+=)", dwg, &dw, cols);
            dev.check("layer_norm_backward dbias (+=)", dbg, &db, cols);
        }
    }
}

#[test]
fn residual_forward_and_backward() {
    let pool = Pool::new(2).unwrap();
    for dev in devices() {
        for (rows, dim) in [(1, 3), (300, 33)] {
            let mut r = Rng(7 + rows as u64);
            let (x, y, g, dx) = (
                r.vec(rows * dim, 1.0),
                r.vec(rows * dim, 1.0),
                r.vec(dim, 1.0),
                r.vec(rows * dim, 1.0),
            );
            let mut want = x.clone();
            residual::cpu::residual_forward(&pool, &mut want, &y, Some(&g), dim);
            let (xg, yg, gg) = (dev.up(&x), dev.up(&y), dev.up(&g));
            residual::cuda::residual_forward(dev.d(), xg, yg, Some(gg), rows * dim, dim).unwrap();
            dev.check(&format!("residual_forward {rows}x{dim}"), xg, &want, dim);
            let (mut dy, mut dg) = (vec![0.0; rows * dim], vec![0.25; dim]);
            residual::cpu::residual_backward(&pool, &mut dy, &mut dg, &dx, &y, &g);
            let (dyg, dgg, dxg) = (dev.zeros(rows * dim), dev.up(&vec![0.25; dim]), dev.up(&dx));
            let partial = dev.zeros(column_sum::cuda::partial_len(dim));
            residual::cuda::residual_backward(dev.d(), partial, dyg, dgg, dxg, yg, gg, rows, dim)
                .unwrap();
            dev.check("residual_backward dy", dyg, &dy, dim);
            dev.check("residual_backward dgamma (+=)", dgg, &dg, dim);
        }
    }
}

/// out = x W^T + b and its backward, in plain loops (f64 sums).
fn matmul_reference(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    dy: &[f32],
    (rows, k, o): (usize, usize, usize),
) -> [Vec<f32>; 4] {
    let mut out = vec![0.0f32; rows * o];
    let (mut dx, mut dw, mut db) = (vec![0.0f32; rows * k], vec![0.0f32; o * k], vec![0.0f32; o]);
    for r in 0..rows {
        for j in 0..o {
            let s: f64 = (0..k)
                .map(|t| x[r * k + t] as f64 * w[j * k + t] as f64)
                .sum();
            out[r * o + j] = (s + b[j] as f64) as f32;
        }
        for t in 0..k {
            dx[r * k + t] = (0..o)
                .map(|j| dy[r * o + j] as f64 * w[j * k + t] as f64)
                .sum::<f64>() as f32;
        }
    }
    for j in 0..o {
        for t in 0..k {
            dw[j * k + t] = (0..rows)
                .map(|r| dy[r * o + j] as f64 * x[r * k + t] as f64)
                .sum::<f64>() as f32;
        }
        db[j] = (0..rows).map(|r| dy[r * o + j] as f64).sum::<f64>() as f32;
    }
    [out, dx, dw, db]
}

#[test]
fn matmul_forward_train_and_backward_f32_and_bf16() {
    for dev in devices() {
        for (rows, k, o) in [(1, 3, 17), (300, 33, 130)] {
            let mut r = Rng(11 + rows as u64);
            let (x, w, b, dy) = (
                r.vec(rows * k, 1.0),
                r.vec(o * k, 0.3),
                r.vec(o, 1.0),
                r.vec(rows * o, 1.0),
            );
            let [out, dx, dw, db] = matmul_reference(&x, &w, &b, &dy, (rows, k, o));
            for ty in [Elem::F32, Elem::BF16] {
                let mut scratch = matmul::cuda::GemmScratch::new(&dev.dev);
                let (xg, bg, dyg) = (dev.up(&x), dev.up(&b), dev.up(&dy));
                let wt = matmul::cuda::Weight {
                    ptr: dev.up(&w),
                    half: None,
                };
                let og = dev.zeros(rows * o);
                matmul::cuda::matmul_forward_train(
                    dev.d(),
                    &mut scratch,
                    ty,
                    og,
                    o,
                    xg,
                    wt,
                    Some(bg),
                    (rows, k, o),
                )
                .unwrap();
                let (dxg, dwg, dbg) = (dev.zeros(rows * k), dev.zeros(o * k), dev.zeros(o));
                let partial = dev.zeros(column_sum::cuda::partial_len(o));
                let dinp = Some((dxg, false));
                matmul::cuda::matmul_backward(
                    dev.d(),
                    &mut scratch,
                    partial,
                    ty,
                    dinp,
                    dwg,
                    Some(dbg),
                    dyg,
                    o,
                    xg,
                    wt,
                    (rows, k, o),
                )
                .unwrap();
                let tag = format!("{ty:?} {rows}x{k}->{o}");
                if ty == Elem::F32 {
                    dev.check(&format!("matmul_forward_train {tag}"), og, &out, o);
                    dev.check(&format!("matmul_backward dinp {tag}"), dxg, &dx, k);
                    dev.check(&format!("matmul_backward dweight {tag}"), dwg, &dw, k);
                } else {
                    for (what, p, want, row) in [
                        ("forward", og, &out, o),
                        ("dinp", dxg, &dx, k),
                        ("dweight", dwg, &dw, k),
                    ] {
                        let c = compare(
                            &format!("{} matmul {what} {tag}", dev.label),
                            &dev.down(p, want.len()),
                            want,
                            row,
                            1.0,
                        );
                        println!("{c}");
                        assert!(c.mean_cosine >= 0.9999, "{c}");
                    }
                }
                dev.check(&format!("matmul_backward dbias {tag}"), dbg, &db, o);
            }
        }
    }
}

#[test]
fn attention_forward_lse_and_backward_every_head_dim() {
    let cases = [
        dims(1, (0, 0), 1, 16, 1),   // one token
        dims(2, (3, 5), 5, 64, 2),   // hd 32, 20 tokens
        dims(1, (7, 9), 1, 128, 2),  // hd 64, 64 tokens
        dims(1, (9, 10), 5, 256, 2), // hd 128, 95 tokens
    ];
    for dev in devices() {
        for d in cases {
            let (rows, dim) = (d.rows(), d.dim);
            let mut r = Rng(dim as u64);
            let (qkv, dout) = (r.vec(rows * 3 * dim, 2.0), r.vec(rows * dim, 1.0));
            let lse_n = d.batch * d.heads * d.tokens();
            let (mut out, mut lse) = (vec![0.0; rows * dim], vec![0.0; lse_n]);
            attention::cpu::attention_forward_lse(&mut out, &mut lse, &qkv, &d);
            let mut dqkv = vec![0.0; rows * 3 * dim];
            attention::cpu::attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, &d);
            let (qg, og, lg) = (dev.up(&qkv), dev.zeros(rows * dim), dev.zeros(lse_n));
            attention::cuda::attention_forward_lse(dev.d(), og, lg, qg, &d).unwrap();
            let tag = format!("hd {} tokens {}", d.head_dim(), d.tokens());
            dev.check(&format!("attention_forward_lse out {tag}"), og, &out, dim);
            dev.check(
                &format!("attention_forward_lse lse {tag}"),
                lg,
                &lse,
                d.tokens(),
            );
            let saved = attention::cuda::AttentionSaved {
                qkv: qg,
                out: og,
                lse: lg,
                delta: dev.zeros(lse_n),
            };
            let dg = dev.zeros(rows * 3 * dim);
            attention::cuda::attention_backward(dev.d(), dg, dev.up(&dout), saved, &d).unwrap();
            dev.check(&format!("attention_backward {tag}"), dg, &dqkv, 3 * dim);
        }
    }
}

#[test]
fn rope_swiglu_activation_and_patch_embed_backward() {
    for dev in devices() {
        let d = dims(2, (3, 5), 5, 64, 2);
        let mut r = Rng(3);
        // rope
        let dq = r.vec(d.rows() * 3 * d.dim, 1.0);
        let (cos, sin) = rope::tables(d.grid_h, d.grid_w, d.head_dim(), 100.0);
        let mut want = dq.clone();
        rope::cpu::rope_backward(&mut want, &cos, &sin, &d);
        let g = dev.up(&dq);
        rope::cuda::rope_backward(dev.d(), g, dev.up(&cos), dev.up(&sin), &d).unwrap();
        dev.check("rope_backward", g, &want, 3 * d.dim);
        for act in [Activation::Gelu, Activation::GeluTanh, Activation::Silu] {
            // swiglu
            let (rows, hidden) = (7, 17);
            let (gu, da) = (r.vec(rows * 2 * hidden, 3.0), r.vec(rows * hidden, 1.0));
            let mut dgu = vec![0.0; rows * 2 * hidden];
            swiglu::cpu::swiglu_backward(&mut dgu, &da, &gu, hidden, act);
            let dg = dev.zeros(rows * 2 * hidden);
            swiglu::cuda::swiglu_backward(dev.d(), dg, dev.up(&da), dev.up(&gu), rows, hidden, act)
                .unwrap();
            dev.check(&format!("swiglu_backward {act:?}"), dg, &dgu, 2 * hidden);
            // activation
            let h = r.vec(rows * hidden, 3.0);
            let mut a = h.clone();
            activation::cpu::activation_forward(&mut a, act);
            let ag = dev.zeros(rows * hidden);
            let hg = dev.up(&h);
            activation::cuda::activation_forward(dev.d(), ag, hg, rows * hidden, act).unwrap();
            dev.check(&format!("activation_forward {act:?}"), ag, &a, hidden);
            let mut dh = vec![0.0; rows * hidden];
            activation::cpu::activation_backward(&mut dh, &da, &h, act);
            let dhg = dev.zeros(rows * hidden);
            activation::cuda::activation_backward(
                dev.d(),
                dhg,
                dev.up(&da),
                hg,
                rows * hidden,
                act,
            )
            .unwrap();
            dev.check(&format!("activation_backward {act:?}"), dhg, &dh, hidden);
        }
        // patch_embed (assembly) backward
        let dx = r.vec(d.rows() * d.dim, 1.0);
        let pe = d.batch * d.patches() * d.dim;
        let (mut demb, mut dcls, mut dregs) = (
            vec![0.0; pe],
            vec![0.5; d.dim],
            vec![0.5; (d.prefix - 1) * d.dim],
        );
        patch_embed::cpu::patch_embed_backward(&mut demb, &mut dcls, &mut dregs, &dx, &d);
        let (eg, cg, rg) = (
            dev.zeros(pe),
            dev.up(&vec![0.5; d.dim]),
            dev.up(&vec![0.5; (d.prefix - 1) * d.dim]),
        );
        patch_embed::cuda::patch_embed_backward(dev.d(), eg, cg, rg, dev.up(&dx), &d).unwrap();
        dev.check("patch_embed_backward demb", eg, &demb, d.dim);
        dev.check("patch_embed_backward dcls (+=)", cg, &dcls, d.dim);
        dev.check("patch_embed_backward dregisters (+=)", rg, &dregs, d.dim);
    }
}

/// The ConvNeXt ops' CUDA backward (dwconv's din, dweight, dbias; token_pool; the
/// channels-last im2col) against the CPU references, dweight and dbias accumulating.
#[test]
fn convnext_ops_backward() {
    use dinoedge_runtime::ops::dwconv::{self, DwDims, TAPS};
    use dinoedge_runtime::ops::token_pool;
    for dev in devices() {
        for (batch, height, width, channels) in [(1, 1, 1, 3), (2, 9, 6, 40)] {
            let d = DwDims {
                batch,
                height,
                width,
                channels,
            };
            let mut r = Rng(11 + channels as u64);
            let (x, w, g) = (
                r.vec(d.len(), 1.0),
                r.vec(TAPS * channels, 0.3),
                r.vec(d.len(), 1.0),
            );
            let (mut dx, mut dw, mut db) =
                (vec![0.0; d.len()], vec![0.5; w.len()], vec![0.5; channels]);
            dwconv::cpu::dwconv_backward(&mut dx, &mut dw, &mut db, &g, &x, &w, &d);
            // din is written (=) over NaN; dweight and dbias accumulate (+=) onto 0.5.
            let (dxg, dwg, dbg) = (
                dev.up(&vec![f32::NAN; d.len()]),
                dev.up(&vec![0.5; w.len()]),
                dev.up(&vec![0.5; channels]),
            );
            let (gg, xg, wg) = (dev.up(&g), dev.up(&x), dev.up(&w));
            dwconv::cuda::dwconv_backward(dev.d(), dxg, dwg, dbg, gg, xg, wg, &d).unwrap();
            dev.check(&format!("dwconv_backward din {d:?}"), dxg, &dx, channels);
            dev.check("dwconv_backward dweight (+=)", dwg, &dw, channels);
            dev.check("dwconv_backward dbias (+=)", dbg, &db, channels);
        }
        let (batch, cells, channels) = (3, 7, 5);
        let g = Rng(3).vec(batch * (1 + cells) * channels, 1.0);
        let mut want = vec![0.0; batch * cells * channels];
        token_pool::cpu::token_pool_backward(&mut want, &g, batch, cells, channels);
        let dg = dev.up(&vec![f32::NAN; want.len()]);
        token_pool::cuda::token_pool_backward(dev.d(), dg, dev.up(&g), batch, cells, channels)
            .unwrap();
        dev.check("token_pool_backward", dg, &want, channels);
        let mut d = dims(2, (2, 3), 0, 8, 1);
        (d.channels, d.patch, d.height, d.width) = (5, 2, 5, 7);
        let dcols = Rng(4).vec(d.batch * d.patches() * d.patch_len(), 1.0);
        let mut want = vec![0.0; d.batch * d.height * d.width * d.channels];
        patch_embed::cpu::patch_embed_backward_im2col_nhwc(&mut want, &dcols, &d);
        let dxg = dev.up(&vec![f32::NAN; want.len()]);
        patch_embed::cuda::patch_embed_backward_im2col_nhwc(dev.d(), dxg, dev.up(&dcols), &d)
            .unwrap();
        dev.check("patch_embed_backward_im2col_nhwc", dxg, &want, d.channels);
    }
}
