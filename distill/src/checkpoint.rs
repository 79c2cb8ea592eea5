//! Checkpoints: `checkpoints/step-NNNNNNNN/` holds `state.safetensors` (parameters, EMA,
//! Adam moments, all f32) and `run.json` (the run's configuration). A checkpoint is written
//! into a temporary directory and renamed into place, then `checkpoints/latest` is switched
//! to it atomically, then older ones beyond `keep` are removed. A failure at any point (a
//! full disk) leaves the previous checkpoint and `latest` untouched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dinoedge_runtime::fsutil::write_atomic;
use dinoedge_runtime::weights::store::{TensorStore, f32_entry, write_safetensors};

use crate::error::{DistillError, Result};
use crate::optim::AdamW;

pub const FORMAT: &str = "dinoedge-checkpoint-1";

/// Everything a resumed run needs besides its configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Completed optimizer steps.
    pub step: usize,
    pub params: Vec<f32>,
    pub ema: Vec<f32>,
    pub adam: AdamW,
}

/// A training state borrowed from wherever it lives (the trainer's arena on the CPU): what a
/// checkpoint writes.
#[derive(Clone, Copy, Debug)]
pub struct StateRef<'a> {
    pub step: usize,
    pub params: &'a [f32],
    pub ema: &'a [f32],
    pub m: &'a [f32],
    pub v: &'a [f32],
}

impl TrainState {
    pub fn as_ref(&self) -> StateRef<'_> {
        StateRef {
            step: self.step,
            params: &self.params,
            ema: &self.ema,
            m: &self.adam.m,
            v: &self.adam.v,
        }
    }
}

fn name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Writes a checkpoint under `root` and returns its directory.
pub fn save(root: &Path, state: StateRef, run_json: &str, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| DistillError::io(root, e))?;
    let final_dir = root.join(name(state.step));
    let tmp = root.join(format!(".{}.tmp-{}", name(state.step), std::process::id()));
    let written = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| DistillError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| DistillError::io(&tmp, e))?;
        let n = state.params.len();
        let tensors = vec![
            f32_entry("params", vec![n], state.params),
            f32_entry("ema", vec![n], state.ema),
            f32_entry("adam_m", vec![n], state.m),
            f32_entry("adam_v", vec![n], state.v),
        ];
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), state.step.to_string()),
        ]);
        write_safetensors(&tmp.join("state.safetensors"), &tensors, Some(meta))?;
        write_atomic(&tmp.join("run.json"), run_json.as_bytes())?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| DistillError::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| DistillError::io(&final_dir, e))?;
        write_atomic(&root.join("latest"), name(state.step).as_bytes())?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Prune: keep the newest `keep` (at least the one just written).
    let mut all = list(root)?;
    all.sort();
    let excess = all.len().saturating_sub(keep.max(1));
    for (_, dir) in all.into_iter().take(excess) {
        if dir != final_dir {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(final_dir)
}

/// Complete checkpoints under `root`, as (step, dir).
fn list(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut v = Vec::new();
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(s) = step_of(&n)
            && e.path().join("state.safetensors").is_file()
        {
            v.push((s, e.path()));
        }
    }
    Ok(v)
}

/// The step of a checkpoint directory name `step-NNNNNNNN` (8 or more digits, nothing else:
/// no separators, so a name read from `latest` cannot leave the run).
fn step_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step-")?;
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The checkpoint `latest` points to (or the newest complete one if `latest` is missing or
/// names anything but a checkpoint of this run).
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    if let Ok(n) = std::fs::read_to_string(root.join("latest"))
        && step_of(n.trim()).is_some()
    {
        let dir = root.join(n.trim());
        if dir.join("state.safetensors").is_file() {
            return Ok(Some(dir));
        }
    }
    Ok(list(root)?.into_iter().max().map(|(_, d)| d))
}

/// A checkpoint read back by [`load_newest`].
pub struct Loaded {
    pub state: TrainState,
    pub run_json: String,
    pub dir: PathBuf,
    /// Newer checkpoints that could not be read, with the reason (reported to the user).
    pub skipped: Vec<String>,
}

/// Reads the newest intact checkpoint: the one `latest` names first, then older ones in
/// step order. A corrupt newest checkpoint (a disk error, a truncated copy) falls back to
/// the previous one and says so; `None` when there is none at all.
pub fn load_newest(root: &Path, n: usize) -> Result<Option<Loaded>> {
    let first = latest(root)?;
    let mut all: Vec<PathBuf> = list(root)?.into_iter().map(|(_, d)| d).collect();
    all.sort();
    all.reverse();
    let order = first
        .iter()
        .cloned()
        .chain(all.into_iter().filter(|d| Some(d) != first.as_ref()));
    let mut skipped = Vec::new();
    for dir in order {
        match load(&dir, n) {
            Ok((state, run_json)) => {
                return Ok(Some(Loaded {
                    state,
                    run_json,
                    dir,
                    skipped,
                }));
            }
            Err(e) => skipped.push(format!("{}: {e}", dir.display())),
        }
    }
    if skipped.is_empty() {
        Ok(None)
    } else {
        Err(DistillError::Mismatch {
            path: root.to_path_buf(),
            reason: format!("no intact checkpoint: {}", skipped.join("; ")),
        })
    }
}

/// Reads a checkpoint; `n` is the expected number of trainable values.
pub fn load(dir: &Path, n: usize) -> Result<(TrainState, String)> {
    let path = dir.join("state.safetensors");
    let store = TensorStore::open_files(std::slice::from_ref(&path))?;
    let bad = |reason: String| DistillError::Mismatch {
        path: path.clone(),
        reason,
    };
    let meta = store.metadata().cloned().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!("not a {FORMAT} checkpoint")));
    }
    let step: usize = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no step in its metadata".into()))?;
    let get = |name: &str| -> Result<Vec<f32>> {
        let t = store
            .get(name)
            .ok_or_else(|| bad(format!("no tensor {name}")))?;
        if t.numel() != n {
            return Err(bad(format!(
                "{name} holds {} values, this student has {n}",
                t.numel()
            )));
        }
        Ok(t.to_f32()?)
    };
    let state = TrainState {
        step,
        params: get("params")?,
        ema: get("ema")?,
        adam: AdamW {
            m: get("adam_m")?,
            v: get("adam_v")?,
        },
    };
    let run_path = dir.join("run.json");
    let run = std::fs::read_to_string(&run_path).map_err(|e| DistillError::io(&run_path, e))?;
    Ok((state, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize, v: f32) -> TrainState {
        TrainState {
            step,
            params: vec![v; 10],
            ema: vec![v + 1.0; 10],
            adam: AdamW {
                m: vec![v + 2.0; 10],
                v: vec![v + 3.0; 10],
            },
        }
    }

    #[test]
    fn latest_stays_inside_the_run_and_a_corrupt_newest_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkpoints");
        save(&root, state(10, 1.0).as_ref(), "{}", 3).unwrap();
        save(&root, state(20, 2.0).as_ref(), "{}", 3).unwrap();
        // Another run's checkpoint, named by an absolute path or a relative escape.
        let other = dir.path().join("other");
        save(&other, state(99, 9.0).as_ref(), "{}", 3).unwrap();
        for name in [
            other.join("step-00000099").display().to_string(),
            "../other/step-00000099".to_string(),
        ] {
            std::fs::write(root.join("latest"), &name).unwrap();
            assert!(
                latest(&root)
                    .unwrap()
                    .unwrap()
                    .ends_with("checkpoints/step-00000020")
            );
        }
        // The newest is corrupt: the previous one is loaded, and the skip is reported.
        std::fs::write(root.join("step-00000020/state.safetensors"), b"garbage").unwrap();
        let l = load_newest(&root, 10).unwrap().unwrap();
        assert_eq!(l.state.step, 10);
        assert_eq!(l.skipped.len(), 1);
        assert!(l.skipped[0].contains("step-00000020"), "{:?}", l.skipped);
        // Nothing intact: an error naming each.
        std::fs::write(root.join("step-00000010/state.safetensors"), b"garbage").unwrap();
        let e = load_newest(&root, 10).err().unwrap().to_string();
        assert!(
            e.contains("no intact checkpoint") && e.contains("step-00000010"),
            "{e}"
        );
    }

    #[test]
    fn save_load_latest_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkpoints");
        for s in [10, 20, 30] {
            save(&root, state(s, s as f32).as_ref(), "{\"a\":1}", 2).unwrap();
        }
        let l = latest(&root).unwrap().unwrap();
        assert!(l.ends_with("step-00000030"));
        let (st, run) = load(&l, 10).unwrap();
        assert_eq!(st, state(30, 30.0));
        assert_eq!(run, "{\"a\":1}");
        assert_eq!(list(&root).unwrap().len(), 2);
        assert!(matches!(load(&l, 11), Err(DistillError::Mismatch { .. })));
    }
}
