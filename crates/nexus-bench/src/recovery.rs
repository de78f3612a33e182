//! Recovery figures (issue #19): how soon replies come again after a NATS
//! restart, and after an agent-core replica is SIGKILLed mid-turn. Measured,
//! not asserted.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures::future::join_all;
use nexus_testkit::{NatsServer, fake_openai::FakeOpenAi};

use crate::{Up, children, log_line};

/// The model the bench's config asks for; the fake counts requests in flight by it.
const MODEL: &str = "gpt-4.1-mini";

/// Replies later than this after the restart or the kill are counted as missing,
/// so a stalled recovery cannot stall the bench.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);

/// One NATS restart, timed from the moment the restarted server answers.
pub(crate) struct RestartRound {
    /// Ready → each reply the driver received within [`LIMIT`], sorted.
    pub received: Vec<Duration>,
    /// Ready → the first reply stored in `N_OUTBOUND` (before the driver read it).
    pub first_stored: Option<Duration>,
    /// Sessions without a reply within [`LIMIT`].
    pub missing: usize,
}

impl RestartRound {
    pub fn first(&self) -> Option<Duration> {
        self.received.first().copied()
    }

    /// Ready → every session answered.
    pub fn all(&self) -> Option<Duration> {
        if self.missing > 0 {
            None
        } else {
            self.received.last().copied()
        }
    }
}

/// `nexus up` on a nats-server of its own; warm-up turns on `sessions` sessions;
/// then `rounds` times: kill NATS, keep it down for `outage`, start it again (same
/// port and store) and send one message on every session at once.
pub(crate) async fn nats_restart(
    fake: &FakeOpenAi,
    sessions: usize,
    rounds: usize,
    outage: Duration,
) -> anyhow::Result<Vec<RestartRound>> {
    let mut nats = NatsServer::start().await;
    let up = Up::start_on(&nats.url(), fake, 1, &[("NEXUS__MEMORY__JOURNAL", "false")]).await?;
    let names: Vec<String> = (0..sessions).map(|s| format!("restart-{s}")).collect();
    for _ in 0..2 {
        for name in &names {
            up.driver.turn(name).await?;
        }
    }
    let mut out = Vec::new();
    for round in 1..=rounds {
        nats.kill();
        log_line(&format!("[bench] round {round}: nats-server killed"));
        tokio::time::sleep(outage).await;
        nats.restart().await;
        let ready = Instant::now();
        let ready_wall = SystemTime::now();
        log_line(&format!("[bench] round {round}: nats-server ready again"));
        let sent = join_all(names.iter().map(|n| up.driver.send(n))).await;
        let mut r = RestartRound {
            received: Vec::new(),
            first_stored: None,
            missing: 0,
        };
        for s in sent {
            let (_, reply) = s?;
            match tokio::time::timeout_at((ready + LIMIT).into(), reply).await {
                Ok(Ok(reply)) => {
                    r.received.push(reply.received - ready);
                    let stored = reply.stored.duration_since(ready_wall).unwrap_or_default();
                    r.first_stored = Some(r.first_stored.map_or(stored, |f| f.min(stored)));
                }
                _ => r.missing += 1,
            }
        }
        r.received.sort();
        log_line(&format!(
            "[bench] round {round}: first reply after {:?}, every session after {:?}",
            r.first(),
            r.all()
        ));
        out.push(r);
    }
    up.stop().await?;
    Ok(out)
}

/// What a user sees when a replica dies mid-turn.
pub(crate) struct ReplicaKill {
    /// Turns without a reply at the kill.
    pub unanswered: usize,
    /// Kill → reply of each of those answered within [`LIMIT`], sorted.
    pub after_kill: Vec<Duration>,
    /// Model calls made again (the turns the killed replica had begun).
    pub redone: usize,
}

/// `nexus up --agents 2`; one warm-up turn per session; then one message on every
/// session with a model that takes `llm`, and once every turn waits on the model,
/// SIGKILL one agent-core (`nexus up` starts it again, as it would for a user).
pub(crate) async fn replica_kill(
    fake: &FakeOpenAi,
    sessions: usize,
    llm: Duration,
) -> anyhow::Result<ReplicaKill> {
    fake.set_delay(Duration::ZERO);
    let up = Up::start(fake, 2, &[("NEXUS__MEMORY__JOURNAL", "false")]).await?;
    let names: Vec<String> = (0..sessions).map(|s| format!("kill-{s}")).collect();
    for name in &names {
        up.driver.turn(name).await?;
    }
    fake.set_delay(llm);
    let calls_before = fake.requests().len();
    let mut replies = Vec::new();
    for s in join_all(names.iter().map(|n| up.driver.send(n))).await {
        replies.push(s?.1);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.in_flight(MODEL) < sessions && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Kill the replica that holds most of the turns (one may hold them all).
    let victim = children(up.pid)
        .into_iter()
        .filter(|c| c.name == "agent-core")
        .max_by_key(|c| connections_to(c.pid, fake.addr.port()))
        .context("no agent-core among nexus up's children")?;
    nexus_common::process::kill(victim.pid);
    let killed = Instant::now();
    log_line(&format!(
        "[bench] agent-core pid {} killed with {} turns at the model",
        victim.pid,
        fake.in_flight(MODEL)
    ));
    let mut out = ReplicaKill {
        unanswered: 0,
        after_kill: Vec::new(),
        redone: 0,
    };
    for reply in replies {
        match tokio::time::timeout_at((killed + LIMIT).into(), reply).await {
            Ok(Ok(r)) if r.received <= killed => {}
            Ok(Ok(r)) => {
                out.unanswered += 1;
                out.after_kill.push(r.received - killed);
            }
            _ => out.unanswered += 1,
        }
    }
    out.after_kill.sort();
    out.redone = fake
        .requests()
        .len()
        .saturating_sub(calls_before + sessions);
    fake.set_delay(Duration::ZERO);
    up.stop().await?;
    Ok(out)
}

/// Established TCP connections of process `pid` to port `port` on loopback (its
/// model calls in flight, plus idle pooled ones), from `/proc`.
fn connections_to(pid: u32, port: u16) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let sockets: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let remote = format!(":{port:04X}");
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        // Columns: sl, local, remote, state (01 = established), …, inode (10th).
        .filter(|c| {
            c.len() > 9 && c[2].ends_with(&remote) && c[3] == "01" && sockets.contains(&c[9])
        })
        .count()
}

/// `nats-server` (or `NATS_SERVER_BIN`) can be started: the restart figure needs a
/// server of its own, never the shared one.
pub(crate) fn nats_server_available() -> bool {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return std::path::Path::new(&bin).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("nats-server").is_file()))
}
