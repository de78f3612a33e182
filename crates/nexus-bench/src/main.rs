//! `just bench`: figures for the README's performance table. Not a test: it
//! asserts nothing about speed, it measures and prints.
//!
//! Runs `nexus up` (release build) against the NATS at `NATS_URL`, with a fake
//! OpenAI server that answers instantly, and drives it through JetStream the
//! way a gateway does. The memory retrieval figure (`retrieval`) runs
//! memory-svc's index in-process over a generated corpus. The recovery figures
//! (`recovery`) kill a nats-server of the bench's own, and an agent-core replica.
//!
//! Subcommands run one part quickly: `turns` (latency, throughput, CPU per turn),
//! `soak` (RSS growth over `BENCH_SOAK_TURNS`, heap apart from mapped files),
//! `recovery`, `tools`, `exec`, `retrieval`.
//!
//! `BENCH_LOG=<file>` writes every line of the services' output there, with the
//! bench's own steps, in ms since the start (`RUST_LOG` sets their level).

/// Prints a line of the report; table rows are also kept for the JSON (`report`).
macro_rules! out {
    () => {
        crate::report::line("")
    };
    ($($t:tt)*) => {
        crate::report::line(&format!($($t)*))
    };
}

mod cpu;
mod exec;
mod front;
mod recovery;
mod report;
mod retrieval;
mod tools;

use std::{
    collections::HashMap,
    io::Write as _,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use nexus_bus::{Bus, TraceContext};
use nexus_common::{
    Config,
    domain::{ChannelName, inbound_id},
    now_ms,
    shutdown::CancellationToken,
};
use nexus_proto::v1::{
    ChatRef, Event, InboundKind, InboundMessage, OutboundMessage, Sender, event,
};
use nexus_testkit::fake_openai::{FakeOpenAi, Reply};
use prost::Message as _;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::oneshot,
};

const CHANNEL: &str = "bench";

/// A running `nexus up` in its own namespace and workspace.
struct Up {
    child: tokio::process::Child,
    pid: u32,
    startup: Duration,
    driver: Driver,
    namespace: String,
    nats_url: String,
    /// gateway-api, when started with [`Up::start_with_api`].
    api: Option<front::Api>,
    workspace: tempfile::TempDir,
}

impl Up {
    /// On the NATS at `NATS_URL`.
    async fn start(
        fake: &FakeOpenAi,
        agents: usize,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        Self::start_on(&nats_url, fake, agents, extra_env).await
    }

    async fn start_on(
        nats_url: &str,
        fake: &FakeOpenAi,
        agents: usize,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::launch(nats_url, fake, agents, extra_env, false).await
    }

    /// [`Up::start`] with gateway-api on a free loopback port and one API key.
    async fn start_with_api(fake: &FakeOpenAi) -> anyhow::Result<Self> {
        let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        Self::launch(&nats_url, fake, 1, &[], true).await
    }

    async fn launch(
        nats_url: &str,
        fake: &FakeOpenAi,
        agents: usize,
        extra_env: &[(&str, &str)],
        with_api: bool,
    ) -> anyhow::Result<Self> {
        let workspace = tempfile::tempdir()?;
        let namespace = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let nats_url = nats_url.to_owned();
        let config_file = workspace.path().join("bench.toml");
        let api = with_api.then(|| front::Api {
            url: format!("http://127.0.0.1:{}", free_port()),
            key: "bench-key-0123456789".to_owned(),
        });
        let mut api_env = Vec::new();
        match &api {
            Some(api) => {
                std::fs::write(
                    &config_file,
                    format!("[api.keys]\n\"{}\" = \"bench\"\n", api.key),
                )?;
                api_env.push((
                    "NEXUS__API__LISTEN",
                    api.url.trim_start_matches("http://").to_owned(),
                ));
                api_env.push((
                    "NEXUS__API__GRPC_LISTEN",
                    format!("127.0.0.1:{}", free_port()),
                ));
            }
            None => std::fs::write(&config_file, "")?,
        }
        let started = Instant::now();
        let mut child = Command::new(sibling("nexus")?)
            .args(["up", "--agents", &agents.to_string()])
            .env("NATS_URL", &nats_url)
            .env("NEXUS_NAMESPACE", &namespace)
            .env("NEXUS_WORKSPACE", workspace.path())
            .env("NEXUS_CONFIG", &config_file)
            .env("OPENAI_API_KEY", "sk-bench-00000000")
            .env("OPENAI_BASE_URL", fake.base_url())
            .env("NEXUS__LLM__MODEL", "gpt-4.1-mini")
            .env("NEXUS__LLM__STREAM", "false")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(extra_env.iter().copied())
            .envs(api_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nexus up")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(ready_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log_line(&line);
                if line.contains("] ready in ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(120), ready_rx)
            .await
            .context("nexus up did not become ready within 120s")??;
        let startup = started.elapsed();
        let pid = child.id().context("nexus up pid")?;
        // Connected the way a gateway is (reconnects within a second), since the
        // recovery figures include the driver's own reconnection.
        let config = Config::from_sources(
            None,
            [
                ("NATS_URL".to_owned(), nats_url.clone()),
                ("NEXUS_NAMESPACE".to_owned(), namespace.clone()),
            ],
        )?;
        let bus = Bus::connect(&config, "bench").await?;
        // Wait until every replica answers, so the load meets all of them.
        let deadline = Instant::now() + Duration::from_secs(60);
        while bus
            .discover_services(Duration::from_millis(300))
            .await?
            .iter()
            .filter(|s| s.name == "agent-core")
            .count()
            < agents
        {
            if Instant::now() > deadline {
                bail!("only some agent-core replicas started");
            }
        }
        let driver = Driver::start(bus).await?;
        Ok(Self {
            child,
            pid,
            startup,
            driver,
            namespace,
            nats_url,
            api,
            workspace,
        })
    }

    /// What `nexus chat` needs to reach this stack.
    fn cli_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("NATS_URL".to_owned(), self.nats_url.clone()),
            ("NEXUS_NAMESPACE".to_owned(), self.namespace.clone()),
            (
                "NEXUS_WORKSPACE".to_owned(),
                self.workspace.path().display().to_string(),
            ),
            (
                "NEXUS_CONFIG".to_owned(),
                self.workspace
                    .path()
                    .join("bench.toml")
                    .display()
                    .to_string(),
            ),
        ];
        env.extend(
            ["PATH", "HOME"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v))),
        );
        env
    }

    /// Waits until the services are idle: together they used at most one clock tick
    /// (10 ms) of CPU in the last second. Background work of the last load (the
    /// summaries of a journal's backlog, seconds after a soak) is over by then, and
    /// each service has given its free heap back (`nexus_common::malloc`, after
    /// 0.5 s idle). Two minutes at most.
    async fn settle(&self) {
        const QUIET: f64 = 0.011;
        const AT_MOST: Duration = Duration::from_secs(120);
        let started = Instant::now();
        let used = || -> f64 {
            children(self.pid)
                .iter()
                .filter_map(|c| cpu::cpu_secs(c.pid))
                .sum()
        };
        let mut last = used();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = used();
            if now - last <= QUIET || started.elapsed() > AT_MOST {
                break;
            }
            last = now;
        }
        log_line(&format!(
            "settled in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }

    /// Resident memory of each service once they are idle ([`Up::settle`]), split into
    /// anonymous memory and the rest.
    async fn settle_and_measure_split(&self) -> Vec<(String, RssSplit)> {
        self.settle().await;
        let mut out: Vec<_> = children(self.pid)
            .into_iter()
            .map(|c| (c.name, RssSplit::of(c.pid)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Turns per second with `sessions` concurrent sessions sending `per_session` messages each, in order.
    async fn throughput(&self, sessions: usize, per_session: usize) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for s in 0..sessions {
            let d = self.driver.clone();
            tasks.spawn(async move {
                for _ in 0..per_session {
                    d.turn(&format!("load-{s}")).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok((sessions * per_session) as f64 / t0.elapsed().as_secs_f64())
    }

    /// [`Up::throughput`], and the CPU each process spent per turn meanwhile.
    async fn throughput_with_cpu(
        &self,
        sessions: usize,
        per_session: usize,
    ) -> anyhow::Result<(f64, Vec<(String, f64)>)> {
        let before = cpu::sample(self.pid);
        let tps = self.throughput(sessions, per_session).await?;
        let used = cpu::per_turn(&before, &cpu::sample(self.pid), sessions * per_session);
        Ok((tps, used))
    }

    /// Stops the stack and deletes its streams.
    async fn stop(mut self) -> anyhow::Result<()> {
        self.driver.stop.cancel();
        nexus_common::process::terminate(self.pid);
        let _ = tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await;
        let client = nexus_bus::connect_options(&self.nats_url)?
            .connect(&self.nats_url)
            .await?;
        let js = async_nats::jetstream::new(client);
        let mut names = js.stream_names();
        let mut doomed = Vec::new();
        while let Some(Ok(name)) = names.next().await {
            if self.driver.bus.subjects().owns_stream(&name) {
                doomed.push(name);
            }
        }
        for name in doomed {
            let _ = js.delete_stream(&name).await;
        }
        Ok(())
    }
}

/// The parts `nexus-bench <part>` runs alone.
const PARTS: &[&str] = &[
    "recovery",
    "tools",
    "exec",
    "retrieval",
    "api",
    "turns",
    "soak",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // An unknown (or misspelt) part would otherwise run the whole bench, minutes of it.
    let part = std::env::args().nth(1);
    if let Some(part) = part.as_deref()
        && !PARTS.contains(&part)
    {
        bail!(
            "unknown part {part:?}: run nexus-bench alone for the whole bench, or one of {}",
            PARTS.join(", ")
        );
    }
    bench_epoch();
    let warm_turns: usize = env_or("BENCH_WARMUP", 20);
    let seq_turns: usize = env_or("BENCH_TURNS", 300);
    let sessions: usize = env_or("BENCH_SESSIONS", 100);
    let per_session: usize = env_or("BENCH_PER_SESSION", 5);
    let llm_ms: u64 = env_or("BENCH_REPLICA_LLM_MS", 50) as u64;
    let corpus_mb: usize = env_or("BENCH_CORPUS_MB", 10);
    let searches: usize = env_or("BENCH_SEARCHES", 200);
    let recovery = Recovery {
        sessions: env_or("BENCH_RECOVERY_SESSIONS", 10),
        rounds: env_or("BENCH_RECOVERY_ROUNDS", 3),
        outage: Duration::from_secs(3),
        kill_sessions: env_or("BENCH_KILL_SESSIONS", 20),
        kill_llm: Duration::from_millis(env_or("BENCH_KILL_LLM_MS", 2000) as u64),
    };
    // `nexus-bench recovery`: only the recovery figures.
    if part.as_deref() == Some("recovery") {
        let fake = FakeOpenAi::start(Reply::Text("ok".into())).await;
        let measured = recovery.run(&fake).await?;
        recovery.print(&measured);
        return Ok(());
    }
    // `nexus-bench tools`: only the tool-call figures.
    if part.as_deref() == Some("tools") {
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        tools::print(&tools::run(&url, env_or("BENCH_TOOL_CALLS", 300)).await?);
        return Ok(());
    }
    // `nexus-bench exec`: only the sandbox start-up figure.
    if part.as_deref() == Some("exec") {
        exec::print(&exec::run(env_or("BENCH_EXECS", 200))?);
        return Ok(());
    }
    // `nexus-bench retrieval`: only the memory figure, no NATS needed.
    if part.as_deref() == Some("retrieval") {
        let retrieval = retrieval::run(corpus_mb * 1024 * 1024, searches).await?;
        out!("| figure | value |");
        out!("|---|---|");
        print_retrieval(&retrieval, corpus_mb);
        return Ok(());
    }

    // `nexus-bench api`: only the warm turn through gateway-api's OpenAI endpoint,
    // client side (journaling as configured: NEXUS__MEMORY__JOURNAL=false turns it off).
    if part.as_deref() == Some("api") {
        let fake = FakeOpenAi::start(Reply::Text("ok".into())).await;
        fake.forget_requests();
        let up = Up::start_with_api(&fake).await?;
        let api = match &up.api {
            Some(api) => front::api_turns(api, warm_turns, env_or("BENCH_API_TURNS", 300)).await?,
            None => bail!("gateway-api was not started"),
        };
        up.stop().await?;
        out!("| figure | value |");
        out!("|---|---|");
        out!(
            "| warm turn through `POST /v1/chat/completions`, client side, p50 / p99 / p99.9 of {} | {} |",
            api.len(),
            p50_p99_p999(&api)
        );
        return Ok(());
    }

    // `nexus-bench turns`: only the turn path, quickly: latency, throughput and
    // where its CPU goes (for profiling between commits).
    if part.as_deref() == Some("turns") {
        let fake = FakeOpenAi::start(Reply::Text("ok".into())).await;
        fake.forget_requests();
        let up = Up::start(&fake, 1, &[("NEXUS__MEMORY__JOURNAL", "false")]).await?;
        let overhead = sequential_overhead(&up.driver, warm_turns, seq_turns).await?;
        let (tps, cpu) = up.throughput_with_cpu(sessions, per_session).await?;
        up.stop().await?;
        out!("| figure | value |");
        out!("|---|---|");
        out!(
            "| per-turn overhead p50 / p99 / p99.9, {seq_turns} sequential turns, journaling off | {} |",
            p50_p99_p999(&overhead)
        );
        out!(
            "| throughput, {sessions} sessions × {per_session} turns, journaling off | {tps:.0} turns/s |"
        );
        print_cpu(&cpu);
        return Ok(());
    }

    // `nexus-bench soak`: only the soak (journaling on, `BENCH_SOAK_TURNS` over
    // `BENCH_SESSIONS`): each service's RSS idle, then its growth, each split into
    // heap and mapped files, to tell a leak from SQLite's caches and mappings.
    if part.as_deref() == Some("soak") {
        let fake = FakeOpenAi::start(Reply::Text("ok".into())).await;
        fake.forget_requests();
        let up = Up::start(&fake, 1, &[]).await?;
        let idle = up.settle_and_measure_split().await;
        out!("| service | RSS idle | of it anonymous | of it files and shared memory | PSS idle |");
        out!("|---|---|---|---|---|");
        let mib = |kib: u64| kib as f64 / 1024.0;
        for (name, at) in &idle {
            out!(
                "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
                mib(at.rss),
                mib(at.anon),
                mib(at.rss - at.anon),
                mib(at.pss)
            );
        }
        out!(
            "| all | {:.1} MiB | | | {:.1} MiB |",
            mib(idle.iter().map(|(_, at)| at.rss).sum()),
            mib(idle.iter().map(|(_, at)| at.pss).sum())
        );
        up.throughput(sessions, per_session).await?;
        let before = up.settle_and_measure_split().await;
        let turns: usize = env_or("BENCH_SOAK_TURNS", 20_000);
        let started = Instant::now();
        let tps = up.throughput(sessions, turns.div_ceil(sessions)).await?;
        let secs = started.elapsed().as_secs();
        let after = up.settle_and_measure_split().await;
        up.stop().await?;
        out!(
            "| service | RSS growth over {turns} turns ({secs} s, {tps:.0} turns/s) | of it anonymous | of it files and shared memory |"
        );
        out!("|---|---|---|---|");
        for (name, a) in &after {
            let b = before
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| *b)
                .unwrap_or_default();
            let mib = |after: u64, before: u64| (after as f64 - before as f64) / 1024.0;
            out!(
                "| {name} | {:+.1} MiB | {:+.1} MiB | {:+.1} MiB |",
                mib(a.rss, b.rss),
                mib(a.anon, b.anon),
                mib(a.rss - a.anon, b.rss - b.anon)
            );
        }
        out!(
            "| all, idle after the load | {:.1} MiB RSS | {:.1} MiB PSS |",
            mib(after.iter().map(|(_, at)| at.rss).sum()),
            mib(after.iter().map(|(_, at)| at.pss).sum())
        );
        return Ok(());
    }

    let fake = FakeOpenAi::start(Reply::Text("ok".into())).await;
    let slow_llm_ms: u64 = env_or("BENCH_SLOW_LLM_MS", 800) as u64;
    let soak_turns: usize = env_or("BENCH_SOAK_TURNS", 100_000);
    let api_turns: usize = env_or("BENCH_API_TURNS", 300);
    let chat_runs: usize = env_or("BENCH_CHAT_RUNS", 20);

    // The turn path alone first: journaling off, so no summary runs beside it.
    let quiet = Up::start(&fake, 1, &[("NEXUS__MEMORY__JOURNAL", "false")]).await?;
    let overhead = sequential_overhead(&quiet.driver, warm_turns, seq_turns).await?;
    quiet.stop().await?;

    // The default (a summary of every 10 turns is written beside them, same CPUs),
    // with gateway-api: the front doors, throughput, memory idle and after a soak.
    // A fake of its own that keeps no prompts: the soak sends 100,000 of them.
    let soak_fake = FakeOpenAi::start(Reply::Text("ok".into())).await;
    soak_fake.forget_requests();
    let up = Up::start_with_api(&soak_fake).await?;
    let idle = up.settle_and_measure_split().await;
    let journaled = sequential_overhead(&up.driver, warm_turns, seq_turns).await?;
    let api = match &up.api {
        Some(api) => front::api_turns(api, warm_turns, api_turns).await?,
        None => bail!("gateway-api was not started"),
    };
    let chat = front::chat_runs(&sibling("nexus")?, &up.cli_env(), chat_runs).await?;
    let mut sweep = Vec::new();
    let mut counts = vec![10, 100, 1000, sessions];
    counts.sort_unstable();
    counts.dedup();
    let mut cpu = Vec::new();
    for n in counts {
        if n == sessions {
            let (tps, used) = up.throughput_with_cpu(n, per_session).await?;
            cpu = used;
            sweep.push((n, tps));
        } else {
            sweep.push((n, up.throughput(n, per_session).await?));
        }
    }
    soak_fake.set_delay(Duration::from_millis(slow_llm_ms));
    let slow = up.throughput(sessions, per_session).await?;
    soak_fake.set_delay(Duration::ZERO);
    let before_soak = up.settle_and_measure_split().await;
    let soak_started = Instant::now();
    up.throughput(sessions, soak_turns.div_ceil(sessions))
        .await?;
    let soak_secs = soak_started.elapsed().as_secs();
    let after_soak = up.settle_and_measure_split().await;
    let rss = peak_rss_of_children(up.pid);
    let (startup, namespace, nats_url) = (up.startup, up.namespace.clone(), up.nats_url.clone());
    up.stop().await?;

    // Replicas: the same load with 1, 2 and 4 agent-core processes, once with an
    // instant model (CPU-bound) and once with a model that takes `llm_ms`.
    let mut replicas = Vec::new();
    for delay in [0, llm_ms] {
        fake.set_delay(Duration::from_millis(delay));
        for agents in [1, 2, 4] {
            let up = Up::start(&fake, agents, &[]).await?;
            let tps = up.throughput(sessions, per_session).await?;
            up.stop().await?;
            replicas.push((delay, agents, tps));
        }
    }
    fake.set_delay(Duration::ZERO);

    let recovered = recovery.run(&fake).await?;

    let retrieval = retrieval::run(corpus_mb * 1024 * 1024, searches).await?;
    let tool_calls = tools::run(&nats_url, env_or("BENCH_TOOL_CALLS", 300)).await?;

    out!(
        "Nexus benchmark (namespace {namespace}, NATS {nats_url}, {} CPUs)",
        cpus()
    );
    out!();
    out!("| figure | value |");
    out!("|---|---|");
    let p = |sorted: &[Duration], q: f64| ms(percentile(sorted, q));
    out!(
        "| per-turn overhead p50 (publish → reply, LLM time excluded, {seq_turns} sequential turns, journaling off) | {:.2} ms |",
        p(&overhead, 50.0)
    );
    out!("| per-turn overhead p99 | {:.2} ms |", p(&overhead, 99.0));
    out!("| per-turn overhead p99.9 | {:.2} ms |", p(&overhead, 99.9));
    out!(
        "| per-turn overhead p50 / p99 with journaling on (a summary per 10 turns, beside them) | {:.2} / {:.2} ms |",
        p(&journaled, 50.0),
        p(&journaled, 99.0)
    );
    out!(
        "| warm turn through gateway-api's `POST /v1/chat/completions`, client side, p50 of {api_turns} | {:.2} ms |",
        p(&api, 50.0)
    );
    out!(
        "| the same, p99 / p99.9 | {:.2} / {:.2} ms |",
        p(&api, 99.0),
        p(&api, 99.9)
    );
    out!(
        "| `nexus chat -m` against the running stack, whole process, p50 of {chat_runs} | {:.1} ms |",
        p(&chat, 50.0)
    );
    for (n, tps) in &sweep {
        out!(
            "| throughput, {n} concurrent sessions × {per_session} turns, 1 agent-core | {tps:.0} turns/s |"
        );
    }
    out!(
        "| throughput, {sessions} sessions × {per_session} turns, model takes {slow_llm_ms} ms (concurrency, not a queue) | {slow:.0} turns/s |"
    );
    let idle_sum =
        |f: fn(&RssSplit) -> u64| idle.iter().map(|(_, at)| f(at)).sum::<u64>() as f64 / 1024.0;
    out!(
        "| memory of all services idle (RSS, sum of {}) | {:.1} MiB |",
        idle.len(),
        idle_sum(|at| at.rss)
    );
    out!(
        "| memory of all services idle (PSS, sum of {}: pages shared between them counted once) | {:.1} MiB |",
        idle.len(),
        idle_sum(|at| at.pss)
    );
    out!(
        "| of it anonymous (heap, stacks), sum of {} | {:.1} MiB |",
        idle.len(),
        idle_sum(|at| at.anon)
    );
    // Idle again after the soak: start-up's code pages are gone by then, the turn
    // path's and the background jobs' are back (`nexus_common::code_pages`).
    let sum_after = |f: fn(&RssSplit) -> u64| {
        after_soak.iter().map(|(_, at)| f(at)).sum::<u64>() as f64 / 1024.0
    };
    out!(
        "| memory of all services idle after the soak: RSS / PSS / anonymous, sum of {} | {:.1} / {:.1} / {:.1} MiB |",
        after_soak.len(),
        sum_after(|at| at.rss),
        sum_after(|at| at.pss),
        sum_after(|at| at.anon)
    );
    for (name, at) in &after_soak {
        let before = before_soak
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, b)| b.rss);
        out!(
            "| RSS growth of {name} over {soak_turns} turns ({soak_secs} s) | {:+.1} MiB |",
            (at.rss as f64 - before as f64) / 1024.0
        );
    }
    print_cpu(&cpu);
    for (name, kb) in &rss {
        out!("| peak RSS {name} | {:.1} MiB |", *kb as f64 / 1024.0);
    }
    out!(
        "| `nexus up` to ready (NATS already running) | {} ms |",
        startup.as_millis()
    );
    print_retrieval(&retrieval, corpus_mb);
    tools::print(&tool_calls);
    exec::print(&exec::run(env_or("BENCH_EXECS", 200))?);
    out!();
    out!(
        "| agent-core replicas | model latency | throughput ({sessions} sessions × {per_session}) |"
    );
    out!("|---|---|---|");
    for (delay, agents, tps) in replicas {
        out!("| {agents} | {delay} ms | {tps:.0} turns/s |");
    }
    out!();
    recovery.print(&recovered);
    let json = report::write(cpus())?;
    eprintln!("figures written to {}", json.display());
    Ok(())
}

/// The settings of the recovery figures.
struct Recovery {
    sessions: usize,
    rounds: usize,
    outage: Duration,
    kill_sessions: usize,
    kill_llm: Duration,
}

/// What [`Recovery::run`] measured; `None` where it could not run.
struct Recovered {
    restart: Option<Vec<recovery::RestartRound>>,
    kill: recovery::ReplicaKill,
}

impl Recovery {
    async fn run(&self, fake: &FakeOpenAi) -> anyhow::Result<Recovered> {
        let restart = if recovery::nats_server_available() {
            Some(recovery::nats_restart(fake, self.sessions, self.rounds, self.outage).await?)
        } else {
            None
        };
        let kill = recovery::replica_kill(fake, self.kill_sessions, self.kill_llm).await?;
        Ok(Recovered { restart, kill })
    }

    fn print(&self, r: &Recovered) {
        let (sessions, rounds) = (self.sessions, self.rounds);
        let outage = self.outage.as_secs();
        out!("| recovery | value |");
        out!("|---|---|");
        match &r.restart {
            None => out!("| NATS restart | skipped: nats-server is not on PATH |"),
            Some(restart) => {
                let row = |what: &str, each: Vec<Option<Duration>>| {
                    let list: Vec<_> = each.iter().map(|d| fmt_ms(*d)).collect();
                    out!(
                        "| NATS restart after a {outage} s outage, 1 agent-core, {sessions} sessions: restarted server ready → {what}, median of {rounds} rounds (each round) | {} ({}) |",
                        fmt_ms(median(each)),
                        list.join(", ")
                    );
                };
                row(
                    "first reply",
                    restart.iter().map(recovery::RestartRound::first).collect(),
                );
                row(
                    "first reply stored in the outbound stream",
                    restart.iter().map(|r| r.first_stored).collect(),
                );
                row(
                    &format!("all {sessions} sessions answered"),
                    restart.iter().map(recovery::RestartRound::all).collect(),
                );
            }
        }
        let k = &r.kill;
        let late = k.unanswered - k.after_kill.len();
        let mut each: Vec<_> = k.after_kill.iter().copied().map(Some).collect();
        each.extend(std::iter::repeat_n(None, late));
        let value = if k.unanswered == 0 {
            "every turn was answered before the kill".to_owned()
        } else {
            format!(
                "{} / {}",
                fmt_ms(median(each.clone())),
                fmt_ms(
                    each.iter()
                        .copied()
                        .max_by_key(|d| d.unwrap_or(Duration::MAX))
                        .flatten()
                )
            )
        };
        out!(
            "| agent-core replica SIGKILLed mid-turn, 2 replicas, {} sessions, model takes {} ms: kill → reply of the {} turns unanswered at the kill, median / max ({} model calls redone) | {value} |",
            self.kill_sessions,
            self.kill_llm.as_millis(),
            k.unanswered,
            k.redone,
        );
    }
}

/// The median, counting `None` (no reply in time) as the longest.
fn median(mut each: Vec<Option<Duration>>) -> Option<Duration> {
    each.sort_by_key(|d| d.unwrap_or(Duration::MAX));
    each.get(each.len() / 2).copied().flatten()
}

fn fmt_ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{} ms", d.as_millis()),
        None => format!("> {} s", recovery::LIMIT.as_secs()),
    }
}

/// Warm-up turns, then `turns` in one session, one at a time (latency without
/// queueing): each turn's time minus its LLM time, sorted.
async fn sequential_overhead(
    driver: &Driver,
    warm: usize,
    turns: usize,
) -> anyhow::Result<Vec<Duration>> {
    for i in 0..warm {
        driver.turn(&format!("warm-{}", i % 4)).await?;
    }
    let mut overhead = Vec::with_capacity(turns);
    for _ in 0..turns {
        let (total, llm) = driver.turn("seq").await?;
        overhead.push(total.saturating_sub(llm));
    }
    overhead.sort();
    Ok(overhead)
}

/// The table rows of where the CPU of a turn goes.
fn print_cpu(cpu: &[(String, f64)]) {
    let total: f64 = cpu.iter().map(|(_, ms)| ms).sum();
    out!(
        "| CPU per turn under load, all processes (the turns/s ceiling on 1 core: {:.0}) | {total:.2} ms |",
        1000.0 / total.max(f64::EPSILON)
    );
    for (name, ms) in cpu {
        out!("| CPU per turn, {name} | {ms:.2} ms |");
    }
}

/// The table rows of the memory retrieval figure.
fn print_retrieval(retrieval: &retrieval::Retrieval, corpus_mb: usize) {
    let searches = retrieval.searches.len();
    let corpus = format!(
        "{:.1} MB corpus, {} files",
        retrieval.corpus_bytes as f64 / (1024.0 * 1024.0),
        retrieval.files
    );
    out!(
        "| memory retrieval over a {corpus_mb} MB corpus (SQLite FTS5), p50 of {searches} searches ({corpus}) | {:.2} ms |",
        ms(percentile(&retrieval.searches, 50.0))
    );
    out!(
        "| memory retrieval over a {corpus_mb} MB corpus (SQLite FTS5), p99 | {:.2} ms |",
        ms(percentile(&retrieval.searches, 99.0))
    );
    out!(
        "| memory index build over the {corpus_mb} MB corpus (SQLite FTS5) | {} ms |",
        retrieval.index_build.as_millis()
    );
}

/// When a reply reached the driver, and when NATS stored it in `N_OUTBOUND`.
#[derive(Clone, Copy, Debug)]
struct Replied {
    received: Instant,
    stored: SystemTime,
}

/// Sends inbound messages and matches replies by `in_reply_to`.
#[derive(Clone)]
struct Driver {
    bus: Bus,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Replied>>>>,
    llm_ms: Arc<Mutex<HashMap<String, u64>>>,
    stop: CancellationToken,
}

impl Driver {
    async fn start(bus: Bus) -> anyhow::Result<Self> {
        let mut replies = open_replies(&bus, DeliverPolicy::New).await?;
        let mut usage = bus
            .subscribe(bus.subjects().event(nexus_bus::event_kind::LLM_USAGE))
            .await?;
        let d = Self {
            bus: bus.clone(),
            waiting: Arc::default(),
            llm_ms: Arc::default(),
            stop: CancellationToken::new(),
        };
        let waiting = d.waiting.clone();
        let stop = d.stop.clone();
        tokio::spawn(async move {
            let link = bus.link().clone();
            let mut state = link.state();
            let mut last_sequence = 0;
            loop {
                let reopen = tokio::select! {
                    _ = stop.cancelled() => return,
                    // The ordered consumer lives in the server's memory and is gone after
                    // a NATS restart; left to async-nats, replies came 80 s late. Reopen
                    // it at once, as a gateway's pulls are renewed.
                    _ = link.changed_from(state) => {
                        link.reconnected().await;
                        true
                    }
                    m = replies.next() => match m {
                        Some(Ok(m)) => {
                            let received = Instant::now();
                            let stored = m.info().map(|i| {
                                last_sequence = i.stream_sequence;
                                SystemTime::UNIX_EPOCH
                                    + Duration::from_nanos(
                                        u64::try_from(i.published.unix_timestamp_nanos())
                                            .unwrap_or(0),
                                    )
                            });
                            if let Ok(r) = OutboundMessage::decode(m.payload.clone())
                                && let Ok(mut w) = waiting.lock()
                                && let Some(tx) = w.remove(&r.in_reply_to)
                            {
                                let _ = tx.send(Replied {
                                    received,
                                    stored: stored.unwrap_or_else(|_| SystemTime::now()),
                                });
                            }
                            false
                        }
                        // The ordered consumer recreates itself after most errors.
                        Some(Err(_)) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            false
                        }
                        None => true,
                    },
                };
                if reopen {
                    state = link.state();
                    let policy = DeliverPolicy::ByStartSequence {
                        start_sequence: last_sequence + 1,
                    };
                    loop {
                        match open_replies(&bus, policy).await {
                            Ok(r) => break replies = r,
                            Err(_) if stop.is_cancelled() => return,
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
            }
        });
        let llm = d.llm_ms.clone();
        let stop = d.stop.clone();
        tokio::spawn(async move {
            while let Some(Some(m)) = stop.run_until_cancelled(usage.next()).await {
                if let Ok(Event {
                    kind: Some(event::Kind::LlmUsage(u)),
                    ..
                }) = Event::decode(m.payload)
                    && let Ok(mut l) = llm.lock()
                {
                    *l.entry(u.turn_id).or_default() += u.duration_ms;
                }
            }
        });
        Ok(d)
    }

    /// One turn; returns (publish → reply, time spent in LLM calls).
    async fn turn(&self, session: &str) -> anyhow::Result<(Duration, Duration)> {
        let t = Instant::now();
        let (id, rx) = self.send(session).await?;
        tokio::time::timeout(Duration::from_secs(120), rx)
            .await
            .context("no reply within 120s")??;
        let total = t.elapsed();
        // The usage event is emitted before the reply is published, but may arrive just after it.
        let mut llm = None;
        for _ in 0..50 {
            llm = self.llm_ms.lock().ok().and_then(|mut l| l.remove(&id));
            if llm.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok((total, Duration::from_millis(llm.unwrap_or(0))))
    }

    /// Stores a message in `session` (retrying, as a gateway does, until NATS takes
    /// it: it may be down or just back); returns its id and a wait for its reply.
    async fn send(&self, session: &str) -> anyhow::Result<(String, oneshot::Receiver<Replied>)> {
        let channel = ChannelName::parse(CHANNEL)?;
        let upstream = uuid::Uuid::new_v4().to_string();
        let id = inbound_id(&channel, &upstream);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id.clone(), tx);
        }
        let msg = InboundMessage {
            id: id.clone(),
            channel: CHANNEL.into(),
            chat: Some(ChatRef {
                chat_id: session.into(),
                ..Default::default()
            }),
            sender: Some(Sender {
                id: "bench".into(),
                ..Default::default()
            }),
            text: "ping".into(),
            upstream_id: upstream,
            sent_at_ms: now_ms(),
            received_at_ms: now_ms(),
            kind: InboundKind::User as i32,
            ..Default::default()
        };
        let trace = TraceContext::new_root();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The id is the idempotency key: a retry of a stored message is a duplicate.
            let attempt = self.bus.publish_inbound(&msg, &trace);
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(_)) => return Ok((id, rx)),
                Ok(Err(e)) if Instant::now() > deadline => return Err(e.into()),
                Err(_) if Instant::now() > deadline => bail!("publish timed out for 60 s"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// An ordered consumer of the bench channel's replies.
async fn open_replies(bus: &Bus, deliver_policy: DeliverPolicy) -> anyhow::Result<pull::Ordered> {
    let s = bus.subjects();
    Ok(bus
        .ordered_feed(
            &s.outbound_stream(),
            pull::OrderedConfig {
                filter_subject: s.outbound(&ChannelName::parse(CHANNEL)?),
                deliver_policy,
                ..Default::default()
            },
        )
        .await?
        .messages)
}

/// When the bench started, for the times in `BENCH_LOG`.
fn bench_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Appends a line to `BENCH_LOG`, if set, with the ms since the bench started.
fn log_line(line: &str) {
    static LOG: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let path = std::env::var_os("BENCH_LOG")?;
        std::fs::File::create(path).ok().map(Mutex::new)
    });
    if let Some(file) = log
        && let Ok(mut f) = file.lock()
    {
        let _ = writeln!(f, "{:>9} {line}", bench_epoch().elapsed().as_millis());
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join(name);
    if !p.exists() {
        bail!(
            "{} not found; run `cargo build --release --workspace --bins`",
            p.display()
        );
    }
    Ok(p)
}

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `p50 / p99 / p99.9 ms` of sorted durations, as the subcommands print them.
fn p50_p99_p999(sorted: &[Duration]) -> String {
    let p = |q: f64| ms(percentile(sorted, q));
    format!("{:.2} / {:.2} / {:.2} ms", p(50.0), p(99.0), p(99.9))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Peak resident memory (VmHWM, KiB) of each direct child of `parent`, by program name.
fn peak_rss_of_children(parent: u32) -> Vec<(String, u64)> {
    let mut out: Vec<_> = children(parent)
        .into_iter()
        .map(|c| (c.name, c.peak_rss_kib))
        .collect();
    out.sort();
    out
}

/// A direct child process, from `/proc`.
struct ChildProcess {
    pid: u32,
    name: String,
    peak_rss_kib: u64,
}

/// A process's resident memory (KiB) and how much of it is anonymous (heap,
/// stacks) rather than mapped files or shared memory (SQLite's WAL index).
#[derive(Clone, Copy, Default)]
struct RssSplit {
    rss: u64,
    anon: u64,
    /// RSS with each page shared with other processes (libc, say) divided among
    /// them: summed over the services, what they hold together.
    pss: u64,
}

impl RssSplit {
    fn of(pid: u32) -> Self {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss: field("Rss:"),
            anon: field("Anonymous:"),
            pss: field("Pss:"),
        }
    }
}

/// The direct children of `parent`, in pid order.
fn children(parent: u32) -> Vec<ChildProcess> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        if field("PPid:").and_then(|p| p.parse::<u32>().ok()) != Some(parent) {
            continue;
        }
        out.push(ChildProcess {
            pid,
            name: field("Name:").unwrap_or_default(),
            peak_rss_kib: field("VmHWM:")
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
                .unwrap_or(0),
        });
    }
    out.sort_by_key(|c| c.pid);
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
