//! A forward pass on the fast CPU backend allocates nothing once its plan is built: every
//! buffer lives in the plan, kernel scratch in the backend's arena (sized by `reserve`),
//! and the thread pool dispatches without allocating. Checked with a counting allocator, for
//! each precision and for the plain, gated and learned-position model variants.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dinoedge_runtime::dispatch::Backend;
use dinoedge_runtime::dispatch::cpu::CpuBackend;
use dinoedge_runtime::models::vit::forward::{Plan, PreparedModel, dims, forward};
use dinoedge_runtime::{Model, Precision};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is global: the tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Allocations during `run`, the fewest of three tries: the harness's own thread may
/// allocate (reporting the previous test) while one is counted; an allocation in `run`
/// shows in all three.
fn fewest_allocations(mut run: impl FnMut()) -> usize {
    (0..3)
        .map(|_| {
            ALLOCS.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
            run();
            COUNTING.store(false, Ordering::SeqCst);
            ALLOCS.load(Ordering::SeqCst)
        })
        .min()
        .expect("three tries")
}

#[test]
fn forward_after_warm_up_allocates_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf");
    for name in ["dinov3_mlp", "dinov3_gated", "dinov2_reg"] {
        let model = Model::load(fixtures.join(name)).unwrap();
        for precision in [
            Precision::F32,
            Precision::F16,
            Precision::BF16,
            Precision::Int8,
        ] {
            let be = CpuBackend::new(Some(2), precision).unwrap();
            let prepared = PreparedModel::new(&be, &model).unwrap();
            let d = dims(model.config().as_vit().unwrap(), 2, 64, 48);
            // The counter itself works: building a plan allocates.
            ALLOCS.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
            let mut plan = Plan::new(&be, &prepared, d, &[0]).unwrap();
            COUNTING.store(false, Ordering::SeqCst);
            assert!(ALLOCS.load(Ordering::SeqCst) > 0);
            let pixels: Vec<f32> = (0..2 * 3 * 64 * 48)
                .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
                .collect();
            be.write(&mut plan.pixels, &pixels).unwrap();
            for _ in 0..2 {
                forward(&be, &prepared, &mut plan).unwrap();
            }
            let n = fewest_allocations(|| {
                for _ in 0..3 {
                    forward(&be, &prepared, &mut plan).unwrap();
                }
            });
            assert_eq!(
                n, 0,
                "{name} {precision}: {n} allocations in 3 forwards after warm-up"
            );
            assert!(plan.out.iter().all(|v| v.is_finite()));
        }
    }
}

/// The ConvNeXt forward (dwconv, the channels-last im2col, token_pool, a captured stage) at
/// every precision: the per-stage `reserve` calls size every kernel's scratch up front.
#[test]
fn convnext_forward_after_warm_up_allocates_nothing() {
    use dinoedge_runtime::models::convnext::forward::{Plan, PreparedModel, Shape, forward};
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf");
    let model = Model::load(fixtures.join("dinov3_convnext")).unwrap();
    for precision in [
        Precision::F32,
        Precision::F16,
        Precision::BF16,
        Precision::Int8,
    ] {
        let be = CpuBackend::new(Some(2), precision).unwrap();
        let prepared = PreparedModel::new(&be, &model).unwrap();
        let shape = Shape {
            batch: 2,
            height: 70,
            width: 100,
        };
        let mut plan = Plan::new(&be, &prepared, shape, &[1]).unwrap();
        let pixels: Vec<f32> = (0..2 * 3 * 70 * 100)
            .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
            .collect();
        be.write(&mut plan.pixels, &pixels).unwrap();
        for _ in 0..2 {
            forward(&be, &prepared, &mut plan).unwrap();
        }
        let n = fewest_allocations(|| {
            for _ in 0..3 {
                forward(&be, &prepared, &mut plan).unwrap();
            }
        });
        assert_eq!(n, 0, "convnext {precision}: {n} allocations in 3 forwards");
        assert!(plan.out.iter().all(|v| v.is_finite()));
    }
}

/// The video path end to end: frame preprocessing and `run_into` reuse every buffer, so a
/// warmed-up session allocates nothing per frame, and `run_into` returns what `run` does.
#[test]
fn frames_through_run_into_allocate_nothing_after_warm_up() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use dinoedge_runtime::{
        BackendKind, Features, FramePreprocessor, Preprocessor, RgbImage, RunOptions,
        SessionOptions, Tensor, create_session,
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf");
    let model = std::sync::Arc::new(Model::load(fixtures.join("dinov3_mlp")).unwrap());
    let mut session = create_session(
        model.clone(),
        &SessionOptions {
            backend: BackendKind::Cpu,
            threads: Some(2),
            ..SessionOptions::default()
        },
    )
    .unwrap();
    let pre = Preprocessor::dense(model.config(), None, 48).unwrap();
    let mut frames = FramePreprocessor::new(pre);
    let img = |k: usize| {
        let data = (0..80 * 60 * 3)
            .map(|i| ((i * 31 + k * 7) % 251) as u8)
            .collect();
        RgbImage::new(80, 60, data).unwrap()
    };
    let imgs: Vec<RgbImage> = (0..4).map(img).collect();
    // No captured layers: the live pipeline's case.
    let opts = RunOptions::default();
    let mut pixels = Tensor::empty();
    let mut out = Features::empty();
    for im in &imgs[..2] {
        frames.run_into(im, &mut pixels).unwrap();
        session.run_into(&pixels, &opts, &mut out).unwrap();
    }
    let n = fewest_allocations(|| {
        for im in &imgs[2..] {
            frames.run_into(im, &mut pixels).unwrap();
            session.run_into(&pixels, &opts, &mut out).unwrap();
        }
    });
    assert_eq!(n, 0, "{n} allocations in 2 frames after warm-up");
    assert_eq!(out, session.run(&pixels, &opts).unwrap());
}

/// The fixtures' head dim (16) stays off the AMX attention; at a ViT's head dim (64) it runs
/// there, and its per-thread buffers come from the scratch: repeated calls allocate nothing.
#[cfg(target_arch = "x86_64")]
#[test]
fn attention_on_the_tiles_allocates_nothing() {
    use dinoedge_runtime::backend::cpu::pool::Pool;
    use dinoedge_runtime::ops::Dims;
    use dinoedge_runtime::ops::attention::amx;
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !dinoedge_runtime::testing::amx_here() {
        return;
    }
    let d = Dims {
        batch: 1,
        channels: 3,
        height: 20,
        width: 20,
        patch: 1,
        grid_h: 20,
        grid_w: 20,
        prefix: 5,
        dim: 128,
        heads: 2,
        hidden: 128,
    };
    let pool = Pool::new(2).unwrap();
    let qkv: Vec<f32> = (0..d.rows() * 3 * d.dim)
        .map(|i| ((i * 31) % 17) as f32 / 9.0 - 1.0)
        .collect();
    let mut out = vec![0.0; d.rows() * d.dim];
    let mut scratch = vec![0.0; amx::scratch_len(&d, pool.threads())];
    amx::attention_forward(&pool, &mut out, &qkv, &d, &mut scratch);
    let n = fewest_allocations(|| {
        for _ in 0..3 {
            amx::attention_forward(&pool, &mut out, &qkv, &d, &mut scratch);
        }
    });
    assert_eq!(n, 0, "AMX attention allocated");
    assert!(out.iter().all(|v| v.is_finite()));
}
