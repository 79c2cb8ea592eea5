//! `loss`: the distillation objective's kernels (trainer only). Learned heads project the
//! student's features to the teacher's width; each term matches rows of the projection `p`
//! to the teacher's `t`:
//!
//! - `gather_rows` / `scatter_add_rows`: the rows a term selects ([`Rows`]) and the adjoint
//!   (`+=`);
//! - `cos_smooth_l1`: `w * (mean_rows(1 - cos(p, t)) + mean(smooth_l1(p - t)))` (beta 1, as
//!   `F.cosine_similarity` and `F.smooth_l1_loss`) with its gradient (`=`);
//! - `normalize_rows` (+ `_backward`, `+=`): rows over their L2 norm (at least 1e-12), as
//!   `F.normalize`;
//! - `gram_difference`: DINOv3's Gram term, `gs = coef * (gs - gt)` with the sum of squares.
//!
//! Losses are summed in f64 in a fixed order, so a step is reproducible.

pub mod cpu;
pub mod cuda;

/// Rows of the outputs a loss term selects: image b's rows `b*n + prefix .. + per`.
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    pub n: usize,
    pub prefix: usize,
    pub per: usize,
    pub images: usize,
}

impl Rows {
    pub fn count(&self) -> usize {
        self.images * self.per
    }
}
