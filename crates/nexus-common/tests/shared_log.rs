//! Several processes append to one `redacted.log` at once: no line is torn or
//! interleaved, none is lost without rotation, and with rotation the files stay
//! bounded while each writer's surviving lines are a gap-free tail.
//!
//! `harness = false`: this binary is both the test and, started with `--child`,
//! the writer processes it runs.

// A test: a failure should panic where it happens.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use nexus_common::logfile::SharedLog;

const WRITERS: usize = 4;
const LINES: usize = 3000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args[2..]);
        return;
    }
    all_lines_arrive_whole_from_processes_writing_at_once();
    rotation_keeps_the_files_bounded_and_lines_whole();
    println!("shared_log: 2 tests passed");
}

/// Writes LINES lines of varying length, tagged with the writer and a sequence.
fn child(args: &[String]) {
    let [path, max, keep, id] = args else {
        panic!("usage: --child PATH MAX_BYTES KEEP ID");
    };
    let log =
        SharedLog::open(Path::new(path), max.parse().unwrap(), keep.parse().unwrap()).unwrap();
    for seq in 0..LINES {
        let pad = "x".repeat((seq * 37) % 300);
        log.append(format!("writer={id} seq={seq} {pad} end\n").as_bytes())
            .unwrap();
    }
}

/// Runs the writers together and waits for them.
fn run_writers(path: &Path, max_bytes: u64, keep: u32) {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WRITERS)
        .map(|id| {
            Command::new(&exe)
                .args(["--child", &path.display().to_string()])
                .args([max_bytes.to_string(), keep.to_string(), id.to_string()])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
}

/// Every line of the files (oldest file first), checked whole, grouped by writer.
fn lines_by_writer(files: &[PathBuf]) -> BTreeMap<usize, Vec<usize>> {
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{file:?} ends mid-line"
        );
        for line in text.lines() {
            let torn = || -> ! { panic!("torn or interleaved line in {file:?}: {line:?}") };
            let rest = line.strip_prefix("writer=").unwrap_or_else(|| torn());
            let (id, rest) = rest.split_once(" seq=").unwrap_or_else(|| torn());
            let (seq, rest) = rest.split_once(' ').unwrap_or_else(|| torn());
            let seq: usize = seq.parse().unwrap_or_else(|_| torn());
            let pad = rest.strip_suffix(" end").unwrap_or_else(|| torn());
            if pad.len() != (seq * 37) % 300 || pad.bytes().any(|b| b != b'x') {
                torn();
            }
            out.entry(id.parse().unwrap_or_else(|_| torn()))
                .or_default()
                .push(seq);
        }
    }
    out
}

fn all_lines_arrive_whole_from_processes_writing_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redacted.log");
    run_writers(&path, u64::MAX, 3);
    let by_writer = lines_by_writer(&[path]);
    assert_eq!(by_writer.len(), WRITERS);
    for (id, seqs) in by_writer {
        assert_eq!(seqs, (0..LINES).collect::<Vec<_>>(), "writer {id}");
    }
}

fn rotation_keeps_the_files_bounded_and_lines_whole() {
    const MAX: u64 = 64 * 1024;
    const KEEP: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redacted.log");
    run_writers(&path, MAX, KEEP);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "redacted.log",
            "redacted.log.1",
            "redacted.log.2",
            "redacted.log.3",
            "redacted.log.lock"
        ]
    );
    let files: Vec<PathBuf> = [
        "redacted.log.3",
        "redacted.log.2",
        "redacted.log.1",
        "redacted.log",
    ]
    .iter()
    .map(|n| dir.path().join(n))
    .collect();
    for f in &files {
        // Full at MAX; each writer may add the one line it was already writing.
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len < MAX + WRITERS as u64 * 400, "{f:?}: {len} bytes");
    }
    // What survives of each writer is its newest lines, in order and without a gap.
    for (id, seqs) in lines_by_writer(&files) {
        let first = seqs[0];
        assert_eq!(
            seqs,
            (first..first + seqs.len()).collect::<Vec<_>>(),
            "writer {id}"
        );
        assert!(
            first > 0,
            "writer {id}: old lines should have been rotated away"
        );
    }
}
