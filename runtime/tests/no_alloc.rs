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

#[test]
fn forward_after_warm_up_allocates_nothing() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf");
    for name in ["dinov3_mlp", "dinov3_gated", "dinov2_reg"] {
        let model = Model::load(fixtures.join(name)).unwrap();
        for precision in [Precision::F32, Precision::F16, Precision::Int8] {
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
            ALLOCS.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
            for _ in 0..3 {
                forward(&be, &prepared, &mut plan).unwrap();
            }
            COUNTING.store(false, Ordering::SeqCst);
            let n = ALLOCS.load(Ordering::SeqCst);
            assert_eq!(
                n, 0,
                "{name} {precision}: {n} allocations in 3 forwards after warm-up"
            );
            assert!(plan.out.iter().all(|v| v.is_finite()));
        }
    }
}
