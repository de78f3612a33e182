//! Durable publishing: a stream message with its idempotency key and trace context.

use async_nats::HeaderMap;
use bytes::Bytes;
use nexus_proto::v1;
use prost::Message;

use crate::{Bus, BusError, MSG_ID, Subjects, TRACEPARENT, TraceContext};

/// Result of publishing to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub sequence: u64,
    /// JetStream had already stored a message with this id.
    pub duplicate: bool,
}

impl Bus {
    /// Publishes to a stream subject with an idempotency key and waits for the `PubAck`.
    pub async fn publish_durable(
        &self,
        subject: String,
        msg_id: &str,
        trace: &TraceContext,
        payload: Bytes,
    ) -> Result<Stored, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, msg_id);
        headers.insert(TRACEPARENT, trace.header_from_here().as_str());
        let fut = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| BusError::Publish {
                subject: subject.clone(),
                message: e.to_string(),
            })?;
        let ack = fut.await.map_err(|e| BusError::Publish {
            subject,
            message: e.to_string(),
        })?;
        Ok(Stored {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Stores an inbound message in `N_INBOUND` under its id, on its session's partition.
    pub async fn publish_inbound(
        &self,
        msg: &v1::InboundMessage,
        trace: &TraceContext,
    ) -> Result<Stored, BusError> {
        self.publish_inbound_as(msg, &msg.id, trace).await
    }

    /// Like [`Bus::publish_inbound`] with an explicit idempotency key (for routing a
    /// message that already sits in the stream under its own id).
    pub async fn publish_inbound_as(
        &self,
        msg: &v1::InboundMessage,
        msg_id: &str,
        trace: &TraceContext,
    ) -> Result<Stored, BusError> {
        let channel = nexus_common::domain::ChannelName::parse(&msg.channel)
            .map_err(|e| BusError::Nats(e.to_string()))?;
        let chat = msg.chat.clone().unwrap_or_default();
        let partition = Subjects::partition_of(channel.as_str(), &chat.chat_id, &chat.thread_id);
        self.publish_durable(
            self.subjects.inbound_partition(&channel, partition),
            msg_id,
            trace,
            msg.encode_to_vec().into(),
        )
        .await
    }

    /// Stores an outbound message in `N_OUTBOUND` under its id.
    pub async fn publish_outbound(
        &self,
        msg: &v1::OutboundMessage,
        trace: &TraceContext,
    ) -> Result<Stored, BusError> {
        let channel = nexus_common::domain::ChannelName::parse(&msg.channel)
            .map_err(|e| BusError::Nats(e.to_string()))?;
        self.publish_durable(
            self.subjects.outbound(&channel),
            &msg.id,
            trace,
            msg.encode_to_vec().into(),
        )
        .await
    }
}
