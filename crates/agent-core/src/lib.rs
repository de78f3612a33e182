//! agent-core: the brain. Consumes `N.inbound.*` through one durable JetStream
//! consumer shared by all replicas, runs turns, and publishes replies.
//!
//! It holds no state and touches no disk: context comes from memory-svc and
//! tools run in tool-runner, both over NATS. That is what makes replicas free.

pub mod context;
pub mod llm;
pub mod tools;
pub mod turn;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use nexus_bus::{Bus, Outcome, TraceContext, settle};
use nexus_common::{Config, shutdown::CancellationToken};
use nexus_proto::v1::InboundMessage;
use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    llm::{
        ChatModel,
        genai_model::{GenaiModel, ProviderEnv},
        retry::RetryPolicy,
    },
    tools::ToolDirectory,
    turn::{Agent, Turn},
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
    let service = bus
        .register_service(
            "agent-core",
            "Nexus reasoning loop (JetStream consumer of N.inbound)",
        )
        .await?;

    let s = bus.subjects();
    let ack_wait = Duration::from_secs(config.agent.ack_wait_secs.max(5));
    let consumer = bus
        .durable_consumer(
            &s.inbound_stream(),
            &s.agent_consumer(),
            s.inbound_all(),
            ack_wait,
            config.agent.max_deliver,
        )
        .await
        .context("creating the inbound consumer")?;

    let agent = Arc::new(Agent {
        bus: bus.clone(),
        model,
        tools: ToolDirectory::new(bus.clone()),
        retry: RetryPolicy {
            max_retries: config.llm.max_retries,
            base_delay: Duration::from_millis(config.llm.retry_base_ms),
            max_delay: Duration::from_secs(30),
        },
        config: Arc::new(config.clone()),
    });

    let concurrency = config.agent.concurrency;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(concurrency)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .context("starting to pull inbound messages")?;
    tracing::info!(namespace = %config.namespace, model = %config.llm.model, "agent-core ready");

    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let sessions = SessionQueues::default();
    let mut workers = JoinSet::new();
    loop {
        // A slot is taken before pulling, so a replica holds at most `concurrency` messages.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = messages.next() => m,
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(error)) => {
                tracing::warn!(%error, "pulling inbound messages failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            None => break,
        };
        let job = Job {
            msg,
            _permit: permit,
            _heartbeat: None,
        };
        dispatch(job, &agent, &sessions, &mut workers, ack_wait);
        // Reap finished workers so the set does not grow without bound.
        while let Some(r) = workers.try_join_next() {
            if let Err(error) = r {
                tracing::error!(%error, "turn worker panicked");
            }
        }
    }

    // Stop pulling; let turns in flight finish within the grace period.
    drop(messages);
    let grace = Duration::from_secs(config.agent.shutdown_grace_secs);
    tracing::info!(
        in_flight = workers.len(),
        grace_secs = grace.as_secs(),
        "draining"
    );
    sessions.close();
    let drained = tokio::time::timeout(grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Unacked messages are redelivered to another replica: nothing is lost.
        tracing::warn!("grace period over; abandoning turns in flight to redelivery");
        workers.shutdown().await;
    }
    let _ = service.stop().await;
    bus.drain().await;
    tracing::info!("agent-core stopped");
    Ok(())
}

/// One pulled message, its concurrency slot, and its ack-progress heartbeat.
struct Job {
    msg: jetstream::Message,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _heartbeat: Option<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Per-session FIFO queues: turns of one session run one at a time, in order;
/// different sessions run in parallel.
#[derive(Default, Clone)]
struct SessionQueues {
    inner: Arc<Mutex<SessionMap>>,
}

#[derive(Default)]
struct SessionMap {
    queues: HashMap<String, mpsc::UnboundedSender<Job>>,
    closed: bool,
}

impl SessionQueues {
    fn close(&self) {
        if let Ok(mut m) = self.inner.lock() {
            m.closed = true;
            m.queues.clear();
        }
    }
}

fn dispatch(
    mut job: Job,
    agent: &Arc<Agent>,
    sessions: &SessionQueues,
    workers: &mut JoinSet<()>,
    ack_wait: Duration,
) {
    // Keep the message alive in JetStream while it waits or runs.
    let progress = job.msg.clone();
    job._heartbeat = Some(AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(ack_wait / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            if progress
                .ack_with(jetstream::AckKind::Progress)
                .await
                .is_err()
            {
                return;
            }
        }
    })));

    let key = session_key_of(&job.msg);
    let Ok(mut map) = sessions.inner.lock() else {
        return;
    };
    if map.closed {
        return;
    }
    if let Some(tx) = map.queues.get(&key) {
        match tx.send(job) {
            Ok(()) => return,
            Err(mpsc::error::SendError(j)) => job = j,
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    let _ = tx.send(job);
    map.queues.insert(key.clone(), tx);
    drop(map);

    let agent = agent.clone();
    let sessions = sessions.clone();
    workers.spawn(async move {
        loop {
            let job = match rx.try_recv() {
                Ok(j) => j,
                Err(_) => {
                    // Leave only when nothing is queued, checked under the lock the dispatcher uses.
                    let Ok(mut map) = sessions.inner.lock() else {
                        return;
                    };
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(_) => {
                            map.queues.remove(&key);
                            return;
                        }
                    }
                }
            };
            process(&agent, job).await;
        }
    });
}

/// The session a raw message belongs to, for ordering. Undecodable messages get
/// a key of their own: they are dead-lettered without waiting on anyone.
fn session_key_of(msg: &jetstream::Message) -> String {
    match nexus_bus::decode::<InboundMessage>(&msg.payload) {
        Ok(m) => {
            let chat = m.chat.unwrap_or_default();
            format!(
                "{}\u{1f}{}\u{1f}{}",
                m.channel, chat.chat_id, chat.thread_id
            )
        }
        Err(_) => format!("\u{1f}poison\u{1f}{}", msg.subject),
    }
}

async fn process(agent: &Agent, job: Job) {
    let msg = &job.msg;
    let trace = TraceContext::from_headers(msg.headers.as_ref());
    let outcome = match nexus_bus::decode::<InboundMessage>(&msg.payload) {
        Err(e) => Outcome::Poison {
            reason: e.to_string(),
        },
        Ok(inbound) => match Turn::parse(inbound, trace) {
            Err(reason) => Outcome::Poison { reason },
            Ok(turn) => agent.run_turn(&turn).await,
        },
    };
    settle(&agent.bus, msg, outcome, agent.config.agent.max_deliver).await;
}
