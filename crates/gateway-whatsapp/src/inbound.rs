//! Inbound: a bridge `message` → allow-list → `InboundMessage` in `N_INBOUND`.
//!
//! A WhatsApp user has up to two ids, a phone-number JID and a LID. Both are
//! matched against `allow_from`, and the phone number (when known) names the
//! user, so the two ids share one `USER_<id>.md`.

use base64::Engine as _;
use nexus_bus::BusError;
use nexus_gateway::{Admission, Gateway, pairing::Stranger};
use nexus_proto::v1::{ChatRef, InboundMessage, MediaRef, Sender, media_ref};

use crate::protocol::{Identity, InboundMsg, Media, MediaKind};

const PHONE_SUFFIX: &str = "@s.whatsapp.net";
const LID_SUFFIX: &str = "@lid";

/// The ids of one WhatsApp user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// Phone number, digits only (`491511234567`).
    pub phone: Option<String>,
    /// LID JID (`251100000000001@lid`).
    pub lid: Option<String>,
}

impl Who {
    /// Reads the ids of a sender; `None` when it has neither.
    pub fn of(sender: &Identity) -> Option<Self> {
        let phone = sender
            .phone_jid
            .as_deref()
            .and_then(|j| j.strip_suffix(PHONE_SUFFIX))
            .map(|user| user.split(':').next().unwrap_or(user))
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned);
        let lid = sender
            .lid_jid
            .as_deref()
            .and_then(|j| j.strip_suffix(LID_SUFFIX))
            .map(|user| user.split(':').next().unwrap_or(user))
            .filter(|d| !d.is_empty())
            .map(|user| format!("{user}{LID_SUFFIX}"));
        (phone.is_some() || lid.is_some()).then_some(Self { phone, lid })
    }

    /// The id shown to people: `+<phone>`, else the LID.
    pub fn sender_id(&self) -> String {
        match (&self.phone, &self.lid) {
            (Some(p), _) => format!("+{p}"),
            (None, Some(l)) => l.clone(),
            (None, None) => String::new(),
        }
    }

    /// Every form an admin may have written in `allow_from`.
    pub fn aliases(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.phone {
            out.push(format!("+{p}"));
            out.push(p.clone());
            out.push(format!("{p}{PHONE_SUFFIX}"));
        }
        if let Some(l) = &self.lid {
            out.push(l.clone());
        }
        out
    }

    /// What names the user: the phone number when known, so LID and phone share one user.
    pub fn user_key(&self) -> &str {
        self.phone
            .as_deref()
            .or(self.lid.as_deref())
            .unwrap_or_default()
    }

    /// A direct chat with this user (for the one-time notice, never sent into a group).
    pub fn direct_chat(&self) -> String {
        match (&self.phone, &self.lid) {
            (Some(p), _) => format!("{p}{PHONE_SUFFIX}"),
            (None, Some(l)) => l.clone(),
            (None, None) => String::new(),
        }
    }
}

/// What became of one bridge message. Every variant is acknowledged to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Stored in `N_INBOUND` (or already there: a replay).
    Stored { duplicate: bool },
    /// The sender is not allowed; `notice` is set the first time, for the direct chat.
    Denied { notice: Option<(String, String)> },
    /// Nothing to do (no usable sender id).
    Ignored(&'static str),
}

/// Why a message could not be taken in: the bridge keeps it and sends it again.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("storing the attachment: {0}")]
    Media(BusError),
    #[error("attachment is not valid base64: {0}")]
    Base64(String),
    #[error("JetStream did not store the message: {0}")]
    Intake(BusError),
    #[error("reading who may talk failed: {0}")]
    Access(nexus_gateway::pairing::PairingError),
}

/// Applies the allow-list and stores an allowed message. `Ok` only after the PubAck.
pub async fn take_in(gateway: &Gateway, msg: &InboundMsg) -> Result<Handled, IntakeError> {
    let Some(who) = Who::of(&msg.sender) else {
        return Ok(Handled::Ignored("sender has no phone number or LID"));
    };
    let aliases = who.aliases();
    let ids: Vec<&str> = aliases.iter().map(String::as_str).collect();
    let sender_id = who.sender_id();
    let direct = who.direct_chat();
    let stranger = Stranger {
        sender_id: &sender_id,
        display_name: msg.sender.name.as_deref().unwrap_or_default(),
        chat_id: &direct,
        thread_id: "",
    };
    let admitted = gateway
        .admit(&ids, stranger, msg.is_group)
        .await
        .map_err(IntakeError::Access)?;
    if let Admission::Pairing { notice } = admitted {
        // Their message goes nowhere; the code (once) goes to the direct chat.
        return Ok(Handled::Denied {
            notice: notice.map(|text| (direct, text)),
        });
    }
    if admitted == Admission::NotAllowed {
        // Keyed by the bare number (or LID): nexus-gateway's KV key escaping turns a
        // leading '+' into a leading '.', which NATS refuses as a key.
        let notice = if gateway.first_denial(who.user_key()).await {
            tracing::info!(sender = %sender_id, "sender not allowed; telling them their id once");
            Some((
                who.direct_chat(),
                format!(
                    "Sorry, you may not talk to this assistant yet. Your WhatsApp id is {sender_id}. \
                     Send it to an admin so they can add it to allow_from in [channels.whatsapp]."
                ),
            ))
        } else {
            tracing::debug!(sender = %sender_id, "sender not allowed");
            None
        };
        return Ok(Handled::Denied { notice });
    }

    let mut inbound = to_inbound(gateway, msg, &who);
    if let Some(sender) = inbound.sender.as_mut() {
        sender.user_id = gateway.admitted_user_id(&admitted, who.user_key());
    }
    if let Some(media) = &msg.media {
        inbound
            .media
            .push(store_media(gateway, &msg.id, media).await?);
    }
    let stored = gateway
        .intake(&inbound)
        .await
        .map_err(IntakeError::Intake)?;
    Ok(Handled::Stored {
        duplicate: stored.duplicate,
    })
}

/// The `InboundMessage` for a bridge message (without media).
pub fn to_inbound(gateway: &Gateway, msg: &InboundMsg, who: &Who) -> InboundMessage {
    let mut inbound = gateway.inbound(&msg.id);
    // Direct chats are keyed by the phone JID when known, so a chat that WhatsApp
    // addresses by LID one day and by number the next stays one session.
    let chat_id = if msg.is_group {
        msg.chat_id.clone()
    } else {
        who.phone
            .as_ref()
            .map(|p| format!("{p}{PHONE_SUFFIX}"))
            .unwrap_or_else(|| msg.chat_id.clone())
    };
    inbound.chat = Some(ChatRef {
        chat_id,
        thread_id: String::new(),
        is_group: msg.is_group,
    });
    inbound.sender = Some(Sender {
        id: who.sender_id(),
        display_name: msg.sender.name.clone().unwrap_or_default(),
        user_id: gateway.user_id(who.user_key()),
    });
    inbound.text = msg.text.clone();
    if let Some(error) = &msg.media_error {
        // The user sent something the agent cannot see; say so rather than stay silent about it.
        if !inbound.text.is_empty() {
            inbound.text.push('\n');
        }
        inbound
            .text
            .push_str(&format!("[an attachment did not arrive: {error}]"));
        inbound
            .metadata
            .insert("whatsapp.media_error".into(), error.clone());
    }
    if let Some(reply) = &msg.reply_to {
        inbound.reply_to_upstream_id = reply.id.clone();
        if reply.from_me {
            inbound
                .metadata
                .insert("whatsapp.reply_to_me".into(), "true".into());
        }
    }
    inbound.sent_at_ms = msg.timestamp_ms;
    let meta = &mut inbound.metadata;
    meta.insert("whatsapp.chat_jid".into(), msg.chat_id.clone());
    if let Some(p) = &msg.sender.phone_jid {
        meta.insert("whatsapp.phone_jid".into(), p.clone());
    }
    if let Some(l) = &msg.sender.lid_jid {
        meta.insert("whatsapp.lid_jid".into(), l.clone());
    }
    if msg.mentions_me {
        meta.insert("whatsapp.mentions_me".into(), "true".into());
    }
    inbound
}

async fn store_media(gateway: &Gateway, id: &str, media: &Media) -> Result<MediaRef, IntakeError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(media.data_base64.as_bytes())
        .map_err(|e| IntakeError::Base64(e.to_string()))?;
    let kind = match media.kind {
        MediaKind::Image => media_ref::Kind::Image,
        MediaKind::Document => media_ref::Kind::Document,
        MediaKind::Audio => media_ref::Kind::Audio,
        MediaKind::Video => media_ref::Kind::Video,
        MediaKind::Sticker => media_ref::Kind::Sticker,
    };
    // Keyed by the upstream id: a replay overwrites the same object.
    gateway
        .bus()
        .put_media(
            &format!("whatsapp/{id}"),
            kind,
            &media.mime_type,
            media.file_name.as_deref().unwrap_or_default(),
            media.caption.as_deref().unwrap_or_default(),
            &bytes,
        )
        .await
        .map_err(IntakeError::Media)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(phone: Option<&str>, lid: Option<&str>) -> Option<Who> {
        Who::of(&Identity {
            phone_jid: phone.map(str::to_owned),
            lid_jid: lid.map(str::to_owned),
            name: None,
        })
    }

    #[test]
    fn phone_and_lid_are_read_without_device_parts() {
        let w = who(
            Some("491511234567:3@s.whatsapp.net"),
            Some("251100000000001:3@lid"),
        )
        .unwrap();
        assert_eq!(w.phone.as_deref(), Some("491511234567"));
        assert_eq!(w.lid.as_deref(), Some("251100000000001@lid"));
        assert_eq!(w.sender_id(), "+491511234567");
        assert_eq!(
            w.aliases(),
            [
                "+491511234567",
                "491511234567",
                "491511234567@s.whatsapp.net",
                "251100000000001@lid"
            ]
        );
        assert_eq!(w.direct_chat(), "491511234567@s.whatsapp.net");
    }

    #[test]
    fn the_phone_number_names_the_user_whether_or_not_the_lid_is_known() {
        let both = who(
            Some("491511234567@s.whatsapp.net"),
            Some("251100000000001@lid"),
        )
        .unwrap();
        let phone_only = who(Some("491511234567@s.whatsapp.net"), None).unwrap();
        assert_eq!(both.user_key(), phone_only.user_key());
        let lid_only = who(None, Some("251100000000001@lid")).unwrap();
        assert_eq!(lid_only.user_key(), "251100000000001@lid");
        assert_eq!(lid_only.sender_id(), "251100000000001@lid");
    }

    #[test]
    fn a_sender_without_valid_ids_is_none() {
        assert_eq!(who(None, None), None);
        assert_eq!(who(Some("alice@example.com"), Some("x@g.us")), None);
    }
}
