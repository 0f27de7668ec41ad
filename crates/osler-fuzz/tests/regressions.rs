//! Replays every committed fuzz input through its target: the seeds (`fuzz/seeds/<target>/`)
//! and every input a fuzzer crashed on once (`fuzz/regressions/<target>/`, fixed since). Cheap,
//! so the normal test command runs it; `./scripts/fuzz` searches for new ones.

use std::path::PathBuf;

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_committed_input_passes_its_target() {
    let mut seeds = 0;
    for (target, run) in osler_fuzz::TARGETS {
        let mine = inputs("seeds", target);
        assert!(!mine.is_empty(), "fuzz/seeds/{target}/ holds no seed");
        seeds += mine.len();
        for (path, bytes) in mine.into_iter().chain(inputs("regressions", target)) {
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "{target} fails on {}", path.display());
        }
    }
    assert!(seeds >= osler_fuzz::TARGETS.len());
}

#[test]
fn every_target_has_a_fuzzer_binary() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    for (target, _) in osler_fuzz::TARGETS {
        let file = fuzz.join(format!("{target}.rs"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("osler_fuzz::{target}")),
            "{} does not call osler_fuzz::{target}",
            file.display()
        );
    }
}
