//! Input limits: how large an image, and how many tokens per image, a caller may hand us.
//!
//! Both are checked before anything is sized from the input, so a small file that declares
//! a huge image (a PNG header, a Y4M header) fails with a message instead of allocating
//! gigabytes. The defaults cover every camera and every DINO evaluation resolution; users
//! raise them with `--max-pixels` / `--max-tokens` (CLI) or the matching option fields.

use crate::error::{Result, RuntimeError};

/// Limits on one input image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimits {
    /// Decoded pixels of one image or frame (width x height).
    pub max_pixels: u64,
    /// Tokens of one image in the model (prefix tokens plus the patch grid).
    pub max_tokens: usize,
}

impl InputLimits {
    /// 40 megapixels: a 48 MP phone photo needs `--max-pixels`; the image pipeline keeps
    /// about 30 bytes per source pixel, so the default stays near 1.2 GB.
    pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
    /// 16384 tokens: a 2048 x 2048 input at patch 16. Attention grows with the square.
    pub const DEFAULT_MAX_TOKENS: usize = 16_384;

    /// Refuses a `width x height` image above [`InputLimits::max_pixels`]; `what` names it.
    pub fn check_pixels(&self, what: &str, width: u64, height: u64) -> Result<()> {
        let pixels = width.checked_mul(height);
        if pixels.is_none_or(|p| p > self.max_pixels) {
            return Err(RuntimeError::LimitExceeded {
                what: what.to_string(),
                found: format!(
                    "{width}x{height} pixels ({})",
                    megapixels(width as f64 * height as f64)
                ),
                limit: megapixels(self.max_pixels as f64),
                raise: "--max-pixels (max_pixels in the library and C API options)".into(),
            });
        }
        Ok(())
    }

    /// Refuses an input of `tokens` tokens per image above [`InputLimits::max_tokens`].
    pub fn check_tokens(&self, what: &str, tokens: usize, grid: (usize, usize)) -> Result<()> {
        if tokens > self.max_tokens {
            return Err(RuntimeError::LimitExceeded {
                what: what.to_string(),
                found: format!("{tokens} tokens (a {}x{} patch grid)", grid.0, grid.1),
                limit: format!("{} tokens", self.max_tokens),
                raise: "--max-tokens (max_tokens in the library and C API options)".into(),
            });
        }
        Ok(())
    }
}

/// `40.0 MP`, or the pixel count below one megapixel.
fn megapixels(p: f64) -> String {
    if p >= 1e6 {
        format!("{:.1} MP", p / 1e6)
    } else {
        format!("{p} pixels")
    }
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_tokens: Self::DEFAULT_MAX_TOKENS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_input_and_the_option() {
        let l = InputLimits::default();
        assert!(l.check_pixels("a.png", 6000, 4000).is_ok());
        let e = l
            .check_pixels("a.png", 20000, 20000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.png") && e.contains("--max-pixels") && e.contains("400.0 MP"),
            "{e}"
        );
        // Overflowing products are refused, not wrapped.
        assert!(l.check_pixels("x", u64::MAX, 3).is_err());
        let e = l
            .check_tokens("strip", 164_000, (16, 10250))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--max-tokens") && e.contains("16x10250"), "{e}");
    }
}
