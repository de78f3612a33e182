//! Outbound: an `OutboundMessage` from `N_OUTBOUND` → a bridge `send` (attachments
//! read from the object store and sent base64). The reply's id travels as the
//! send's id, so the bridge never sends one reply twice.

use std::time::Duration;

use base64::Engine as _;
use nexus_gateway::{DeliveryError, Gateway};
use nexus_proto::v1::{OutboundMessage, media_ref};

use crate::protocol::{Media, MediaKind, SendCmd, SendResult};

/// Builds the bridge command for a reply. `Ok(None)`: nothing to send.
pub async fn to_send(
    gateway: &Gateway,
    reply: &OutboundMessage,
    max_media_bytes: usize,
) -> Result<Option<SendCmd>, DeliveryError> {
    let chat_id = reply
        .chat
        .as_ref()
        .map(|c| c.chat_id.clone())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| reply.recipient_id.clone());
    if chat_id.is_empty() {
        return Err(DeliveryError::Permanent(format!(
            "reply {} names no chat or recipient",
            reply.id
        )));
    }
    let mut media = Vec::with_capacity(reply.media.len());
    for m in &reply.media {
        let bytes = gateway
            .bus()
            .get_media(m, max_media_bytes)
            .await
            .map_err(|e| DeliveryError::Retry {
                reason: format!("reading attachment {}: {e}", m.key),
                after: Duration::from_secs(5),
            })?;
        let kind = match media_ref::Kind::try_from(m.kind).unwrap_or(media_ref::Kind::Unspecified) {
            media_ref::Kind::Image => MediaKind::Image,
            media_ref::Kind::Audio => MediaKind::Audio,
            media_ref::Kind::Video => MediaKind::Video,
            media_ref::Kind::Sticker => MediaKind::Sticker,
            media_ref::Kind::Document | media_ref::Kind::Unspecified => MediaKind::Document,
        };
        media.push(Media {
            kind,
            mime_type: if m.mime_type.is_empty() {
                "application/octet-stream".into()
            } else {
                m.mime_type.clone()
            },
            file_name: Some(m.file_name.clone()).filter(|f| !f.is_empty()),
            caption: Some(m.caption.clone()).filter(|c| !c.is_empty()),
            size_bytes: None,
            data_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        });
    }
    let text = Some(reply.text.clone()).filter(|t| !t.trim().is_empty());
    if text.is_none() && media.is_empty() {
        return Ok(None);
    }
    Ok(Some(SendCmd {
        id: reply.id.clone(),
        chat_id,
        text,
        reply_to: Some(reply.reply_to_upstream_id.clone()).filter(|r| !r.is_empty()),
        media: (!media.is_empty()).then_some(media),
    }))
}

/// What the bridge's answer means for the reply in `N_OUTBOUND`.
pub fn outcome(result: SendResult) -> Result<(), DeliveryError> {
    if result.ok {
        return Ok(());
    }
    let reason = result
        .error
        .unwrap_or_else(|| "the bridge gave no reason".into());
    if result.retryable.unwrap_or(true) {
        Err(DeliveryError::Retry {
            reason,
            after: Duration::from_secs(5),
        })
    } else {
        Err(DeliveryError::Permanent(reason))
    }
}
