//! ggml's `test-backend-ops` for dinoedge: every op of the [`Backend`] seam, on every backend
//! at hand and each precision it offers, against the f32 reference backend (`cpu-ref`), on
//! odd shapes: one token, widths that are no multiple of any tile (1, 3, 17, 33, 130), head
//! dims 16 to 128, batches of one to three, images with pixels past the last full patch. The
//! suite is one function generic over `B: Backend`; each backend prints a table of cases
//! passed, failed (with the evidence) and unsupported (with the backend's reason).
//!
//! Backends: `cpu` for every SIMD family this CPU has (f32, f16 weights, int8 W8A8), `wgpu`
//! (feature `wgpu`; lavapipe in CI, where `DINOEDGE_REQUIRE_WGPU=1` makes a missing adapter a
//! failure; f32, f16), `cuda-emulated` (f32, f16, bf16: the CUDA kernels and host code on the
//! CPU, tensor-core attention included) and, with feature `cuda` and a GPU, `cuda`
//! (`DINOEDGE_CUDA_DEVICES` picks among "emu,cuda").
//!
//! Tolerances, on error = max |got - want| / max(max |want|, 1) and the mean cosine of rows:
//! - f32: error <= 1e-5 (sums in another order: SIMD lanes, GPU reductions, split-K GEMMs;
//!   measured worst 8.6e-7, attention on lavapipe);
//! - f16 / bf16 / int8: error <= 2e-2 and mean row cosine >= 0.9999 (16-bit or 8-bit GEMM
//!   inputs, 16-bit tensor-core attention; measured worst 6.5e-3 (int8 matmul) and cosine
//!   0.99997). The ops a precision does not touch stay at f32 accuracy and meet these too.

use dinoedge_runtime::dispatch::reference::ReferenceBackend;
use dinoedge_runtime::dispatch::{Backend, Epilogue, HostLinear, Op};
use dinoedge_runtime::ops::Dims;
use dinoedge_runtime::ops::dwconv::{DwDims, TAPS};
use dinoedge_runtime::ops::rope::tables;
use dinoedge_runtime::testing::compare;
use dinoedge_runtime::{Activation, Precision, Result};

/// What the matmul adds after the product.
#[derive(Clone, Copy, Debug)]
enum Epi {
    Store,
    Act(Activation),
    Residual,
}

#[derive(Clone, Copy, Debug)]
enum Case {
    PatchEmbed {
        d: Dims,
        registers: bool,
        pos: bool,
    },
    LayerNorm {
        rows: usize,
        cols: usize,
    },
    Matmul {
        rows: usize,
        k: usize,
        o: usize,
        bias: bool,
        epi: Epi,
    },
    Rope {
        d: Dims,
    },
    Attention {
        d: Dims,
    },
    Swiglu {
        rows: usize,
        hidden: usize,
        act: Activation,
    },
    /// The channels-last im2col of a ConvNeXt's downsampling (map (B, H, W, C)).
    Im2colNhwc {
        d: Dims,
    },
    Dwconv {
        d: DwDims,
    },
    TokenPool {
        batch: usize,
        cells: usize,
        channels: usize,
    },
}

impl Case {
    fn op(&self) -> Op {
        match self {
            Case::PatchEmbed { .. } => Op::PatchEmbed,
            Case::LayerNorm { .. } => Op::LayerNorm,
            Case::Matmul { .. } => Op::Matmul,
            Case::Rope { .. } => Op::Rope,
            Case::Attention { d } => Op::Attention {
                head_dim: d.head_dim(),
                heads: d.heads,
            },
            Case::Swiglu { .. } => Op::Swiglu,
            Case::Im2colNhwc { .. } => Op::PatchEmbed,
            Case::Dwconv { .. } => Op::Dwconv,
            Case::TokenPool { .. } => Op::TokenPool,
        }
    }

    /// The sizes `reserve` is told about (scratch for this case).
    fn dims(&self) -> Dims {
        let rows = |rows: usize, width: usize| Dims {
            batch: 1,
            channels: 3,
            height: 0,
            width: 0,
            patch: 1,
            grid_h: 0,
            grid_w: 0,
            prefix: rows,
            dim: width,
            heads: 1,
            hidden: width,
        };
        match *self {
            Case::PatchEmbed { d, .. } | Case::Rope { d } | Case::Attention { d } => d,
            Case::LayerNorm { rows: r, cols } => rows(r, cols),
            Case::Matmul { rows: r, k, o, .. } => rows(r, k.max(o)),
            Case::Swiglu {
                rows: r, hidden, ..
            } => rows(r, 2 * hidden),
            Case::Im2colNhwc { d } => d,
            Case::Dwconv { d } => rows(d.batch * d.height * d.width, d.channels),
            Case::TokenPool {
                batch,
                cells,
                channels,
            } => rows(batch * (1 + cells), channels),
        }
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims = |d: &Dims| {
            format!(
                "B{} {}x{}px p{} grid {}x{} prefix {} D{} heads {} (hd {})",
                d.batch,
                d.height,
                d.width,
                d.patch,
                d.grid_h,
                d.grid_w,
                d.prefix,
                d.dim,
                d.heads,
                d.head_dim()
            )
        };
        match self {
            Case::PatchEmbed { d, registers, pos } => write!(
                f,
                "patch_embed {}{}{}",
                dims(d),
                if *registers { " +registers" } else { "" },
                if *pos { " +pos" } else { "" }
            ),
            Case::LayerNorm { rows, cols } => write!(f, "layer_norm {rows}x{cols}"),
            Case::Matmul {
                rows,
                k,
                o,
                bias,
                epi,
            } => write!(
                f,
                "matmul {rows}x{k} -> {o}{} {epi:?}",
                if *bias { " +bias" } else { "" }
            ),
            Case::Rope { d } => write!(f, "rope {}", dims(d)),
            Case::Attention { d } => write!(f, "attention {}", dims(d)),
            Case::Swiglu { rows, hidden, act } => write!(f, "swiglu {rows}x{hidden} {act:?}"),
            Case::Im2colNhwc { d } => write!(f, "im2col_nhwc {}", dims(d)),
            Case::Dwconv { d } => write!(f, "dwconv {d:?}"),
            Case::TokenPool {
                batch,
                cells,
                channels,
            } => write!(f, "token_pool B{batch} {cells} cells x {channels}"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn image_dims(
    batch: usize,
    patch: usize,
    (grid_h, grid_w): (usize, usize),
    extra: usize,
    prefix: usize,
    dim: usize,
    heads: usize,
) -> Dims {
    Dims {
        batch,
        channels: 3,
        height: grid_h * patch + extra,
        width: grid_w * patch + extra.div_ceil(2),
        patch,
        grid_h,
        grid_w,
        prefix,
        dim,
        heads,
        hidden: 2 * dim,
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (d, registers, pos) in [
        (image_dims(1, 16, (1, 1), 0, 1, 24, 1), false, false),
        (image_dims(3, 14, (2, 3), 5, 5, 40, 1), true, true),
        (image_dims(2, 16, (3, 1), 7, 1, 17, 1), false, true),
    ] {
        v.push(Case::PatchEmbed { d, registers, pos });
    }
    for (rows, cols) in [(1, 1), (1, 24), (7, 17), (33, 130), (5, 768)] {
        v.push(Case::LayerNorm { rows, cols });
    }
    let epis = [
        Epi::Store,
        Epi::Act(Activation::Gelu),
        Epi::Act(Activation::GeluTanh),
        Epi::Act(Activation::Silu),
        Epi::Residual,
    ];
    for (i, (rows, k, o)) in [
        (1, 1, 1),
        (1, 3, 17),
        (5, 17, 3),
        (67, 130, 33),
        (33, 64, 130),
        (130, 96, 40),
    ]
    .into_iter()
    .enumerate()
    {
        for (j, epi) in epis.into_iter().enumerate() {
            let bias = (i + j) % 2 == 0;
            v.push(Case::Matmul {
                rows,
                k,
                o,
                bias,
                epi,
            });
        }
    }
    let attention = [
        image_dims(1, 16, (0, 0), 0, 1, 16, 1),   // one token, hd 16
        image_dims(2, 16, (3, 5), 0, 5, 32, 2),   // hd 16, 20 tokens
        image_dims(1, 16, (7, 9), 0, 1, 96, 3),   // hd 32, 64 tokens
        image_dims(3, 16, (4, 4), 0, 5, 128, 2),  // hd 64, 21 tokens
        image_dims(1, 16, (9, 10), 0, 5, 256, 2), // hd 128, 95 tokens
        image_dims(1, 16, (13, 10), 0, 1, 64, 1), // hd 64, 131 tokens
    ];
    for d in attention {
        if d.patches() > 0 {
            v.push(Case::Rope { d });
        }
        v.push(Case::Attention { d });
    }
    for (rows, hidden) in [(1, 1), (7, 17), (33, 130)] {
        for act in [Activation::Gelu, Activation::GeluTanh, Activation::Silu] {
            v.push(Case::Swiglu { rows, hidden, act });
        }
    }
    // A 2x2 stride-2 conv's im2col on maps with a row and a column past the last patch.
    for (batch, channels, grid, extra) in [(1, 16, (2, 2), 0), (2, 5, (3, 4), 1)] {
        let mut d = image_dims(batch, 2, grid, extra, 0, 8, 1);
        d.channels = channels;
        v.push(Case::Im2colNhwc { d });
    }
    // Maps narrower than the 7x7 kernel, channels with and without a 16-lane tail.
    for (batch, height, width, channels) in [
        (1, 5, 9, 3),
        (2, 1, 4, 40),
        (1, 9, 2, 16),
        (2, 8, 11, 24),
        (1, 14, 14, 96),
    ] {
        let d = DwDims {
            batch,
            height,
            width,
            channels,
        };
        v.push(Case::Dwconv { d });
    }
    for (batch, cells, channels) in [(1, 1, 3), (2, 6, 40), (3, 49, 17)] {
        v.push(Case::TokenPool {
            batch,
            cells,
            channels,
        });
    }
    v
}

/// Deterministic values in about [-scale, scale].
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

/// Runs `case` on `be` with inputs drawn from `seed`; returns the output.
fn run<B: Backend>(be: &B, case: &Case, seed: u64) -> Result<Vec<f32>> {
    let mut r = Rng(seed);
    be.reserve(&case.dims())?;
    let linear = |name: &str, o: usize, k: usize, bias: bool, r: &mut Rng| {
        be.linear(HostLinear {
            name: name.into(),
            out_features: o,
            in_features: k,
            weight: r.vec(o * k, 1.0 / (k as f32).sqrt()),
            bias: bias.then(|| r.vec(o, 0.5)),
            int8: None,
        })
    };
    let (out, len) = match *case {
        Case::PatchEmbed { d, registers, pos } => {
            let w = linear("patch_embed", d.dim, d.patch_len(), true, &mut r)?;
            let pixels = be.upload(&r.vec(d.batch * 3 * d.height * d.width, 2.0))?;
            let cls = be.upload(&r.vec(d.dim, 1.0))?;
            let regs = be.upload(&r.vec((d.prefix - 1).max(1) * d.dim, 1.0))?;
            let pos_b = be.upload(&r.vec((1 + d.patches()) * d.dim, 0.5))?;
            let n_patches = d.batch * d.patches();
            let mut cols = be.alloc(n_patches * d.patch_len())?;
            let mut emb = be.alloc(n_patches * d.dim)?;
            let mut x = be.alloc(d.rows() * d.dim)?;
            let regs = registers.then_some(&regs);
            let pos = pos.then_some(&pos_b);
            // The model's three steps: im2col, the conv as a matmul, token assembly.
            be.patch_embed_im2col(&mut cols, &pixels, &d)?;
            be.matmul(&mut emb, &cols, &w, n_patches, Epilogue::Store)?;
            be.patch_embed_assemble(&mut x, &emb, &cls, regs, pos, &d)?;
            (x, d.rows() * d.dim)
        }
        Case::LayerNorm { rows, cols } => {
            let x = be.upload(&r.vec(rows * cols, 3.0))?;
            let w = be.upload(&r.vec(cols, 1.0))?;
            let b = be.upload(&r.vec(cols, 1.0))?;
            let mut out = be.alloc(rows * cols)?;
            be.layer_norm(&mut out, &x, &w, &b, rows, cols, 1e-6)?;
            (out, rows * cols)
        }
        Case::Matmul {
            rows,
            k,
            o,
            bias,
            epi,
        } => {
            let w = linear("layer.0.mlp.up_proj", o, k, bias, &mut r)?;
            let x = be.upload(&r.vec(rows * k, 2.0))?;
            let mut out = be.upload(&r.vec(rows * o, 1.0))?;
            let gamma = be.upload(&r.vec(o, 1.0))?;
            let epi = match epi {
                Epi::Store => Epilogue::Store,
                Epi::Act(a) => Epilogue::Act(a),
                Epi::Residual => Epilogue::Residual(&gamma),
            };
            be.matmul(&mut out, &x, &w, rows, epi)?;
            (out, rows * o)
        }
        Case::Rope { d } => {
            let n = d.rows() * 3 * d.dim;
            let mut qkv = be.upload(&r.vec(n, 2.0))?;
            let (cos, sin) = tables(d.grid_h, d.grid_w, d.head_dim(), 100.0);
            let (cos, sin) = (be.upload(&cos)?, be.upload(&sin)?);
            be.rope(&mut qkv, &cos, &sin, &d)?;
            (qkv, n)
        }
        Case::Attention { d } => {
            let qkv = be.upload(&r.vec(d.rows() * 3 * d.dim, 2.0))?;
            let mut out = be.alloc(d.rows() * d.dim)?;
            be.attention(&mut out, &qkv, &d)?;
            (out, d.rows() * d.dim)
        }
        Case::Swiglu { rows, hidden, act } => {
            let gu = be.upload(&r.vec(rows * 2 * hidden, 3.0))?;
            let mut out = be.alloc(rows * hidden)?;
            be.swiglu(&mut out, &gu, rows, hidden, act)?;
            (out, rows * hidden)
        }
        Case::Im2colNhwc { d } => {
            let x = be.upload(&r.vec(d.batch * d.height * d.width * d.channels, 2.0))?;
            let n = d.batch * d.patches() * d.patch_len();
            let mut cols = be.alloc(n)?;
            be.patch_embed_im2col_nhwc(&mut cols, &x, &d)?;
            (cols, n)
        }
        Case::Dwconv { d } => {
            let x = be.upload(&r.vec(d.len(), 2.0))?;
            let w = be.upload(&r.vec(TAPS * d.channels, 0.3))?;
            let b = be.upload(&r.vec(d.channels, 0.5))?;
            let mut out = be.alloc(d.len())?;
            be.dwconv(&mut out, &x, &w, &b, &d)?;
            (out, d.len())
        }
        Case::TokenPool {
            batch,
            cells,
            channels,
        } => {
            let x = be.upload(&r.vec(batch * cells * channels, 2.0))?;
            let n = batch * (1 + cells) * channels;
            let mut out = be.alloc(n)?;
            be.token_pool(&mut out, &x, batch, cells, channels)?;
            (out, n)
        }
    };
    be.synchronize()?;
    let mut host = vec![0.0f32; len];
    be.read(&out, &mut host)?;
    Ok(host)
}

/// Bounds for a backend at one precision.
#[derive(Clone, Copy, Debug)]
struct Tol {
    max_error: f32,
    min_cosine: f64,
}

fn tol(precision: Precision) -> Tol {
    match precision {
        Precision::F32 => Tol {
            max_error: 1e-5,
            min_cosine: 0.99999,
        },
        _ => Tol {
            max_error: 2e-2,
            min_cosine: 0.9999,
        },
    }
}

/// Every case on `be` against the reference; panics with every failure's evidence.
fn suite<B: Backend>(label: &str, be: &B, precision: Precision) {
    let reference = ReferenceBackend::new(Some(2)).unwrap();
    let t = tol(precision);
    let (mut passed, mut failed, mut unsupported) = (0, Vec::new(), Vec::new());
    let mut worst: Vec<(Op, f32, f64)> = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        if let Err(why) = be.supports(case.op()) {
            unsupported.push(format!("{case}: {why}"));
            continue;
        }
        let seed = 0x5eed + i as u64;
        let want = run(&reference, case, seed).unwrap_or_else(|e| panic!("cpu-ref {case}: {e}"));
        let got = match run(be, case, seed) {
            Ok(g) => g,
            Err(e) => {
                failed.push(format!("{case}: {e}"));
                continue;
            }
        };
        let row = match case {
            Case::Matmul { o, .. } => *o,
            Case::LayerNorm { cols, .. } => *cols,
            Case::Swiglu { hidden, .. } => *hidden,
            Case::PatchEmbed { d, .. } | Case::Attention { d } => d.dim,
            Case::Rope { d } => 3 * d.dim,
            Case::Im2colNhwc { d } => d.patch_len(),
            Case::Dwconv { d } => d.channels,
            Case::TokenPool { channels, .. } => *channels,
        };
        let c = compare(&format!("{label} {case}"), &got, &want, row, t.max_error);
        let ok = c.rel <= t.max_error && c.mean_cosine >= t.min_cosine && c.max_abs.is_finite();
        match worst.iter_mut().find(|w| w.0 == case.op()) {
            Some(w) => *w = (w.0, w.1.max(c.rel), w.2.min(c.mean_cosine)),
            None => worst.push((case.op(), c.rel, c.mean_cosine)),
        }
        if ok {
            passed += 1;
        } else {
            failed.push(c.to_string());
        }
    }
    println!(
        "{label}: {passed} passed, {} failed, {} unsupported",
        failed.len(),
        unsupported.len()
    );
    for (op, e, cos) in &worst {
        println!("  {op:?}: worst error {e:.2e}, worst mean row cosine {cos:.7}");
    }
    for u in &unsupported {
        println!("  unsupported: {u}");
    }
    assert!(
        failed.is_empty(),
        "{label}: {} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(passed > 0, "{label}: nothing ran");
}

#[test]
fn cpu_reference_is_the_same_at_any_thread_count() {
    // Every case runs on the reference at 3 threads and matches its 2-thread results.
    suite(
        "cpu-ref",
        &ReferenceBackend::new(Some(3)).unwrap(),
        Precision::F32,
    );
}

#[test]
fn cpu_every_isa_and_precision() {
    use dinoedge_runtime::backend::cpu::isa::Isa;
    use dinoedge_runtime::dispatch::cpu::CpuBackend;
    for isa in Isa::all_supported() {
        for p in [
            Precision::F32,
            Precision::F16,
            Precision::BF16,
            Precision::Int8,
        ] {
            let be = CpuBackend::with_isa(Some(2), p, isa).unwrap();
            suite(&format!("cpu/{isa} {p}"), &be, p);
        }
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_f32_and_f16() {
    use dinoedge_runtime::dispatch::wgpu::WgpuBackend;
    for p in [Precision::F32, Precision::F16] {
        match WgpuBackend::new(p, None) {
            Ok(be) => {
                let name = be.adapter_info().name.clone();
                suite(&format!("wgpu ({name}) {p}"), &be, p);
            }
            Err(e) => {
                assert!(
                    std::env::var("DINOEDGE_REQUIRE_WGPU").as_deref() != Ok("1"),
                    "wgpu required: {e}"
                );
                eprintln!("wgpu {p}: SKIPPED ({e})");
            }
        }
    }
}

#[test]
fn cuda_emulated_and_gpu_every_precision() {
    use dinoedge_runtime::dispatch::cuda::{CudaBackend, CudaOptions};
    let want = std::env::var("DINOEDGE_CUDA_DEVICES").unwrap_or_else(|_| "emu,cuda".into());
    for (tag, emulated) in [("emu", true), ("cuda", false)] {
        if !want.split(',').any(|w| w == tag) || !(emulated || cfg!(feature = "cuda")) {
            continue;
        }
        for p in [Precision::F32, Precision::F16, Precision::BF16] {
            let opts = CudaOptions::new(p, None, emulated);
            match CudaBackend::new(&opts) {
                Ok(be) => {
                    let label = format!("{} ({}) {p}", be.info().kind, be.device().name());
                    suite(&label, &be, p);
                }
                Err(e) if emulated => panic!("the CUDA emulator builds (a C++20 compiler): {e}"),
                Err(e) => {
                    assert!(
                        std::env::var("DINOEDGE_REQUIRE_CUDA").as_deref() != Ok("1"),
                        "CUDA required: {e}"
                    );
                    eprintln!("cuda {p}: SKIPPED ({e})");
                    break;
                }
            }
        }
    }
}
