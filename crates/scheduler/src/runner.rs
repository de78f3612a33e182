//! The tick loop: sleeps until the soonest due time (or a wake-up, or at most
//! [`MAX_SLEEP`]), claims every due time in SQL, and publishes the fires to
//! `N_INBOUND`. Every replica runs it; the claim decides which one fires.
//!
//! Order of effects for one due time, which exactly-once depends on:
//! 1. claim: `next_run_ms` moves on and the fire (with its message) is recorded,
//!    in one transaction, by exactly one replica;
//! 2. publish under `Nats-Msg-Id = sched:<job>:<due ms>`, waiting for the PubAck;
//! 3. record the fire as published.
//!
//! A crash after 1 leaves a fire that any replica publishes again (after
//! [`REPUBLISH_AFTER`]); a crash after 2 republishes a fire JetStream already
//! has, and its duplicate window drops the copy. It must never publish a fire it
//! has not claimed, nor give up on a claimed one.

use std::{sync::Arc, time::Duration};

use nexus_bus::{Bus, TraceContext};
use nexus_common::{
    domain::{fire_id, scheduled},
    now_ms,
};
use nexus_proto::v1::{ChatRef, InboundKind, InboundMessage, Sender};
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    job::Job,
    schedule::{self, plan},
    store::{Claim, Store},
};

/// Longest sleep between passes, so a job another replica added (or a fire it
/// left unpublished) is noticed without a message between replicas.
pub const MAX_SLEEP: Duration = Duration::from_secs(5);
/// A fire still unpublished this long after its claim is published by whoever sees it.
pub const REPUBLISH_AFTER: Duration = Duration::from_secs(10);
/// Due jobs claimed per query.
const BATCH: u32 = 64;
/// Published fires and finished one-shots are kept this long (operators read them).
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Pause after a pass failed (database or NATS down).
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// One replica's tick loop.
#[derive(Clone)]
pub struct Runner {
    store: Store,
    bus: Bus,
    /// Who claims, in `scheduler_fires.claimed_by`.
    instance: String,
    grace: Duration,
    wake: Arc<Notify>,
}

/// What a pass left behind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Fires this pass published.
    pub fired: u32,
    /// Claimed fires still not in the stream (retried soon).
    pub unpublished: u32,
}

impl Runner {
    pub fn new(store: Store, bus: Bus, instance: String, grace: Duration) -> Self {
        Self {
            store,
            bus,
            instance,
            grace,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Makes the loop look again now (a job was added or resumed here).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs passes until `shutdown`. A pass in flight finishes first: its claims
    /// are published, or left for any replica to publish.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut last_prune = 0i64;
        loop {
            let now = now_ms();
            let sleep = match self.pass(now).await {
                Ok(pass) => {
                    if now - last_prune > 3_600_000 {
                        last_prune = now;
                        self.prune(now).await;
                    }
                    self.sleep_after(pass).await
                }
                Err(error) => {
                    tracing::warn!(%error, "scheduler pass failed; trying again");
                    ERROR_PAUSE
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// How long to sleep: until the soonest due time, bounded.
    async fn sleep_after(&self, pass: Pass) -> Duration {
        if pass.unpublished > 0 {
            return ERROR_PAUSE;
        }
        match self.store.next_due_ms().await {
            Ok(Some(next)) => {
                let wait = u64::try_from(next.saturating_sub(now_ms())).unwrap_or(0);
                Duration::from_millis(wait).min(MAX_SLEEP)
            }
            Ok(None) => MAX_SLEEP,
            Err(error) => {
                tracing::warn!(%error, "cannot read the next due time");
                ERROR_PAUSE
            }
        }
    }

    /// Publishes fires left unpublished, then claims and fires everything due at `now`.
    pub async fn pass(&self, now: i64) -> Result<Pass, crate::store::StoreError> {
        let mut pass = Pass::default();
        let stale = now - i64::try_from(REPUBLISH_AFTER.as_millis()).unwrap_or(0);
        for fire in self.store.unpublished(stale, BATCH).await? {
            if InboundMessage::decode(fire.payload.as_slice()).is_err() {
                // Only a damaged row gets here; retrying it forever would hold the loop.
                tracing::error!(
                    job = fire.job_id,
                    due_ms = fire.due_ms,
                    "a claimed fire cannot be read; dropped"
                );
                self.store
                    .mark_published(
                        &fire.job_id,
                        fire.due_ms,
                        now_ms(),
                        Some("fire record unreadable; dropped"),
                    )
                    .await?;
                continue;
            }
            match self.publish(&fire.job_id, fire.due_ms, fire.payload).await {
                Ok(()) => {
                    tracing::info!(
                        job = fire.job_id,
                        due_ms = fire.due_ms,
                        "claimed fire published again"
                    );
                    self.store
                        .mark_published(
                            &fire.job_id,
                            fire.due_ms,
                            now_ms(),
                            Some("fired (published after a retry)"),
                        )
                        .await?;
                }
                Err(error) => {
                    tracing::warn!(%error, job = fire.job_id, "claimed fire still not published");
                    pass.unpublished += 1;
                }
            }
        }
        // Each round moves every job it sees past its due time (or loses it to
        // another replica), so this ends; the bound only caps one pass's work.
        for _ in 0..16 {
            let due = self.store.due(now, BATCH).await?;
            let full = due.len() == BATCH as usize;
            for job in due {
                self.settle(&job, now, &mut pass).await?;
            }
            if !full {
                break;
            }
        }
        Ok(pass)
    }

    /// Claims the job's due time and, if this replica won it and the plan says
    /// so, publishes the fire.
    async fn settle(
        &self,
        job: &Job,
        now: i64,
        pass: &mut Pass,
    ) -> Result<(), crate::store::StoreError> {
        let Some(due) = job.next_run_ms else {
            return Ok(());
        };
        let tz = job.time_zone();
        let plan = plan(&job.schedule, &tz, job.missed, due, now, self.grace);
        let outcome = match (plan.fire, plan.late) {
            (true, false) => "fired".to_owned(),
            (true, true) => format!(
                "fired late (due {}, missed while the scheduler was down)",
                schedule::local_time(due, &job.tz)
            ),
            (false, _) => format!(
                "skipped the fire due {} (missed while the scheduler was down)",
                schedule::local_time(due, &job.tz)
            ),
        };
        let message = plan.fire.then(|| fire_message(job, due, plan.late, now));
        let claim = Claim {
            job_id: job.id.clone(),
            due_ms: due,
            next_ms: plan.next_ms,
            last_run_ms: plan.fire.then_some(due),
            outcome: if plan.fire {
                format!("claimed; publishing ({outcome})")
            } else {
                outcome.clone()
            },
            fire: message.as_ref().map(|m| m.encode_to_vec()),
            by: self.instance.clone(),
            now_ms: now,
        };
        if !self.store.claim(&claim).await? {
            tracing::debug!(job = job.id, due_ms = due, "due time claimed elsewhere");
            return Ok(());
        }
        let Some(message) = message else {
            tracing::info!(
                job = job.id,
                due_ms = due,
                "missed fire skipped, as the job says"
            );
            return Ok(());
        };
        tracing::info!(job = job.id, due_ms = due, late = plan.late, next_ms = ?plan.next_ms, "due time claimed");
        match self.publish(&job.id, due, message.encode_to_vec()).await {
            Ok(()) => {
                pass.fired += 1;
                self.store
                    .mark_published(&job.id, due, now_ms(), Some(&outcome))
                    .await?;
            }
            Err(error) => {
                tracing::warn!(%error, job = job.id, "fire not published yet; retrying");
                pass.unpublished += 1;
                self.store
                    .note(
                        &job.id,
                        due,
                        &format!("not published yet ({error}); retrying"),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn publish(&self, job_id: &str, due_ms: i64, payload: Vec<u8>) -> Result<(), String> {
        let msg = InboundMessage::decode(payload.as_slice()).map_err(|e| e.to_string())?;
        let stored = self
            .bus
            .publish_inbound_as(&msg, &fire_id(job_id, due_ms), &TraceContext::new_root())
            .await
            .map_err(|e| e.to_string())?;
        if stored.duplicate {
            tracing::info!(job = job_id, due_ms, "fire was already in the stream");
        }
        Ok(())
    }

    async fn prune(&self, now: i64) {
        let before = now - i64::try_from(KEEP.as_millis()).unwrap_or(0);
        match self.store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "old fires and finished one-shot jobs forgotten"),
            Err(error) => tracing::warn!(%error, "pruning old fires failed"),
        }
    }
}

/// The inbound message of one fire: on the job's chat, from its owner, kind
/// SCHEDULED, under the id its due time gives.
pub fn fire_message(job: &Job, due_ms: i64, late: bool, now: i64) -> InboundMessage {
    let mut metadata = std::collections::HashMap::from([
        (scheduled::JOB_ID.to_owned(), job.id.clone()),
        (scheduled::DUE_MS.to_owned(), due_ms.to_string()),
        (scheduled::SCHEDULE.to_owned(), job.describe()),
    ]);
    if late {
        metadata.insert(scheduled::LATE.to_owned(), "true".to_owned());
    }
    InboundMessage {
        id: fire_id(&job.id, due_ms),
        channel: job.origin.channel.clone(),
        chat: Some(ChatRef {
            chat_id: job.origin.chat_id.clone(),
            thread_id: job.origin.thread_id.clone(),
            is_group: false,
        }),
        sender: Some(Sender {
            id: job.owner.clone(),
            display_name: format!("scheduled job {}", job.id),
            user_id: job.owner.clone(),
        }),
        text: job.message.clone(),
        media: Vec::new(),
        reply_to_upstream_id: String::new(),
        upstream_id: String::new(),
        sent_at_ms: due_ms,
        received_at_ms: now,
        kind: InboundKind::Scheduled as i32,
        metadata,
    }
}
