//! The container backend (`[tools.exec] backend = "docker"`): each command in a
//! throwaway container with the workspace mounted and `.nexus/` covered, no
//! network unless configured, a read-only root, no capabilities, no new
//! privileges, and memory, process, CPU and file-size limits.
//!
//! Docker does not run on the development machine: the argument list is what is
//! tested here ([`run_args`]); the daemon itself is checked by [`probe`] at start.

use std::{
    os::unix::fs::MetadataExt,
    path::Path,
    process::Stdio,
    sync::atomic::{AtomicU64, Ordering},
};

use nexus_common::config::ExecToolsConfig;

/// A name no other command of this process uses, so a timeout can kill the container.
pub fn container_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "nexus-exec-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `docker run …` for one command. The container runs as the workspace's owner,
/// so the files it writes belong to whoever owns the workspace.
pub fn run_args(s: &ExecToolsConfig, workspace: &Path, name: &str, command: &str) -> Vec<String> {
    let owner = std::fs::metadata(workspace)
        .map(|m| format!("{}:{}", m.uid(), m.gid()))
        .unwrap_or_else(|_| format!("{}:{}", s.sandbox_uid, s.sandbox_gid));
    let mut args: Vec<String> = [
        "run",
        "--rm",
        "--name",
        name,
        "--init",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        &owner,
        "--workdir",
        "/workspace",
    ]
    .map(str::to_owned)
    .into();
    if !s.network {
        args.extend(["--network".into(), "none".into()]);
    }
    args.extend([
        "--memory".into(),
        format!("{}m", s.memory_mb),
        "--memory-swap".into(),
        format!("{}m", s.memory_mb),
        "--pids-limit".into(),
        s.max_processes.to_string(),
        "--cpus".into(),
        "1".into(),
        "--ulimit".into(),
        format!("fsize={0}:{0}", s.max_file_mb * 1024 * 1024),
        "--ulimit".into(),
        "nofile=1024:1024".into(),
        "--ulimit".into(),
        "core=0:0".into(),
        "--tmpfs".into(),
        format!("/tmp:rw,nosuid,nodev,size={}m", s.max_file_mb.max(64)),
        "--mount".into(),
        format!("type=bind,source={},target=/workspace", workspace.display()),
        // Nexus's own state stays out of sight.
        "--mount".into(),
        "type=tmpfs,target=/workspace/.nexus,tmpfs-size=4096,tmpfs-mode=0500".into(),
    ]);
    for var in ["HOME=/tmp", "TMPDIR=/tmp", "LANG=C.UTF-8", "TERM=dumb"] {
        args.extend(["--env".into(), var.into()]);
    }
    args.extend([
        s.docker_image.clone(),
        "/bin/sh".into(),
        "-c".into(),
        command.into(),
    ]);
    args
}

/// Whether the Docker daemon answers; `Err` says what to change.
pub fn probe(s: &ExecToolsConfig) -> Result<String, String> {
    let out = std::process::Command::new(&s.docker_bin)
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "[tools.exec] backend = \"docker\" but {} cannot be run: {e}",
                s.docker_bin
            )
        })?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "[tools.exec] backend = \"docker\" but the Docker daemon does not answer ({}); \
             start it, or use backend = \"sandbox\"",
            why.trim()
        ));
    }
    Ok(format!(
        "docker {} ({})",
        String::from_utf8_lossy(&out.stdout).trim(),
        s.docker_image
    ))
}

/// Stops a container whose command ran past its timeout (killing the client does not).
pub async fn kill(s: &ExecToolsConfig, name: &str) {
    let status = tokio::process::Command::new(&s.docker_bin)
        .args(["kill", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(error) = status {
        tracing::warn!(%error, container = name, "timed-out container not killed");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use nexus_common::config::ExecBackend;

    use super::*;

    fn pairs(args: &[String]) -> Vec<(String, String)> {
        args.windows(2)
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect()
    }

    #[test]
    fn the_container_is_throwaway_offline_read_only_unprivileged_and_limited() {
        let ws = tempfile::tempdir().unwrap();
        let s = ExecToolsConfig {
            backend: ExecBackend::Docker,
            memory_mb: 300,
            max_processes: 50,
            max_file_mb: 2,
            ..ExecToolsConfig::default()
        };
        let args = run_args(&s, ws.path(), "nexus-exec-1-0", "echo 'hi' | wc -c");
        let p = pairs(&args);
        let has = |a: &str, b: &str| p.contains(&(a.to_owned(), b.to_owned()));
        assert_eq!(args[0], "run");
        assert!(args.contains(&"--rm".to_owned()));
        assert!(args.contains(&"--read-only".to_owned()));
        assert!(args.contains(&"--init".to_owned()));
        assert!(has("--name", "nexus-exec-1-0"));
        assert!(has("--network", "none"));
        assert!(has("--cap-drop", "ALL"));
        assert!(has("--security-opt", "no-new-privileges"));
        assert!(has("--memory", "300m") && has("--memory-swap", "300m"));
        assert!(has("--pids-limit", "50"));
        assert!(has("--ulimit", "fsize=2097152:2097152"));
        assert!(has("--workdir", "/workspace"));
        let owner = std::fs::metadata(ws.path()).unwrap();
        assert!(has("--user", &format!("{}:{}", owner.uid(), owner.gid())));
        assert!(has(
            "--mount",
            &format!("type=bind,source={},target=/workspace", ws.path().display())
        ));
        assert!(has(
            "--mount",
            "type=tmpfs,target=/workspace/.nexus,tmpfs-size=4096,tmpfs-mode=0500"
        ));
        // The image, then the command as one argument of sh -c, last.
        assert_eq!(
            args[args.len() - 4..],
            ["python:3.13-slim", "/bin/sh", "-c", "echo 'hi' | wc -c"]
        );
        // Nothing of tool-runner's environment is passed on.
        let envs: Vec<_> = p
            .iter()
            .filter(|(a, _)| a == "--env")
            .map(|(_, b)| b.as_str())
            .collect();
        assert_eq!(
            envs,
            ["HOME=/tmp", "TMPDIR=/tmp", "LANG=C.UTF-8", "TERM=dumb"]
        );
        assert!(
            !args
                .iter()
                .any(|a| a == "--privileged" || a.starts_with("--env-file"))
        );
    }

    #[test]
    fn a_network_setting_leaves_the_default_network_on() {
        let ws = tempfile::tempdir().unwrap();
        let s = ExecToolsConfig {
            network: true,
            ..ExecToolsConfig::default()
        };
        let args = run_args(&s, ws.path(), "n", "true");
        assert!(!args.iter().any(|a| a == "none"), "{args:?}");
    }

    #[test]
    fn without_a_daemon_docker_is_not_offered_and_the_reason_says_what_to_change() {
        let s = ExecToolsConfig {
            backend: ExecBackend::Docker,
            docker_bin: "/nonexistent/docker".into(),
            ..ExecToolsConfig::default()
        };
        let why = probe(&s).unwrap_err();
        assert!(why.contains("backend = \"docker\""), "{why}");
    }
}
