//! GEMM candidates for the fast CPU backend, timed on the ViT-S/14 shapes (257 tokens at
//! 224, 1025 at 448): our prepacked SIMD microkernels, the `gemm` crate, and tract's linalg
//! kernels through a one-node tract model (its default, single-threaded build).
//!
//!     cargo bench -p dinoedge-runtime --features tract-peer --bench gemm_candidates -- [THREADS]
//!
//! Each prints the median of 15 runs after 3 warm-ups, in ms and GFLOP/s, and checks that
//! all candidates agree with ours (max abs difference).

use std::time::Instant;

use dinoedge_runtime::backend::cpu::isa::Isa;
use dinoedge_runtime::backend::cpu::pool::Pool;
use dinoedge_runtime::ops::matmul::Epi;
use dinoedge_runtime::ops::matmul::fast::{PackedLinear, matmul_forward};
use tract_onnx::prelude::*;

fn median_ms(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut v: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> TractResult<()> {
    let threads: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let isa = Isa::detect();
    let pool = Pool::new(threads)?;
    println!("threads {threads}, our kernels: {isa}");
    println!(
        "{:<16} {:>18} {:>18} {:>18}",
        "m x k x n", "dinoedge", "gemm crate", "tract (1 thread)"
    );
    for (m, k, n) in [
        (257, 384, 1152),
        (257, 384, 1536),
        (257, 1536, 384),
        (1025, 384, 1536),
    ] {
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        let mut s = 1u32;
        let mut rnd = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / 16_777_216.0 - 0.5
        };
        let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let w_nk: Vec<f32> = (0..n * k).map(|_| rnd()).collect(); // HF layout (out, in)
        let mut w_kn = vec![0.0f32; k * n];
        for j in 0..n {
            for t in 0..k {
                w_kn[t * n + j] = w_nk[j * k + t];
            }
        }

        let packed = PackedLinear::f32(isa, &w_nk, None, n, k);
        let mut ours = vec![0.0f32; m * n];
        let t_ours =
            median_ms(|| matmul_forward(&pool, &mut ours, &a, &packed, m, Epi::Store, &mut []));

        let mut theirs = vec![0.0f32; m * n];
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let rayon_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let t_gemm = median_ms(|| {
            rayon_pool.install(|| unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    theirs.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    w_kn.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            })
        });
        let d_gemm = ours
            .iter()
            .zip(&theirs)
            .fold(0.0f32, |x, (p, q)| x.max((p - q).abs()));

        let mut model = TypedModel::default();
        let src = model.add_source("a", f32::fact([m, k]))?;
        let wt = model.add_const(
            "w",
            tract_ndarray::Array2::from_shape_vec((k, n), w_kn.clone())?.into_tensor(),
        )?;
        let axes: tract_onnx::tract_core::axes::AxesMapping = "mk,kn->mn".parse()?;
        let out = model.wire_node(
            "mm",
            tract_onnx::tract_core::ops::einsum::EinSum::new(axes, f32::datum_type()),
            &[src, wt],
        )?;
        model.select_output_outlets(&out)?;
        let plan = model.into_optimized()?.into_runnable()?;
        let input: TVec<TValue> = tvec!(
            tract_ndarray::Array2::from_shape_vec((m, k), a.clone())?
                .into_tensor()
                .into_tvalue()
        );
        let t_tract = median_ms(|| {
            plan.run(input.clone()).unwrap();
        });
        let r = plan.run(input.clone())?;
        let tv = r[0].to_plain_array_view::<f32>()?;
        let d_tract = ours
            .iter()
            .zip(tv.iter())
            .fold(0.0f32, |x, (p, q)| x.max((p - q).abs()));

        let cell = |t: f64| format!("{t:7.3} ms {:5.0} GF/s", gflop / t * 1e3);
        println!(
            "{:<16} {:>18} {:>18} {:>18}   (max |diff| gemm {d_gemm:.1e}, tract {d_tract:.1e})",
            format!("{m}x{k}x{n}"),
            cell(t_ours),
            cell(t_gemm),
            cell(t_tract)
        );
    }
    Ok(())
}
