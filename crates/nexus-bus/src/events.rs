//! Events on `N.events.<kind>`: best effort, or resent until stored when counted from.

use std::time::Duration;

use bytes::Bytes;
use nexus_common::{backoff::Backoff, now_ms};
use nexus_proto::v1::{Event, event};
use prost::Message;

use crate::{Bus, BusError, TraceContext, event_kind};

/// How long an event that is counted from is retried before it is given up.
pub const EVENT_PATIENCE: Duration = Duration::from_secs(60);
/// How long a best-effort event may wait to be sent, and then for its ack.
const EVENT_WAIT: Duration = Duration::from_secs(5);

impl Bus {
    /// Records an event on `N.events.<kind>`. Events are best effort: a failure is logged, not returned.
    pub async fn emit(&self, kind: event::Kind) {
        let (subject, payload) = self.event(kind);
        let result = async {
            self.js
                .publish(subject.clone(), payload)
                .await
                .map_err(BusError::nats)?
                .await
                .map_err(BusError::nats)
        };
        if let Err(error) = tokio::time::timeout(EVENT_WAIT, result)
            .await
            .unwrap_or_else(|_| Err(BusError::Nats("timed out".into())))
        {
            tracing::warn!(%error, subject, "event not recorded");
        }
    }

    /// Like [`emit`](Self::emit), but returns once the event is on its way instead of
    /// stored: for the events of every turn, where waiting for JetStream's ack put a
    /// round trip in front of each reply. One connection's events keep their order; a
    /// failure is still logged (by a task that waits for the ack); `drain` sends what
    /// is queued before a process exits.
    pub async fn emit_soon(&self, kind: event::Kind) {
        let (subject, payload) = self.event(kind);
        let queued = tokio::time::timeout(EVENT_WAIT, self.js.publish(subject.clone(), payload));
        let ack = match queued.await {
            Ok(Ok(ack)) => ack,
            Ok(Err(error)) => {
                return tracing::warn!(%error, subject, "event not recorded");
            }
            Err(_) => return tracing::warn!(subject, "event not recorded: timed out"),
        };
        tokio::spawn(async move {
            match tokio::time::timeout(EVENT_WAIT, ack).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, subject, "event not recorded"),
                Err(_) => tracing::warn!(subject, "event not recorded: timed out"),
            }
        });
    }

    /// Records an event that something is counted from (LLM usage: the ledger and
    /// budgets): stored under an id of its own and sent again, waiting for the
    /// connection, until JetStream has it or `EVENT_PATIENCE` passed. A NATS outage
    /// then neither loses it nor, since the id dedupes a resend, counts it twice.
    pub async fn emit_counted(&self, kind: event::Kind) {
        let (subject, payload) = self.event(kind);
        let id = format!("event:{}", uuid::Uuid::new_v4().simple());
        let deadline = tokio::time::Instant::now() + EVENT_PATIENCE;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let sent = if self.link.connected(left).await {
                self.publish_durable(
                    subject.clone(),
                    &id,
                    &TraceContext::new_root(),
                    payload.clone(),
                )
                .await
            } else {
                Err(BusError::Nats("not connected".into()))
            };
            match sent {
                Ok(_) => return,
                Err(error) if tokio::time::Instant::now() + backoff.peek() < deadline => {
                    tracing::debug!(%error, subject, "counted event not stored yet; sending it again");
                    tokio::time::sleep(backoff.fail()).await;
                }
                Err(error) => {
                    tracing::error!(%error, subject, "counted event lost: NATS did not take it in time");
                    return;
                }
            }
        }
    }
}

impl Bus {
    /// The subject and encoded body of an event from this service.
    fn event(&self, kind: event::Kind) -> (String, Bytes) {
        let subject = self.subjects.event(event_name(&kind));
        let event = Event {
            at_ms: now_ms(),
            source: self.source.clone(),
            kind: Some(kind),
        };
        (subject, event.encode_to_vec().into())
    }
}

fn event_name(kind: &event::Kind) -> &'static str {
    match kind {
        event::Kind::TurnStarted(_) => event_kind::TURN_STARTED,
        event::Kind::TurnFinished(_) => event_kind::TURN_FINISHED,
        event::Kind::ToolCalled(_) => event_kind::TOOL_CALLED,
        event::Kind::LlmUsage(_) => event_kind::LLM_USAGE,
        event::Kind::Approval(_) => event_kind::APPROVAL,
        event::Kind::DeadLetter(_) => event_kind::DEAD_LETTER,
        event::Kind::Service(_) => event_kind::SERVICE,
        event::Kind::Journal(_) => event_kind::JOURNAL,
        event::Kind::LimitReached(_) => event_kind::LIMIT_REACHED,
        event::Kind::Pairing(_) => event_kind::PAIRING,
    }
}
