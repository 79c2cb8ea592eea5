//! Batches decoded and augmented by worker threads into a bounded prefetch queue, handed
//! out strictly in step order. A batch is a pure function of its step, so the number of
//! workers and their timing never change what training sees.
//!
//! An image that fails to decode is replaced by the next training image (deterministic,
//! since it depends only on file contents) and reported once in [`LoadedBatch::failed`].

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::data::{AugConfig, View, decode, render};
use crate::error::{DistillError, Result};

/// One sample: an image (index into the loader's list) and its view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub image: usize,
    /// View number for the augmentation stream; ignored for `center`.
    pub view: u64,
    /// The evaluation view (centred square, no augmentation).
    pub center: bool,
}

/// How to render pixels for one model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenderSpec {
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// What a loader produces for one step.
#[derive(Debug)]
pub struct LoadedBatch {
    pub step: usize,
    /// The keys actually rendered (after any replacement of unreadable images).
    pub keys: Vec<Key>,
    /// (B, 3, S, S) for each requested spec, in the order of [`LoaderSpec::renders`].
    pub pixels: Vec<Vec<f32>>,
    /// Images that failed to decode while building this batch (first time only).
    pub failed: Vec<(PathBuf, String)>,
}

/// Everything the workers need.
pub struct LoaderSpec {
    pub images: Vec<(PathBuf, u32, u32)>,
    pub aug: AugConfig,
    pub seed: u64,
    pub renders: Vec<RenderSpec>,
    /// Keys of step `s`.
    pub keys: Box<dyn Fn(usize) -> Vec<Key> + Send + Sync>,
    pub first_step: usize,
    pub end_step: usize,
    pub workers: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
}

struct State {
    next: usize,
    deliver: usize,
    ready: BTreeMap<usize, std::result::Result<LoadedBatch, String>>,
    bad: HashSet<usize>,
    stop: bool,
}

struct Shared {
    spec: LoaderSpec,
    state: Mutex<State>,
    cv: Condvar,
}

pub struct Loader {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Loader {
    pub fn start(spec: LoaderSpec) -> Result<Self> {
        let workers_n = spec.workers.max(1);
        let state = State {
            next: spec.first_step,
            deliver: spec.first_step,
            ready: BTreeMap::new(),
            bad: HashSet::new(),
            stop: false,
        };
        let shared = Arc::new(Shared {
            spec,
            state: Mutex::new(state),
            cv: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 0..workers_n {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("dinoedge-data-{i}"))
                .spawn(move || worker(&s))
                .map_err(|e| DistillError::Config(format!("cannot start data worker: {e}")))?;
            workers.push(h);
        }
        Ok(Loader { shared, workers })
    }

    /// The next batch, in step order (blocks until it is ready).
    pub fn next(&self) -> Result<LoadedBatch> {
        let s = &*self.shared;
        let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.deliver >= s.spec.end_step {
            return Err(DistillError::Config("data loader: no more steps".into()));
        }
        loop {
            let want = st.deliver;
            if let Some(b) = st.ready.remove(&want) {
                st.deliver += 1;
                s.cv.notify_all();
                return b.map_err(|e| {
                    DistillError::Config(format!("data worker failed at step {want}: {e}"))
                });
            }
            st = s.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop = true;
        self.shared.cv.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(s: &Shared) {
    loop {
        let step = {
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if st.stop {
                    return;
                }
                if st.next < s.spec.end_step && st.next < st.deliver + s.spec.prefetch.max(1) {
                    break;
                }
                st = s.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.next += 1;
            st.next - 1
        };
        let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(s, step)))
            .unwrap_or_else(|_| Err("a data worker panicked (a bug)".into()));
        let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        st.ready.insert(step, batch);
        s.cv.notify_all();
    }
}

fn build(s: &Shared, step: usize) -> std::result::Result<LoadedBatch, String> {
    let spec = &s.spec;
    let n = spec.images.len();
    let mut keys = (spec.keys)(step);
    let mut pixels: Vec<Vec<f32>> = spec
        .renders
        .iter()
        .map(|r| Vec::with_capacity(keys.len() * 3 * r.size * r.size))
        .collect();
    let mut failed = Vec::new();
    for key in &mut keys {
        let mut tries = 0;
        let (w, h, rgb) = loop {
            let (path, _, _) = &spec.images[key.image];
            let known_bad = s
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bad
                .contains(&key.image);
            if !known_bad {
                match decode(path) {
                    Ok(img) => break img,
                    Err(e) => {
                        if s.state
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .bad
                            .insert(key.image)
                        {
                            failed.push((path.clone(), e));
                        }
                    }
                }
            }
            tries += 1;
            if tries >= n {
                return Err("no image in the data set can be decoded".into());
            }
            key.image = (key.image + 1) % n;
        };
        let view = if key.center {
            View::center(w, h)
        } else {
            View::random(&spec.aug, spec.seed, key.image, key.view, w, h)
        };
        for (out, r) in pixels.iter_mut().zip(&spec.renders) {
            out.extend(render(&rgb, w, &view, r.size, r.mean, r.std));
        }
    }
    Ok(LoadedBatch {
        step,
        keys,
        pixels,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &std::path::Path, w: u32, h: u32, seed: u8) {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x as u8).wrapping_mul(seed), y as u8, seed])
        });
        img.save(path).unwrap();
    }

    #[test]
    fn batches_arrive_in_order_and_do_not_depend_on_workers() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = Vec::new();
        for i in 0..5u8 {
            let p = dir.path().join(format!("{i}.png"));
            write_png(&p, 40 + i as u32, 30, i + 1);
            images.push((p, 40 + i as u32, 30));
        }
        std::fs::write(dir.path().join("bad.png"), b"not a png").unwrap();
        images.insert(2, (dir.path().join("bad.png"), 40, 30));
        let run = |workers: usize| {
            let spec = LoaderSpec {
                images: images.clone(),
                aug: AugConfig::default(),
                seed: 3,
                renders: vec![
                    RenderSpec {
                        size: 16,
                        mean: [0.5; 3],
                        std: [0.25; 3],
                    },
                    RenderSpec {
                        size: 14,
                        mean: [0.4; 3],
                        std: [0.2; 3],
                    },
                ],
                keys: Box::new(|s| {
                    (0..3)
                        .map(|j| Key {
                            image: (s * 3 + j) % 6,
                            view: s as u64,
                            center: false,
                        })
                        .collect()
                }),
                first_step: 1,
                end_step: 6,
                workers,
                prefetch: 2,
            };
            let l = Loader::start(spec).unwrap();
            let mut out = Vec::new();
            let mut failed = 0;
            for s in 1..6 {
                let b = l.next().unwrap();
                assert_eq!(b.step, s);
                assert_eq!(b.pixels[0].len(), 3 * 3 * 16 * 16);
                assert_eq!(b.pixels[1].len(), 3 * 3 * 14 * 14);
                assert!(b.keys.iter().all(|k| k.image != 2));
                failed += b.failed.len();
                out.push(b.pixels);
            }
            assert_eq!(failed, 1, "the unreadable file is reported once");
            out
        };
        assert_eq!(run(1), run(3));
    }
}
