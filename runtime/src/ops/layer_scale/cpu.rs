//! CPU reference of `layer_scale`.

use rayon::prelude::*;

/// x (R, D) += y (R, D) * gamma (D).
pub fn layer_scale_forward(x: &mut [f32], y: &[f32], gamma: &[f32]) {
    let d = gamma.len();
    x.par_chunks_mut(d).zip(y.par_chunks(d)).with_min_len(16).for_each(|(xr, yr)| {
        for i in 0..d {
            xr[i] += yr[i] * gamma[i];
        }
    });
}
