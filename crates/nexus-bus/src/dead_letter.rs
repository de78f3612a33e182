//! Dead letters: a message set aside on `N.deadletter` with why, and its event.

use std::collections::HashMap;

use async_nats::HeaderMap;
use nexus_common::now_ms;
use nexus_proto::v1::{DeadLetter, DeadLetterNotice, event};
use prost::Message;

use crate::{Bus, BusError, TraceContext};

impl Bus {
    /// Sets a message aside on `N.deadletter` with the reason, and emits a `dead_letter` event.
    pub async fn dead_letter(
        &self,
        subject: &str,
        payload: &[u8],
        headers: Option<&HeaderMap>,
        reason: &str,
        stream_sequence: u64,
        deliveries: u64,
    ) -> Result<(), BusError> {
        let headers_map: HashMap<String, String> = headers
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        let joined = v.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(",");
                        (k.to_string(), joined)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dl = DeadLetter {
            subject: subject.to_owned(),
            payload: payload.to_vec(),
            reason: reason.to_owned(),
            headers: headers_map,
            stream_sequence,
            deliveries,
            at_ms: now_ms(),
            source: self.source.clone(),
        };
        // `<ns>.inbound.…` → `inbound`: which flow lost a message, without ids.
        nexus_common::telemetry::metrics()
            .dead_letter(subject.split('.').nth(1).unwrap_or("other"));
        let id = format!("dl:{subject}:{stream_sequence}");
        self.publish_durable(
            self.subjects.deadletter(),
            &id,
            &TraceContext::from_headers(headers),
            dl.encode_to_vec().into(),
        )
        .await?;
        tracing::warn!(
            subject,
            reason,
            stream_sequence,
            deliveries,
            "message dead-lettered"
        );
        self.emit(event::Kind::DeadLetter(DeadLetterNotice {
            subject: subject.to_owned(),
            reason: reason.to_owned(),
            stream_sequence,
            deliveries,
        }))
        .await;
        Ok(())
    }
}
