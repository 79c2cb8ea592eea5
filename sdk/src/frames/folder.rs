//! [`FolderSource`]: an image-sequence folder in natural order.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dinoedge_runtime::InputLimits;

use crate::error::{Error, Result};

use super::*;

/// Image files of a sequence folder, in natural order.
pub struct FolderSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    fps: Option<f64>,
    limits: InputLimits,
}

impl FolderSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && crate::assets::is_image_path(p))
            .collect();
        files.sort_by(|a, b| {
            natural_cmp(
                &a.file_name().unwrap_or_default().to_string_lossy(),
                &b.file_name().unwrap_or_default().to_string_lossy(),
            )
        });
        if files.is_empty() {
            // A DAVIS root: say which sequences exist.
            let davis = dir.join("JPEGImages/480p");
            let hint = if davis.is_dir() {
                let mut seqs: Vec<String> = std::fs::read_dir(&davis)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                seqs.sort();
                format!(
                    " (a DAVIS root: pass a sequence folder such as {})",
                    davis
                        .join(seqs.first().map(String::as_str).unwrap_or("<seq>"))
                        .display()
                )
            } else {
                String::new()
            };
            return Err(Error::InvalidFile {
                path: dir.to_path_buf(),
                reason: format!("no frames (jpg, png, pgm, ppm) in this folder{hint}"),
            });
        }
        Ok(FolderSource {
            dir: dir.to_path_buf(),
            files,
            next: 0,
            fps: None,
            limits: InputLimits::default(),
        })
    }

    /// Frames must fit `limits` (checked from each file's header before decoding).
    pub fn with_limits(mut self, limits: InputLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Timestamps as `index / fps` instead of decode time.
    pub fn with_fps(mut self, fps: f64) -> Self {
        self.fps = Some(fps);
        self
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl FrameSource for FolderSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(path) = self.files.get(self.next) else {
            return Ok(None);
        };
        let t = Instant::now();
        let image = crate::image_io::load_rgb_limited(path, &self.limits)?;
        let index = self.next as u64;
        self.next += 1;
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let timestamp = Duration::from_secs_f64(index as f64 / self.fps.unwrap_or(30.0));
        Ok(Some(Frame {
            index,
            timestamp,
            name,
            image,
            capture_ms: t.elapsed().as_secs_f32() * 1e3,
        }))
    }
    fn describe(&self) -> String {
        format!("{} ({} frames)", self.dir.display(), self.files.len())
    }
    fn len_hint(&self) -> Option<usize> {
        Some(self.files.len())
    }
}
