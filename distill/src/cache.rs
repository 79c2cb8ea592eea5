//! Cached teacher features (`dinoedge distill cache-teacher`): the teacher runs once over
//! K augmented views of every training image and its targets are stored as f16 in sharded
//! safetensors; training runs then read them instead of running the teacher.
//!
//! Layout of a cache directory:
//! - `index.json`: what the cache was made from ([`CacheKey`]) and its shards; written first
//!   with `complete: false`, rewritten with `true` at the end;
//! - `shard-NNNNN.safetensors`: for training images `[first, first + count)` and views
//!   `0..K`, row `(image - first) * K + view` of tensors `cls` (rows, Dt), `patches`
//!   (rows, G, Dt) and `inter.{k}` (rows, G, Dt), all f16.
//!
//! A shard is written atomically, so an interrupted `cache-teacher` resumes at the first
//! missing shard.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dinoedge_runtime::fsutil::write_atomic;
use dinoedge_runtime::weights::store::{TensorStore, write_safetensors};
use half::f16;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use crate::data::{AugConfig, Dataset};
use crate::error::{DistillError, Result};
use crate::loader::{Key, Loader, LoaderSpec};
use crate::loss::Targets;
use crate::teacher::{Alignment, OnlineTeacher, TeacherId, teacher_render};

pub const FORMAT: &str = "dinoedge-teacher-cache-1";

/// What a cache's content depends on; a run may use a cache only when these match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    pub teacher: TeacherId,
    pub align: Alignment,
    /// Teacher blocks whose patches are stored (final norm applied).
    pub layers: Vec<usize>,
    pub seed: u64,
    pub aug: AugConfig,
    pub holdout: f64,
    pub data_fingerprint: String,
    pub train_images: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheIndex {
    pub format: String,
    pub key: CacheKey,
    pub views: usize,
    pub dim: usize,
    pub images_per_shard: usize,
    pub shards: Vec<String>,
    pub complete: bool,
    /// Where the teacher computed when not on the f32 CPU path ("cuda bf16"); runs trained
    /// from the cache record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_compute: Option<String>,
}

/// Lists the fields of two keys that differ, as "name: cache X, this run Y".
pub fn key_differences(cache: &CacheKey, run: &CacheKey) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(cache).unwrap_or_default(),
        serde_json::to_value(run).unwrap_or_default(),
    );
    crate::error::json_differences(&a, &b, "cache", "this run")
}

/// Progress of [`build`], reported per shard.
pub struct CacheProgress {
    pub done_images: usize,
    pub total_images: usize,
    pub shard: usize,
    pub reused: bool,
}

/// Options of [`build`].
pub struct BuildOptions {
    pub views: usize,
    pub images_per_shard: usize,
    /// Images per teacher forward.
    pub batch: usize,
    pub workers: usize,
}

/// Runs `teacher` over `views` augmented views of every training image of `data` and
/// writes the cache to `dir`. Existing complete shards of the same key are kept.
pub fn build(
    dir: &Path,
    teacher: &mut OnlineTeacher,
    data: &Dataset,
    key: CacheKey,
    opts: &BuildOptions,
    mut progress: impl FnMut(&CacheProgress, &[(PathBuf, String)]),
) -> Result<CacheIndex> {
    std::fs::create_dir_all(dir).map_err(|e| DistillError::io(dir, e))?;
    let (views, per) = (opts.views.max(1), opts.images_per_shard.max(1));
    let n = data.train.len();
    let shards: Vec<String> = (0..n.div_ceil(per)).map(shard_name).collect();
    let mut index = CacheIndex {
        format: FORMAT.into(),
        key,
        views,
        dim: teacher.dim(),
        images_per_shard: per,
        shards: shards.clone(),
        complete: false,
        teacher_compute: teacher.compute(),
    };
    // Shards of an earlier, interrupted build are reusable only under the same key (and
    // the same teacher backend and precision).
    let reusable = match read_index(dir) {
        Ok(old) => {
            old.key == index.key
                && old.views == views
                && old.images_per_shard == per
                && old.teacher_compute == index.teacher_compute
        }
        Err(_) => false,
    };
    if !reusable {
        for s in &shards {
            let _ = std::fs::remove_file(dir.join(s));
        }
    }
    write_index(dir, &index)?;
    let render = teacher_render(&teacher.model, &teacher.align)?;
    let images: Vec<(PathBuf, u32, u32)> = data
        .train
        .iter()
        .map(|e| (data.path(e), e.width, e.height))
        .collect();
    let todo: Vec<usize> = (0..shards.len())
        .filter(|&s| !dir.join(&shards[s]).is_file())
        .collect();
    for s in (0..shards.len()).filter(|s| !todo.contains(s)) {
        progress(
            &CacheProgress {
                done_images: ((s + 1) * per).min(n),
                total_images: n,
                shard: s,
                reused: true,
            },
            &[],
        );
    }
    // One loader step = one teacher batch of (image, view) rows, over the missing shards.
    let rows: Vec<Key> = todo
        .iter()
        .flat_map(|&s| {
            (s * per..((s + 1) * per).min(n)).flat_map(move |i| {
                (0..views).map(move |v| Key {
                    image: i,
                    view: v as u64,
                    center: false,
                })
            })
        })
        .collect();
    let b = opts.batch.max(1);
    let steps = rows.len().div_ceil(b);
    let rows_for_loader = rows.clone();
    let loader = Loader::start(LoaderSpec {
        images,
        aug: index.key.aug,
        seed: index.key.seed,
        renders: vec![render],
        keys: Box::new(move |step| {
            rows_for_loader[step * b..((step + 1) * b).min(rows_for_loader.len())].to_vec()
        }),
        first_step: 0,
        end_step: steps,
        workers: opts.workers,
        prefetch: 4,
    })?;
    let mut pending: Vec<Targets> = Vec::new();
    let mut pending_rows = 0usize;
    let mut next_row = 0usize;
    for &s in &todo {
        let count = ((s + 1) * per).min(n) - s * per;
        let need = count * views;
        while pending_rows < need {
            let batch = loader.next()?;
            let nb = batch.keys.len();
            // A replaced (unreadable) image would store another image's features under
            // this image's rows; refuse rather than cache something wrong.
            if batch
                .keys
                .iter()
                .zip(&rows[next_row..next_row + nb])
                .any(|(a, b)| a.image != b.image)
            {
                let bad = batch
                    .failed
                    .iter()
                    .map(|(p, e)| format!("{}: {e}", p.display()))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(DistillError::Config(format!(
                    "cannot cache features of an unreadable training image ({bad}); remove it from the data folder"
                )));
            }
            next_row += nb;
            pending.push(teacher.targets(&batch.pixels[0], nb)?);
            pending_rows += nb;
        }
        let all = concat_targets(&pending);
        let gd = index.key.align.grid * index.key.align.grid * index.dim;
        let (shard, rest) = split_targets(&all, need, index.dim, gd);
        write_shard(&dir.join(&shards[s]), &shard, index.dim)?;
        pending = vec![rest];
        pending_rows -= need;
        progress(
            &CacheProgress {
                done_images: ((s + 1) * per).min(n),
                total_images: n,
                shard: s,
                reused: false,
            },
            &[],
        );
    }
    index.complete = true;
    write_index(dir, &index)?;
    Ok(index)
}

fn concat_targets(parts: &[Targets]) -> Targets {
    let mut t = Targets {
        inter: vec![Vec::new(); parts.first().map_or(0, |p| p.inter.len())],
        ..Default::default()
    };
    for p in parts {
        t.cls.extend_from_slice(&p.cls);
        t.patches.extend_from_slice(&p.patches);
        for (a, b) in t.inter.iter_mut().zip(&p.inter) {
            a.extend_from_slice(b);
        }
    }
    t
}

/// The first `rows` rows (of `dim` CLS values and `gd` patch values each), and the rest.
fn split_targets(t: &Targets, rows: usize, dim: usize, gd: usize) -> (Targets, Targets) {
    let split =
        |v: &Vec<f32>, per_row: usize| (v[..rows * per_row].to_vec(), v[rows * per_row..].to_vec());
    let (c0, c1) = split(&t.cls, dim);
    let (p0, p1) = split(&t.patches, gd);
    let (mut i0, mut i1) = (Vec::new(), Vec::new());
    for v in &t.inter {
        let (a, b) = split(v, gd);
        i0.push(a);
        i1.push(b);
    }
    (
        Targets {
            cls: c0,
            patches: p0,
            inter: i0,
        },
        Targets {
            cls: c1,
            patches: p1,
            inter: i1,
        },
    )
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect()
}

fn write_shard(path: &Path, t: &Targets, dim: usize) -> Result<()> {
    let rows = t.cls.len() / dim;
    let g = t.patches.len() / (rows * dim);
    let mut tensors = vec![
        (
            "cls".to_string(),
            vec![rows, dim],
            Dtype::F16,
            f16_bytes(&t.cls),
        ),
        (
            "patches".to_string(),
            vec![rows, g, dim],
            Dtype::F16,
            f16_bytes(&t.patches),
        ),
    ];
    for (k, v) in t.inter.iter().enumerate() {
        tensors.push((
            format!("inter.{k}"),
            vec![rows, g, dim],
            Dtype::F16,
            f16_bytes(v),
        ));
    }
    Ok(write_safetensors(
        path,
        &tensors,
        Some(HashMap::from([("format".to_string(), FORMAT.to_string())])),
    )?)
}

fn write_index(dir: &Path, index: &CacheIndex) -> Result<()> {
    let text =
        serde_json::to_string_pretty(index).map_err(|e| DistillError::Config(e.to_string()))?;
    Ok(write_atomic(&dir.join("index.json"), text.as_bytes())?)
}

pub fn read_index(dir: &Path) -> Result<CacheIndex> {
    let path = dir.join("index.json");
    let text = std::fs::read_to_string(&path).map_err(|e| DistillError::io(&path, e))?;
    let index: CacheIndex = serde_json::from_str(&text).map_err(|e| DistillError::Mismatch {
        path: path.clone(),
        reason: format!("not a dinoedge teacher cache index: {e}"),
    })?;
    if index.format != FORMAT {
        return Err(DistillError::Mismatch {
            path,
            reason: format!(
                "cache format {:?}, this build reads {FORMAT:?}",
                index.format
            ),
        });
    }
    index.check().map_err(|reason| DistillError::Mismatch {
        path: path.clone(),
        reason: format!("invalid cache index: {reason}"),
    })?;
    Ok(index)
}

/// Bounds on index fields: far above any real cache, they keep a corrupt or hostile index
/// from sizing buffers or dividing by zero.
const MAX_VIEWS: usize = 4096;
const MAX_DIM: usize = 65536;
const MAX_GRID: usize = 4096;

/// The name of shard `s`: the only names a cache holds, so an index cannot point outside
/// its directory.
fn shard_name(s: usize) -> String {
    format!("shard-{s:05}.safetensors")
}

impl CacheIndex {
    /// Checks the fields every reader relies on: positive, bounded sizes, and exactly the
    /// shards `train_images` needs, under their own names.
    fn check(&self) -> std::result::Result<(), String> {
        let positive = [
            ("views", self.views, MAX_VIEWS),
            ("dim", self.dim, MAX_DIM),
            ("images_per_shard", self.images_per_shard, usize::MAX),
            ("key.align.grid", self.key.align.grid, MAX_GRID),
        ];
        for (name, v, max) in positive {
            if v == 0 || v > max {
                return Err(format!("{name} = {v} (expected 1..={max})"));
            }
        }
        let want = self.key.train_images.div_ceil(self.images_per_shard);
        if self.shards.len() != want {
            return Err(format!(
                "{} shards listed, {} training images at {} per shard need {want}",
                self.shards.len(),
                self.key.train_images,
                self.images_per_shard
            ));
        }
        if let Some((s, name)) = self
            .shards
            .iter()
            .enumerate()
            .find(|(s, n)| **n != shard_name(*s))
        {
            return Err(format!(
                "shard {s} is named {name:?}, expected {:?}",
                shard_name(s)
            ));
        }
        Ok(())
    }

    /// Rows of shard `s`: its images times the views.
    fn shard_rows(&self, s: usize) -> usize {
        let n = self.key.train_images;
        let first = s * self.images_per_shard;
        (n.min(first + self.images_per_shard) - first) * self.views
    }
}

/// A complete cache, opened for reading (memory-mapped shards).
pub struct CachedTeacher {
    pub index: CacheIndex,
    dir: PathBuf,
    shards: Vec<TensorStore>,
}

/// A shard's tensors must have the shapes its index promises (F16 `cls (rows, dim)`,
/// `patches` and `inter.k` `(rows, grid^2, dim)`), so every later read stays in range.
fn check_shard(
    store: &TensorStore,
    index: &CacheIndex,
    s: usize,
) -> std::result::Result<(), String> {
    let rows = index.shard_rows(s);
    let g = index.key.align.grid * index.key.align.grid;
    let mut want = vec![
        ("cls".to_string(), vec![rows, index.dim]),
        ("patches".to_string(), vec![rows, g, index.dim]),
    ];
    for k in 0..index.key.layers.len() {
        want.push((format!("inter.{k}"), vec![rows, g, index.dim]));
    }
    for (name, shape) in want {
        let t = store
            .get(&name)
            .ok_or_else(|| format!("no tensor {name}"))?;
        if t.dtype != Dtype::F16 || t.shape != shape.as_slice() {
            return Err(format!(
                "tensor {name} is {:?} {:?}, the index needs F16 {shape:?}",
                t.dtype, t.shape
            ));
        }
    }
    Ok(())
}

impl CachedTeacher {
    /// Opens `dir` for a run whose key is `expected`; the run's teacher layers must be
    /// stored in the cache.
    pub fn open(dir: &Path, expected: &CacheKey) -> Result<Self> {
        let index = read_index(dir)?;
        let path = dir.join("index.json");
        if !index.complete {
            return Err(DistillError::Mismatch { path, reason: "the cache is incomplete (cache-teacher was interrupted); run cache-teacher again to finish it".into() });
        }
        let mut want = expected.clone();
        want.layers = index.key.layers.clone();
        let diff = key_differences(&index.key, &want);
        if !diff.is_empty() {
            // Another grid at the same size: a student of another stride (ConvNeXt: 32).
            let (have, need) = (&index.key.align, &want.align);
            let stride = if have.grid != need.grid && have.student_size == need.student_size {
                " with the student's --student (its stride sets the grid)"
            } else {
                ""
            };
            return Err(DistillError::Mismatch {
                path,
                reason: format!(
                    "the cache was made for another setup ({}); rebuild it with cache-teacher{stride}",
                    diff.join("; ")
                ),
            });
        }
        if let Some(l) = expected
            .layers
            .iter()
            .find(|l| !index.key.layers.contains(l))
        {
            return Err(DistillError::Mismatch {
                path,
                reason: format!(
                    "teacher layer {l} is not cached (cached: {:?})",
                    index.key.layers
                ),
            });
        }
        let shards = index
            .shards
            .iter()
            .enumerate()
            .map(|(s, name)| {
                let store = TensorStore::open_files(&[dir.join(name)])?;
                check_shard(&store, &index, s).map_err(|reason| DistillError::Mismatch {
                    path: dir.join(name),
                    reason,
                })?;
                Ok(store)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CachedTeacher {
            index,
            dir: dir.to_path_buf(),
            shards,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Targets for training images `keys[i].image`, view `keys[i].view % K`; `layers` picks
    /// which cached teacher blocks to return, in order.
    pub fn targets(&self, keys: &[Key], layers: &[usize]) -> Result<Targets> {
        let (per, k) = (self.index.images_per_shard, self.index.views);
        let mut t = Targets {
            inter: vec![Vec::new(); layers.len()],
            ..Default::default()
        };
        for key in keys {
            let (s, row) = (
                key.image / per,
                (key.image % per) * k + (key.view % k as u64) as usize,
            );
            let store = self.shards.get(s).ok_or_else(|| DistillError::Mismatch {
                path: self.dir.join("index.json"),
                reason: format!(
                    "training image {} is beyond the {} cached images",
                    key.image, self.index.key.train_images
                ),
            })?;
            let read = |name: &str, out: &mut Vec<f32>| -> Result<()> {
                let tensor = store.get(name).ok_or_else(|| DistillError::Mismatch {
                    path: self.dir.join(&self.index.shards[s]),
                    reason: format!("no tensor {name}"),
                })?;
                let per_row: usize = tensor.shape[1..].iter().product();
                let start = out.len();
                out.resize(start + per_row, 0.0);
                tensor.read_f32_into(row * per_row, &mut out[start..])?;
                Ok(())
            };
            read("cls", &mut t.cls)?;
            read("patches", &mut t.patches)?;
            for (j, l) in layers.iter().enumerate() {
                let pos = self
                    .index
                    .key
                    .layers
                    .iter()
                    .position(|x| x == l)
                    .expect("checked at open");
                read(&format!("inter.{pos}"), &mut t.inter[j])?;
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid index of `n` images at `per` per shard, 2 views, dim 8, grid 2.
    fn index(n: usize, per: usize) -> CacheIndex {
        let key: CacheKey = serde_json::from_value(serde_json::json!({
            "teacher": {"model_type": "dinov2", "hidden_size": 8, "num_layers": 1, "patch_size": 4, "fingerprint": "x"},
            "align": {"student_size": 8, "teacher_size": 8, "grid": 2, "teacher_grid": 2},
            "layers": [], "seed": 0, "aug": AugConfig::default(), "holdout": 0.05,
            "data_fingerprint": "d", "train_images": n
        }))
        .unwrap();
        CacheIndex {
            format: FORMAT.into(),
            key,
            views: 2,
            dim: 8,
            images_per_shard: per,
            shards: (0..n.div_ceil(per)).map(shard_name).collect(),
            complete: true,
            teacher_compute: None,
        }
    }

    fn write(dir: &Path, idx: &CacheIndex) {
        std::fs::write(dir.join("index.json"), serde_json::to_string(idx).unwrap()).unwrap();
    }

    #[test]
    fn hostile_indexes_are_refused_when_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, &index(3, 2));
        assert!(read_index(d).is_ok());
        let cases: Vec<(CacheIndex, &str)> = vec![
            (
                CacheIndex {
                    images_per_shard: 0,
                    ..index(3, 2)
                },
                "images_per_shard",
            ),
            (
                CacheIndex {
                    views: 0,
                    ..index(3, 2)
                },
                "views",
            ),
            (
                CacheIndex {
                    shards: vec![shard_name(0)],
                    ..index(3, 2)
                },
                "shards listed",
            ),
            (
                CacheIndex {
                    shards: vec!["../../../../etc/passwd".into(), shard_name(1)],
                    ..index(3, 2)
                },
                "etc/passwd",
            ),
        ];
        for (idx, expect) in cases {
            write(d, &idx);
            let e = read_index(d).unwrap_err().to_string();
            assert!(
                e.contains("index.json") && e.contains(expect),
                "{expect}: {e}"
            );
        }
    }

    #[test]
    fn a_shard_smaller_than_its_index_says_is_refused_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        // The index claims 4 images per shard (8 rows); the shard holds 2 images (4 rows).
        let idx = index(4, 4);
        write(d, &idx);
        let t = Targets {
            cls: vec![0.0; 4 * 8],
            patches: vec![0.0; 4 * 4 * 8],
            inter: vec![],
        };
        write_shard(&d.join(shard_name(0)), &t, 8).unwrap();
        let e = CachedTeacher::open(d, &idx.key).err().unwrap().to_string();
        assert!(e.contains("shard-00000") && e.contains("[8, 8]"), "{e}");
        // The right size opens, and out-of-range images are errors, not panics.
        let t = Targets {
            cls: vec![0.0; 8 * 8],
            patches: vec![0.0; 8 * 4 * 8],
            inter: vec![],
        };
        write_shard(&d.join(shard_name(0)), &t, 8).unwrap();
        let c = CachedTeacher::open(d, &idx.key).unwrap();
        let key = |image| Key {
            image,
            view: 1,
            center: false,
        };
        assert_eq!(c.targets(&[key(3)], &[]).unwrap().cls.len(), 8);
        assert!(c.targets(&[key(4)], &[]).is_err());
    }
}
