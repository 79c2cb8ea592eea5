//! Reading images into [`RgbImage`] and writing PNGs atomically.

use std::path::Path;

use dinoedge_runtime::RgbImage;
use dinoedge_runtime::fsutil::write_atomic_with;

use crate::error::{Error, Result};

/// Decodes an image file (PNG, JPEG, PNM) to 8-bit RGB; gray images are replicated.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let img = reader.decode().map_err(|e| Error::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(RgbImage::new(w as usize, h as usize, rgb.into_raw())?)
}

/// Writes an RGB image as PNG, atomically.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone())
        .ok_or_else(|| Error::Usage("image buffer does not match its size".into()))?;
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(buf)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_atomic_with(path, |f| std::io::Write::write_all(f, &bytes))?;
    Ok(())
}
