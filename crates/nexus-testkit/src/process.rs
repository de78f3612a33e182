//! The built binaries as child processes: started with a test's environment,
//! stopped with SIGTERM or SIGKILL, always killed on drop.

use std::{
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// Path of a workspace binary next to the running test executable
/// (`target/<profile>/<name>`). `just test` builds them before the tests run.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .unwrap_or_else(|| panic!("unexpected test executable location {}", exe.display()));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} not found; build it first with `cargo build --workspace --bins` (just test does)",
        path.display()
    );
    if let Some(newer) = newer_source(&path) {
        panic!(
            "{} is older than {}: the test would run a stale binary. Build first with \
             `cargo build --workspace --bins` (just test does)",
            path.display(),
            newer.display()
        );
    }
    path
}

/// A source of `binary` changed after it was built, going by the dep-info file cargo
/// writes beside it (`<binary>.d`: every file the build read). `None` when none did,
/// or when there is no dep-info to tell.
fn newer_source(binary: &std::path::Path) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let dep_info = std::fs::read_to_string(binary.with_extension("d")).ok()?;
    let (_, sources) = dep_info.lines().next()?.split_once(": ")?;
    // Paths are separated by spaces; a space inside a path is written `\ `.
    let sources = sources.replace("\\ ", "\0");
    sources
        .split_whitespace()
        .map(|s| PathBuf::from(s.replace('\0', " ")))
        .find(|source| {
            std::fs::metadata(source)
                .and_then(|m| m.modified())
                // A source that is gone means the build would change too.
                .map_or(true, |changed| changed > built)
        })
}

/// A running service binary.
pub struct ServiceProcess {
    name: String,
    child: Child,
}

impl ServiceProcess {
    /// Starts `name` with `env` (added to a clean environment that keeps PATH and HOME).
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)]) -> Self {
        Self::spawn_program(name, bin_path(name).as_os_str(), args, env)
    }

    /// Like [`ServiceProcess::spawn`], for a program that is not a workspace binary
    /// (an interpreter with a script, say); `name` labels its logs.
    pub fn spawn_program(
        name: &str,
        program: &std::ffi::OsStr,
        args: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(
                ["PATH", "HOME"]
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let show = std::env::var_os("TEST_LOG").is_some();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let prefix = format!("{name}#{}", child.id().unwrap_or_default());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if show {
                        eprintln!("[{prefix}] {line}");
                    }
                }
            });
        }
        Self {
            name: name.to_owned(),
            child,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub async fn terminate(mut self, timeout: Duration) -> ExitStatus {
        if let Some(pid) = self.child.id() {
            nexus_common::process::terminate(pid);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("wait {}: {e}", self.name),
            Err(_) => panic!("{} did not exit within {timeout:?} of SIGTERM", self.name),
        }
    }

    /// SIGKILL, as a crash would.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Whether the process has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}
