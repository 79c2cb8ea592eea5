//! [`FfmpegSource`]: any other video through an `ffmpeg` subprocess that streams Y4M.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dinoedge_runtime::InputLimits;

use crate::error::{Error, Result};

use super::*;

/// The ffmpeg binary: `$DINOEDGE_FFMPEG`, else `ffmpeg` on the PATH.
pub fn ffmpeg_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DINOEDGE_FFMPEG") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("ffmpeg"))
            .find(|p| p.is_file())
    })
}

/// Any container ffmpeg reads, decoded by an ffmpeg subprocess into a Y4M pipe.
pub struct FfmpegSource;

impl FfmpegSource {
    #[allow(clippy::new_ret_no_self)]
    pub fn open(path: &Path, limits: &InputLimits) -> Result<Y4mSource<std::process::ChildStdout>> {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let Some(ff) = ffmpeg_binary() else {
            return Err(Error::InvalidFile {
                path: path.to_path_buf(),
                reason: "this video format needs ffmpeg, which was not found (install it, e.g. `apt-get install ffmpeg`, or set DINOEDGE_FFMPEG to its path), or convert the video to .y4m or an image folder".into(),
            });
        };
        let mut child = Command::new(&ff)
            .args(["-loglevel", "error", "-nostdin", "-i"])
            .arg(path)
            .args([
                "-f",
                "yuv4mpegpipe",
                "-pix_fmt",
                "yuv444p",
                "-strict",
                "-1",
                "-",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(&ff, e))?;
        let stdout = child.stdout.take().expect("piped");
        let what = path.display().to_string();
        match Y4mSource::from_reader(stdout, what.clone(), limits) {
            Ok(mut s) => {
                s._child = Some(child);
                Ok(s)
            }
            Err(e @ Error::Runtime(dinoedge_runtime::RuntimeError::LimitExceeded { .. })) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
            Err(_) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let _ = child.wait();
                Err(Error::InvalidFile {
                    path: path.to_path_buf(),
                    reason: format!("ffmpeg could not decode it: {}", err.trim()),
                })
            }
        }
    }
}
