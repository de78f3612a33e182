//! How `exec` runs a command: through the `nexus-sandbox` helper (namespaces,
//! landlock, seccomp, rlimits; see that crate) or in a throwaway Docker container
//! ([`docker`]). This module starts them, enforces the wall-clock timeout, and
//! captures output within a cap.
//!
//! It must never run a command any other way: where neither backend can be set
//! up, [`Exec::probe`] says why and `exec` is not offered. The command gets
//! nothing of tool-runner's environment.

pub mod docker;

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use nexus_common::config::{ExecBackend, ExecToolsConfig};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::Command,
    time::Instant,
};

use crate::error::ToolFailure;

/// File name of the helper, beside the tool-runner binary by default.
pub const HELPER: &str = "nexus-sandbox";
/// The helper's exit status when the sandbox could not be set up.
const SETUP_FAILED: i32 = 125;
/// How long the start-up probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long output may still drain after the command was killed.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(5);

/// A configured backend that was seen working at start.
#[derive(Debug, Clone)]
pub struct Exec {
    backend: Backend,
    settings: ExecToolsConfig,
    workspace: PathBuf,
}

#[derive(Debug, Clone)]
enum Backend {
    Sandbox { helper: PathBuf },
    Docker,
}

/// One stream of a command's output: its beginning and its end when it was long.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captured {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    /// Bytes the command wrote to this stream.
    pub total: u64,
}

impl Captured {
    /// The text shown to the model; a long stream keeps its first and last
    /// `keep / 2` bytes with a note of what was cut between them.
    pub fn text(&self) -> String {
        let head = String::from_utf8_lossy(&self.head);
        if self.tail.is_empty() {
            return head.into_owned();
        }
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let cut = self.total - self.head.len() as u64 - tail.len() as u64;
        let mut text = head.into_owned();
        if cut > 0 {
            text.push_str(&format!(
                "\n[… output cut: {cut} of {} bytes left out; the first {} and the last {} are shown …]\n",
                self.total,
                self.head.len(),
                tail.len()
            ));
        }
        text.push_str(&String::from_utf8_lossy(&tail));
        text
    }

    pub fn was_cut(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }
}

/// Reads a stream to its end, keeping at most `keep` bytes of it.
async fn capture(mut r: impl AsyncRead + Unpin, keep: usize) -> Captured {
    let (head_cap, tail_cap) = (keep / 2, keep - keep / 2);
    let mut out = Captured::default();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        out.total += n as u64;
        let mut chunk = &buf[..n];
        let room = head_cap.saturating_sub(out.head.len());
        let (first, rest) = chunk.split_at(room.min(chunk.len()));
        out.head.extend_from_slice(first);
        chunk = rest;
        out.tail.extend(chunk);
        let over = out.tail.len().saturating_sub(tail_cap);
        out.tail.drain(..over);
    }
    out
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The exit status; 128 + N when signal N killed it (as shells report it).
    pub status: i32,
    pub stdout: Captured,
    pub stderr: Captured,
    pub elapsed: Duration,
    /// It ran past its timeout and was killed with everything it started.
    pub timed_out: bool,
}

impl Exec {
    /// Checks that the configured backend works here, once at start: the sandbox
    /// runs `true`; Docker's daemon answers. `Ok` carries what is enforced (for
    /// logs and `nexus status`), `Err` why `exec` cannot be offered and what to change.
    pub fn probe(settings: &ExecToolsConfig, workspace: &Path) -> Result<(Self, String), String> {
        if !settings.enabled {
            return Err("[tools.exec] enabled = false".into());
        }
        let backend = match settings.backend {
            ExecBackend::Sandbox => Backend::Sandbox {
                helper: helper_path(settings)?,
            },
            ExecBackend::Docker => Backend::Docker,
        };
        let exec = Self {
            backend,
            settings: settings.clone(),
            workspace: workspace.to_owned(),
        };
        let report = match &exec.backend {
            Backend::Sandbox { helper } => probe_sandbox(&exec, helper)?,
            Backend::Docker => docker::probe(settings)?,
        };
        Ok((exec, report))
    }

    /// The longest a command may run.
    pub fn max_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.timeout_secs)
    }

    /// Runs `command` for at most `timeout`, keeping `keep` bytes of each stream.
    pub async fn run(
        &self,
        command: &str,
        timeout: Duration,
        keep: usize,
    ) -> Result<Finished, ToolFailure> {
        let secs = timeout.as_secs().max(1);
        let (mut cmd, container) = match &self.backend {
            Backend::Sandbox { helper } => {
                let mut cmd = Command::new(helper);
                cmd.args(self.helper_args(secs, false, command));
                (cmd, None)
            }
            Backend::Docker => {
                let name = docker::container_name();
                let mut cmd = Command::new(&self.settings.docker_bin);
                cmd.args(docker::run_args(
                    &self.settings,
                    &self.workspace,
                    &name,
                    command,
                ));
                (cmd, Some(name))
            }
        };
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| ToolFailure::internal(format!("the sandbox could not be started: {e}")))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ToolFailure::internal(
                "the command's output was not captured",
            ));
        };
        let out = tokio::spawn(capture(stdout, keep));
        let err = tokio::spawn(capture(stderr, keep));
        let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => (status, false),
            Err(_) => {
                // The helper's death kills the sandbox's init (parent-death signal),
                // and with it every process of the command's PID namespace.
                let _ = child.start_kill();
                if let Some(name) = &container {
                    docker::kill(&self.settings, name).await;
                }
                (child.wait().await, true)
            }
        };
        let elapsed = started.elapsed();
        let status = status
            .map_err(|e| ToolFailure::internal(format!("waiting for the command failed: {e}")))?;
        let drained = async { (out.await, err.await) };
        let (stdout, stderr) = match tokio::time::timeout(DRAIN_AFTER_KILL, drained).await {
            Ok((Ok(o), Ok(e))) => (o, e),
            _ => {
                return Err(ToolFailure::internal(
                    "the command's output did not end after it exited",
                ));
            }
        };
        let status = status
            .code()
            .or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                status.signal().map(|s| 128 + s)
            })
            .unwrap_or(-1);
        if status == SETUP_FAILED && !timed_out {
            let text = stderr.text();
            if let Some(line) = text.lines().find(|l| l.starts_with("nexus-sandbox: ")) {
                return Err(ToolFailure::internal(format!(
                    "the sandbox could not be set up, so the command did not run: {}",
                    line.trim_start_matches("nexus-sandbox: ")
                )));
            }
        }
        Ok(Finished {
            status,
            stdout,
            stderr,
            elapsed,
            timed_out,
        })
    }

    /// The helper's command line for one command.
    fn helper_args(&self, secs: u64, probe: bool, command: &str) -> Vec<String> {
        let s = &self.settings;
        let mut args = Vec::new();
        if probe {
            args.push("--probe".to_owned());
        }
        args.extend([
            "--workspace".to_owned(),
            self.workspace.display().to_string(),
        ]);
        if s.network {
            args.push("--network".into());
        }
        for (flag, value) in [
            ("--memory-mb", s.memory_mb),
            ("--cpu-secs", secs + 1),
            ("--max-processes", s.max_processes),
            ("--max-file-mb", s.max_file_mb),
            ("--wall-secs", secs),
            ("--uid", s.sandbox_uid.into()),
            ("--gid", s.sandbox_gid.into()),
        ] {
            args.extend([flag.to_owned(), value.to_string()]);
        }
        args.extend(["--".to_owned(), command.to_owned()]);
        args
    }
}

/// `[tools.exec] helper`, else `nexus-sandbox` beside this program.
fn helper_path(settings: &ExecToolsConfig) -> Result<PathBuf, String> {
    let path = if settings.helper.is_empty() {
        let exe = std::env::current_exe().map_err(|e| format!("cannot locate tool-runner: {e}"))?;
        exe.with_file_name(HELPER)
    } else {
        PathBuf::from(&settings.helper)
    };
    if !path.is_file() {
        return Err(format!(
            "the sandbox helper {} is missing; install {HELPER} beside tool-runner \
             (cargo build --workspace --bins builds it) or set [tools.exec] helper",
            path.display()
        ));
    }
    Ok(path)
}

/// Runs `true` in the sandbox; blocking, once at start (about 30 ms).
fn probe_sandbox(exec: &Exec, helper: &Path) -> Result<String, String> {
    let secs = PROBE_TIMEOUT.as_secs();
    let out = std::process::Command::new(helper)
        .args(exec.helper_args(secs, true, "true"))
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", helper.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let why = stderr
            .lines()
            .find_map(|l| l.strip_prefix("nexus-sandbox: "))
            .unwrap_or(stderr.trim());
        return Err(format!(
            "the sandbox cannot be set up on this host ({why}); exec runs only sandboxed. \
             Enable unprivileged user namespaces (and run tool-runner outside a container \
             that forbids them), or set [tools.exec] backend = \"docker\""
        ));
    }
    let walls = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(format!("sandbox: {walls}"))
}
