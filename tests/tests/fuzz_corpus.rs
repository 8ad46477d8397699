//! The fuzz corpus replayed on stable: every file of `fuzz/corpus/<target>/` (the committed
//! seeds) and `fuzz/regressions/<target>/` (inputs that once crashed a target, kept with their
//! fix) goes through the target's function. Each target must have at least one file, so this
//! cannot pass by finding nothing.
//!
//! The seeds are made by `hybridcast_tests::fuzz::seeds`; after changing an encoding or a
//! harness, rewrite them with `HYBRIDCAST_WRITE_SEEDS=1 cargo test -p hybridcast-tests --test
//! fuzz_corpus`.

use hybridcast_tests::fuzz::{TARGETS, seeds};
use std::fs;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn seed_corpus_matches_the_generator() {
    let write = std::env::var_os("HYBRIDCAST_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds::all() {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        if write {
            fs::create_dir_all(path.parent().expect("parent")).expect("create corpus dir");
            fs::write(&path, &bytes).expect("write seed");
        }
        let on_disk = fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (rewrite with HYBRIDCAST_WRITE_SEEDS=1)",
                path.display()
            )
        });
        assert_eq!(on_disk, bytes, "{} is stale", path.display());
    }
}

#[test]
fn corpus_and_regressions_replay() {
    let root = fuzz_dir();
    for (target, run) in TARGETS {
        let corpus = files(&root.join("corpus").join(target));
        assert!(!corpus.is_empty(), "no corpus for {target}");
        let kept = files(&root.join("regressions").join(target));
        for path in corpus.iter().chain(&kept) {
            let data = fs::read(path).expect("readable corpus file");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", path.display());
        }
        eprintln!(
            "{target}: {} corpus files, {} regressions",
            corpus.len(),
            kept.len()
        );
    }
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    for (target, _) in TARGETS {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let text = fs::read_to_string(&path).expect("fuzz target file");
        assert!(
            text.contains(&format!("fuzz::{target}(")),
            "{} does not call hybridcast_tests::fuzz::{target}",
            path.display()
        );
    }
}
