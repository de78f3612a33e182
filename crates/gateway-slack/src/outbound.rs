//! From an `OutboundMessage` to Slack: Markdown to mrkdwn, long text split into
//! several messages in the reply's thread, files uploaded, and Slack's errors mapped
//! to retry or dead letter for `Gateway::deliver`.
//!
//! A reply sent in several steps records the steps already done (in KV, see
//! `PartLog`), so a retry after a rate limit, or a restart, does not post the first
//! half twice.

use nexus_bus::Bus;
use nexus_gateway::{DeliveryError, PartLog};
use nexus_proto::v1::OutboundMessage;

use crate::{
    api::{ApiError, SlackApi, Upload},
    intake::EPHEMERAL,
    mrkdwn,
};

/// How long to wait before retrying after a transient failure.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl From<ApiError> for DeliveryError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::RateLimited(after) => DeliveryError::Retry {
                reason: "Slack rate limit".into(),
                after,
            },
            ApiError::Transient(reason) => DeliveryError::Retry {
                reason,
                after: RETRY_AFTER,
            },
            ApiError::Permanent(reason) => DeliveryError::Permanent(reason),
        }
    }
}

/// Sends replies to Slack.
pub struct Outbound {
    api: SlackApi,
    bus: Bus,
    chunk_chars: usize,
    max_file_bytes: usize,
    /// Steps (messages, files) of each reply already posted.
    parts: PartLog,
}

impl Outbound {
    pub fn new(
        api: SlackApi,
        bus: Bus,
        parts: PartLog,
        chunk_chars: usize,
        max_file_bytes: usize,
    ) -> Self {
        Self {
            api,
            bus,
            chunk_chars,
            max_file_bytes,
            parts,
        }
    }

    /// Delivers one reply; `Ok` once Slack accepted every part of it.
    #[tracing::instrument(skip_all, fields(id = %msg.id))]
    pub async fn send(&self, msg: OutboundMessage) -> Result<(), DeliveryError> {
        let chat = msg.chat.clone().unwrap_or_default();
        if chat.chat_id.is_empty() {
            return Err(DeliveryError::Permanent(
                "reply has no Slack channel".into(),
            ));
        }
        let thread = Some(chat.thread_id.as_str()).filter(|t| !t.is_empty());
        let ephemeral = msg.metadata.get(EPHEMERAL).is_some_and(|v| v == "true")
            && !msg.recipient_id.is_empty();
        let chunks = mrkdwn::split(&mrkdwn::to_mrkdwn(&msg.text), self.chunk_chars);
        let steps = chunks.len() + msg.media.len();
        // A one-step reply needs no record: the delivered id covers it.
        let done = if steps > 1 {
            self.parts.done(&msg.id).await?
        } else {
            0
        };
        let mut step = 0;
        for chunk in &chunks {
            step += 1;
            if step <= done {
                continue;
            }
            let sent = if ephemeral {
                self.api
                    .post_ephemeral(&chat.chat_id, &msg.recipient_id, thread, chunk)
                    .await
            } else {
                self.api.post_message(&chat.chat_id, thread, chunk).await
            };
            self.after_step(&msg.id, step, steps, sent).await?;
        }
        for media in &msg.media {
            step += 1;
            if step <= done {
                continue;
            }
            let bytes = match self.bus.get_media(media, self.max_file_bytes).await {
                Ok(b) => b,
                Err(e) => {
                    // The object store is ours: a missing object will not come back.
                    self.parts.clear(&msg.id).await;
                    return Err(DeliveryError::Permanent(format!(
                        "attachment {} unavailable: {e}",
                        media.key
                    )));
                }
            };
            let name = if media.file_name.is_empty() {
                media.key.rsplit('/').next().unwrap_or("file")
            } else {
                &media.file_name
            };
            let sent = self
                .api
                .upload_file(
                    &chat.chat_id,
                    thread,
                    Upload {
                        file_name: name,
                        title: &media.caption,
                        mime_type: &media.mime_type,
                        bytes: &bytes,
                    },
                )
                .await;
            self.after_step(&msg.id, step, steps, sent).await?;
        }
        // The step count is dropped by delivery once the reply's id is recorded.
        Ok(())
    }

    async fn after_step(
        &self,
        id: &str,
        step: usize,
        steps: usize,
        sent: Result<(), ApiError>,
    ) -> Result<(), DeliveryError> {
        match sent {
            Ok(()) => {
                if step < steps {
                    self.parts.record(id, step).await?;
                }
                Ok(())
            }
            Err(e @ ApiError::Permanent(_)) => {
                self.parts.clear(id).await;
                tracing::warn!(error = %e, "Slack refused the reply");
                Err(e.into())
            }
            Err(e) => {
                tracing::warn!(error = %e, step, "reply step failed; will retry");
                Err(e.into())
            }
        }
    }
}
