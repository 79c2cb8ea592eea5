//! Where `scripts/fetch-assets.sh` puts the real weights, photos and stereo pairs, and
//! image-folder listing.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `$DINOEDGE_ASSETS`, else `$XDG_CACHE_HOME/dinoedge/assets`, else `~/.cache/dinoedge/assets`.
pub fn assets_dir() -> PathBuf {
    if let Ok(p) = std::env::var("DINOEDGE_ASSETS") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache")
        });
    cache.join("dinoedge/assets")
}

/// scikit-image's bundled photos (CC0 / public domain), when fetched.
pub fn photos_dir() -> PathBuf {
    assets_dir().join("scikit-image/skimage/data")
}

/// opencv-doc's example data (photos, stereo pairs, videos), when fetched.
pub fn opencv_data_dir() -> PathBuf {
    assets_dir().join("opencv-doc/usr/share/doc/opencv-doc/examples/data")
}

/// The real photos used for calibration and evaluation by default (colour, natural scenes).
pub const DEFAULT_PHOTOS: [&str; 8] = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
];

/// Paths of [`DEFAULT_PHOTOS`] that exist.
pub fn default_photos() -> Vec<PathBuf> {
    let dir = photos_dir();
    DEFAULT_PHOTOS
        .iter()
        .map(|p| dir.join(p))
        .filter(|p| p.is_file())
        .collect()
}

const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "pgm", "ppm", "pnm"];

pub fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files directly in `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_path(p))
        .collect();
    v.sort();
    Ok(v)
}
