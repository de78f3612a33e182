//! The `exec` figure: what the sandbox adds to one command's start-up. The
//! `nexus-sandbox` helper (beside this binary) runs `true` with the settings
//! `exec` uses by default, against `/bin/sh -c true` started the same way.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nexus_common::config::ExecToolsConfig;

/// Sorted start-to-exit times of both ways; `None` where the sandbox cannot be set up.
pub struct ExecCost {
    pub sandboxed: Option<Vec<Duration>>,
    pub plain: Vec<Duration>,
}

fn timed(runs: usize, mut cmd: impl FnMut() -> Command) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let status = cmd()
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        times.push(started.elapsed());
        if !status.success() {
            bail!("the command failed: {status}");
        }
    }
    times.sort();
    Ok(times)
}

/// Runs `true` `runs` times each way, after a few warm-up runs.
pub fn run(runs: usize) -> anyhow::Result<ExecCost> {
    let helper: PathBuf = std::env::current_exe()?.with_file_name("nexus-sandbox");
    let workspace = tempfile::tempdir()?;
    let s = ExecToolsConfig::default();
    let sandboxed = || {
        let mut cmd = Command::new(&helper);
        cmd.args(["--workspace"])
            .arg(workspace.path())
            .args(["--memory-mb", &s.memory_mb.to_string()])
            .args(["--cpu-secs", &(s.timeout_secs + 1).to_string()])
            .args(["--max-processes", &s.max_processes.to_string()])
            .args(["--max-file-mb", &s.max_file_mb.to_string()])
            .args(["--wall-secs", &s.timeout_secs.to_string()])
            .args(["--", "true"]);
        cmd
    };
    let plain = || {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "true"]);
        cmd
    };
    timed(10, plain)?;
    let plain = timed(runs, plain)?;
    let sandboxed = if helper.is_file() && timed(10, sandboxed).is_ok() {
        Some(timed(runs, sandboxed).context("the sandboxed command")?)
    } else {
        None
    };
    Ok(ExecCost { sandboxed, plain })
}

/// The table rows.
pub fn print(cost: &ExecCost) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |t: &[Duration], q: f64| ms(super::percentile(t, q));
    let runs = cost.plain.len();
    match &cost.sandboxed {
        Some(s) => out!(
            "| `exec` start-up: `true` in the sandbox (nexus-sandbox), p50 / p99 of {runs} | {:.2} / {:.2} ms |",
            p(s, 50.0),
            p(s, 99.0)
        ),
        None => {
            out!("| `exec` start-up in the sandbox | skipped: the sandbox cannot be set up here |")
        }
    }
    out!(
        "| the same `true` without a sandbox (`/bin/sh -c`), p50 / p99 | {:.2} / {:.2} ms |",
        p(&cost.plain, 50.0),
        p(&cost.plain, 99.0)
    );
}
