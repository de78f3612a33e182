//! The usage ledger's intake: a durable consumer of the `llm_usage` events on
//! `N_EVENTS`, shared by every memory-svc replica and taken one event at a
//! time, so the store's cursor sees them in stream order and counts each once.
//! The ledger outlives the events stream's few days of retention; `nexus usage`
//! reads it through the `usage` op.
//!
//! It must never drop an event it could not count: a database failure naks it
//! for later, and the events behind it wait.

use std::time::Duration;

use jiff::Timestamp;
use nexus_bus::{Bus, InProgress, Outcome, Puller, event_kind, settle};
use nexus_common::shutdown::CancellationToken;
use nexus_proto::v1::{Event, event};

use crate::store::{SessionStore, StoreError, UsageKey};

/// How long one event may take to be counted before it is redelivered.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// Wait before trying an event again after a database failure.
const RETRY_AFTER: Duration = Duration::from_secs(2);
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
                1,
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
    while let Some(msg) = puller.next(&shutdown).await {
        let _in_progress = InProgress::keep(&msg, ACK_WAIT);
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let outcome = match count(&store, &name, seq, &msg.payload).await {
            Ok(()) => Outcome::Ack,
            Err(error) => Outcome::Retry {
                delay: RETRY_AFTER,
                reason: format!("usage not recorded: {error}"),
            },
        };
        settle(&bus, &msg, outcome, i64::MAX).await;
    }
}

/// Adds one event to the ledger; anything that is not a usage event is skipped.
async fn count(
    store: &SessionStore,
    consumer: &str,
    seq: u64,
    payload: &[u8],
) -> Result<(), StoreError> {
    let Ok(Event {
        at_ms,
        kind: Some(event::Kind::LlmUsage(u)),
        ..
    }) = nexus_bus::decode::<Event>(payload)
    else {
        tracing::warn!(seq, "not an llm_usage event on the usage subject; skipped");
        return Ok(());
    };
    let key = UsageKey {
        day: utc_day(at_ms),
        user_id: u.user_id,
        channel: u.channel,
        model: u.model,
        purpose: if u.purpose.is_empty() {
            DEFAULT_PURPOSE.to_owned()
        } else {
            u.purpose
        },
    };
    store
        .record_usage(
            consumer,
            seq,
            &key,
            u64::from(u.input_tokens),
            u64::from(u.output_tokens),
        )
        .await
        .map(|_| ())
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
