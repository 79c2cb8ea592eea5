//! Atomic file writes: a reader sees the old file or the complete new one, never a partial one.
//!
//! - [`write_atomic`]: a file written to a unique temporary name in the same directory, synced,
//!   renamed into place, and the directory synced so the rename survives a power cut.
//! - [`OutputDir`]: a whole output directory (a model, a set of masks) built in a staging
//!   directory next to it and renamed into place on [`OutputDir::commit`]; dropped without a
//!   commit (an error), it leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, RuntimeError};

/// A name unique to this process, thread and call: two threads writing the same file (or two
/// processes) never share a temporary.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{n}-{nanos:x}", std::process::id())
}

/// The temporary path used while writing `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", unique_suffix()))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename inside `dir` durable. Best effort where directories cannot be opened.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, then renames it.
/// On any error the temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by a writer callback.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(parent_of(path))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(RuntimeError::io(path, e));
    }
    Ok(())
}

/// Whether `dir` holds an HF model (a config or weights), for refusing to overwrite one.
pub fn holds_model(dir: &Path) -> bool {
    dir.join("config.json").exists()
        || std::fs::read_dir(dir).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json")
            })
        })
}

/// Whether two paths name the same existing file or directory.
pub fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// An output directory built in a staging directory beside it, then swapped into place.
pub struct OutputDir {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

/// What [`OutputDir::create`] may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Refuse a target that already holds a model (`--force` not given).
    Never,
    /// Replace whatever the target holds (`--force`).
    Force,
    /// Keep the target's other files; staged files are moved in, overwriting namesakes
    /// (a folder of per-frame masks).
    Merge,
}

impl OutputDir {
    /// Prepares `target` as an output directory. `sources` are inputs of the command: a
    /// target that is one of them is always refused (it would be destroyed while read).
    pub fn create(target: &Path, sources: &[&Path], replace: Replace, flag: &str) -> Result<Self> {
        let refuse = |reason: String| RuntimeError::OutputRefused {
            path: target.to_path_buf(),
            reason,
        };
        if let Some(src) = sources.iter().find(|s| same_path(s, target)) {
            return Err(refuse(format!(
                "it is the input {} itself; choose another output directory",
                src.display()
            )));
        }
        if target.exists() && !target.is_dir() {
            return Err(refuse("it exists and is not a directory".into()));
        }
        if replace == Replace::Never && target.is_dir() {
            if holds_model(target) {
                return Err(refuse(format!(
                    "it already holds a model; choose another directory, or pass {flag} to replace it"
                )));
            }
            if std::fs::read_dir(target).is_ok_and(|mut rd| rd.next().is_some()) {
                return Err(refuse(format!(
                    "it is not empty; choose another directory, or pass {flag} to replace it"
                )));
            }
        }
        let parent = parent_of(target);
        if !parent.is_dir() {
            return Err(refuse(format!(
                "its parent directory {} does not exist",
                parent.display()
            )));
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| refuse("it has no directory name".into()))?;
        let staging = parent.join(format!(".{name}.{}.partial", unique_suffix()));
        std::fs::create_dir(&staging).map_err(|e| RuntimeError::io(&staging, e))?;
        Ok(OutputDir {
            target: target.to_path_buf(),
            staging,
            committed: false,
        })
    }

    /// Where to write the files: the staging directory.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The final directory.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Moves the staged files into place: a rename of the whole directory when the target is
    /// new or replaced, file by file for [`Replace::Merge`] into an existing directory.
    pub fn commit(mut self, replace: Replace) -> Result<PathBuf> {
        let target = self.target.clone();
        let io = |e| RuntimeError::io(&target, e);
        if replace == Replace::Merge && target.is_dir() {
            for e in std::fs::read_dir(&self.staging).map_err(io)? {
                let e = e.map_err(io)?;
                std::fs::rename(e.path(), target.join(e.file_name())).map_err(io)?;
            }
            sync_dir(&target).map_err(io)?;
            std::fs::remove_dir(&self.staging).map_err(io)?;
        } else if target.exists() {
            // Swap: old aside, new in, old removed. A crash in between leaves the new one
            // complete under the target name or the old one intact.
            let old = parent_of(&target).join(format!(
                ".{}.{}.old",
                target.file_name().unwrap_or_default().to_string_lossy(),
                unique_suffix()
            ));
            std::fs::rename(&target, &old).map_err(io)?;
            if let Err(e) = std::fs::rename(&self.staging, &target) {
                let _ = std::fs::rename(&old, &target);
                return Err(io(e));
            }
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.staging, &target).map_err(io)?;
        }
        sync_dir(parent_of(&target)).map_err(io)?;
        self.committed = true;
        Ok(target)
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert!(err.to_string().contains("disk full"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn threads_writing_one_file_do_not_share_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("same.json");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(p, &[t; 4096]).unwrap();
                    }
                });
            }
        });
        let b = std::fs::read(&p).unwrap();
        assert!(b.len() == 4096 && b.iter().all(|&x| x == b[0]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn output_dirs_refuse_their_source_and_models_and_leave_nothing_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        let e = OutputDir::create(&model, &[&model], Replace::Force, "--force")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("input"), "{e}");
        let e = OutputDir::create(&model, &[], Replace::Never, "--force")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("already holds a model") && e.contains("--force"),
            "{e}"
        );
        // An error before commit leaves no staging directory.
        let out = dir.path().join("new");
        {
            let o = OutputDir::create(&out, &[], Replace::Never, "--force").unwrap();
            std::fs::write(o.path().join("x"), "1").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A commit replaces the whole directory (no stale shard survives).
        std::fs::write(model.join("model-00001-of-00002.safetensors"), "stale").unwrap();
        let o = OutputDir::create(&model, &[], Replace::Force, "--force").unwrap();
        std::fs::write(o.path().join("config.json"), "new").unwrap();
        o.commit(Replace::Force).unwrap();
        let names: Vec<_> = std::fs::read_dir(&model)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config.json")]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
