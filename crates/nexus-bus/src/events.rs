//! Events on `N.events.<kind>`: best effort, or resent until stored when counted from.

use std::time::Duration;

use bytes::Bytes;
use nexus_common::now_ms;
use nexus_proto::v1::{Event, event};
use prost::Message;

use crate::{Bus, BusError, TraceContext, event_kind};

/// How long an event that is counted from is retried before it is given up.
pub const EVENT_PATIENCE: Duration = Duration::from_secs(60);

impl Bus {
    /// Records an event on `N.events.<kind>`. Events are best effort: a failure is logged, not returned.
    pub async fn emit(&self, kind: event::Kind) {
        let name = event_name(&kind);
        let event = Event {
            at_ms: now_ms(),
            source: self.source.clone(),
            kind: Some(kind),
        };
        let subject = self.subjects.event(name);
        let result = async {
            self.js
                .publish(subject.clone(), event.encode_to_vec().into())
                .await
                .map_err(BusError::nats)?
                .await
                .map_err(BusError::nats)
        };
        if let Err(error) = tokio::time::timeout(Duration::from_secs(5), result)
            .await
            .unwrap_or_else(|_| Err(BusError::Nats("timed out".into())))
        {
            tracing::warn!(%error, subject, "event not recorded");
        }
    }

    /// Records an event that something is counted from (LLM usage: the ledger and
    /// budgets): stored under an id of its own and sent again, waiting for the
    /// connection, until JetStream has it or `EVENT_PATIENCE` passed. A NATS outage
    /// then neither loses it nor, since the id dedupes a resend, counts it twice.
    pub async fn emit_counted(&self, kind: event::Kind) {
        let name = event_name(&kind);
        let event = Event {
            at_ms: now_ms(),
            source: self.source.clone(),
            kind: Some(kind),
        };
        let id = format!("event:{}", uuid::Uuid::new_v4().simple());
        let payload: Bytes = event.encode_to_vec().into();
        let subject = self.subjects.event(name);
        let deadline = tokio::time::Instant::now() + EVENT_PATIENCE;
        let mut wait = Duration::from_millis(100);
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
                Err(error) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::debug!(%error, subject, "counted event not stored yet; sending it again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    tracing::error!(%error, subject, "counted event lost: NATS did not take it in time");
                    return;
                }
            }
        }
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
