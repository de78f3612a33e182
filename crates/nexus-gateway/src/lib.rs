//! The channel-independent half of every gateway.
//!
//! A gateway crate (`gateway-telegram`, `gateway-slack`, …) knows its platform's
//! payloads; this crate knows the guarantees around them:
//! - [`Gateway::intake`] returns only after JetStream stored the message, so the
//!   caller acknowledges upstream (Telegram offset, Slack 200, WhatsApp receipt) after it;
//! - the idempotency key is `<channel>:<upstream id>`, so platform retries start no second turn;
//! - [`Gateway::access`] applies `[channels.<name>] allow_from` (empty = nobody, `"*"` = everyone);
//! - [`Gateway::admit`] adds the senders admins approved, and under `dm_policy = "pairing"`
//!   gives a stranger a one-time code ([`pairing`]) instead of silence;
//! - [`Gateway::deliver`] drains `N.outbound.<channel>` through a durable consumer,
//!   acks after the platform accepted a reply and the record of it is stored, and
//!   never sends a reply it delivered (or cannot tell whether it did);
//! - [`PartLog`] remembers how much of a multi-part reply was posted, across restarts.
//!
//! It must never know a platform's wire format.

pub mod pairing;
mod records;

use std::{future::Future, time::Duration};

use async_nats::{jetstream, service::Service};
use nexus_bus::{Bus, BusError, InProgress, Outcome, Puller, Stored, TraceContext, kv_key, settle};
use nexus_common::{
    Config,
    config::{ChannelConfig, DmPolicy},
    domain::{ChannelName, default_user_id, inbound_id},
    now_ms,
    shutdown::CancellationToken,
};
use nexus_proto::v1::{InboundMessage, OutboundMessage};
use pairing::{Pairing, Requested, Stranger};
use prost::Message as _;
pub use records::PartLog;
use records::Records;

/// How long delivered-reply ids are remembered (longer than any redelivery).
const DELIVERED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a reply in delivery stays ours without a progress ack: a crashed
/// gateway's reply goes to another replica (or its restart) this soon. Progress
/// acks every third of it cover slow platforms and rate limits.
const OUTBOUND_ACK_WAIT: Duration = Duration::from_secs(5);

/// Whether a sender may talk to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Denied,
}

/// What a sender's message may do, by `allow_from`, stored approvals and `dm_policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Taken in; `user_id` is set when an admin paired the sender to a user.
    Allowed { user_id: Option<String> },
    /// Not allowed under `allowlist`: the gateway's one-time notice with their id applies.
    NotAllowed,
    /// Not allowed under `pairing`: send `notice` (their new code) if set, else stay quiet.
    /// The message goes nowhere either way.
    Pairing { notice: Option<String> },
}

/// Why a reply could not be handed to the platform.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later (rate limit, platform down, network).
    #[error("{reason}")]
    Retry { reason: String, after: Duration },
    /// Will never work (chat gone, bot blocked): dead-letter it.
    #[error("{0}")]
    Permanent(String),
}

/// A connected gateway for one channel.
pub struct Gateway {
    bus: Bus,
    channel: ChannelName,
    settings: ChannelConfig,
    max_deliver: i64,
    service: Service,
    records: Records,
    pairing: Pairing,
}

impl Gateway {
    /// Connects, creates the streams, and registers `gateway-<channel>` with the service API.
    pub async fn connect(config: &Config, channel: &str) -> anyhow::Result<Self> {
        let channel = ChannelName::parse(channel)?;
        let service_name = format!("gateway-{channel}");
        let bus = Bus::connect(config, &service_name).await?;
        bus.ensure_streams().await?;
        let records = bus
            .ensure_kv_bucket(
                &bus.subjects().delivered_bucket(&channel),
                1,
                Some(DELIVERED_TTL),
                "reply ids delivered upstream",
            )
            .await?;
        let records = Records::new(records, bus.link().clone());
        let service = bus
            .register_service(&service_name, &format!("{channel} ↔ NATS"))
            .await?;
        let pairing = Pairing::open(&bus).await?;
        Ok(Self {
            bus,
            settings: config.channel(channel.as_str()),
            channel,
            max_deliver: 10,
            service,
            records,
            pairing,
        })
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }
    /// This channel's `[channels.<name>]` table.
    pub fn settings(&self) -> &ChannelConfig {
        &self.settings
    }
    /// The `gateway-<channel>` service registration, for channel-specific endpoints.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Applies the allow-list to a sender id (and any alias the channel knows, e.g. phone and LID).
    pub fn access(&self, sender_ids: &[&str]) -> Access {
        access(&self.settings.allow_from, sender_ids)
    }

    /// Decides on a sender: `allow_from` (any of `ids`), else an approval stored for
    /// `who.sender_id`, else `dm_policy`. Pairing happens only in a direct chat
    /// (`in_group` false); in groups strangers are treated as under the allow-list.
    /// `Err`: the state in NATS could not be read; do not confirm upstream, try again.
    pub async fn admit(
        &self,
        ids: &[&str],
        who: Stranger<'_>,
        in_group: bool,
    ) -> Result<Admission, pairing::PairingError> {
        if self.access(ids) == Access::Allowed {
            return Ok(Admission::Allowed { user_id: None });
        }
        if let Some(approval) = self.pairing.approval(&self.channel, who.sender_id).await? {
            return Ok(Admission::Allowed {
                user_id: Some(approval.user_id),
            });
        }
        if self.settings.dm_policy != DmPolicy::Pairing || in_group {
            return Ok(Admission::NotAllowed);
        }
        let ttl = self.settings.pairing_code_ttl_secs;
        let notice = match self
            .pairing
            .request(
                &self.channel,
                who,
                ttl,
                self.settings.pairing_max_pending,
                now_ms(),
            )
            .await?
        {
            Requested::Issued(code) => Some(pairing::code_notice(&code.code, ttl)),
            Requested::Waiting | Requested::Rejected | Requested::Full => None,
        };
        Ok(Admission::Pairing { notice })
    }

    /// The user id for an admitted sender: the one they were paired to, else the default.
    pub fn admitted_user_id(&self, admitted: &Admission, sender_id: &str) -> String {
        match admitted {
            Admission::Allowed {
                user_id: Some(user_id),
            } => user_id.clone(),
            _ => self.user_id(sender_id),
        }
    }

    /// True the first time a denied sender is seen, so the notice with their id is sent once.
    pub async fn first_denial(&self, sender_id: &str) -> bool {
        let bucket = self.bus.subjects().denied_bucket(&self.channel);
        let key = kv_key(sender_id);
        match self
            .bus
            .ensure_kv_bucket(
                &bucket,
                1,
                None,
                "senders already told they are not allowed",
            )
            .await
        {
            // `create` fails when the key exists: exactly one notice even across replicas.
            Ok(kv) => match kv.create(&key, now_ms().to_string().into()).await {
                Ok(_) => true,
                Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                    false
                }
                Err(error) => {
                    // Better a second notice than none.
                    tracing::warn!(%error, "denied-sender record not stored; sending the notice");
                    true
                }
            },
            Err(error) => {
                tracing::warn!(%error, "denied-sender bucket unavailable; sending the notice");
                true
            }
        }
    }

    /// Builds the inbound message for an upstream message (ids derived here).
    pub fn inbound(&self, upstream_id: &str) -> InboundMessage {
        InboundMessage {
            id: inbound_id(&self.channel, upstream_id),
            channel: self.channel.to_string(),
            upstream_id: upstream_id.to_owned(),
            received_at_ms: now_ms(),
            kind: nexus_proto::v1::InboundKind::User as i32,
            ..Default::default()
        }
    }

    /// The default user id for a sender of this channel.
    pub fn user_id(&self, sender_id: &str) -> String {
        default_user_id(&self.channel, sender_id)
    }

    /// Stores an inbound message in `N_INBOUND`. Acknowledge upstream only after `Ok`.
    /// A duplicate (platform retry) is `Ok` with `duplicate = true`.
    pub async fn intake(&self, msg: &InboundMessage) -> Result<Stored, BusError> {
        // The root of the turn's trace: agent-core's turn, its model and tool calls,
        // memory-svc and the delivery all descend from this span.
        let span = tracing::info_span!(
            parent: None,
            "intake",
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            channel = %self.channel,
            message = %msg.id,
        );
        nexus_common::telemetry::name_span(&span, "producer", || {
            format!("intake {}", self.channel)
        });
        let stored = tracing::Instrument::instrument(
            self.bus.publish_inbound(msg, &TraceContext::new_root()),
            span,
        )
        .await?;
        if stored.duplicate {
            tracing::info!(id = %msg.id, "duplicate upstream message ignored");
        }
        Ok(stored)
    }

    /// Delivers replies until `shutdown`: `send` hands one to the platform.
    /// Replies wait in `N_OUTBOUND` while the gateway is down, and are delivered in order.
    pub async fn deliver<F, Fut>(&self, shutdown: CancellationToken, send: F) -> anyhow::Result<()>
    where
        F: Fn(OutboundMessage) -> Fut,
        Fut: Future<Output = Result<(), DeliveryError>>,
    {
        let s = self.bus.subjects();
        let consumer = self
            .bus
            .durable_consumer(
                &s.outbound_stream(),
                &s.gateway_consumer(&self.channel),
                s.outbound(&self.channel),
                OUTBOUND_ACK_WAIT,
                self.max_deliver,
                // One reply at a time keeps replies in order per channel.
                1,
            )
            .await?;
        let mut puller = Puller::new(&self.bus, &consumer).await?;
        // Replies waiting for this gateway, for the `nexus.queue.depth` gauge.
        let depth = tokio::spawn(self.bus.clone().sample_queue_depth(
            s.outbound_stream(),
            s.gateway_consumer(&self.channel),
            self.bus.source().to_owned(),
            shutdown.clone(),
        ));
        while let Some(msg) = puller.next(&shutdown).await {
            let _in_progress = InProgress::keep(&msg, OUTBOUND_ACK_WAIT);
            let span = tracing::info_span!(
                "delivery",
                otel.name = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
                channel = %self.channel,
            );
            nexus_common::telemetry::name_span(&span, "consumer", || {
                format!("deliver {}", self.channel)
            });
            let span = TraceContext::from_headers(msg.headers.as_ref()).span(span);
            let outcome =
                tracing::Instrument::instrument(self.deliver_one(&msg, &send, &shutdown), span)
                    .await;
            settle(&self.bus, &msg, outcome, self.max_deliver).await;
        }
        depth.abort();
        Ok(())
    }

    /// The record of parts sent for this channel's multi-part replies. `shutdown`
    /// bounds how long a record is still tried while NATS is away.
    pub fn part_log(&self, shutdown: CancellationToken) -> PartLog {
        PartLog {
            records: self.records.clone(),
            stop: shutdown,
        }
    }

    async fn deliver_one<F, Fut>(
        &self,
        msg: &jetstream::Message,
        send: &F,
        shutdown: &CancellationToken,
    ) -> Outcome
    where
        F: Fn(OutboundMessage) -> Fut,
        Fut: Future<Output = Result<(), DeliveryError>>,
    {
        let reply = match OutboundMessage::decode(msg.payload.clone()) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Poison {
                    reason: format!("cannot decode OutboundMessage: {e}"),
                };
            }
        };
        let id = reply.id.clone();
        match self.records.delivered(&id, shutdown).await {
            Ok(true) => {
                // Sent by this process while NATS was away: the record may still be missing.
                if !self.records.mark_delivered(&id, now_ms(), shutdown).await {
                    return not_recorded(&id);
                }
                tracing::info!(id, "reply already delivered; not sending it twice");
                return Outcome::Ack;
            }
            Ok(false) => {}
            // Not knowing is not "not delivered": wait for a redelivery.
            Err(reason) => {
                return Outcome::Retry {
                    delay: Duration::from_secs(1),
                    reason,
                };
            }
        }
        match send(reply).await {
            Ok(()) => {
                if !self.records.mark_delivered(&id, now_ms(), shutdown).await {
                    return not_recorded(&id);
                }
                self.records.forget_parts(&id).await;
                Outcome::Ack
            }
            Err(DeliveryError::Retry { reason, after }) => Outcome::Retry {
                delay: after,
                reason,
            },
            Err(DeliveryError::Permanent(reason)) => Outcome::Poison { reason },
        }
    }

    /// Stops the service registration and drains the connection.
    pub async fn close(self) {
        let _ = self.service.stop().await;
        self.bus.drain().await;
    }
}

/// Shutdown came while the record of a delivered reply could not be stored. The
/// reply is left to redelivery; this process remembers it, a restarted one may not.
fn not_recorded(id: &str) -> Outcome {
    tracing::error!(
        id,
        "reply delivered, but NATS did not take the record of it before shutdown"
    );
    Outcome::Retry {
        delay: Duration::from_secs(1),
        reason: format!("{id} delivered; its record is not stored yet"),
    }
}

/// The allow-list rule of the design: empty allows nobody, `"*"` everyone.
pub fn access(allow_from: &[String], sender_ids: &[&str]) -> Access {
    let ok = allow_from
        .iter()
        .any(|a| a == "*" || sender_ids.iter().any(|id| !id.is_empty() && a == id));
    if ok { Access::Allowed } else { Access::Denied }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_allow_list_denies_everyone_and_a_star_allows_everyone() {
        assert_eq!(access(&[], &["42"]), Access::Denied);
        assert_eq!(access(&["*".into()], &["42"]), Access::Allowed);
        assert_eq!(access(&["42".into()], &["7", "42"]), Access::Allowed);
        assert_eq!(access(&["42".into()], &["7"]), Access::Denied);
        assert_eq!(access(&["".into()], &[""]), Access::Denied);
    }
}
