//! Every figure the bench prints, also written as JSON for comparing commits:
//! `BENCH_JSON=<file>`, else `$CARGO_TARGET_DIR/bench/<unix time>-<commit>.json`.
//! A figure is a row of the printed Markdown tables (`| what | value |`), so the
//! README table and the JSON never disagree.

use std::{path::PathBuf, sync::Mutex};

use serde_json::{Value, json};

static ROWS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Prints `line`, and keeps it when it is a figure (a table row that is not a header).
pub fn line(line: &str) {
    println!("{line}");
    let cells: Vec<&str> = line
        .trim()
        .trim_matches('|')
        .split(" | ")
        .map(str::trim)
        .collect();
    let is_row = line.starts_with('|') && cells.len() >= 2;
    let is_header = cells.iter().all(|c| c.chars().all(|ch| ch == '-'))
        || matches!(
            cells[0],
            "figure" | "recovery" | "agent-core replicas" | "sessions"
        );
    if is_row
        && !is_header
        && let Ok(mut rows) = ROWS.lock()
    {
        rows.push((
            cells[..cells.len() - 1].join(" | "),
            cells[cells.len() - 1].to_owned(),
        ));
    }
}

/// `"8.30 ms"` → (8.3, "ms"); `"3.1 / 4.0 ms"` → (3.1, "/ 4.0 ms"); text → None.
fn number(value: &str) -> Option<(f64, String)> {
    let end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(value.len());
    let n = value[..end].parse().ok()?;
    Some((n, value[end..].trim().to_owned()))
}

/// Writes the figures kept so far; returns where.
pub fn write(cpus: usize) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("BENCH_JSON") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            target
                .join("bench")
                .join(format!("{unix}-{}.json", commit()))
        }
    };
    let rows = ROWS.lock().map(|r| r.clone()).unwrap_or_default();
    let figures: Vec<Value> = rows
        .iter()
        .map(|(what, value)| match number(value) {
            Some((n, unit)) => json!({"figure": what, "value": n, "unit": unit, "text": value}),
            None => json!({"figure": what, "text": value}),
        })
        .collect();
    let report = json!({
        "commit": commit(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "cpus": cpus,
        "figures": figures,
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    Ok(path)
}

/// The checked-out commit (with `-dirty` for local changes), or `unknown`.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(sha)
            if git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()) =>
        {
            format!("{sha}-dirty")
        }
        Some(sha) => sha,
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_reads_as_its_number_and_unit() {
        assert_eq!(number("8.30 ms"), Some((8.3, "ms".into())));
        assert_eq!(number("250 turns/s"), Some((250.0, "turns/s".into())));
        assert_eq!(number("skipped: no server"), None);
    }
}
