//! The usage ledger's intake: a durable consumer of the `llm_usage` events on
//! `N_EVENTS`, shared by every memory-svc replica. Events are taken in batches (the
//! next one and those already waiting, up to 64) and counted in one
//! transaction; the store records each event's sequence, so a redelivery counts
//! nothing and two replicas' batches may finish in either order. One event at a
//! time cost a pull, a transaction and a confirmed ack per model call: about an
//! eighth of the stack's CPU per turn under load.
//! The ledger outlives the events stream's few days of retention; `nexus usage`
//! reads it through the `usage` op.
//!
//! It must never drop an event it could not count: a database failure naks the
//! batch for later.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use nexus_bus::{Bus, Outcome, Puller, event_kind, settle};
use nexus_common::shutdown::CancellationToken;
use nexus_proto::v1::{Event, event};

use crate::store::{SessionStore, UsageEvent, UsageKey};

/// How long one event may take to be counted before it is redelivered (and then
/// counted by whoever gets it, once).
const ACK_WAIT: Duration = Duration::from_secs(5);
/// Events counted in one transaction at most (and unacknowledged at once).
const BATCH: usize = 64;
/// Wait before trying an event again after a database failure.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How often the sequences of events the stream no longer holds are forgotten.
const SETTLE_EVERY: Duration = Duration::from_secs(600);
/// `purpose` of events from agent-cores that did not say.
const DEFAULT_PURPOSE: &str = "turn";

/// Counts usage events until `shutdown`.
pub async fn run(bus: Bus, store: SessionStore, shutdown: CancellationToken) {
    let s = bus.subjects();
    let name = s.usage_consumer();
    // max_deliver -1: an event is retried until it is counted, never dead-lettered.
    // The events stream may not exist yet (agent-core creates it): wait for it.
    let mut logged = false;
    let consumer = loop {
        match bus
            .durable_consumer(
                &s.events_stream(),
                &name,
                s.event(event_kind::LLM_USAGE),
                ACK_WAIT,
                -1,
                BATCH as i64,
            )
            .await
        {
            Ok(c) => break c,
            Err(error) => {
                if !logged {
                    tracing::warn!(%error, "usage ledger waiting for the events stream");
                    logged = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
            }
        }
    };
    let mut puller = match Puller::new(&bus, &consumer).await {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(%error, "usage ledger not fed: cannot pull usage events");
            return;
        }
    };
    let mut settled_at: Option<Instant> = None;
    while let Some(batch) = puller.next_batch(BATCH, &shutdown).await {
        let events: Vec<UsageEvent> = batch
            .iter()
            .filter_map(|msg| {
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                usage_event(seq, &msg.payload)
            })
            .collect();
        let recorded = if events.is_empty() {
            Ok(0)
        } else {
            store.record_usage_batch(&name, &events).await
        };
        let outcome = match recorded {
            Ok(_) => Outcome::Ack,
            Err(error) => Outcome::Retry {
                delay: RETRY_AFTER,
                reason: format!("usage not recorded: {error}"),
            },
        };
        let settling = batch
            .iter()
            .map(|msg| settle(&bus, msg, outcome.clone(), i64::MAX));
        futures::future::join_all(settling).await;
        if settled_at.is_none_or(|at| at.elapsed() >= SETTLE_EVERY) {
            settled_at = Some(Instant::now());
            settle_expired(&bus, &store, &name).await;
        }
    }
}

/// Raises the ledger's floor to just below the events stream's first sequence:
/// what the stream dropped cannot be delivered again, so its recorded sequences go.
async fn settle_expired(bus: &Bus, store: &SessionStore, consumer: &str) {
    let Some(state) = bus.stream_state(&bus.subjects().events_stream()).await else {
        return;
    };
    let first = state.first_sequence;
    if let Err(error) = store
        .settle_usage_below(consumer, first.saturating_sub(1))
        .await
    {
        tracing::warn!(%error, "counted usage sequences not pruned; trying again later");
    }
}

/// The ledger's view of one event; `None` (skipped, and acked) for anything that
/// is not a usage event.
fn usage_event(seq: u64, payload: &[u8]) -> Option<UsageEvent> {
    let Ok(Event {
        at_ms,
        kind: Some(event::Kind::LlmUsage(u)),
        ..
    }) = nexus_bus::decode::<Event>(payload)
    else {
        tracing::warn!(seq, "not an llm_usage event on the usage subject; skipped");
        return None;
    };
    Some(UsageEvent {
        seq,
        key: UsageKey {
            day: utc_day(at_ms),
            user_id: u.user_id,
            channel: u.channel,
            model: u.model,
            purpose: if u.purpose.is_empty() {
                DEFAULT_PURPOSE.to_owned()
            } else {
                u.purpose
            },
        },
        input_tokens: u64::from(u.input_tokens),
        output_tokens: u64::from(u.output_tokens),
    })
}

/// `YYYY-MM-DD` of an instant, in UTC (the ledger's days, like most bills).
pub fn utc_day(at_ms: i64) -> String {
    Timestamp::from_millisecond(at_ms)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%d")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::utc_day;

    #[test]
    fn days_are_utc() {
        // 2026-11-24 23:30 UTC.
        assert_eq!(utc_day(1_795_563_000_000), "2026-11-24");
        assert_eq!(utc_day(0), "1970-01-01");
    }
}
