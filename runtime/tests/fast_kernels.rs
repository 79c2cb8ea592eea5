//! The fast CPU kernels against the readable references, for every SIMD family this CPU
//! runs (AVX-512 VNNI, AVX-512, AVX-VNNI, AVX2, portable on x86; NEON dotprod, NEON,
//! portable on aarch64), over shapes chosen to hit every edge: odd sizes, sizes that are not
//! multiples of the tile, one row, batch > 1.
//!
//! Tolerances: f32 1e-5 relative to the output scale (different summation order only);
//! f16 weights the same against a reference on f16-rounded weights; bf16 the same against a
//! reference on bf16-rounded weights (and activations, on the families with bf16 dot
//! products: AMX tiles, `vdpbf16ps`); int8 exactly equal to an integer reference with the
//! same quantisation (AMX-INT8 included).

use dinoedge_runtime::backend::cpu::isa::Isa;
use dinoedge_runtime::backend::cpu::pool::Pool;
use dinoedge_runtime::config::Activation;
use dinoedge_runtime::ops::Dims;
use dinoedge_runtime::ops::matmul::Epi;
use dinoedge_runtime::ops::matmul::fast::{
    PackedLinear, QuantFormat, matmul_forward, quant_format, quantize_rows,
};

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 7, 5),
    (3, 4, 33),
    (13, 17, 31),
    (25, 64, 64),
    (37, 96, 65),
    (257, 384, 129),
    (50, 1536, 40),
];

fn reference(inp: &[f32], w: &[f32], b: &[f32], k: usize, o: usize, epi: Epi, out: &mut [f32]) {
    dinoedge_runtime::ops::matmul::cpu::matmul_forward(out, inp, w, Some(b), k, o, epi);
}

/// Largest difference relative to the output scale; NaN if any output is NaN (`f32::max`
/// would drop it, and the NaN-filled outputs and scratch below must be able to fail).
fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let worst = a.iter().zip(b).fold(0.0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d > m || d.is_nan() || m.is_nan() {
            if m.is_nan() { m } else { d }
        } else {
            m
        }
    });
    worst / scale
}

#[test]
fn f32_f16_and_bf16_matmul_match_the_reference_on_every_isa_and_epilogue() {
    let pool = Pool::new(3).unwrap();
    let mut rng = Rng(0x1234_5678_9abc);
    for isa in Isa::all_supported() {
        for &(r, k, o) in SHAPES {
            let inp = rng.vec(r * k, 1.0);
            let w = rng.vec(o * k, 1.0 / (k as f32).sqrt());
            let b = rng.vec(o, 0.5);
            let gamma = rng.vec(o, 1.0);
            let resid = rng.vec(r * o, 1.0);
            let w16: Vec<f32> = w.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
            let brain = |x: &[f32]| -> Vec<f32> {
                x.iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32())
                    .collect()
            };
            let wb = brain(&w);
            // Families with bf16 dot products round the activations to bf16 too.
            let inp_b = if isa.bf16_dot() {
                brain(&inp)
            } else {
                inp.clone()
            };
            for (epi_name, epi) in [
                ("store", Epi::Store),
                ("gelu", Epi::Act(Activation::Gelu)),
                ("silu", Epi::Act(Activation::Silu)),
                ("residual", Epi::Residual(&gamma)),
            ] {
                for (prec, packed, wref, iref) in [
                    (
                        "f32",
                        PackedLinear::f32(isa, &w, Some(b.clone()), o, k),
                        &w,
                        &inp,
                    ),
                    (
                        "f16",
                        PackedLinear::f16(isa, &w, Some(b.clone()), o, k),
                        &w16,
                        &inp,
                    ),
                    (
                        "bf16",
                        PackedLinear::bf16(isa, &w, Some(b.clone()), o, k),
                        &wb,
                        &inp_b,
                    ),
                ] {
                    let mut want = resid.clone();
                    reference(iref, wref, &b, k, o, epi, &mut want);
                    let mut got = resid.clone();
                    // Stale scratch must not leak into the result (K padding is zeroed).
                    let mut scratch = vec![0xffu8; packed.scratch_bytes(r)];
                    matmul_forward(&pool, &mut got, &inp, &packed, r, epi, &mut scratch);
                    let e = max_rel(&got, &want);
                    assert!(
                        e < 1e-5,
                        "{isa} {prec} {epi_name} ({r}x{k}x{o}): rel err {e:e}"
                    );
                }
            }
        }
    }
}

/// Exact integer reference of the int8 path: per-token symmetric activation quantisation,
/// per-channel weights, i64 accumulation, the same dequantisation formula.
fn int8_reference(
    inp: &[f32],
    q: &[i8],
    scales: &[f32],
    b: &[f32],
    k: usize,
    o: usize,
    fixed: Option<f32>,
) -> Vec<f32> {
    let rows = inp.len() / k;
    let mut out = vec![0.0f32; rows * o];
    for r in 0..rows {
        let x = &inp[r * k..(r + 1) * k];
        let sa = fixed.unwrap_or_else(|| x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0);
        let inv = if sa > 0.0 { 1.0 / sa } else { 0.0 };
        let qa: Vec<i64> = x
            .iter()
            .map(|v| (v * inv).clamp(-127.0, 127.0).round_ties_even() as i64)
            .collect();
        for c in 0..o {
            let acc: i64 = (0..k).map(|t| qa[t] * q[c * k + t] as i64).sum();
            out[r * o + c] = (acc as i32) as f32 * (sa * scales[c]) + b[c];
        }
    }
    out
}

#[test]
fn int8_matmul_equals_the_integer_reference_on_every_isa() {
    let pool = Pool::new(2).unwrap();
    let mut rng = Rng(0xfeed_beef);
    for isa in Isa::all_supported() {
        for &(r, k, o) in SHAPES {
            let inp = rng.vec(r * k, 3.0);
            let w = rng.vec(o * k, 0.2);
            let b = rng.vec(o, 0.5);
            let (q, scales) = quantize_rows(&w, o, k);
            for fixed in [None, Some(3.0f32 / 127.0)] {
                let packed =
                    PackedLinear::int8(isa, &q, scales.clone(), Some(b.clone()), o, k, fixed);
                let mut scratch = vec![0u8; packed.scratch_bytes(r)];
                let mut got = vec![f32::NAN; r * o];
                matmul_forward(&pool, &mut got, &inp, &packed, r, Epi::Store, &mut scratch);
                let want = int8_reference(&inp, &q, &scales, &b, k, o, fixed);
                assert_eq!(
                    got, want,
                    "{isa} int8 ({r}x{k}x{o}), static scale {fixed:?}"
                );
            }
        }
        println!("{isa}: int8 activations as {:?}", quant_format(isa));
    }
    assert!(matches!(quant_format(Isa::Scalar), QuantFormat::S8));
}

#[test]
fn int8_quantisation_is_close_to_float() {
    // Sanity of the scheme itself (not a tolerance on the kernels): relative error of a
    // W8A8 matmul on well-scaled data stays at the int8 level.
    let pool = Pool::new(2).unwrap();
    let mut rng = Rng(7);
    let (r, k, o) = (64, 384, 96);
    let inp = rng.vec(r * k, 1.0);
    let w = rng.vec(o * k, 0.05);
    let b = vec![0.0; o];
    let mut want = vec![0.0; r * o];
    reference(&inp, &w, &b, k, o, Epi::Store, &mut want);
    let packed = PackedLinear::int8_from_f32(Isa::detect(), &w, None, o, k);
    let mut scratch = vec![0u8; packed.scratch_bytes(r)];
    let mut got = vec![0.0; r * o];
    matmul_forward(&pool, &mut got, &inp, &packed, r, Epi::Store, &mut scratch);
    let e = max_rel(&got, &want);
    assert!(e < 0.03, "W8A8 relative error {e}");
}

fn attention_reference(qkv: &[f32], d: &Dims) -> Vec<f32> {
    let mut out = vec![0.0; d.rows() * d.dim];
    dinoedge_runtime::ops::attention::cpu::attention_forward(&mut out, qkv, d);
    out
}

#[test]
fn fast_attention_matches_the_reference() {
    let pool = Pool::new(3).unwrap();
    let mut rng = Rng(99);
    // (batch, grid_h, grid_w, prefix, dim, heads): head dims 8, 16, 24, 64, 128 and token
    // counts that are not multiples of the key block.
    let cases = [
        (1, 1, 1, 1, 16, 2),
        (2, 3, 5, 5, 32, 2),
        (1, 7, 9, 1, 96, 4),
        (2, 4, 4, 5, 384, 6),
        (1, 16, 16, 1, 384, 6),
        (1, 6, 7, 5, 256, 2),
        (1, 3, 3, 1, 24, 1),
    ];
    for isa in Isa::all_supported() {
        for &(batch, gh, gw, prefix, dim, heads) in &cases {
            let d = Dims {
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
            };
            let qkv = rng.vec(d.rows() * 3 * dim, 2.0);
            let want = attention_reference(&qkv, &d);
            let mut scratch =
                vec![0.0; dinoedge_runtime::ops::attention::fast::scratch_len(isa, &d)];
            let mut got = vec![f32::NAN; d.rows() * dim];
            dinoedge_runtime::ops::attention::fast::attention_forward(
                &pool,
                isa,
                &mut got,
                &qkv,
                &d,
                &mut scratch,
            );
            let e = max_rel(&got, &want);
            assert!(e < 1e-5, "{isa} attention {d:?}: rel err {e:e}");
        }
    }
}

/// bf16 attention on the AMX tiles (where this CPU has them) against the f32 reference on
/// bf16-rounded q, k, v: what is left is the rounding of the probabilities to bf16 (8 bits)
/// before `P V`, so 1e-2 of the output scale. Token counts cross the 32-query block and the
/// 256-key block; head dims 32, 64 and 128; batch 2.
#[cfg(target_arch = "x86_64")]
#[test]
fn bf16_attention_on_the_tiles_matches_the_reference() {
    use dinoedge_runtime::ops::attention::amx;
    if !dinoedge_runtime::testing::amx_here() {
        return;
    }
    let pool = Pool::new(3).unwrap();
    let mut rng = Rng(4242);
    // (batch, grid_h, grid_w, prefix, dim, heads)
    let cases = [
        (1, 1, 1, 1, 64, 2),
        (2, 5, 7, 5, 128, 2),
        (1, 16, 16, 1, 384, 6),
        (1, 20, 23, 5, 256, 2),
        (2, 3, 4, 1, 128, 4),
    ];
    let brain = |x: &[f32]| -> Vec<f32> {
        x.iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect()
    };
    for (batch, gh, gw, prefix, dim, heads) in cases {
        let d = Dims {
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
        };
        assert!(amx::supported(&d));
        let qkv = rng.vec(d.rows() * 3 * dim, 2.0);
        let want = attention_reference(&brain(&qkv), &d);
        let mut scratch = vec![f32::NAN; amx::scratch_len(&d, pool.threads())];
        let mut got = vec![f32::NAN; d.rows() * dim];
        amx::attention_forward(&pool, &mut got, &qkv, &d, &mut scratch);
        let e = max_rel(&got, &want);
        assert!(e < 1e-2, "amx attention {d:?}: rel err {e:e}");
        println!("amx attention {d:?}: rel err {e:e}");
    }
}
