//! Image and grid resampling with PyTorch's exact semantics (align_corners = False):
//!
//! - [`bicubic`]: `F.interpolate(mode="bicubic")`, A = -0.75, border-clamped taps
//!   (DINOv2 position embedding).
//! - [`resize_aa`]: `F.interpolate(..., antialias=True)` on float data, bilinear or bicubic
//!   (A = -0.5); separable, width first (DINOv3 preprocessing, DINOv2-with-registers
//!   position embedding).
//! - [`resize_aa_u8`]: the same filters on 8-bit images with torch's int16 fixed-point
//!   weights and rounding after each pass (what torchvision does for uint8 bicubic,
//!   i.e. HF's DINOv2 preprocessing).
//!
//! All take planar data (C, H, W).

/// Which antialiasing filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Triangle, support 1.
    Bilinear,
    /// Keys cubic with A = -0.5, support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Taps of one output position: first input index and normalised weights.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `max_len` weights per output, zero-padded.
    weights: Vec<f64>,
    max_len: usize,
}

/// Antialiased taps as torch `_compute_weights_aa` computes them (in double).
fn aa_taps(in_size: usize, out_size: usize, filter: Filter) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 {
        filter.support() * scale
    } else {
        filter.support()
    };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let max_len = (support.ceil() as usize) * 2 + 1;
    let mut taps = Taps {
        start: vec![0; out_size],
        len: vec![0; out_size],
        weights: vec![0.0; out_size * max_len],
        max_len,
    };
    for i in 0..out_size {
        let center = scale * (i as f64 + 0.5);
        // C casts truncate toward zero, as in torch.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(max_len);
        let w = &mut taps.weights[i * max_len..i * max_len + n];
        let mut total = 0.0;
        for (j, wj) in w.iter_mut().enumerate() {
            *wj = filter.eval((j as f64 + xmin as f64 - center + 0.5) * invscale);
            total += *wj;
        }
        if total != 0.0 {
            for wj in w.iter_mut() {
                *wj /= total;
            }
        }
        taps.start[i] = xmin;
        taps.len[i] = n;
    }
    taps
}

/// [`resize_aa`]'s taps for one axis in f32, computed once and reused (video frames and
/// masks at a repeating size): output `i` reads `len` inputs from `start`.
pub struct AxisTaps {
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
    max_len: usize,
}

impl AxisTaps {
    pub fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        let t = aa_taps(in_size, out_size, filter);
        AxisTaps {
            start: t.start,
            len: t.len,
            weights: t.weights.iter().map(|&w| w as f32).collect(),
            max_len: t.max_len,
        }
    }

    /// Outputs along this axis.
    pub fn outputs(&self) -> usize {
        self.start.len()
    }

    /// First input and weights of output `i`.
    pub fn of(&self, i: usize) -> (usize, &[f32]) {
        let w = &self.weights[i * self.max_len..i * self.max_len + self.len[i]];
        (self.start[i], w)
    }
}

/// One separable pass over float data: resamples the axis of length `n` (stride `stride`)
/// for each of `outer` blocks.
fn pass_f32(
    src: &[f32],
    outer: usize,
    n: usize,
    inner: usize,
    taps: &Taps,
    out_n: usize,
) -> Vec<f32> {
    let mut dst = vec![0.0f32; outer * out_n * inner];
    for o in 0..outer {
        for i in 0..out_n {
            let w = &taps.weights[i * taps.max_len..i * taps.max_len + taps.len[i]];
            let d = &mut dst[(o * out_n + i) * inner..(o * out_n + i + 1) * inner];
            for (j, &wj) in w.iter().enumerate() {
                let s = &src
                    [(o * n + taps.start[i] + j) * inner..(o * n + taps.start[i] + j + 1) * inner];
                for (dv, sv) in d.iter_mut().zip(s) {
                    *dv += (wj * *sv as f64) as f32;
                }
            }
        }
    }
    dst
}

/// Antialiased resize of planar float data (C, H, W) -> (C, oh, ow), as
/// `F.interpolate(x, size=(oh, ow), mode=bilinear|bicubic, align_corners=False, antialias=True)`.
pub fn resize_aa(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    filter: Filter,
) -> Vec<f32> {
    assert_eq!(src.len(), c * h * w);
    let mut cur = src.to_vec();
    let mut cur_w = w;
    if ow != w {
        // Width is the contiguous axis: outer = C*H rows, inner = 1.
        cur = pass_f32(&cur, c * h, w, 1, &aa_taps(w, ow, filter), ow);
        cur_w = ow;
    }
    if oh != h {
        cur = pass_f32(&cur, c, h, cur_w, &aa_taps(h, oh, filter), oh);
    }
    cur
}

/// int16 weights with torch's dynamic precision (`_compute_index_ranges_int16_weights`).
fn int16_taps(taps: &Taps) -> (Vec<i32>, u32) {
    let wt_max = taps.weights.iter().cloned().fold(0.0f64, f64::max);
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + wt_max * (1i64 << (precision + 1)) as f64) as i64;
        if next >= (1 << 15) {
            break;
        }
        precision += 1;
    }
    let scale = (1i64 << precision) as f64;
    let w = taps
        .weights
        .iter()
        .map(|&v| {
            let v = v * scale;
            (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i16 as i32
        })
        .collect();
    (w, precision)
}

fn pass_u8(src: &[u8], outer: usize, n: usize, inner: usize, taps: &Taps, out_n: usize) -> Vec<u8> {
    let (w16, prec) = int16_taps(taps);
    let round = 1i32 << (prec.max(1) - 1);
    let mut dst = vec![0u8; outer * out_n * inner];
    for o in 0..outer {
        for i in 0..out_n {
            let w = &w16[i * taps.max_len..i * taps.max_len + taps.len[i]];
            for k in 0..inner {
                let mut acc = if prec == 0 { 0 } else { round };
                for (j, &wj) in w.iter().enumerate() {
                    acc += wj * src[(o * n + taps.start[i] + j) * inner + k] as i32;
                }
                dst[(o * out_n + i) * inner + k] = (acc >> prec).clamp(0, 255) as u8;
            }
        }
    }
    dst
}

/// Antialiased resize of a planar 8-bit image (C, H, W), rounding to 8 bits after each pass.
pub fn resize_aa_u8(
    src: &[u8],
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(src.len(), c * h * w);
    let mut cur = src.to_vec();
    let mut cur_w = w;
    if ow != w {
        cur = pass_u8(&cur, c * h, w, 1, &aa_taps(w, ow, filter), ow);
        cur_w = ow;
    }
    if oh != h {
        cur = pass_u8(&cur, c, h, cur_w, &aa_taps(h, oh, filter), oh);
    }
    cur
}

/// Bicubic resize (C, H, W) -> (C, oh, ow) as `F.interpolate(mode="bicubic",
/// align_corners=False)` without antialias: A = -0.75, taps clamped to the border.
pub fn bicubic(src: &[f32], c: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    assert_eq!(src.len(), c * h * w);
    const A: f64 = -0.75;
    let cc1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cc2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    // For each output index: four clamped input indices and their weights.
    let axis = |in_size: usize, out_size: usize| -> Vec<([usize; 4], [f64; 4])> {
        let scale = in_size as f64 / out_size as f64;
        (0..out_size)
            .map(|i| {
                let real = scale * (i as f64 + 0.5) - 0.5;
                let idx = (real.floor() as i64).min(in_size as i64 - 1);
                let t = (real - idx as f64).clamp(0.0, 1.0);
                let wts = [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)];
                let ids = [0, 1, 2, 3].map(|k| (idx - 1 + k).clamp(0, in_size as i64 - 1) as usize);
                (ids, wts)
            })
            .collect()
    };
    let ys = axis(h, oh);
    let xs = axis(w, ow);
    let mut out = vec![0.0f32; c * oh * ow];
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        for (oy, (yi, yw)) in ys.iter().enumerate() {
            for (ox, (xi, xw)) in xs.iter().enumerate() {
                let mut acc = 0.0f64;
                for a in 0..4 {
                    let row = &plane[yi[a] * w..(yi[a] + 1) * w];
                    let r: f64 = (0..4).map(|b| row[xi[b]] as f64 * xw[b]).sum();
                    acc += r * yw[a];
                }
                out[(ch * oh + oy) * ow + ox] = acc as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_sizes_are_identity() {
        let src: Vec<f32> = (0..2 * 5 * 7).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(resize_aa(&src, 2, 5, 7, 5, 7, Filter::Bicubic), src);
        let b = bicubic(&src, 2, 5, 7, 5, 7);
        for (x, y) in b.iter().zip(&src) {
            assert!((x - y).abs() < 1e-6);
        }
    }

    #[test]
    fn constant_images_stay_constant() {
        let src = vec![0.25f32; 3 * 9 * 13];
        for (oh, ow) in [(4, 5), (20, 31), (9, 2)] {
            for f in [Filter::Bilinear, Filter::Bicubic] {
                for v in resize_aa(&src, 3, 9, 13, oh, ow, f) {
                    assert!((v - 0.25).abs() < 1e-6);
                }
            }
            for v in bicubic(&src, 3, 9, 13, oh, ow) {
                assert!((v - 0.25).abs() < 1e-6);
            }
        }
        let u = vec![200u8; 3 * 9 * 13];
        assert!(
            resize_aa_u8(&u, 3, 9, 13, 20, 31, Filter::Bicubic)
                .iter()
                .all(|&v| v == 200)
        );
    }

    #[test]
    fn bilinear_downscale_by_two_averages_pairs() {
        // Scale 2 with the triangle filter of support 2: taps at offsets -0.5..1.5 with
        // weights 1/4, 3/4, 3/4, 1/4 normalised -> interior outputs average 4 inputs.
        let src: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let out = resize_aa(&src, 1, 1, 8, 1, 4, Filter::Bilinear);
        // interior output 1 covers inputs 1..=4 with weights 1,3,3,1 (/8): (1+6+9+4)/8 = 2.5
        assert!((out[1] - 2.5).abs() < 1e-6, "{out:?}");
    }
}
