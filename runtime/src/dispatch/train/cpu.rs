//! The training op set on the CPU ([`TrainBackend`] over one host arena): each op dispatches
//! to the runtime's op folders (`ops/<op>/cpu.rs` references, or the `fast.rs` kernels), and
//! the objective's and optimizer's ops to their CPU forms in `ops/loss` and `ops/adamw`.
//! Every GEMM output tile and every reduction is computed by one task in a fixed order, so a
//! training step is bitwise reproducible at any thread count.

use std::cell::RefCell;
use std::rc::Rc;

use crate::backend::cpu::isa::Isa;
use crate::backend::cpu::pool::Pool;
use crate::config::Activation;
use crate::ops::Dims;
use crate::ops::activation::{cpu as act_cpu, fast as act_fast};
use crate::ops::adamw::cpu as optim;
use crate::ops::attention::{cpu as att_cpu, fast as att_fast};
use crate::ops::dwconv::{DwDims, cpu as dw_cpu, fast as dw_fast};
use crate::ops::layer_norm::cpu::LayerNormCache;
use crate::ops::layer_norm::{cpu as ln_cpu, fast as ln_fast};
use crate::ops::loss::cpu as loss;
use crate::ops::matmul::fast::gemm::{Kernels, Strided, gemm};
use crate::ops::matmul::fast::train as mm_train;
use crate::ops::patch_embed::cpu as pe;
use crate::ops::residual::cpu::{residual_backward, residual_forward};
use crate::ops::rope::cpu::{rope_backward, rope_forward};
use crate::ops::swiglu::{cpu as swiglu_cpu, fast as swiglu_fast};
use crate::ops::token_pool::cpu as pool;

use super::{AdamwEma, AllReduce, Buf, Mat, Rows, StateBufs, Stats, TrainBackend};
use crate::error::{Result, RuntimeError};

/// Threads and kernel choice of the CPU trainer, shared by the students of a run.
///
/// [`Ctx::new`] runs the fast kernels (SIMD GEMM and attention, vectorised LayerNorm and
/// activations on the pool); [`Ctx::reference`] runs the readable `cpu.rs` references and the
/// portable GEMM. Both are checked against PyTorch autograd. [`Ctx::bf16`] runs the linears'
/// GEMMs (forward and backward) in bf16 with f32 accumulation, on the AMX tiles or
/// `vdpbf16ps`; master weights, optimizer state and every other op stay f32.
pub struct Ctx {
    pub pool: Pool,
    pub isa: Isa,
    pub reference: bool,
    /// The linears' GEMMs in bf16.
    pub bf16: bool,
    pack: RefCell<Vec<f32>>,
    partials: RefCell<Vec<f32>>,
}

impl Ctx {
    pub fn new(threads: Option<usize>) -> Result<Rc<Self>> {
        Self::with(threads, false)
    }

    /// The fast kernels with the linears in bf16; an error where this CPU has no bf16 dot
    /// products (AMX or AVX512_BF16).
    pub fn bf16(threads: Option<usize>) -> Result<Rc<Self>> {
        let isa = Isa::detect();
        if !isa.bf16_dot() {
            return Err(RuntimeError::BackendUnavailable {
                backend: "cpu trainer".into(),
                reason: format!(
                    "bf16 training needs bf16 dot products (AMX or AVX512_BF16); this CPU runs {isa} kernels: use --precision f32"
                ),
            });
        }
        let mut ctx = Rc::try_unwrap(Self::with(threads, false)?)
            .unwrap_or_else(|_| unreachable!("a new context has one owner"));
        ctx.bf16 = true;
        Ok(Rc::new(ctx))
    }

    /// The GEMM kernels of the linears.
    fn kernels(&self) -> Kernels {
        Kernels {
            isa: self.isa,
            bf16: self.bf16,
        }
    }

    pub fn reference(threads: Option<usize>) -> Result<Rc<Self>> {
        Self::with(threads, true)
    }

    fn with(threads: Option<usize>, reference: bool) -> Result<Rc<Self>> {
        let threads = threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let pool = Pool::new(threads).map_err(|e| RuntimeError::BackendUnavailable {
            backend: "cpu trainer".into(),
            reason: format!("cannot start {threads} threads: {e}"),
        })?;
        let isa = if reference {
            Isa::Scalar
        } else {
            Isa::detect()
        };
        Ok(Rc::new(Ctx {
            pool,
            isa,
            reference,
            bf16: false,
            pack: RefCell::new(Vec::new()),
            partials: RefCell::new(Vec::new()),
        }))
    }
}

/// The CPU backend: a [`Ctx`] and the arena.
pub struct Cpu {
    ctx: Rc<Ctx>,
    arena: RefCell<Vec<f32>>,
    /// Per parameter value: weight decay applies.
    decay: Vec<bool>,
}

impl Cpu {
    /// An arena of `len` f32; `parts` names what it holds, for the out-of-memory message.
    pub fn new(ctx: Rc<Ctx>, len: usize, parts: &str, decay: Vec<bool>) -> Result<Cpu> {
        let mut arena = Vec::new();
        arena.try_reserve_exact(len).map_err(|_| RuntimeError::Device {
            backend: "cpu trainer".into(),
            reason: format!(
                "cannot allocate the trainer's {:.2} GiB of host memory ({parts}): use a smaller --batch or --size, or --recompute",
                len as f64 * 4.0 / (1u64 << 30) as f64,
            ),
        })?;
        arena.resize(len, 0.0);
        Ok(Cpu {
            ctx,
            arena: RefCell::new(arena),
            decay,
        })
    }

    /// Runs `f` on mutable views of the spans `w` and shared views of `r`.
    fn with<const W: usize, const R: usize, T>(
        &self,
        w: [Buf; W],
        r: [Buf; R],
        f: impl FnOnce([&mut [f32]; W], [&[f32]; R]) -> T,
    ) -> T {
        let mut a = self.arena.borrow_mut();
        let (w, r) = views(&mut a, w, r);
        f(w, r)
    }
}

fn disjoint(a: Buf, b: Buf) -> bool {
    a.len == 0 || b.len == 0 || a.end() <= b.off || b.end() <= a.off
}

/// Views of spans of `a`: the mutable ones pairwise disjoint and disjoint from the shared
/// ones (checked: an overlap is a bug in the graph, and panics).
fn views<const W: usize, const R: usize>(
    a: &mut [f32],
    w: [Buf; W],
    r: [Buf; R],
) -> ([&mut [f32]; W], [&[f32]; R]) {
    let inside = |b: &Buf| b.off.checked_add(b.len).is_some_and(|e| e <= a.len());
    for b in w.iter().chain(&r) {
        assert!(inside(b), "span {b:?} past the arena of {}", a.len());
    }
    for (i, x) in w.iter().enumerate() {
        for y in w[i + 1..].iter().chain(&r) {
            assert!(disjoint(*x, *y), "spans {x:?} and {y:?} overlap");
        }
    }
    let p = a.as_mut_ptr();
    // SAFETY: every span lies in `a` (checked without overflow, so `end()` is exact below);
    // mutable spans overlap nothing else (checked),
    // and all views live no longer than the one borrow of `a`.
    unsafe {
        (
            w.map(|b| std::slice::from_raw_parts_mut(p.add(b.off), b.len)),
            r.map(|b| std::slice::from_raw_parts(p.add(b.off).cast_const(), b.len)),
        )
    }
}

/// An optional span as a view (`None` passes an empty span, which overlaps nothing).
fn or_empty(b: Option<Buf>) -> Buf {
    b.unwrap_or_default()
}

impl TrainBackend for Cpu {
    fn describe(&self) -> String {
        let gemms = if self.ctx.bf16 { ", bf16 GEMMs" } else { "" };
        format!("cpu, {} threads{gemms}", self.ctx.pool.threads())
    }

    fn upload(&self, dst: Buf, src: &[f32]) -> Result<()> {
        self.with([dst], [], |[d], []| d.copy_from_slice(src));
        Ok(())
    }

    fn download(&self, src: Buf, dst: &mut [f32]) -> Result<()> {
        self.with([], [src], |[], [s]| dst.copy_from_slice(s));
        Ok(())
    }

    fn with_host(&self, bufs: &[Buf], f: &mut dyn FnMut(&[&[f32]]) -> Result<()>) -> Result<()> {
        let a = self.arena.borrow();
        let views: Vec<&[f32]> = bufs.iter().map(|b| &a[b.off..b.end()]).collect();
        f(&views)
    }

    fn zero(&self, b: Buf) -> Result<()> {
        self.with([b], [], |[d], []| d.fill(0.0));
        Ok(())
    }

    fn copy(&self, dst: Buf, src: Buf) -> Result<()> {
        self.with([dst], [src], |[d], [s]| d.copy_from_slice(s));
        Ok(())
    }

    fn check(&self) -> Result<()> {
        match self.ctx.pool.take_panic() {
            None => Ok(()),
            Some(reason) => Err(RuntimeError::TaskPanicked {
                backend: "cpu trainer".into(),
                reason,
            }),
        }
    }

    fn patch_embed_forward_im2col(&self, cols: Buf, pixels: Buf, d: &Dims) -> Result<()> {
        self.with([cols], [pixels], |[c], [p]| {
            pe::patch_embed_forward_im2col(c, p, d)
        });
        Ok(())
    }

    fn patch_embed_forward_assemble(
        &self,
        x: Buf,
        emb: Buf,
        cls: Buf,
        regs: Option<Buf>,
        d: &Dims,
    ) -> Result<()> {
        let r = [emb, cls, or_empty(regs)];
        self.with([x], r, |[x], [e, c, rg]| {
            pe::patch_embed_forward_assemble(x, e, c, rg, None, d)
        });
        Ok(())
    }

    fn patch_embed_backward(
        &self,
        demb: Buf,
        dcls: Buf,
        dregs: Option<Buf>,
        dx: Buf,
        d: &Dims,
    ) -> Result<()> {
        self.with([demb, dcls, or_empty(dregs)], [dx], |[e, c, r], [x]| {
            pe::patch_embed_backward(e, c, r, x, d)
        });
        Ok(())
    }

    fn patch_embed_forward_im2col_nhwc(&self, cols: Buf, x: Buf, d: &Dims) -> Result<()> {
        self.with([cols], [x], |[c], [x]| {
            pe::patch_embed_forward_im2col_nhwc(c, x, d)
        });
        Ok(())
    }

    fn patch_embed_backward_im2col_nhwc(&self, dx: Buf, dcols: Buf, d: &Dims) -> Result<()> {
        self.with([dx], [dcols], |[dx], [dc]| {
            pe::patch_embed_backward_im2col_nhwc(dx, dc, d)
        });
        Ok(())
    }

    fn dwconv_forward(&self, out: Buf, inp: Buf, w: Buf, b: Buf, d: &DwDims) -> Result<()> {
        let c = &*self.ctx;
        self.with([out], [inp, w, b], |[o], [x, w, b]| {
            if c.reference {
                dw_cpu::dwconv_forward(o, x, w, b, d)
            } else {
                dw_fast::dwconv_forward(&c.pool, c.isa, o, x, w, b, d)
            }
        });
        Ok(())
    }

    fn dwconv_backward(
        &self,
        din: Buf,
        dw: Buf,
        db: Buf,
        dout: Buf,
        inp: Buf,
        w: Buf,
        d: &DwDims,
    ) -> Result<()> {
        let c = &*self.ctx;
        self.with([din, dw, db], [dout, inp, w], |[di, dw, db], [dy, x, w]| {
            if c.reference {
                dw_cpu::dwconv_backward(di, dw, db, dy, x, w, d)
            } else {
                dw_fast::dwconv_backward(&c.pool, c.isa, di, dw, db, dy, x, w, d)
            }
        });
        Ok(())
    }

    fn token_pool_forward(
        &self,
        out: Buf,
        inp: Buf,
        (b, n, c): (usize, usize, usize),
    ) -> Result<()> {
        self.with([out], [inp], |[o], [x]| {
            pool::token_pool_forward(o, x, b, n, c)
        });
        Ok(())
    }

    fn token_pool_backward(
        &self,
        dinp: Buf,
        dout: Buf,
        (b, n, c): (usize, usize, usize),
    ) -> Result<()> {
        self.with([dinp], [dout], |[di], [dy]| {
            pool::token_pool_backward(di, dy, b, n, c)
        });
        Ok(())
    }

    fn matmul_forward_train(
        &self,
        out: Buf,
        ldo: usize,
        inp: Buf,
        w: Buf,
        b: Option<Buf>,
        (rows, k, _): (usize, usize, usize),
    ) -> Result<()> {
        let c = &*self.ctx;
        self.with([out], [inp, w, or_empty(b)], |[o], [x, w, bias]| {
            let bias = b.map(|_| bias);
            let pack = &mut c.pack.borrow_mut();
            mm_train::matmul_forward_train(&c.pool, c.kernels(), pack, o, ldo, x, w, bias, rows, k)
        });
        Ok(())
    }

    fn matmul_backward(
        &self,
        dinp: Option<(Buf, bool)>,
        dw: Buf,
        db: Option<Buf>,
        dout: Buf,
        ld: usize,
        inp: Buf,
        w: Buf,
        (rows, k, _): (usize, usize, usize),
    ) -> Result<()> {
        let c = &*self.ctx;
        let wr = [or_empty(dinp.map(|d| d.0)), dw, or_empty(db)];
        self.with(wr, [dout, inp, w], |[dx, dw, dbias], [dy, x, w]| {
            let dx = dinp.map(|(_, acc)| (dx, acc));
            let dbias = db.map(|_| dbias);
            let pack = &mut c.pack.borrow_mut();
            mm_train::matmul_backward(
                &c.pool,
                c.kernels(),
                pack,
                dx,
                dw,
                dbias,
                dy,
                ld,
                x,
                w,
                rows,
                k,
            )
        });
        Ok(())
    }

    fn product(
        &self,
        (m, n, k): (usize, usize, usize),
        a: Mat,
        b: Mat,
        c: Buf,
        ldc: usize,
    ) -> Result<()> {
        let ctx = &*self.ctx;
        fn strided(x: &[f32], m: Mat) -> Strided<'_> {
            if m.transposed {
                Strided::transposed(x, m.ld)
            } else {
                Strided::rows(x, m.ld)
            }
        }
        self.with([c], [a.buf, b.buf], |[c], [x, y]| {
            let (x, y) = (strided(x, a), strided(y, b));
            let pack = &mut ctx.pack.borrow_mut();
            // f32 even in bf16 runs: these are the objective's products (Gram matrices,
            // whose difference loses most to rounding), not the linears'.
            gemm(Some(&ctx.pool), ctx.isa, m, n, k, x, y, c, ldc, false, pack)
        });
        Ok(())
    }

    fn layer_norm_forward(
        &self,
        out: Buf,
        stats: Stats,
        inp: Buf,
        w: Buf,
        b: Buf,
        (rows, cols): (usize, usize),
        eps: f32,
    ) -> Result<()> {
        let c = &*self.ctx;
        let wr = [out, stats.mean(), stats.rstd()];
        self.with(wr, [inp, w, b], |[o, mean, rstd], [x, w, b]| {
            let cache = Some(LayerNormCache { mean, rstd });
            if c.reference {
                ln_cpu::layer_norm_forward(o, cache, x, w, b, cols, eps)
            } else {
                ln_fast::layer_norm_forward(&c.pool, c.isa, o, cache, x, w, b, rows, cols, eps)
            }
        });
        Ok(())
    }

    fn layer_norm_backward(
        &self,
        dinp: Buf,
        dw: Buf,
        db: Buf,
        dout: Buf,
        inp: Buf,
        w: Buf,
        stats: Stats,
        (_, cols): (usize, usize),
    ) -> Result<()> {
        let c = &*self.ctx;
        let wr = [dinp, dw, db, stats.mean(), stats.rstd()];
        self.with(
            wr,
            [dout, inp, w],
            |[dx, dw, db, mean, rstd], [dy, x, w]| {
                let cache = LayerNormCache { mean, rstd };
                if c.reference {
                    ln_cpu::layer_norm_backward(dx, dw, db, dy, x, w, &cache, cols)
                } else {
                    let partials = &mut c.partials.borrow_mut();
                    ln_fast::layer_norm_backward(
                        &c.pool, c.isa, dx, dw, db, dy, x, w, &cache, cols, partials,
                    )
                }
            },
        );
        Ok(())
    }

    fn rope_forward(&self, qkv: Buf, cos: Buf, sin: Buf, d: &Dims) -> Result<()> {
        self.with([qkv], [cos, sin], |[q], [c, s]| rope_forward(q, c, s, d));
        Ok(())
    }

    fn rope_backward(&self, dqkv: Buf, cos: Buf, sin: Buf, d: &Dims) -> Result<()> {
        self.with([dqkv], [cos, sin], |[q], [c, s]| rope_backward(q, c, s, d));
        Ok(())
    }

    fn attention_forward(&self, out: Buf, lse: Buf, qkv: Buf, d: &Dims) -> Result<()> {
        let c = &*self.ctx;
        self.with([out, lse], [qkv], |[o, l], [q]| {
            if c.reference {
                att_cpu::attention_forward_lse(o, l, q, d)
            } else {
                att_fast::attention_forward_lse(&c.pool, c.isa, o, l, q, d)
            }
        });
        Ok(())
    }

    fn attention_backward(
        &self,
        dqkv: Buf,
        dout: Buf,
        (qkv, out, lse): (Buf, Buf, Buf),
        _delta: Buf,
        d: &Dims,
    ) -> Result<()> {
        let c = &*self.ctx;
        self.with([dqkv], [dout, qkv, out, lse], |[dq], [dy, q, o, l]| {
            if c.reference {
                att_cpu::attention_backward(dq, dy, q, o, l, d)
            } else {
                att_fast::attention_backward(&c.pool, c.isa, dq, dy, q, o, l, d)
            }
        });
        Ok(())
    }

    fn swiglu_forward(
        &self,
        out: Buf,
        gate_up: Buf,
        (rows, hidden): (usize, usize),
        act: Activation,
    ) -> Result<()> {
        let c = &*self.ctx;
        self.with([out], [gate_up], |[o], [gu]| {
            if c.reference {
                swiglu_cpu::swiglu_forward(o, gu, hidden, act)
            } else {
                swiglu_fast::swiglu_forward(&c.pool, c.isa, o, gu, rows, hidden, act)
            }
        });
        Ok(())
    }

    fn swiglu_backward(
        &self,
        dgate_up: Buf,
        dout: Buf,
        gate_up: Buf,
        (rows, hidden): (usize, usize),
        act: Activation,
    ) -> Result<()> {
        let c = &*self.ctx;
        self.with([dgate_up], [dout, gate_up], |[dgu], [dy, gu]| {
            if c.reference {
                swiglu_cpu::swiglu_backward(dgu, dy, gu, hidden, act)
            } else {
                swiglu_fast::swiglu_backward(&c.pool, c.isa, dgu, dy, gu, rows, hidden, act)
            }
        });
        Ok(())
    }

    fn activation_forward(&self, out: Buf, inp: Buf, act: Activation) -> Result<()> {
        let c = &*self.ctx;
        self.with([out], [inp], |[o], [x]| {
            o.copy_from_slice(x);
            if c.reference {
                act_cpu::activation_forward(o, act)
            } else {
                act_fast::activation_forward(&c.pool, c.isa, o, act)
            }
        });
        Ok(())
    }

    fn activation_backward(&self, dinp: Buf, dout: Buf, pre: Buf, act: Activation) -> Result<()> {
        let c = &*self.ctx;
        self.with([dinp], [dout, pre], |[dx], [dy, h]| {
            if c.reference {
                act_cpu::activation_backward(dx, dy, h, act)
            } else {
                act_fast::activation_backward(&c.pool, c.isa, dx, dy, h, act)
            }
        });
        Ok(())
    }

    fn residual_forward(&self, x: Buf, y: Buf, gamma: Option<Buf>, dim: usize) -> Result<()> {
        let pool = &self.ctx.pool;
        self.with([x], [y, or_empty(gamma)], |[x], [y, g]| {
            residual_forward(pool, x, y, gamma.map(|_| g), dim)
        });
        Ok(())
    }

    fn residual_backward(
        &self,
        dy: Buf,
        dgamma: Buf,
        dx: Buf,
        y: Buf,
        gamma: Buf,
        _dim: usize,
    ) -> Result<()> {
        let pool = &self.ctx.pool;
        self.with([dy, dgamma], [dx, y, gamma], |[dy, dg], [dx, y, g]| {
            residual_backward(pool, dy, dg, dx, y, g)
        });
        Ok(())
    }

    fn gather_rows(&self, dst: Buf, src: Buf, sel: Rows, dim: usize) -> Result<()> {
        self.with([dst], [src], |[d], [s]| loss::gather_rows(d, s, sel, dim));
        Ok(())
    }

    fn scatter_add_rows(&self, dst: Buf, src: Buf, sel: Rows, dim: usize) -> Result<()> {
        self.with([dst], [src], |[d], [s]| {
            loss::scatter_add_rows(d, s, sel, dim)
        });
        Ok(())
    }

    fn cos_smooth_l1(
        &self,
        dp: Buf,
        _parts: Buf,
        p: Buf,
        t: Buf,
        dim: usize,
        weight: f32,
    ) -> Result<f64> {
        Ok(self.with([dp], [p, t], |[dp], [p, t]| {
            loss::cos_smooth_l1(dp, p, t, dim, weight)
        }))
    }

    fn normalize_rows(&self, u: Buf, norms: Buf, x: Buf, dim: usize) -> Result<()> {
        self.with([u, norms], [x], |[u, n], [x]| {
            loss::normalize_rows(u, n, x, dim)
        });
        Ok(())
    }

    fn gram_difference(&self, gs: Buf, gt: Buf, coef: f32) -> Result<f64> {
        Ok(self.with([gs], [gt], |[gs], [gt]| loss::gram_difference(gs, gt, coef)))
    }

    fn normalize_rows_backward(
        &self,
        dp: Buf,
        u: Buf,
        du: Buf,
        norms: Buf,
        dim: usize,
    ) -> Result<()> {
        self.with([dp], [u, du, norms], |[dp], [u, du, n]| {
            loss::normalize_rows_backward(dp, u, du, n, dim)
        });
        Ok(())
    }

    fn sum_squares(&self, g: Buf) -> Result<f64> {
        Ok(self.with([], [g], |[], [g]| optim::sum_squares(g)))
    }

    fn adamw_ema(&self, s: &StateBufs, a: &AdamwEma) -> Result<bool> {
        let (w, r) = ([s.params, s.m, s.v, s.ema], [s.g]);
        Ok(self.with(w, r, |[p, m, v, ema], [g]| {
            optim::adamw_ema(p, m, v, ema, g, &self.decay, a)
        }))
    }

    fn sum_over_ranks(&self, c: &mut dyn AllReduce, b: Buf) -> Result<()> {
        self.with([b], [], |[v], []| c.sum_f32(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(off: usize, len: usize) -> Buf {
        Buf { off, len }
    }

    #[test]
    fn disjoint_spans_give_their_views() {
        let mut a: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let ([w], [r1, r2]) = views(&mut a, [b(0, 3)], [b(3, 2), b(3, 4)]);
        w.copy_from_slice(&r1[..1].repeat(3));
        assert_eq!(
            r2,
            &[3.0, 4.0, 5.0, 6.0],
            "shared views may overlap each other"
        );
        assert_eq!(&a[..3], &[3.0; 3]);
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn a_mutable_span_overlapping_another_panics() {
        let mut a = vec![0.0f32; 10];
        let _ = views(&mut a, [b(0, 4)], [b(3, 2)]);
    }

    #[test]
    #[should_panic(expected = "past the arena")]
    fn a_span_past_the_arena_panics() {
        let mut a = vec![0.0f32; 10];
        let _ = views(&mut a, [b(8, 3)], []);
    }

    #[test]
    #[should_panic(expected = "past the arena")]
    fn a_span_whose_end_overflows_panics_instead_of_wrapping() {
        let mut a = vec![0.0f32; 10];
        let _ = views(&mut a, [], [b(usize::MAX - 1, 4)]);
    }

    #[test]
    #[should_panic(expected = "past a span")]
    fn a_part_past_its_span_panics() {
        let _ = b(0, 4).part(2, 3);
    }
}
