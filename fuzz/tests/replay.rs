//! Replays every corpus file of every fuzz target: the cases found by fuzzing and the hostile
//! inputs of the hardening audit must keep ending cleanly, within a few seconds each.

use std::time::{Duration, Instant};

#[test]
fn every_corpus_file_ends_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (name, target) in dinoedge_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let t0 = Instant::now();
            target(&data);
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} took {:?}",
                f.display(),
                t0.elapsed()
            );
            total += 1;
        }
    }
    eprintln!("replayed {total} corpus files");
}
