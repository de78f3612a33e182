//! From a Slack `event_callback` to a stored `InboundMessage`: which events start a
//! turn, who may talk, files fetched into the media store, and the intake itself.
//!
//! Shared by the Events API (HTTP) and Socket Mode. The caller acknowledges Slack
//! only after [`Intake::handle`] returned `Ok`, which happens only after JetStream
//! stored the message (or knew it already). This module must never start a turn
//! for a bot, an edit, or a sender the allow-list does not name.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use nexus_bus::{BusError, TraceContext};
use nexus_common::now_ms;
use nexus_gateway::{Admission, Gateway, pairing::Stranger};
use nexus_proto::v1::{ChatRef, MediaRef, OutboundKind, OutboundMessage, Sender, media_ref};
use serde::Deserialize;
use tokio::sync::RwLock;

use crate::{
    api::{ApiError, BotIdentity, SlackApi},
    mrkdwn,
    settings::SlackSettings,
};

/// Metadata key telling delivery to answer with `chat.postEphemeral` to the recipient.
pub const EPHEMERAL: &str = "slack_ephemeral";

/// What Slack POSTs to the Events API (and carries in Socket Mode `events_api` payloads).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Envelope {
    UrlVerification {
        challenge: String,
    },
    EventCallback(Box<Callback>),
    #[serde(other)]
    Other,
}

/// An `event_callback`.
#[derive(Debug, Clone, Deserialize)]
pub struct Callback {
    pub event_id: String,
    #[serde(default)]
    pub team_id: String,
    pub event: Event,
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Authorization {
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub is_bot: bool,
}

/// The fields of a `message` or `app_mention` event that matter here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub subtype: Option<String>,
    #[serde(default)]
    pub user: String,
    pub bot_id: Option<String>,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub channel: String,
    pub channel_type: Option<String>,
    #[serde(default)]
    pub ts: String,
    pub thread_ts: Option<String>,
    pub edited: Option<serde_json::Value>,
    #[serde(default)]
    pub files: Vec<SlackFile>,
    pub user_profile: Option<UserProfile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserProfile {
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub real_name: String,
}

/// A file attached to a message.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlackFile {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub mimetype: String,
    #[serde(default)]
    pub size: u64,
    pub url_private_download: Option<String>,
    pub url_private: Option<String>,
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Stored in `N_INBOUND` (or already there: a retry).
    Stored { duplicate: bool },
    /// Not for the agent (bot, edit, channel chatter without a mention, other event types).
    Ignored(&'static str),
    /// The sender is not allowed (told once, given a pairing code, or left unanswered).
    Denied,
}

/// Why an event could not be taken in; Slack should retry it.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("storing the message failed: {0}")]
    Bus(#[from] BusError),
    #[error("reading who may talk failed: {0}")]
    Access(#[from] nexus_gateway::pairing::PairingError),
}

/// Turns events into inbound messages for one gateway.
pub struct Intake {
    gateway: Arc<Gateway>,
    api: SlackApi,
    settings: SlackSettings,
    bot: RwLock<BotIdentity>,
    /// Slack said no to a reaction for good (a missing scope): stop asking.
    reactions_refused: Arc<AtomicBool>,
}

impl Intake {
    pub fn new(
        gateway: Arc<Gateway>,
        api: SlackApi,
        settings: SlackSettings,
        bot: BotIdentity,
    ) -> Self {
        Self {
            gateway,
            api,
            settings,
            bot: RwLock::new(bot),
            reactions_refused: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Handles one `event_callback`. `Ok` means Slack may be acknowledged.
    #[tracing::instrument(skip_all, fields(event_id = %cb.event_id, kind = %cb.event.kind))]
    pub async fn handle(&self, cb: &Callback) -> Result<Handled, IntakeError> {
        let bot = self.bot_identity(cb).await;
        let ev = &cb.event;
        if let Some(reason) = ignore_reason(ev, &bot, self.settings.mention_only) {
            tracing::debug!(reason, "event ignored");
            return Ok(Handled::Ignored(reason));
        }
        let is_dm = ev.channel_type.as_deref() == Some("im");
        let thread = ev.thread_ts.clone().unwrap_or_else(|| ev.ts.clone());
        let who = Stranger {
            sender_id: &ev.user,
            display_name: ev
                .user_profile
                .as_ref()
                .map(|p| p.real_name.as_str())
                .unwrap_or_default(),
            chat_id: &ev.channel,
            thread_id: "",
        };
        let admitted = self.gateway.admit(&[&ev.user], who, !is_dm).await?;
        match &admitted {
            Admission::Allowed { .. } => {}
            Admission::NotAllowed => {
                tracing::info!(user = %ev.user, "sender not on [channels.slack] allow_from");
                if self.gateway.first_denial(&ev.user).await {
                    self.notify_denied(cb, None).await;
                }
                return Ok(Handled::Denied);
            }
            Admission::Pairing { notice } => {
                if let Some(text) = notice {
                    tracing::info!(user = %ev.user, "stranger given a pairing code");
                    self.notify_denied(cb, Some(text.clone())).await;
                }
                return Ok(Handled::Denied);
            }
        }

        let mut msg = self.gateway.inbound(&cb.event_id);
        msg.chat = Some(ChatRef {
            chat_id: ev.channel.clone(),
            // Replies go in the thread of the message; a thread is a session.
            thread_id: thread,
            is_group: !is_dm,
        });
        let display_name = ev
            .user_profile
            .as_ref()
            .map(|p| {
                if p.display_name.is_empty() {
                    p.real_name.clone()
                } else {
                    p.display_name.clone()
                }
            })
            .unwrap_or_default();
        msg.sender = Some(Sender {
            id: ev.user.clone(),
            display_name,
            user_id: self.gateway.admitted_user_id(&admitted, &ev.user),
        });
        msg.text = mrkdwn::from_slack(
            &ev.text,
            Some(bot.user_id.as_str()).filter(|u| !u.is_empty()),
        );
        msg.sent_at_ms = ts_to_ms(&ev.ts);
        if let Some(parent) = ev.thread_ts.as_ref().filter(|t| **t != ev.ts) {
            msg.reply_to_upstream_id = parent.clone();
        }
        msg.metadata = HashMap::from([
            ("slack_ts".to_owned(), ev.ts.clone()),
            ("slack_event_type".to_owned(), ev.kind.clone()),
        ]);
        if !cb.team_id.is_empty() {
            msg.metadata
                .insert("slack_team".to_owned(), cb.team_id.clone());
        }
        let (media, notes) = self.fetch_files(&cb.event_id, &ev.files).await;
        msg.media = media;
        if !notes.is_empty() {
            if !msg.text.is_empty() {
                msg.text.push_str("\n\n");
            }
            msg.text.push_str(&notes.join("\n"));
        }
        let stored = self.gateway.intake(&msg).await?;
        if !stored.duplicate {
            self.acknowledge(&ev.channel, &ev.ts);
        }
        Ok(Handled::Stored {
            duplicate: stored.duplicate,
        })
    }

    /// Reacts to a message just taken in, in the background (Slack wants its 200
    /// within 3 s). A workspace that refuses reactions is not asked again.
    fn acknowledge(&self, channel: &str, ts: &str) {
        let Some(name) = self.settings.ack_reaction.clone() else {
            return;
        };
        if self.reactions_refused.load(Ordering::Relaxed) {
            return;
        }
        let (api, refused) = (self.api.clone(), self.reactions_refused.clone());
        let (channel, ts) = (channel.to_owned(), ts.to_owned());
        tokio::spawn(async move {
            match api.add_reaction(&channel, &ts, &name).await {
                Ok(()) => {}
                Err(ApiError::Permanent(code)) if code == "already_reacted" => {}
                Err(ApiError::Permanent(code)) => {
                    refused.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        error = %code,
                        "Slack refused the acknowledgement reaction; not reacting any more \
                         (give the app the reactions:write scope, or set [channels.slack] ack_reaction = \"none\")"
                    );
                }
                Err(error) => tracing::debug!(%error, "acknowledgement reaction not added"),
            }
        });
    }

    /// The bot's own ids: from `auth.test` at start, else from the event's authorizations.
    async fn bot_identity(&self, cb: &Callback) -> BotIdentity {
        let known = self.bot.read().await.clone();
        if !known.user_id.is_empty() {
            return known;
        }
        match cb
            .authorizations
            .iter()
            .find(|a| a.is_bot && !a.user_id.is_empty())
        {
            Some(a) => {
                let mut bot = self.bot.write().await;
                bot.user_id = a.user_id.clone();
                bot.clone()
            }
            None => known,
        }
    }

    /// Puts the one-time "not allowed" notice (or `text`, a pairing code) in
    /// `N_OUTBOUND`, so it is delivered (and retried) like any reply. In a channel
    /// only the sender sees it.
    async fn notify_denied(&self, cb: &Callback, text: Option<String>) {
        let ev = &cb.event;
        let is_dm = ev.channel_type.as_deref() == Some("im");
        let mut metadata = HashMap::new();
        if !is_dm {
            metadata.insert(EPHEMERAL.to_owned(), "true".to_owned());
        }
        let inbound_id = self.gateway.inbound(&cb.event_id).id;
        let notice = OutboundMessage {
            id: format!("notice:{inbound_id}"),
            in_reply_to: inbound_id,
            channel: self.gateway.channel().to_string(),
            chat: Some(ChatRef {
                chat_id: ev.channel.clone(),
                thread_id: ev.thread_ts.clone().unwrap_or_else(|| ev.ts.clone()),
                is_group: !is_dm,
            }),
            recipient_id: ev.user.clone(),
            text: text.unwrap_or_else(|| format!(
                "Sorry, I can't talk with you yet. Your Slack user id is `{}`: ask an admin to add it to `[channels.slack] allow_from`.",
                ev.user
            )),
            kind: OutboundKind::Notice as i32,
            created_at_ms: now_ms(),
            metadata,
            ..Default::default()
        };
        if let Err(error) = self
            .gateway
            .bus()
            .publish_outbound(&notice, &TraceContext::new_root())
            .await
        {
            tracing::warn!(%error, "access notice not stored");
        }
    }

    /// Downloads the event's files into the media store. A file that cannot be fetched
    /// becomes a note in the text, so the message itself is never lost.
    async fn fetch_files(
        &self,
        event_id: &str,
        files: &[SlackFile],
    ) -> (Vec<MediaRef>, Vec<String>) {
        let mut media = Vec::new();
        let mut notes = Vec::new();
        for f in files {
            let name = if f.name.is_empty() { &f.id } else { &f.name };
            let Some(url) = f.url_private_download.as_ref().or(f.url_private.as_ref()) else {
                notes.push(format!("[attached file {name} could not be fetched]"));
                continue;
            };
            if f.size as usize > self.settings.max_file_bytes {
                notes.push(format!(
                    "[attached file {name} is larger than {} bytes and was not fetched]",
                    self.settings.max_file_bytes
                ));
                continue;
            }
            let bytes = match self.api.download(url, self.settings.max_file_bytes).await {
                Ok(b) => b,
                Err(error) => {
                    tracing::warn!(%error, file = %f.id, "file not downloaded");
                    notes.push(format!("[attached file {name} could not be fetched]"));
                    continue;
                }
            };
            let key = format!(
                "slack/{event_id}/{}",
                if f.id.is_empty() { name } else { &f.id }
            );
            match self
                .gateway
                .bus()
                .put_media(
                    &key,
                    kind_of(&f.mimetype),
                    &f.mimetype,
                    name,
                    &f.title,
                    &bytes,
                )
                .await
            {
                Ok(m) => media.push(m),
                Err(error) => {
                    tracing::warn!(%error, file = %f.id, "file not stored");
                    notes.push(format!("[attached file {name} could not be stored]"));
                }
            }
        }
        (media, notes)
    }
}

/// Why an event starts no turn, if it does not.
pub fn ignore_reason(ev: &Event, bot: &BotIdentity, mention_only: bool) -> Option<&'static str> {
    let is_dm = ev.channel_type.as_deref() == Some("im");
    match ev.kind.as_str() {
        "message" | "app_mention" => {}
        _ => return Some("not a message"),
    }
    match ev.subtype.as_deref() {
        None | Some("file_share") | Some("thread_broadcast") => {}
        Some("bot_message") => return Some("bot message"),
        Some(_) => return Some("edit, deletion or system message"),
    }
    if ev.bot_id.is_some() || (!bot.user_id.is_empty() && ev.user == bot.user_id) {
        return Some("bot message");
    }
    if ev.edited.is_some() {
        return Some("edit");
    }
    if ev.user.is_empty() || ev.channel.is_empty() || ev.ts.is_empty() {
        return Some("no sender, channel or ts");
    }
    if ev.kind == "message" && !is_dm {
        if mention_only {
            // Mentions arrive as app_mention events; the rest is channel chatter.
            return Some("channel message without a mention");
        }
        if !bot.user_id.is_empty() && ev.text.contains(&format!("<@{}>", bot.user_id)) {
            // The app_mention event for the same message starts the turn.
            return Some("mention handled as app_mention");
        }
    }
    None
}

fn kind_of(mime: &str) -> media_ref::Kind {
    match mime.split('/').next().unwrap_or_default() {
        "image" => media_ref::Kind::Image,
        "audio" => media_ref::Kind::Audio,
        "video" => media_ref::Kind::Video,
        _ => media_ref::Kind::Document,
    }
}

/// Slack's `ts` (`"1700000000.000100"`) in milliseconds since the epoch.
pub fn ts_to_ms(ts: &str) -> i64 {
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
    let secs: i64 = secs.parse().unwrap_or_default();
    let millis: i64 = format!("{frac:0<3}")
        .get(..3)
        .and_then(|m| m.parse().ok())
        .unwrap_or_default();
    // Saturating: `ts` comes from the request body, and a huge one must not overflow.
    secs.saturating_mul(1000).saturating_add(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot() -> BotIdentity {
        BotIdentity {
            user_id: "UBOT".into(),
            bot_id: "BBOT".into(),
        }
    }

    fn dm(text: &str) -> Event {
        Event {
            kind: "message".into(),
            channel_type: Some("im".into()),
            user: "U1".into(),
            channel: "D1".into(),
            ts: "1700000000.000100".into(),
            text: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn envelopes_parse_by_type() {
        let v: Envelope =
            serde_json::from_str(r#"{"type":"url_verification","challenge":"abc","token":"x"}"#)
                .unwrap();
        assert!(matches!(v, Envelope::UrlVerification { challenge } if challenge == "abc"));
        let v: Envelope = serde_json::from_str(r#"{"type":"app_rate_limited"}"#).unwrap();
        assert!(matches!(v, Envelope::Other));
        let v: Envelope = serde_json::from_str(
            r#"{"type":"event_callback","event_id":"Ev1","team_id":"T1","event":{"type":"message","channel_type":"im","user":"U1","channel":"D1","ts":"1.2","text":"hi"}}"#,
        )
        .unwrap();
        assert!(matches!(v, Envelope::EventCallback(cb) if cb.event.user == "U1"));
    }

    #[test]
    fn direct_messages_and_mentions_start_turns() {
        assert_eq!(ignore_reason(&dm("hi"), &bot(), true), None);
        let mention = Event {
            kind: "app_mention".into(),
            channel_type: None,
            channel: "C1".into(),
            ..dm("<@UBOT> hi")
        };
        assert_eq!(ignore_reason(&mention, &bot(), true), None);
        let file = Event {
            subtype: Some("file_share".into()),
            ..dm("")
        };
        assert_eq!(ignore_reason(&file, &bot(), true), None);
    }

    #[test]
    fn bots_edits_and_unmentioned_channel_messages_start_no_turn() {
        let b = bot();
        let from_bot = Event {
            bot_id: Some("B2".into()),
            ..dm("x")
        };
        assert!(ignore_reason(&from_bot, &b, true).is_some());
        let bot_subtype = Event {
            subtype: Some("bot_message".into()),
            ..dm("x")
        };
        assert!(ignore_reason(&bot_subtype, &b, true).is_some());
        let ourselves = Event {
            user: "UBOT".into(),
            ..dm("x")
        };
        assert!(ignore_reason(&ourselves, &b, true).is_some());
        let changed = Event {
            subtype: Some("message_changed".into()),
            ..dm("x")
        };
        assert!(ignore_reason(&changed, &b, true).is_some());
        let edited = Event {
            edited: Some(serde_json::json!({"user":"U1","ts":"1.3"})),
            ..dm("x")
        };
        assert!(ignore_reason(&edited, &b, true).is_some());
        let channel = Event {
            channel_type: Some("channel".into()),
            channel: "C1".into(),
            ..dm("hello all")
        };
        assert!(ignore_reason(&channel, &b, true).is_some());
        assert_eq!(
            ignore_reason(&channel, &b, false),
            None,
            "mention_only = false"
        );
        let channel_mention = Event {
            text: "<@UBOT> hi".into(),
            ..channel
        };
        assert!(
            ignore_reason(&channel_mention, &b, false).is_some(),
            "the app_mention event answers it"
        );
        let other = Event {
            kind: "reaction_added".into(),
            ..dm("")
        };
        assert!(ignore_reason(&other, &b, true).is_some());
    }

    #[test]
    fn slack_timestamps_become_milliseconds() {
        assert_eq!(ts_to_ms("1700000000.000100"), 1_700_000_000_000);
        assert_eq!(ts_to_ms("1700000000.123456"), 1_700_000_000_123);
        assert_eq!(ts_to_ms("1700000000.5"), 1_700_000_000_500);
        assert_eq!(ts_to_ms("1700000000"), 1_700_000_000_000);
    }
}
