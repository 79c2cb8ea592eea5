//! `rope`: DINOv3 rotary position embedding, applied in place to q and k of the patch
//! tokens (prefix tokens and v are left alone).
//!
//! For head dim `hd` and each patch token p: `x = x * cos[p] + rotate_half(x) * sin[p]`,
//! `rotate_half([x1, x2]) = [-x2, x1]` on the two halves of the head.
//!
//! Tables (built on the host by [`tables`]): cos, sin of shape (HW, hd). With patch-centre
//! coordinates `c = 2 (i + 0.5) / n - 1` in (-1, 1) and `inv_freq[k] = theta^(-4k/hd)`,
//! `angle[p] = 2 pi [c_h inv_freq, c_w inv_freq]` (length hd/2), tiled twice to length hd.
//!
//! Shapes: qkv (B, N, 3, heads, hd); cos, sin (HW, hd).

pub mod cpu;
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

/// cos and sin tables, each (grid_h * grid_w, head_dim), row-major over (h, w).
/// Computed in f64 and rounded once (HF computes the same values in f32).
pub fn tables(grid_h: usize, grid_w: usize, head_dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let quarter = head_dim / 4;
    let inv_freq: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / theta.powf(4.0 * k as f64 / head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(grid_h * grid_w * head_dim);
    let mut sin = Vec::with_capacity(grid_h * grid_w * head_dim);
    let mut angles = vec![0.0f64; head_dim];
    for i in 0..grid_h {
        let ch = 2.0 * (i as f64 + 0.5) / grid_h as f64 - 1.0;
        for j in 0..grid_w {
            let cw = 2.0 * (j as f64 + 0.5) / grid_w as f64 - 1.0;
            for k in 0..quarter {
                let ah = 2.0 * std::f64::consts::PI * ch * inv_freq[k];
                let aw = 2.0 * std::f64::consts::PI * cw * inv_freq[k];
                angles[k] = ah;
                angles[quarter + k] = aw;
                angles[2 * quarter + k] = ah;
                angles[3 * quarter + k] = aw;
            }
            cos.extend(angles.iter().map(|a| a.cos() as f32));
            sin.extend(angles.iter().map(|a| a.sin() as f32));
        }
    }
    (cos, sin)
}
