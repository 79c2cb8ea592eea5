//! Memory-mapped safetensors files, single or sharded (`model.safetensors.index.json`).
//!
//! Headers are parsed and validated by the `safetensors` crate (checked offsets, no
//! overlap, file length matches the header); data stays in the mapping until a backend
//! converts it into its own layout.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::error::{Result, RuntimeError};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the first data byte (8-byte length + JSON header).
    data_start: usize,
    meta: Metadata,
}

/// One tensor as stored on disk.
#[derive(Clone, Copy, Debug)]
pub struct StoredTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    /// Little-endian element bytes, exactly `numel * dtype size` long.
    pub bytes: &'a [u8],
    /// The file the tensor lives in.
    pub path: &'a Path,
}

impl StoredTensor<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The data of an I8 tensor.
    pub fn to_i8(&self) -> Result<Vec<i8>> {
        if self.dtype != Dtype::I8 {
            return Err(RuntimeError::UnsupportedDtype {
                path: self.path.to_path_buf(),
                tensor: self.name.to_string(),
                dtype: format!("{:?}", self.dtype),
                extra: " (expected I8 here)",
            });
        }
        Ok(self.bytes.iter().map(|&b| b as i8).collect())
    }

    /// Converts F32 / F16 / BF16 data to f32.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.numel()];
        self.read_f32_into(0, &mut out)?;
        Ok(out)
    }

    /// Converts `out.len()` elements starting at element `offset` to f32.
    pub fn read_f32_into(&self, offset: usize, out: &mut [f32]) -> Result<()> {
        let n = out.len();
        if offset.checked_add(n).is_none_or(|end| end > self.numel()) {
            return Err(corrupt(
                self.path,
                format!(
                    "reading {n} values at {offset} of tensor {:?}, which holds {} (shape {:?})",
                    self.name,
                    self.numel(),
                    self.shape
                ),
            ));
        }
        match self.dtype {
            Dtype::F32 => {
                for (o, b) in out
                    .iter_mut()
                    .zip(self.bytes[offset * 4..(offset + n) * 4].chunks_exact(4))
                {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Dtype::F16 => {
                for (o, b) in out
                    .iter_mut()
                    .zip(self.bytes[offset * 2..(offset + n) * 2].chunks_exact(2))
                {
                    *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            Dtype::BF16 => {
                for (o, b) in out
                    .iter_mut()
                    .zip(self.bytes[offset * 2..(offset + n) * 2].chunks_exact(2))
                {
                    *o = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            other => {
                return Err(RuntimeError::UnsupportedDtype {
                    path: self.path.to_path_buf(),
                    tensor: self.name.to_string(),
                    dtype: format!("{other:?}"),
                    extra: "",
                });
            }
        }
        Ok(())
    }
}

/// All tensors of a model directory, possibly spread over several files.
pub struct TensorStore {
    shards: Vec<Shard>,
    /// Tensor name -> shard index.
    index: HashMap<String, usize>,
    /// The file named in messages about the model as a whole (the index or the single file).
    main_path: PathBuf,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::CorruptWeights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl TensorStore {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        if index.is_file() {
            Self::open_index(&index)
        } else if single.is_file() {
            Self::open_files(&[single])
        } else {
            Err(RuntimeError::MissingWeights {
                dir: dir.to_path_buf(),
            })
        }
    }

    /// Opens the shards named by an HF `*.safetensors.index.json`.
    pub fn open_index(index_path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(index_path).map_err(|e| RuntimeError::io(index_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| corrupt(index_path, format!("index is not JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| corrupt(index_path, "index has no \"weight_map\" object"))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<String> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                corrupt(index_path, format!("weight_map[{name:?}] is not a string"))
            })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(corrupt(
                    index_path,
                    format!("weight_map[{name:?}] = {file:?} leaves the model directory"),
                ));
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        files.sort();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        for p in &paths {
            if !p.is_file() {
                return Err(corrupt(
                    index_path,
                    format!("shard {} listed in the index does not exist", p.display()),
                ));
            }
        }
        let mut store = Self::open_files(&paths)?;
        store.main_path = index_path.to_path_buf();
        // Every tensor of the index must be in the shard the index names, and no shard may
        // hold tensors the index does not list.
        for (name, file) in map {
            let file = file.as_str().unwrap_or_default();
            match store.index.get(name) {
                Some(&i)
                    if store.shards[i].path.file_name().and_then(|n| n.to_str()) == Some(file) => {}
                Some(&i) => {
                    return Err(corrupt(
                        index_path,
                        format!(
                            "tensor {name:?} is listed in {file} but stored in {}",
                            store.shards[i].path.display()
                        ),
                    ));
                }
                None => {
                    return Err(corrupt(
                        index_path,
                        format!("tensor {name:?} listed in the index is not in {file}"),
                    ));
                }
            }
        }
        if let Some(extra) = store.index.keys().find(|k| !map.contains_key(*k)) {
            return Err(corrupt(
                index_path,
                format!("tensor {extra:?} is stored in a shard but not listed in the index"),
            ));
        }
        Ok(store)
    }

    /// Opens one or more safetensors files as one store. A tensor name may appear only once.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            let file = File::open(path).map_err(|e| RuntimeError::io(path, e))?;
            let len = file
                .metadata()
                .map_err(|e| RuntimeError::io(path, e))?
                .len();
            if len < 8 {
                return Err(corrupt(
                    path,
                    format!("file is {len} bytes, too short for a safetensors header"),
                ));
            }
            // SAFETY: the mapping is read-only; a concurrent writer truncating the file is the
            // one hazard, as for every mmap-based loader.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| RuntimeError::io(path, e))?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&mmap).map_err(|e| corrupt(path, describe(&e, len)))?;
            let shard_idx = shards.len();
            for name in meta.offset_keys() {
                if let Some(&prev) = index.get(&name) {
                    let prev: &Shard = &shards[prev];
                    return Err(corrupt(
                        path,
                        format!("tensor {name:?} is also stored in {}", prev.path.display()),
                    ));
                }
                index.insert(name, shard_idx);
            }
            shards.push(Shard {
                path: path.clone(),
                mmap,
                data_start: 8 + header_len,
                meta,
            });
        }
        let main_path = paths.first().cloned().unwrap_or_default();
        Ok(TensorStore {
            shards,
            index,
            main_path,
        })
    }

    /// The file to name in messages about the store as a whole.
    pub fn main_path(&self) -> &Path {
        &self.main_path
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Looks a tensor up by its exact stored name.
    pub fn get(&self, name: &str) -> Option<StoredTensor<'_>> {
        let (key, &idx) = self.index.get_key_value(name)?;
        let shard = &self.shards[idx];
        let info = shard.meta.info(name)?;
        let (a, b) = info.data_offsets;
        Some(StoredTensor {
            name: key.as_str(),
            dtype: info.dtype,
            shape: &info.shape,
            bytes: &shard.mmap[shard.data_start + a..shard.data_start + b],
            path: &shard.path,
        })
    }

    /// User metadata (`__metadata__`) of the first file.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.shards.first().and_then(|s| s.meta.metadata().as_ref())
    }

    /// Total bytes of the weight files the store reads (not other files in the directory,
    /// such as a distilled student's `distill_heads.safetensors`).
    pub fn file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.mmap.len() as u64).sum()
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.mmap.len() - s.data_start)
            .sum()
    }

    /// Counts of stored dtypes, e.g. `{"F32": 211}`.
    pub fn dtype_counts(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for name in self.index.keys() {
            if let Some(t) = self.get(name) {
                *counts.entry(format!("{:?}", t.dtype)).or_default() += 1;
            }
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort();
        v
    }
}

fn describe(e: &safetensors::SafeTensorError, len: u64) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            format!("file is {len} bytes but its header describes a different size (truncated?)")
        }
        E::InvalidHeaderLength => {
            format!("header length exceeds the file size of {len} bytes (truncated?)")
        }
        other => other.to_string(),
    }
}

/// Writes tensors to a safetensors file atomically (temporary file, then rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Dtype, Vec<u8>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    use safetensors::tensor::TensorView;
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, dtype, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| RuntimeError::input(name.clone(), format!("cannot serialise: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes =
        safetensors::serialize(views, metadata).map_err(|e| corrupt(path, e.to_string()))?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// f32 tensors in the layout [`write_safetensors`] takes.
pub fn f32_entry(
    name: impl Into<String>,
    shape: Vec<usize>,
    data: &[f32],
) -> (String, Vec<usize>, Dtype, Vec<u8>) {
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for x in data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    (name.into(), shape, Dtype::F32, bytes)
}
