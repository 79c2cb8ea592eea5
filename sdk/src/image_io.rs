//! Reading images into [`RgbImage`] and writing PNGs atomically.
//!
//! Decoding checks the size the header declares against [`InputLimits`] before any pixel
//! buffer exists, and refuses JPEGs that end before their end-of-image marker (the decoder
//! would otherwise fill the missing rows with grey and the features would silently be wrong).

use std::io::Cursor;
use std::path::Path;

use dinoedge_runtime::fsutil::write_atomic_with;
use dinoedge_runtime::{InputLimits, RgbImage};
use image::ImageDecoder;

use crate::error::{Error, Result};

/// Decodes an image file (PNG, JPEG, PNM) to 8-bit RGB within the default limits; gray
/// images are replicated.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    load_rgb_limited(path, &InputLimits::default())
}

/// Width and height an image file declares, read from its header only.
pub fn dimensions(path: &Path) -> Result<(u32, u32)> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    reader.into_dimensions().map_err(|e| Error::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Decodes an image file to 8-bit RGB, refusing images larger than `limits.max_pixels`
/// (from the header, before decoding) and truncated JPEGs.
pub fn load_rgb_limited(path: &Path, limits: &InputLimits) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |reason: String| Error::Image {
        path: path.to_path_buf(),
        reason,
    };
    let reader = image::ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        return Err(bad(
            "the JPEG data ends before its end-of-image marker (a truncated or partly written file)"
                .into(),
        ));
    }
    let mut reader = reader;
    let mut l = image::Limits::default();
    // The decoder's own allocation cap, as a second line behind the pixel check.
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(l);
    let decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    limits.check_pixels(&path.display().to_string(), w as u64, h as u64)?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(RgbImage::new(w as usize, h as usize, rgb.into_raw())?)
}

/// Whether JPEG data reaches its end-of-image marker: walks the marker segments (so an EXIF
/// thumbnail's own EOI, inside APP1, does not count) and the entropy-coded scans.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        // Fill bytes (0xFF runs) may precede a marker.
        while i < b.len() && b[i] == 0xFF && b.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        if i + 1 >= b.len() || b[i] != 0xFF {
            return false;
        }
        let marker = b[i + 1];
        i += 2;
        match marker {
            0xD9 => return true,
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
        else {
            return false;
        };
        if len < 2 {
            return false;
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data: runs until a marker other than a stuffed 0xFF00 or a
            // restart marker.
            loop {
                match b.get(i..i + 2) {
                    None => return false,
                    Some([0xFF, 0x00]) | Some([0xFF, 0xD0..=0xD7]) => i += 2,
                    Some([0xFF, 0xFF]) => i += 1,
                    Some([0xFF, _]) => break,
                    Some(_) => i += 1,
                }
            }
        }
    }
}

/// Writes an RGB image as PNG, atomically.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone())
        .ok_or_else(|| Error::InvalidArgument("image buffer does not match its size".into()))?;
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(buf)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_atomic_with(path, |f| std::io::Write::write_all(f, &bytes))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 99]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg)
            .unwrap();
        out
    }

    #[test]
    fn truncated_jpegs_are_refused_whole_ones_decode() {
        let dir = tempfile::tempdir().unwrap();
        let whole = jpeg(64, 48);
        assert!(jpeg_is_complete(&whole));
        let p = dir.path().join("a.jpg");
        std::fs::write(&p, &whole).unwrap();
        assert_eq!(load_rgb(&p).unwrap().width, 64);
        for cut in [whole.len() / 3, whole.len() - 2, whole.len() - 1] {
            assert!(!jpeg_is_complete(&whole[..cut]), "cut at {cut}");
            std::fs::write(&p, &whole[..cut]).unwrap();
            let e = load_rgb(&p).unwrap_err().to_string();
            assert!(e.contains("a.jpg") && e.contains("end-of-image"), "{e}");
        }
        // Trailing bytes after the marker are allowed (some cameras append data).
        let mut tail = whole.clone();
        tail.extend_from_slice(b"trailer");
        assert!(jpeg_is_complete(&tail));
    }

    #[test]
    fn images_above_the_pixel_limit_are_refused_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.png");
        image::GrayImage::new(300, 200).save(&p).unwrap();
        let small = InputLimits {
            max_pixels: 50_000,
            ..Default::default()
        };
        let e = load_rgb_limited(&p, &small).unwrap_err().to_string();
        assert!(e.contains("big.png") && e.contains("--max-pixels"), "{e}");
        assert_eq!(load_rgb(&p).unwrap().height, 200);
    }
}
