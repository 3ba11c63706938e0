//! Fuzzing on the stable toolchain (cargo-fuzz needs nightly): proptest generates mutation plans
//! for seed inputs (real reviews, Services, ConfigMaps, annotations under `tests/fuzz-seeds/`),
//! the harness builds the input from the plan and checks properties. A failure is shrunk by
//! proptest to the fewest, smallest mutations, and the input is printed and saved under
//! `target/fuzz-failures/`.
//!
//! Runs are deterministic per target unless `FUZZ_SEED` is set. `FUZZ_ITERATIONS` (all targets)
//! or `FUZZ_ITERATIONS_<TARGET>` sets the number of cases; `FUZZ_REPORT=<file>` appends one line
//! per target with its numbers. Include with `#[path = "../support/fuzz.rs"] mod fuzz;`.
#![allow(dead_code)]

#[path = "fuzz/json.rs"]
pub mod json;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

pub use json::{ByteMutation, J, Mutation, Pool};

pub fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-seeds")
}

/// Every `*.json` file of a seed folder, in name order.
pub fn json_seeds(folder: &str) -> Vec<J> {
    let dir = seeds_dir().join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("seed dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .iter()
        .map(|p| {
            let text = std::fs::read(p).expect("seed file");
            serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

/// The non-empty, non-comment lines of a seed file.
pub fn line_seeds(file: &str) -> Vec<String> {
    let path = seeds_dir().join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// A mutation plan for one document: which seed, structural changes, then byte changes.
#[derive(Clone, Debug)]
pub struct DocCase {
    pub seed: u32,
    pub muts: Vec<Mutation>,
    pub bytes: Vec<ByteMutation>,
}

pub fn doc_case() -> impl Strategy<Value = DocCase> {
    (
        any::<u32>(),
        prop::collection::vec(json::mutation(), 0..=6),
        // Most cases stay valid JSON: byte changes mostly end a decode at the first token.
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(json::byte_mutation(), 1..=3)],
    )
        .prop_map(|(seed, muts, bytes)| DocCase { seed, muts, bytes })
}

/// A built document: the tree after the structural changes, and the bytes after all changes.
pub struct Doc {
    pub tree: J,
    pub bytes: Vec<u8>,
    /// Byte changes were applied: `tree` no longer describes `bytes`.
    pub byte_mutated: bool,
}

impl Pool {
    pub fn doc(&self, case: &DocCase) -> Doc {
        let mut tree = self.seeds[case.seed as usize % self.seeds.len()].clone();
        for m in &case.muts {
            self.apply(&mut tree, m);
        }
        let mut bytes = tree.to_bytes();
        for m in &case.bytes {
            json::apply_bytes(&mut bytes, m);
        }
        Doc {
            tree,
            bytes,
            byte_mutated: !case.bytes.is_empty(),
        }
    }
}

/// Longest text [`TextMutation::Repeat`] builds: long enough for any length limit a parser may
/// have (a ConfigMap value is at most 1 MiB in total), short enough to keep a case fast.
const TEXT_MAX: usize = 128 * 1024;

/// A change of a text input (ConfigMap values, annotations), at char boundaries.
#[derive(Clone, Debug)]
pub enum TextMutation {
    Insert { pos: u32, text: u8 },
    Delete { pos: u32, len: u8 },
    Repeat { times: u16 },
    Truncate { pos: u32 },
}

/// Inserted by [`TextMutation::Insert`]: separators, whitespace, digits, unicode, controls.
const SNIPPETS: &[&str] = &[
    ",",
    "-",
    "/",
    ".",
    ":",
    " ",
    "\t",
    "\n",
    "\u{a0}",
    "\u{3000}",
    "\u{0}",
    "0",
    "1",
    "9",
    "255",
    "32",
    "128",
    "::",
    "%eth0",
    "[",
    "]",
    "é",
    "\u{1d11e}",
    "\u{fe0f}",
    "\u{200b}",
    "x",
];

pub fn text_mutation() -> impl Strategy<Value = TextMutation> {
    let n = any::<u32>;
    prop_oneof![
        4 => (n(), any::<u8>()).prop_map(|(pos, text)| TextMutation::Insert { pos, text }),
        2 => (n(), 1u8..8).prop_map(|(pos, len)| TextMutation::Delete { pos, len }),
        1 => prop_oneof![2u16..4, 100u16..2000].prop_map(|times| TextMutation::Repeat { times }),
        1 => n().prop_map(|pos| TextMutation::Truncate { pos }),
    ]
}

pub fn mutate_text(s: &mut String, m: &TextMutation) {
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
    let at = |p: u32| bounds[p as usize % bounds.len()];
    match *m {
        TextMutation::Insert { pos, text } => s.insert_str(at(pos), json::pick(SNIPPETS, text)),
        TextMutation::Delete { pos, len } => {
            let i = bounds.iter().position(|b| *b == at(pos)).unwrap_or(0);
            let end = bounds[(i + len as usize).min(bounds.len() - 1)];
            s.replace_range(at(pos)..end, "");
        }
        TextMutation::Repeat { times } => {
            // Capped: stacked repeats would otherwise reach gigabytes.
            let times = (times as usize).min(TEXT_MAX / s.len().max(1)).max(1);
            *s = s.repeat(times);
        }
        TextMutation::Truncate { pos } => s.truncate(at(pos)),
    }
}

/// Cases to run for `target`: `FUZZ_ITERATIONS_<TARGET>`, else `FUZZ_ITERATIONS`, else `default`.
pub fn iterations(target: &str, default: u32) -> u32 {
    let var = format!("FUZZ_ITERATIONS_{}", target.to_uppercase());
    [var.as_str(), "FUZZ_ITERATIONS"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{var}: not a number: {v}"))
        })
        .unwrap_or(default)
}

/// What a target saw: executions (a case may run several, e.g. a sequence of admissions), how
/// often each outcome class came up, and the slowest case.
#[derive(Default)]
pub struct Tally {
    execs: Cell<u64>,
    classes: RefCell<BTreeMap<&'static str, u64>>,
    slowest: Cell<Duration>,
}

impl Tally {
    pub fn exec(&self, class: &'static str) {
        self.execs.set(self.execs.get() + 1);
        *self.classes.borrow_mut().entry(class).or_default() += 1;
    }
}

/// Run `cases` cases of `strategy` through `test`; on failure print the shrunk case (and
/// `show` of it: the input as bytes or text) and save it under `target/fuzz-failures/`.
pub fn fuzz<S: Strategy>(
    target: &str,
    default_cases: u32,
    strategy: S,
    show: impl Fn(&S::Value) -> String,
    test: impl Fn(S::Value, &Tally) -> Result<(), TestCaseError>,
) where
    S::Value: Debug,
{
    let cases = iterations(target, default_cases);
    let seed: u64 = match std::env::var("FUZZ_SEED") {
        Ok(s) => s.parse().expect("FUZZ_SEED: a number"),
        // Deterministic by default: `cargo test` checks the same inputs every time.
        Err(_) => target
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)),
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let tally = Tally::default();
    let started = Instant::now();
    let result = runner.run(&strategy, |case| {
        let t = Instant::now();
        let r = test(case, &tally);
        let took = t.elapsed();
        if took > tally.slowest.get() {
            tally.slowest.set(took);
        }
        r
    });
    let elapsed = started.elapsed();
    let execs = tally.execs.get();
    let line = format!(
        "fuzz {target}: {cases} cases, {execs} executions in {:.1} s ({:.0}/s), slowest case {:.2} ms, seed {seed}, outcomes {:?}",
        elapsed.as_secs_f64(),
        execs as f64 / elapsed.as_secs_f64().max(1e-9),
        tally.slowest.get().as_secs_f64() * 1e3,
        tally.classes.borrow(),
    );
    eprintln!("{line}");
    if let Ok(path) = std::env::var("FUZZ_REPORT") {
        let ok = if result.is_ok() { "ok" } else { "FAILED" };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}, {ok}");
        }
    }
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, case)) => {
            let shown = show(&case);
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{target}-{seed}.txt"));
            let _ = std::fs::write(&file, &shown);
            panic!(
                "fuzz {target}: {reason}\nminimal case: {case:?}\ninput ({}):\n{shown}",
                file.display()
            );
        }
        Err(e) => panic!("fuzz {target}: {e}"),
    }
}

/// Bytes as text for a report (lossy UTF-8, cut to a screenful).
pub fn show_bytes(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() > 4000 {
        let mut cut = 4000;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}... ({} bytes)", &text[..cut], bytes.len())
    } else {
        text.into_owned()
    }
}
