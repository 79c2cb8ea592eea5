//! `dwconv`: a depthwise 7x7 convolution with zero padding 3 and bias on a channels-last map
//! (a ConvNeXt block's spatial mixing, `nn.Conv2d(C, C, 7, padding=3, groups=C)`). Writes
//! `out` (`=`), never reads it.
//!
//! `out[b, y, x, c] = bias[c] + sum over (ky, kx) of weight[ky*7 + kx][c] * inp[b, y+ky-3, x+kx-3, c]`,
//! taps outside the map counting as zero, summed ky-major then kx in every form.
//!
//! Shapes: inp, out (B, H, W, C); weight (49, C) tap-major (HF's (C, 1, 7, 7) transposed
//! once, so that each tap is a contiguous run of channels); bias (C).
//!
//! Backward (`dwconv_backward`, cpu and cuda): din (=) is the transposed convolution of dout
//! (the same taps flipped); dweight and dbias accumulate (`+=`), summed over the pixels in a
//! fixed order.

pub mod cpu;
pub mod cuda;
pub mod fast;
#[cfg(feature = "wgpu")]
pub mod wgpu;

/// Kernel side; padding is `KERNEL / 2`.
pub const KERNEL: usize = 7;
/// Taps per channel.
pub const TAPS: usize = KERNEL * KERNEL;

/// Sizes of one `dwconv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DwDims {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl DwDims {
    /// Values in the map, B*H*W*C.
    pub fn len(&self) -> usize {
        self.batch * self.height * self.width * self.channels
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows of pixels, B*H (the unit of parallel work).
    pub fn rows(&self) -> usize {
        self.batch * self.height
    }
}

/// A deterministic input, HF-layout weight (C, 49) and bias for the forms' tests.
#[cfg(test)]
pub(crate) fn test_case(d: &DwDims) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = d.channels;
    let inp = (0..d.len())
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let w = (0..c * TAPS)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0)
        .collect();
    let bias = (0..c).map(|i| i as f32 * 0.1 - 0.2).collect();
    (inp, w, bias)
}

/// HF's depthwise weight (C, 1, 7, 7) as the ops take it, (49, C) tap-major.
pub fn weight_taps_major(hf: &[f32], channels: usize) -> Vec<f32> {
    let mut out = vec![0.0; TAPS * channels];
    for c in 0..channels {
        for t in 0..TAPS {
            out[t * channels + c] = hf[c * TAPS + t];
        }
    }
    out
}
