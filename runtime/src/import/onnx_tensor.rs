//! An ONNX tensor's values: raw little-endian bytes, the typed fields, or external data
//! beside the model, each checked against the declared shape before anything is allocated.

use std::borrow::Cow;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use super::onnx::err;
use super::onnx_pb::{EXTERNAL, TensorProto};
use crate::error::Result;

/// Largest tensor the importer reads (elements): far above any released model's largest
/// weight (ViT-7B's MLP, 33.5 M), far below what a hostile shape could ask for.
const MAX_TENSOR_ELEMENTS: u64 = 1 << 31;

/// Bytes per element of the ONNX types the importer reads: FLOAT, INT32, INT64, FLOAT16,
/// DOUBLE, BFLOAT16.
fn element_size(data_type: i32) -> Option<u64> {
    match data_type {
        1 | 6 => Some(4),
        7 | 11 => Some(8),
        10 | 16 => Some(2),
        _ => None,
    }
}

/// A tensor's shape, element count and element size, checked: a supported type,
/// non-negative dims, a bounded element count, and stored data of exactly that size.
fn check(path: &Path, t: &TensorProto) -> Result<(Vec<usize>, u64, u64)> {
    let bad = |why: String| err(path, format!("tensor {:?}: {why}", t.name));
    let size = element_size(t.data_type).ok_or_else(|| {
        bad(format!(
            "ONNX data type {} is not a float or int type",
            t.data_type
        ))
    })?;
    // The product of the non-zero dims is bounded too: a zero dim must not let the others
    // grow past what any product of them (a row length, say) can hold.
    let extent = t.dims.iter().try_fold(1u64, |n, &d| {
        u64::try_from(d).ok().and_then(|d| n.checked_mul(d.max(1)))
    });
    let numel = match extent {
        Some(n) if n <= MAX_TENSOR_ELEMENTS => t.dims.iter().map(|&d| d as u64).product(),
        _ => {
            return Err(bad(format!(
                "shape {:?} is negative or holds more than {MAX_TENSOR_ELEMENTS} elements",
                t.dims
            )));
        }
    };
    let external = t.data_location == Some(EXTERNAL);
    let stored = if !t.raw_data.is_empty() {
        Some(t.raw_data.len() as u64)
    } else if external {
        None // checked against the external file when it is read
    } else {
        let typed = match t.data_type {
            1 => t.float_data.len(),
            6 | 10 | 16 => t.int32_data.len(),
            7 => t.int64_data.len(),
            _ => t.double_data.len(),
        };
        Some(typed as u64 * size)
    };
    if let Some(bytes) = stored
        && bytes != numel * size
    {
        return Err(bad(format!(
            "shape {:?} needs {} bytes of data, the file holds {bytes}",
            t.dims,
            numel * size
        )));
    }
    if external
        && let Some(kv) = t.external_data.iter().find(|kv| kv.key == "length")
        && kv.value.parse::<u64>().ok() != Some(numel * size)
    {
        return Err(bad(format!(
            "external data length {:?} does not match shape {:?} ({} bytes)",
            kv.value,
            t.dims,
            numel * size
        )));
    }
    // Every dim, and every product of dims, is at most MAX_TENSOR_ELEMENTS here.
    Ok((t.dims.iter().map(|&d| d as usize).collect(), numel, size))
}

/// `bytes` bytes of external data: `location` relative to the model's folder (as every ONNX
/// runtime resolves it, and never outside it), from `offset`, within the file.
fn external(path: &Path, t: &TensorProto, bytes: u64) -> Result<Vec<u8>> {
    let bad = |why: String| err(path, format!("tensor {:?}: {why}", t.name));
    let entry = |key: &str| t.external_data.iter().find(|kv| kv.key == key);
    let location = entry("location")
        .map(|kv| kv.value.as_str())
        .ok_or_else(|| bad("external data without a location".into()))?;
    let rel = Path::new(location);
    if !rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(format!(
            "external data location {location:?} is not a path inside the model's folder"
        )));
    }
    let offset = match entry("offset") {
        Some(kv) => kv.value.parse::<u64>().map_err(|_| {
            bad(format!(
                "external data offset {:?} is not a number",
                kv.value
            ))
        })?,
        None => 0,
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let file_path = dir.join(rel);
    let io = |e: std::io::Error| bad(format!("external data {}: {e}", file_path.display()));
    // A link inside the folder must not lead out of it, and a FIFO or device would block or
    // never end.
    let real = file_path.canonicalize().map_err(io)?;
    if !real.starts_with(dir.canonicalize().map_err(io)?) {
        return Err(bad(format!(
            "external data {location:?} resolves to {}, outside the model's folder",
            real.display()
        )));
    }
    let meta = std::fs::metadata(&real).map_err(io)?;
    if !meta.is_file() {
        return Err(bad(format!(
            "external data {location:?} is not a regular file"
        )));
    }
    let len = meta.len();
    let mut file = std::fs::File::open(&real).map_err(io)?;
    if offset.checked_add(bytes).is_none_or(|end| end > len) {
        return Err(bad(format!(
            "external data {location:?} holds {len} bytes, the tensor needs {bytes} from offset {offset}"
        )));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    // Bounded by the file's length, checked above.
    let mut data = vec![0u8; bytes as usize];
    file.read_exact(&mut data).map_err(io)?;
    Ok(data)
}

/// Decodes every element of `t`, floats through `float` and integers through `int`.
fn values<T>(
    path: &Path,
    t: &TensorProto,
    float: impl Fn(f64) -> T,
    int: impl Fn(i64) -> T,
) -> Result<(Vec<usize>, Vec<T>)> {
    let (shape, numel, size) = check(path, t)?;
    let raw: Option<Cow<[u8]>> = if !t.raw_data.is_empty() {
        Some(Cow::Borrowed(&t.raw_data))
    } else if t.data_location == Some(EXTERNAL) {
        Some(Cow::Owned(external(path, t, numel * size)?))
    } else {
        None
    };
    let v = match raw {
        Some(b) => decode_le(&b, t.data_type, float, int),
        None => match t.data_type {
            1 => t.float_data.iter().map(|&v| float(v.into())).collect(),
            6 => t.int32_data.iter().map(|&v| int(v.into())).collect(),
            10 => t
                .int32_data
                .iter()
                .map(|&v| float(f16_bits(v as u16)))
                .collect(),
            16 => t
                .int32_data
                .iter()
                .map(|&v| float(bf16_bits(v as u16)))
                .collect(),
            7 => t.int64_data.iter().map(|&v| int(v)).collect(),
            _ => t.double_data.iter().map(|&v| float(v)).collect(),
        },
    };
    Ok((shape, v))
}

fn f16_bits(b: u16) -> f64 {
    half::f16::from_bits(b).to_f64()
}

fn bf16_bits(b: u16) -> f64 {
    half::bf16::from_bits(b).to_f64()
}

/// Little-endian elements of `data_type` (sizes checked by `check`).
fn decode_le<T>(
    b: &[u8],
    data_type: i32,
    float: impl Fn(f64) -> T,
    int: impl Fn(i64) -> T,
) -> Vec<T> {
    fn le<const N: usize>(c: &[u8]) -> [u8; N] {
        let mut a = [0; N];
        a.copy_from_slice(c);
        a
    }
    match data_type {
        1 => b
            .chunks_exact(4)
            .map(|c| float(f32::from_le_bytes(le(c)).into()))
            .collect(),
        6 => b
            .chunks_exact(4)
            .map(|c| int(i32::from_le_bytes(le(c)).into()))
            .collect(),
        7 => b
            .chunks_exact(8)
            .map(|c| int(i64::from_le_bytes(le(c))))
            .collect(),
        10 => b
            .chunks_exact(2)
            .map(|c| float(f16_bits(u16::from_le_bytes(le(c)))))
            .collect(),
        16 => b
            .chunks_exact(2)
            .map(|c| float(bf16_bits(u16::from_le_bytes(le(c)))))
            .collect(),
        _ => b
            .chunks_exact(8)
            .map(|c| float(f64::from_le_bytes(le(c))))
            .collect(),
    }
}

/// The tensor as f32 (integers and doubles converted as `as` does), with its shape.
pub(super) fn f32s(path: &Path, t: &TensorProto) -> Result<(Vec<usize>, Vec<f32>)> {
    values(path, t, |v| v as f32, |v| v as f32)
}

/// The tensor as i64 (floats truncated as `as` does).
pub(super) fn i64s(path: &Path, t: &TensorProto) -> Result<Vec<i64>> {
    Ok(values(path, t, |v| v as i64, |v| v)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::onnx_pb::StringStringEntryProto;

    fn tensor(data_type: i32, dims: &[i64]) -> TensorProto {
        TensorProto {
            name: "t".into(),
            data_type,
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn every_type_decodes_from_raw_and_typed_fields() {
        let p = Path::new("m.onnx");
        let mut t = tensor(1, &[2]);
        t.raw_data = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(f32s(p, &t).unwrap(), (vec![2], vec![1.5, -2.0]));
        let mut t = tensor(10, &[2]);
        t.int32_data = vec![0x3e00, 0xc000]; // f16 1.5, -2
        assert_eq!(f32s(p, &t).unwrap().1, [1.5, -2.0]);
        let mut t = tensor(16, &[1]);
        t.raw_data = 0x3fc0u16.to_le_bytes().to_vec(); // bf16 1.5
        assert_eq!(f32s(p, &t).unwrap().1, [1.5]);
        let mut t = tensor(7, &[3]);
        t.int64_data = vec![1, -1, 1 << 40];
        assert_eq!(i64s(p, &t).unwrap(), [1, -1, 1 << 40]);
        let mut t = tensor(11, &[1, 1]);
        t.double_data = vec![0.25];
        assert_eq!(f32s(p, &t).unwrap(), (vec![1, 1], vec![0.25]));
        let mut t = tensor(6, &[]);
        t.raw_data = (-7i32).to_le_bytes().to_vec();
        assert_eq!(i64s(p, &t).unwrap(), [-7]);
    }

    #[test]
    fn shapes_types_and_sizes_are_checked_before_reading() {
        let p = Path::new("m.onnx");
        let mut t = tensor(1, &[3]);
        t.float_data = vec![1.0, 2.0];
        let e = f32s(p, &t).unwrap_err().to_string();
        assert!(e.contains("m.onnx") && e.contains("12 bytes"), "{e}");
        let e = f32s(p, &tensor(8, &[1])).unwrap_err().to_string();
        assert!(e.contains("data type 8"), "{e}");
        let e = f32s(p, &tensor(1, &[-1])).unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
        for dims in [&[1 << 20, 1 << 20][..], &[0, 1 << 40, 1 << 40]] {
            let e = f32s(p, &tensor(1, dims)).unwrap_err().to_string();
            assert!(e.contains("more than"), "{dims:?}: {e}");
        }
    }

    #[test]
    fn external_data_stays_in_the_model_folder_and_inside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        let data: Vec<u8> = [9.0f32, 1.0, 2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(dir.path().join("w.bin"), &data).unwrap();
        let ext = |kv: &[(&str, &str)]| {
            let mut t = tensor(1, &[2]);
            t.data_location = Some(EXTERNAL);
            t.external_data = kv
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect();
            t
        };
        let t = ext(&[("location", "w.bin"), ("offset", "4"), ("length", "8")]);
        assert_eq!(f32s(&p, &t).unwrap().1, [1.0, 2.0]);
        let t = ext(&[("location", "w.bin"), ("offset", "8")]);
        let e = f32s(&p, &t).unwrap_err().to_string();
        assert!(e.contains("holds 12 bytes"), "{e}");
        for escape in ["../w.bin", "/etc/passwd"] {
            let e = f32s(&p, &ext(&[("location", escape)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("inside the model's folder"), "{e}");
        }
        #[cfg(unix)]
        {
            let outside = tempfile::tempdir().unwrap();
            std::fs::write(outside.path().join("x.bin"), &data).unwrap();
            std::os::unix::fs::symlink(outside.path().join("x.bin"), dir.path().join("l.bin"))
                .unwrap();
            let e = f32s(&p, &ext(&[("location", "l.bin")]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("outside the model's folder"), "{e}");
            std::fs::create_dir(dir.path().join("sub")).unwrap();
            let e = f32s(&p, &ext(&[("location", "sub")]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let e = f32s(&p, &ext(&[("offset", "0")])).unwrap_err().to_string();
        assert!(e.contains("without a location"), "{e}");
        let e = f32s(&p, &ext(&[("location", "nope.bin")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.bin"), "{e}");
    }
}
