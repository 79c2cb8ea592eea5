//! One entry point per parser that reads what a user (or a network peer) hands us. Each takes
//! arbitrary bytes and must return (an error is fine) without panicking, aborting, or using
//! more than the stated limits. `fuzz_targets/*.rs` hand them to libFuzzer
//! (`scripts/fuzz.sh`); `tests/replay.rs` runs every file of `corpus/<target>/` through them in
//! the normal test suite.
//!
//! File-based parsers get the bytes as a file in a scratch directory, because their real
//! entry points take paths (memory maps, directory layouts).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use dinoedge::runtime::config::ModelConfig;
use dinoedge::runtime::{InputLimits, Model, Preprocessor};

/// Inputs up to 0.26 MP: the parsers are what is fuzzed, not the decoders' speed.
const LIMITS: InputLimits = InputLimits {
    max_pixels: 1 << 18,
    max_tokens: 4096,
};

thread_local! {
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// A scratch directory private to this thread, emptied before each input.
fn scratch() -> PathBuf {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let dir = s.get_or_insert_with(|| tempfile::tempdir().expect("a scratch directory"));
        let path = dir.path().to_path_buf();
        if let Ok(rd) = std::fs::read_dir(&path) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        path
    })
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("scratch write");
    p
}

/// Splits an input at the first `\0\0\0\0`: several files from one input.
fn parts(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(4).position(|w| w == [0, 0, 0, 0]) {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => (data, &[]),
    }
}

/// `config.json`, then (after `\0\0\0\0`) `preprocessor_config.json`: parsing, validation,
/// and the preprocessing recipe built from both.
pub fn config(data: &[u8]) {
    let (cfg, pre) = parts(data);
    let Ok(text) = std::str::from_utf8(cfg) else {
        return;
    };
    let Ok(c) = ModelConfig::from_json_str(text, Path::new("config.json")) else {
        return;
    };
    // Everything sized from a valid config must be computable.
    let _ = c.num_parameters();
    if let Some(v) = c.as_vit() {
        let _ = dinoedge::runtime::models::vit::layout::params(v).len();
    }
    let dir = scratch();
    write(&dir, "preprocessor_config.json", pre);
    if let Ok(p) = Preprocessor::dense(&c, Some(&dir), 224) {
        let _ = p.output_size(480, 640);
    }
}

/// `model.safetensors` against a small config (header parsing, the weight layout, dtype and
/// shape checks, int8 scales), then `config.json` from the input's second part if any.
pub fn safetensors(data: &[u8]) {
    let (weights, cfg) = parts(data);
    let dir = scratch();
    write(&dir, "model.safetensors", weights);
    let cfg = if cfg.is_empty() {
        br#"{"model_type":"dinov2","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"patch_size":4,"image_size":8}"#
    } else {
        cfg
    };
    write(&dir, "config.json", cfg);
    if let Ok(m) = Model::load(&dir)
        && let Some(v) = m.config().as_vit()
    {
        for p in dinoedge::runtime::models::vit::layout::params(v) {
            let _ = m.tensor_f32(p);
            let _ = m.int8(p);
        }
    }
}

/// An ONNX file through the importer (with a sibling external-data file from the second part).
pub fn onnx(data: &[u8]) {
    let (model, external) = parts(data);
    let dir = scratch();
    let path = write(&dir, "model.onnx", model);
    write(&dir, "model.onnx.data", external);
    if let Ok(imp) = dinoedge::runtime::import::import_onnx(&path) {
        let out = dir.join("out");
        let _ = std::fs::create_dir(&out);
        let _ = dinoedge::runtime::import::write_model_dir(&imp, &out, &path);
    }
}

/// A Y4M stream: the header and up to 3 frames.
pub fn y4m(data: &[u8]) {
    use dinoedge::frames::{FrameSource, Y4mSource};
    if let Ok(mut s) =
        Y4mSource::from_reader(std::io::Cursor::new(data), "fuzz.y4m".into(), &LIMITS)
    {
        for _ in 0..3 {
            if !matches!(s.next_frame(), Ok(Some(_))) {
                break;
            }
        }
    }
}

/// A mask PNG.
pub fn mask(data: &[u8]) {
    let dir = scratch();
    let p = write(&dir, "mask.png", data);
    if let Ok(m) = dinoedge::davis::read_mask_limited(&p, &LIMITS) {
        let _ = m.objects();
    }
    // The same bytes as an image.
    let _ = dinoedge::image_io::load_rgb_limited(&p, &LIMITS);
}

/// A teacher cache: `index.json`, then (after `\0\0\0\0`) its first shard; the index's own key
/// opens it, and every row of the first images is read.
pub fn cache_index(data: &[u8]) {
    use dinoedge_distill::cache::{CachedTeacher, read_index};
    use dinoedge_distill::loader::Key;
    let (index, shard) = parts(data);
    let dir = scratch();
    write(&dir, "index.json", index);
    write(&dir, "shard-00000.safetensors", shard);
    let Ok(idx) = read_index(&dir) else {
        return;
    };
    if let Ok(c) = CachedTeacher::open(&dir, &idx.key) {
        let keys: Vec<Key> = (0..idx.key.train_images.min(4))
            .flat_map(|image| {
                (0..3).map(move |view| Key {
                    image,
                    view,
                    center: false,
                })
            })
            .collect();
        let _ = c.targets(&keys, &idx.key.layers);
    }
}

/// A checkpoint: `state.safetensors`, then `run.json`, then the run's `latest` file.
pub fn checkpoint(data: &[u8]) {
    use dinoedge_distill::checkpoint::{latest, load_newest};
    let (state, rest) = parts(data);
    let (run, latest_name) = parts(rest);
    let root = scratch().join("checkpoints");
    let ck = root.join("step-00000010");
    std::fs::create_dir_all(&ck).expect("scratch dir");
    write(&ck, "state.safetensors", state);
    write(&ck, "run.json", run);
    write(&root, "latest", latest_name);
    if let Ok(Some(l)) = latest(&root) {
        // `latest` must never leave the run.
        assert!(
            l.starts_with(&root),
            "latest escaped the run: {}",
            l.display()
        );
    }
    let _ = load_newest(&root, 10);
}

/// One HTTP/1 connection's bytes to the live server.
pub fn http(data: &[u8]) {
    let _ = dinoedge::live::server::answer_raw(data);
}

/// A fuzz target.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: [(&str, Target); 8] = [
    ("config", config),
    ("safetensors", safetensors),
    ("onnx", onnx),
    ("y4m", y4m),
    ("mask", mask),
    ("cache_index", cache_index),
    ("checkpoint", checkpoint),
    ("http", http),
];
