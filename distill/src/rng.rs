//! Reproducible randomness: every random decision is a pure function of the run seed and
//! the indices it concerns (step, image, view, parameter), so a resumed run makes exactly the
//! decisions the uninterrupted one would have, whatever the thread count.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Purposes, so streams for different uses never coincide.
#[derive(Clone, Copy)]
pub enum Stream {
    Init = 1,
    Order = 2,
    Augment = 3,
    Split = 4,
}

/// A generator for `(seed, stream, a, b)`.
pub fn rng(seed: u64, stream: Stream, a: u64, b: u64) -> ChaCha8Rng {
    // SplitMix64 finalizer over the combined key.
    let mut z = seed
        ^ ((stream as u64) << 56)
        ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

/// A standard normal sample (Box-Muller).
pub fn normal(r: &mut impl rand::Rng) -> f32 {
    let u1: f64 = r.random::<f64>().max(1e-300);
    let u2: f64 = r.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// A normal sample with `std`, redrawn outside +-2 std (PyTorch's `trunc_normal_`).
pub fn trunc_normal(r: &mut impl rand::Rng, std: f32) -> f32 {
    loop {
        let v = normal(r);
        if v.abs() <= 2.0 {
            return v * std;
        }
    }
}
