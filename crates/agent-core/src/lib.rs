//! agent-core: the brain. Consumes `N_INBOUND`, runs turns, publishes replies.
//!
//! Ordering: `N_INBOUND` is split into `INBOUND_PARTITIONS` partitions by session
//! (`N.inbound.<channel>.<p>`). Each partition has one durable consumer with
//! `max_ack_pending = 1`, shared by every replica: a session's turns run one at a
//! time and in order, whichever replica takes them, even across crashes; different
//! partitions run in parallel on all replicas.
//!
//! It holds no state and touches no disk: context comes from memory-svc and
//! tools run in tool-runner, both over NATS. That is what makes replicas free.

pub mod agent;
mod approvals;
pub mod commands;
pub mod context;
pub mod journal;
pub mod limits;
pub mod llm;
pub mod message;
pub mod progress;
mod recent;
pub mod scheduled;
pub mod tasks;
pub mod tools;
pub mod turn;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use nexus_bus::{Bus, INBOUND_PARTITIONS, InProgress, Outcome, Puller, TraceContext, settle};
use nexus_common::{Config, shutdown::CancellationToken};
use nexus_proto::v1::InboundMessage;
use tokio::{sync::Semaphore, task::JoinSet};

use crate::{
    agent::Agent,
    commands::Command,
    llm::{
        ChatModel,
        genai_model::{GenaiModel, ProviderEnv},
        retry::RetryPolicy,
        router::ModelRouter,
    },
    tools::ToolDirectory,
    turn::Turn,
};

/// Runs agent-core until `shutdown` is cancelled, with the production model client.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let model = GenaiModel::new(
        ProviderEnv::from_env(),
        Duration::from_secs(config.llm.request_timeout_secs.max(1)),
        config.llm.stream,
    )?;
    run_with_model(config, Arc::new(model), shutdown).await
}

/// Runs agent-core with any [`ChatModel`].
pub async fn run_with_model(
    config: Config,
    model: Arc<dyn ChatModel>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let bus = Bus::connect(&config, "agent-core").await?;
    bus.ensure_streams().await.context("creating streams")?;

    let ack_wait = Duration::from_secs(config.agent.ack_wait_secs.max(2));
    let (wake, woken) = if config.memory.journal {
        let (wake, woken) = journal::Wake::channel();
        (wake, Some(woken))
    } else {
        (journal::Wake::default(), None)
    };
    // The consumers and the first tool announcements together: each is a round trip
    // or a wait of its own, and `nexus up` is ready only when agent-core is.
    let s = bus.subjects();
    let partitions = futures::future::try_join_all((0..INBOUND_PARTITIONS).map(|p| {
        let (stream, durable, filter) = (
            s.inbound_stream(),
            s.agent_consumer(p),
            s.inbound_partition_filter(p),
        );
        let bus = &bus;
        let max_deliver = config.agent.max_deliver;
        async move {
            bus.durable_consumer(&stream, &durable, filter, ack_wait, max_deliver, 1)
                .await
                .with_context(|| format!("creating the consumer of inbound partition {p}"))
        }
    }));
    let directory = async {
        ToolDirectory::start(bus.clone(), Arc::new(config.clone()), shutdown.clone())
            .await
            .context("following the tools' announcements")
    };
    let (consumers, tools) = tokio::try_join!(partitions, directory)?;
    let agent = Arc::new(Agent {
        bus: bus.clone(),
        model,
        router: ModelRouter::new(
            RetryPolicy {
                max_retries: config.llm.max_retries,
                base_delay: Duration::from_millis(config.llm.retry_base_ms),
                max_delay: Duration::from_secs(30),
            },
            Duration::from_secs(config.llm.cooldown_secs),
        ),
        tools,
        providers: ProviderEnv::from_env(),
        approvals: tokio::sync::OnceCell::new(),
        config: Arc::new(config.clone()),
        journal: wake,
        tasks_kv: tokio::sync::OnceCell::new(),
        task_files: Default::default(),
        limits_kv: tokio::sync::OnceCell::new(),
        user_limits_kv: tokio::sync::OnceCell::new(),
        user_limits_seen: Default::default(),
        settings_kv: tokio::sync::OnceCell::new(),
        model_for_everyone: Default::default(),
    });
    let running = Running::default();

    let router = bus
        .durable_consumer(
            &s.inbound_stream(),
            &s.router_consumer(),
            s.inbound_unpartitioned(),
            ack_wait,
            config.agent.max_deliver,
            1,
        )
        .await
        .context("creating the inbound router consumer")?;
    let task_queue = bus
        .durable_consumer(
            &s.tasks_stream(),
            &s.tasks_consumer(),
            s.tasks(),
            ack_wait,
            config.agent.max_deliver,
            i64::from(config.subagents.max_running_total.max(1)),
        )
        .await
        .context("creating the tasks consumer")?;
    // Every inbound message is also seen live, so /stop can cancel a turn in flight
    // even though it queues behind that turn in its partition.
    let live = bus
        .subscribe(s.inbound_all())
        .await
        .context("subscribing to inbound traffic")?;

    let slots = Arc::new(Semaphore::new(config.agent.concurrency));
    let mut tasks = JoinSet::new();
    for consumer in consumers {
        tasks.spawn(partition_loop(
            agent.clone(),
            consumer,
            slots.clone(),
            running.clone(),
            ack_wait,
            shutdown.clone(),
        ));
    }
    tasks.spawn(router_loop(agent.clone(), router, shutdown.clone()));
    // What waits for the partitions, for the `nexus.queue.depth` gauge (when metrics are on).
    tasks.spawn(bus.clone().sample_queue_depth(
        s.inbound_stream(),
        // `<ns>_agent-core-p`: every partition's consumer, not the router's.
        s.agent_consumer(0).trim_end_matches('0').to_owned(),
        "agent-core".to_owned(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::tasks::run(
        agent.clone(),
        task_queue,
        ack_wait,
        shutdown.clone(),
    ));
    let watcher = tokio::spawn(watch_for_stop(live, running.clone(), shutdown.clone()));
    // Summaries run beside the turns, never in front of them.
    let journal =
        woken.map(|woken| tokio::spawn(journal::run(agent.clone(), woken, shutdown.clone())));
    // Registered last: a replica that answers `$SRV.PING` (nexus status, nexus up's
    // readiness) is already pulling its partitions.
    let service = bus
        .register_service(
            "agent-core",
            &format!(
                "Nexus reasoning loop (JetStream consumer of {})",
                bus.subjects().inbound_all()
            ),
        )
        .await?;
    tracing::info!(namespace = %config.namespace, model = %config.llm.model, "agent-core ready");

    shutdown.cancelled().await;
    // Loops stop pulling; turns in flight finish within the grace period.
    let grace = Duration::from_secs(config.agent.shutdown_grace_secs);
    tracing::info!(grace_secs = grace.as_secs(), "draining");
    let drained = tokio::time::timeout(grace, async {
        while let Some(r) = tasks.join_next().await {
            if let Err(error) = r {
                tracing::error!(%error, "consumer task failed");
            }
        }
    })
    .await;
    if drained.is_err() {
        // Unacked messages are redelivered to another replica: nothing is lost.
        tracing::warn!("grace period over; leaving turns in flight to redelivery");
        tasks.shutdown().await;
    }
    let _ = watcher.await;
    if let Some(journal) = journal {
        let _ = journal.await;
    }
    let _ = service.stop().await;
    bus.drain().await;
    tracing::info!("agent-core stopped");
    Ok(())
}

/// Turns running on this replica, by session, so /stop can cancel them.
#[derive(Default, Clone)]
struct Running(Arc<Mutex<HashMap<String, CancellationToken>>>);

impl Running {
    fn start(&self, session: &str) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut m) = self.0.lock() {
            m.insert(session.to_owned(), token.clone());
        }
        token
    }
    fn finish(&self, session: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(session);
        }
    }
    fn stop(&self, session: &str) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(session).cloned())
            .map(|t| t.cancel())
            .is_some()
    }
}

async fn watch_for_stop(
    mut live: async_nats::Subscriber,
    running: Running,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = live.next() => match m { Some(m) => m, None => break },
        };
        if let Ok(m) = nexus_bus::decode::<InboundMessage>(&msg.payload)
            && Command::is_stop(&m.text)
            && m.kind != nexus_proto::v1::InboundKind::Scheduled as i32
            && let Ok(turn) = Turn::parse(m, TraceContext::new_root())
            && running.stop(&turn.session.id())
        {
            tracing::info!(session = %turn.session, "turn cancelled by /stop");
        }
    }
    let _ = live.unsubscribe().await;
}

/// Pulls one partition until shutdown. `max_ack_pending = 1` on the consumer means at
/// most one of its messages is in flight across all replicas.
async fn partition_loop(
    agent: Arc<Agent>,
    consumer: PullConsumer,
    slots: Arc<Semaphore>,
    running: Running,
    ack_wait: Duration,
    shutdown: CancellationToken,
) {
    let mut puller = match Puller::new(&agent.bus, &consumer).await {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(%error, "cannot pull an inbound partition");
            return;
        }
    };
    while let Some(msg) = puller.next(&shutdown).await {
        // Keep the message ours in JetStream while it waits for a slot and runs.
        let _in_progress = InProgress::keep(&msg, ack_wait);
        let Ok(_permit) = slots.acquire().await else {
            break;
        };
        process(&agent, &msg, &running).await;
    }
}

async fn process(agent: &Agent, msg: &jetstream::Message, running: &Running) {
    let trace = TraceContext::from_headers(msg.headers.as_ref());
    // The turn's span, child of the gateway's intake (carried in `traceparent`).
    let span = tracing::info_span!(
        "turn",
        otel.kind = tracing::field::Empty,
        trace_id = trace.trace_id()
    );
    nexus_common::telemetry::name_span(&span, "consumer", || "turn".to_owned());
    let span = trace.span(span);
    tracing::Instrument::instrument(process_in_span(agent, msg, running, trace), span).await;
}

async fn process_in_span(
    agent: &Agent,
    msg: &jetstream::Message,
    running: &Running,
    trace: TraceContext,
) {
    let started = std::time::Instant::now();
    let outcome = match nexus_bus::decode::<InboundMessage>(&msg.payload) {
        Err(e) => Outcome::Poison {
            reason: e.to_string(),
        },
        Ok(inbound) => match Turn::parse(inbound, trace) {
            Err(reason) => Outcome::Poison { reason },
            Ok(turn) => {
                let session = turn.session.id();
                let stop = if Command::is_stop(&turn.msg.text) {
                    CancellationToken::new()
                } else {
                    running.start(&session)
                };
                let outcome = agent.run_turn(&turn, &stop).await;
                if !Command::is_stop(&turn.msg.text) {
                    running.finish(&session);
                }
                outcome
            }
        },
    };
    let name = match &outcome {
        Outcome::Ack => "ack",
        Outcome::Retry { .. } => "retry",
        Outcome::Poison { .. } => "poison",
    };
    nexus_common::telemetry::metrics().turn(name, started.elapsed().as_secs_f64());
    settle(&agent.bus, msg, outcome, agent.config.agent.max_deliver).await;
}

/// Moves messages published on the plain `N.inbound.<channel>` to their partition
/// (their id gets a `#routed` suffix, since the original id is already in the stream);
/// undecodable ones are dead-lettered.
async fn router_loop(agent: Arc<Agent>, consumer: PullConsumer, shutdown: CancellationToken) {
    let mut puller = match Puller::new(&agent.bus, &consumer).await {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(%error, "cannot pull unpartitioned inbound messages");
            return;
        }
    };
    while let Some(msg) = puller.next(&shutdown).await {
        let trace = TraceContext::from_headers(msg.headers.as_ref());
        let outcome = match nexus_bus::decode::<InboundMessage>(&msg.payload) {
            Err(e) => Outcome::Poison {
                reason: e.to_string(),
            },
            Ok(inbound) => match Turn::parse(inbound.clone(), trace.clone()) {
                Err(reason) => Outcome::Poison { reason },
                Ok(_) => match agent
                    .bus
                    .publish_inbound_as(&inbound, &format!("{}#routed", inbound.id), &trace)
                    .await
                {
                    Ok(_) => Outcome::Ack,
                    Err(e) => Outcome::Retry {
                        delay: Duration::from_secs(1),
                        reason: e.to_string(),
                    },
                },
            },
        };
        settle(&agent.bus, &msg, outcome, agent.config.agent.max_deliver).await;
    }
}
