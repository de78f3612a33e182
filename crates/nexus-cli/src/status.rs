//! `nexus status`: live replicas (NATS service API), tool providers (their
//! announcements: tools, MCP servers, tools not offered and why), the scheduler's
//! jobs and next fire, and stream backlogs.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use clap::Args;
use nexus_bus::Bus;
use nexus_common::Config;
use serde_json::json;

#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Milliseconds to wait for replicas to answer.
    #[arg(long, default_value_t = 750)]
    wait_ms: u64,
}

pub async fn run(config: Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&config, "nexus-status").await?;
    // Asked first, so the providers' answers arrive while the services are pinged.
    let stop = nexus_common::shutdown::CancellationToken::new();
    let tools = nexus_tools::ToolDirectory::start(&bus, stop.clone()).await?;
    let instances = bus
        .discover_services(Duration::from_millis(args.wait_ms))
        .await?;
    let providers = tools.providers();
    stop.cancel();
    let mut by_name: BTreeMap<&str, Vec<&nexus_bus::ServiceInstance>> = BTreeMap::new();
    for i in &instances {
        by_name.entry(i.name.as_str()).or_default().push(i);
    }

    // The scheduler's jobs, when a replica runs: how many, and the next due fire.
    let jobs = if by_name.contains_key("scheduler") {
        let list = nexus_proto::v1::ListJobsRequest {
            owner_user_id: String::new(),
            limit: 1,
        };
        crate::cron::ask::<_, nexus_proto::v1::ListJobsResponse>(
            &bus,
            &config,
            nexus_bus::scheduler_op::LIST,
            &list,
        )
        .await
        .ok()
    } else {
        None
    };
    let next_fire = jobs
        .as_ref()
        .and_then(|r| r.jobs.first())
        .filter(|j| !j.paused && j.next_run_ms > 0);

    let s = bus.subjects();
    let mut streams = Vec::new();
    for name in [
        s.inbound_stream(),
        s.outbound_stream(),
        s.events_stream(),
        s.deadletter_stream(),
        // Sub-agent tasks queued or running (a work queue: done ones are gone).
        s.tasks_stream(),
    ] {
        let info = bus
            .stream_state(&name)
            .await
            .map(|st| (st.messages, st.bytes));
        streams.push((name, info));
    }
    // The agent's backlog is spread over the inbound partitions' consumers.
    let consumer = match bus.stream(&s.inbound_stream()).await {
        Ok(st) => {
            let mut total: Option<(u64, usize, usize)> = None;
            for p in 0..nexus_bus::INBOUND_PARTITIONS {
                if let Ok(mut c) = st
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                        &s.agent_consumer(p),
                    )
                    .await
                    && let Ok(i) = c.info().await
                {
                    let t = total.get_or_insert((0, 0, 0));
                    t.0 += i.num_pending;
                    t.1 += i.num_ack_pending;
                    t.2 += i.num_redelivered;
                }
            }
            total
        }
        Err(_) => None,
    };
    // What services last reported about themselves (watchdogs, pairing, outages), last 24 h.
    let mut health: BTreeMap<String, (i64, nexus_proto::v1::ServiceNotice)> = BTreeMap::new();
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(24);
    crate::whatsapp::scan_service_events(
        &bus,
        async_nats::jetstream::consumer::DeliverPolicy::ByStartTime { start_time: since },
        None,
        |at, n| {
            health.insert(n.service.clone(), (at, n));
        },
    )
    .await?;

    // How the journal writer fared over the same 24 h.
    let mut journal = JournalHealth::default();
    crate::whatsapp::scan_events(
        &bus,
        nexus_bus::event_kind::JOURNAL,
        async_nats::jetstream::consumer::DeliverPolicy::ByStartTime { start_time: since },
        |at, kind| {
            if let nexus_proto::v1::event::Kind::Journal(j) = kind {
                journal.add(at, j);
            }
        },
    )
    .await?;

    if args.json {
        let out = json!({
            "namespace": config.namespace,
            "nats": config.nats.url,
            "services": instances,
            "streams": streams.iter().map(|(n, i)| json!({"name": n, "messages": i.map(|x| x.0), "bytes": i.map(|x| x.1)})).collect::<Vec<_>>(),
            "agent_consumer": consumer.map(|(p, a, r)| json!({"pending": p, "ack_pending": a, "redelivered": r})),
            "health": health.iter().map(|(svc, (at, n))| json!({"service": svc, "status": n.status, "detail": n.detail, "at_ms": at})).collect::<Vec<_>>(),
            "journal_24h": journal.json(),
            "scheduler": jobs.as_ref().map(|r| json!({
                "jobs": r.total, "active": r.active, "paused": r.paused,
                "next_fire": next_fire.map(|j| json!({
                    "at_ms": j.next_run_ms, "job": j.id, "owner": j.owner_user_id, "schedule": j.schedule,
                })),
            })),
            "tool_providers": providers.iter().map(|p| json!({
                "provider": p.provider, "instance": p.instance, "version": p.version,
                "tools": p.tools, "status": p.status,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }

    println!("namespace {}  nats {}", config.namespace, config.nats.url);
    println!();
    println!("{:<18} {:>9}  {:<10} ids", "SERVICE", "REPLICAS", "VERSION");
    if by_name.is_empty() {
        println!("(no live services; start them with `nexus up`)");
    }
    for (name, list) in &by_name {
        let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        println!(
            "{:<18} {:>9}  {:<10} {}",
            name,
            list.len(),
            list[0].version,
            ids.join(",")
        );
    }
    print_tools(&providers);
    if let Some(r) = &jobs {
        println!();
        let next = match next_fire {
            Some(j) => format!(
                "next fire {}: {} of {} ({})",
                crate::cron::when_text(j.next_run_ms, nexus_common::now_ms()),
                j.id,
                j.owner_user_id,
                j.schedule
            ),
            None => "nothing due".to_owned(),
        };
        println!(
            "scheduler: {} job(s), {} waiting to fire, {} paused; {next}",
            r.total, r.active, r.paused
        );
    }
    println!();
    println!("{:<22} {:>10} {:>12}", "STREAM", "MESSAGES", "BYTES");
    for (name, info) in &streams {
        match info {
            Some((m, b)) => println!("{name:<22} {m:>10} {b:>12}"),
            None => println!("{name:<22} {:>10} {:>12}", "-", "-"),
        }
    }
    if let Some((pending, ack_pending, redelivered)) = consumer {
        println!();
        println!(
            "agent-core backlog: {pending} waiting, {ack_pending} in progress, {redelivered} redelivered"
        );
    }
    if let Some(line) = journal.line(nexus_common::now_ms()) {
        println!();
        println!("{line}");
    }
    if !health.is_empty() {
        println!();
        println!(
            "{:<18} {:<12} {:>8}  detail",
            "REPORTED BY", "STATUS", "AGO"
        );
        let now = nexus_common::now_ms();
        for (svc, (at, n)) in &health {
            // A QR code is long; say one is waiting rather than print it.
            let detail = if n.status == "qr" {
                "scan it with `nexus whatsapp login`"
            } else {
                n.detail.as_str()
            };
            let ago = crate::whatsapp::ago(now.saturating_sub(*at));
            println!("{svc:<18} {:<12} {ago:>8}  {detail}", n.status);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Tool providers, their tool counts, and what each reports about itself (MCP
/// servers and their health, tools it does not offer and why).
fn print_tools(providers: &[nexus_tools::LiveProvider]) {
    println!();
    println!("{:<18} {:>6}  reports", "TOOL PROVIDER", "TOOLS");
    if providers.is_empty() {
        println!("(no tool provider announces tools: the agent has none)");
    }
    let mut by_name: BTreeMap<&str, Vec<&nexus_tools::LiveProvider>> = BTreeMap::new();
    for p in providers {
        by_name.entry(p.provider.as_str()).or_default().push(p);
    }
    for (name, list) in by_name {
        // Replicas announce the same tools and health; show the freshest.
        let Some(p) = list.iter().min_by_key(|p| p.age) else {
            continue;
        };
        let replicas = if list.len() > 1 {
            format!(" (×{})", list.len())
        } else {
            String::new()
        };
        println!(
            "{:<18} {:>6}  {}",
            format!("{name}{replicas}"),
            p.tools.len(),
            p.tools.join(" ")
        );
        for (key, value) in &p.status {
            println!("{:<18} {:>6}  {key}: {value}", "", "");
        }
    }
}

/// Journal summaries of the last 24 h, from `journal` events.
#[derive(Default)]
struct JournalHealth {
    written: u64,
    turns: u64,
    failed: u64,
    last_ok_ms: Option<i64>,
    last_failure: Option<(i64, String)>,
}

impl JournalHealth {
    fn add(&mut self, at_ms: i64, j: nexus_proto::v1::JournalWritten) {
        if j.ok {
            self.written += 1;
            self.turns += u64::from(j.turns);
            self.last_ok_ms = Some(at_ms);
        } else {
            self.failed += 1;
            self.last_failure = Some((at_ms, j.error));
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "summaries": self.written,
            "turns": self.turns,
            "failed": self.failed,
            "last_ok_ms": self.last_ok_ms,
            "last_failure": self.last_failure.as_ref().map(|(at, e)| json!({"at_ms": at, "error": e})),
        })
    }

    /// One line for people; `None` when nothing was journaled or tried.
    fn line(&self, now_ms: i64) -> Option<String> {
        if self.written == 0 && self.failed == 0 {
            return None;
        }
        let mut out = format!(
            "journal (24 h): {} summar{} of {} turn{}",
            self.written,
            if self.written == 1 { "y" } else { "ies" },
            self.turns,
            if self.turns == 1 { "" } else { "s" },
        );
        if let Some(at) = self.last_ok_ms {
            out.push_str(&format!(
                ", last {} ago",
                crate::whatsapp::ago(now_ms.saturating_sub(at))
            ));
        }
        if let Some((at, error)) = &self.last_failure {
            out.push_str(&format!(
                "; {} failed, last {} ago: {error}",
                self.failed,
                crate::whatsapp::ago(now_ms.saturating_sub(*at))
            ));
        }
        Some(out)
    }
}
