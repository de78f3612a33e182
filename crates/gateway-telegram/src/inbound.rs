//! One Telegram update → at most one `InboundMessage` in `N_INBOUND`.
//!
//! Decides what is taken in (addressed to the bot, from an allowed sender, not a
//! local command), downloads media into the object store, and stores the message.
//! An `Err` means "not stored yet": the caller must not confirm the update.

use nexus_common::now_ms;
use nexus_gateway::{Admission, pairing::Stranger};
use nexus_proto::v1::{ChatRef, InboundMessage, MediaRef, Sender, media_ref};
use teloxide::{
    net::Download,
    payloads::SendMessageSetters,
    requests::Requester,
    types::{
        ChatId, FileMeta, Message, MessageEntityKind, ReplyParameters, ThreadId, Update,
        UpdateKind, User, UserId,
    },
};

use crate::telegram::Telegram;

/// Failed media downloads of one update before it is taken in without the file.
const MAX_MEDIA_ATTEMPTS: u32 = 5;

/// What became of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handled {
    /// Stored in `N_INBOUND` (`duplicate` when it had been stored before).
    Stored { duplicate: bool },
    /// Answered by the gateway itself (`/start`, `/help`).
    Answered,
    /// The sender is not allowed (told once, given a pairing code, or left unanswered).
    Denied,
    /// Not for the agent (another update kind, a group message not addressed to the bot, …).
    Ignored(&'static str),
}

/// Why an update could not be stored now. It stays unconfirmed and comes again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntakeError {
    #[error("storing the message failed: {0}")]
    Store(String),
    #[error("downloading its file from Telegram failed: {0}")]
    Media(String),
}

const HELP: &str = "Hi! I am the Nexus assistant. Just write to me, send a photo or a document, \
and I will answer.\n\nCommands:\n/new – start a fresh conversation\n/help – this text";
const GROUP_HELP: &str = "\n\nIn groups, mention me or reply to one of my messages.";

impl Telegram {
    /// Takes in one update. `Ok` means the update may be confirmed upstream.
    pub(crate) async fn handle_update(&self, update: &Update) -> Result<Handled, IntakeError> {
        let UpdateKind::Message(msg) = &update.kind else {
            return Ok(Handled::Ignored("not a new message"));
        };
        let Some(from) = msg.from.as_ref() else {
            return Ok(Handled::Ignored("no sender (channel post)"));
        };
        if from.is_bot {
            return Ok(Handled::Ignored("sent by a bot"));
        }
        let in_group = msg.chat.is_group() || msg.chat.is_supergroup();
        if in_group
            && self.settings.group_mention_only
            && !addressed_to_bot(msg, self.bot_id(), self.bot_username())
        {
            return Ok(Handled::Ignored("group message not addressed to the bot"));
        }

        let sender_id = from.id.0.to_string();
        // Usernames are case-insensitive on Telegram: match `@Name` entries whatever their case.
        let at = from
            .username
            .as_ref()
            .and_then(|u| {
                self.gateway.settings().allow_from.iter().find(|a| {
                    a.strip_prefix('@')
                        .is_some_and(|name| name.eq_ignore_ascii_case(u))
                })
            })
            .cloned()
            .unwrap_or_default();
        let chat_id = msg.chat.id.0.to_string();
        let thread_id = topic(msg).map(|t| t.0.0.to_string()).unwrap_or_default();
        let who = Stranger {
            sender_id: &sender_id,
            display_name: &from.full_name(),
            chat_id: &chat_id,
            thread_id: &thread_id,
        };
        let admitted = self
            .gateway
            .admit(&[&sender_id, &at], who, in_group)
            .await
            .map_err(|e| IntakeError::Store(e.to_string()))?;
        if let Admission::Pairing { notice } = admitted {
            // Their message is dropped: only the code (once) goes back.
            if let Some(text) = notice {
                tracing::info!(sender = %sender_id, "stranger given a pairing code");
                self.reply_now(msg, text).await;
            }
            return Ok(Handled::Denied);
        }
        if admitted == Admission::NotAllowed {
            if self.gateway.first_denial(&sender_id).await {
                tracing::info!(sender = %sender_id, "sender not allowed; telling them their id once");
                let text = format!(
                    "Sorry, you may not talk to this bot yet. Your Telegram user id is {sender_id}. \
                     Send it to an admin so they can add it to allow_from in [channels.telegram]."
                );
                self.reply_now(msg, text).await;
            } else {
                tracing::debug!(sender = %sender_id, "sender not allowed");
            }
            return Ok(Handled::Denied);
        }

        let text = msg.text().or_else(|| msg.caption()).unwrap_or_default();
        if let Some((name, for_us)) = command(text, self.bot_username()) {
            if !for_us {
                return Ok(Handled::Ignored("command for another bot"));
            }
            if name == "start" || name == "help" {
                let help = if in_group {
                    format!("{HELP}{GROUP_HELP}")
                } else {
                    HELP.to_owned()
                };
                self.reply_now(msg, help).await;
                return Ok(Handled::Answered);
            }
        }

        let media = self.take_media(update, msg).await?;
        if text.trim().is_empty() && media.0.is_empty() && media.1.is_none() {
            return Ok(Handled::Ignored(
                "nothing the agent can read (sticker, poll, …)",
            ));
        }

        let mut inbound = self.inbound_message(msg, from, text, media);
        if let Some(sender) = inbound.sender.as_mut() {
            sender.user_id = self.gateway.admitted_user_id(&admitted, &sender_id);
        }
        let stored = self
            .gateway
            .intake(&inbound)
            .await
            .map_err(|e| IntakeError::Store(e.to_string()))?;
        if !stored.duplicate {
            self.typing.start(msg.chat.id, topic(msg));
        }
        Ok(Handled::Stored {
            duplicate: stored.duplicate,
        })
    }

    fn inbound_message(
        &self,
        msg: &Message,
        from: &User,
        text: &str,
        (media, media_note): (Vec<MediaRef>, Option<String>),
    ) -> InboundMessage {
        let chat_id = msg.chat.id.0;
        let mut inbound = self.gateway.inbound(&upstream_id(msg.chat.id, msg.id.0));
        inbound.chat = Some(ChatRef {
            chat_id: chat_id.to_string(),
            thread_id: topic(msg).map(|t| t.0.0.to_string()).unwrap_or_default(),
            is_group: msg.chat.is_group() || msg.chat.is_supergroup(),
        });
        let sender_id = from.id.0.to_string();
        inbound.sender = Some(Sender {
            user_id: self.gateway.user_id(&sender_id),
            id: sender_id,
            display_name: from.full_name(),
        });
        inbound.text = text.to_owned();
        inbound.media = media;
        inbound.reply_to_upstream_id = msg
            .reply_to_message()
            .map(|r| upstream_id(msg.chat.id, r.id.0))
            .unwrap_or_default();
        inbound.sent_at_ms = msg.date.timestamp_millis();
        inbound.received_at_ms = now_ms();
        if let Some(u) = &from.username {
            inbound.metadata.insert("username".into(), u.clone());
        }
        inbound.metadata.insert(
            "chat_type".into(),
            if msg.chat.is_private() {
                "private"
            } else if msg.chat.is_supergroup() {
                "supergroup"
            } else if msg.chat.is_group() {
                "group"
            } else {
                "channel"
            }
            .into(),
        );
        if let Some(note) = media_note {
            inbound.metadata.insert("media_error".into(), note);
        }
        inbound
    }

    /// Downloads the message's file into the object store. Gives up on a file
    /// after a few failed tries so one broken download cannot stall intake.
    async fn take_media(
        &self,
        update: &Update,
        msg: &Message,
    ) -> Result<(Vec<MediaRef>, Option<String>), IntakeError> {
        let Some(file) = media_of(msg) else {
            return Ok((Vec::new(), None));
        };
        if u64::from(file.meta.size) > self.settings.max_media_bytes {
            let note = format!(
                "{} is larger than the {} bytes the gateway downloads",
                file.name, self.settings.max_media_bytes
            );
            return Ok((Vec::new(), Some(note)));
        }
        match self.download(msg, &file).await {
            Ok(media) => {
                if let Ok(mut f) = self.media_failures.lock() {
                    f.remove(&update.id.0);
                }
                Ok((vec![media], None))
            }
            Err(IntakeError::Media(reason)) => {
                let attempts = self
                    .media_failures
                    .lock()
                    .map(|mut f| {
                        let n = f.entry(update.id.0).or_insert(0);
                        *n += 1;
                        *n
                    })
                    .unwrap_or(MAX_MEDIA_ATTEMPTS);
                if attempts >= MAX_MEDIA_ATTEMPTS {
                    tracing::warn!(reason, "taking the message in without its file");
                    if let Ok(mut f) = self.media_failures.lock() {
                        f.remove(&update.id.0);
                    }
                    Ok((
                        Vec::new(),
                        Some(format!("the file could not be downloaded: {reason}")),
                    ))
                } else {
                    Err(IntakeError::Media(reason))
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn download(&self, msg: &Message, file: &MediaFile<'_>) -> Result<MediaRef, IntakeError> {
        let info = self
            .bot
            .get_file(file.meta.id.clone())
            .await
            .map_err(|e| IntakeError::Media(self.scrub(&e)))?;
        let mut bytes = Vec::with_capacity(info.meta.size as usize);
        self.bot
            .download_file(&info.path, &mut bytes)
            .await
            .map_err(|e| IntakeError::Media(self.scrub(&e)))?;
        if bytes.len() as u64 > self.settings.max_media_bytes {
            return Err(IntakeError::Media(format!(
                "{} bytes is more than allowed",
                bytes.len()
            )));
        }
        // Keyed by the upstream id: a redelivered update overwrites instead of duplicating.
        let key = format!("telegram/{}/{}", msg.chat.id.0, msg.id.0);
        self.gateway
            .bus()
            .put_media(
                &key,
                file.kind,
                &file.mime,
                &file.name,
                msg.caption().unwrap_or_default(),
                &bytes,
            )
            .await
            .map_err(|e| IntakeError::Store(e.to_string()))
    }

    /// Answers a message directly (not through the agent); failures are only logged.
    async fn reply_now(&self, msg: &Message, text: String) {
        let mut req = self
            .bot
            .send_message(msg.chat.id, text)
            .reply_parameters(ReplyParameters::new(msg.id).allow_sending_without_reply());
        if let Some(t) = topic(msg) {
            req = req.message_thread_id(t);
        }
        if let Err(error) = req.await {
            tracing::warn!(error = %self.scrub(&error), "direct answer not sent");
        }
    }
}

/// The id the idempotency key is built from: unique per chat and message, and
/// the same every time Telegram delivers the update again.
pub(crate) fn upstream_id(chat: ChatId, message_id: i32) -> String {
    format!("{}:{message_id}", chat.0)
}

fn topic(msg: &Message) -> Option<ThreadId> {
    if msg.is_topic_message {
        msg.thread_id
    } else {
        None
    }
}

/// In a group: does the message mention the bot, reply to it, or command it?
pub(crate) fn addressed_to_bot(msg: &Message, bot_id: UserId, bot_username: &str) -> bool {
    if msg
        .reply_to_message()
        .and_then(|r| r.from.as_ref())
        .is_some_and(|u| u.id == bot_id)
    {
        return true;
    }
    let entities = msg
        .parse_entities()
        .or_else(|| msg.parse_caption_entities())
        .unwrap_or_default();
    entities.iter().any(|e| match e.kind() {
        MessageEntityKind::Mention => {
            !bot_username.is_empty()
                && e.text()
                    .trim_start_matches('@')
                    .eq_ignore_ascii_case(bot_username)
        }
        MessageEntityKind::TextMention { user } => user.id == bot_id,
        MessageEntityKind::BotCommand => match e.text().split_once('@') {
            Some((_, target)) => target.eq_ignore_ascii_case(bot_username),
            None => true,
        },
        _ => false,
    })
}

/// `/name[@bot] …` → (lowercase name, whether it is meant for this bot).
pub(crate) fn command(text: &str, bot_username: &str) -> Option<(String, bool)> {
    let first = text.split_whitespace().next()?;
    let body = first.strip_prefix('/')?;
    let (name, target) = match body.split_once('@') {
        Some((n, t)) => (n, Some(t)),
        None => (body, None),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let for_us = target.is_none_or(|t| t.eq_ignore_ascii_case(bot_username));
    Some((name.to_ascii_lowercase(), for_us))
}

struct MediaFile<'a> {
    meta: &'a FileMeta,
    kind: media_ref::Kind,
    mime: String,
    name: String,
}

/// The file a message carries: the largest photo size, or the document/audio/voice/video.
fn media_of(msg: &Message) -> Option<MediaFile<'_>> {
    use media_ref::Kind;
    let mime = |m: Option<String>, default: &str| m.unwrap_or_else(|| default.to_owned());
    if let Some(sizes) = msg.photo() {
        let largest = sizes
            .iter()
            .max_by_key(|p| (u64::from(p.width) * u64::from(p.height), p.file.size))?;
        return Some(MediaFile {
            meta: &largest.file,
            kind: Kind::Image,
            mime: "image/jpeg".into(),
            name: format!("photo_{}.jpg", msg.id.0),
        });
    }
    if let Some(d) = msg.document() {
        return Some(MediaFile {
            meta: &d.file,
            kind: Kind::Document,
            mime: mime(
                d.mime_type.as_ref().map(ToString::to_string),
                "application/octet-stream",
            ),
            name: d
                .file_name
                .clone()
                .unwrap_or_else(|| format!("document_{}", msg.id.0)),
        });
    }
    if let Some(a) = msg.audio() {
        return Some(MediaFile {
            meta: &a.file,
            kind: Kind::Audio,
            mime: mime(a.mime_type.as_ref().map(ToString::to_string), "audio/mpeg"),
            name: a
                .file_name
                .clone()
                .unwrap_or_else(|| format!("audio_{}", msg.id.0)),
        });
    }
    if let Some(v) = msg.voice() {
        return Some(MediaFile {
            meta: &v.file,
            kind: Kind::Audio,
            mime: mime(v.mime_type.as_ref().map(ToString::to_string), "audio/ogg"),
            name: format!("voice_{}.ogg", msg.id.0),
        });
    }
    if let Some(v) = msg.video() {
        return Some(MediaFile {
            meta: &v.file,
            kind: Kind::Video,
            mime: mime(v.mime_type.as_ref().map(ToString::to_string), "video/mp4"),
            name: v
                .file_name
                .clone()
                .unwrap_or_else(|| format!("video_{}.mp4", msg.id.0)),
        });
    }
    None
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOT: UserId = UserId(777);

    fn message(text: &str, entities: serde_json::Value, reply_from: Option<u64>) -> Message {
        let mut m = json!({
            "message_id": 5,
            "date": 1_700_000_000,
            "chat": {"id": -100200, "type": "supergroup", "title": "team"},
            "from": {"id": 42, "is_bot": false, "first_name": "Ada"},
            "text": text,
            "entities": entities,
        });
        if let Some(id) = reply_from {
            m["reply_to_message"] = json!({
                "message_id": 4,
                "date": 1_700_000_000,
                "chat": {"id": -100200, "type": "supergroup", "title": "team"},
                "from": {"id": id, "is_bot": true, "first_name": "Bot", "username": "nexus_bot"},
                "text": "earlier",
            });
        }
        serde_json::from_value(m).unwrap()
    }

    #[test]
    fn group_messages_count_only_when_they_mention_reply_to_or_command_the_bot() {
        let plain = message("hello all", json!([]), None);
        assert!(!addressed_to_bot(&plain, BOT, "nexus_bot"));

        let mention = message(
            "hi @Nexus_Bot how are you",
            json!([{"type": "mention", "offset": 3, "length": 10}]),
            None,
        );
        assert!(addressed_to_bot(&mention, BOT, "nexus_bot"));

        let other = message(
            "hi @other_bot",
            json!([{"type": "mention", "offset": 3, "length": 10}]),
            None,
        );
        assert!(!addressed_to_bot(&other, BOT, "nexus_bot"));

        let reply = message("and then?", json!([]), Some(BOT.0));
        assert!(addressed_to_bot(&reply, BOT, "nexus_bot"));
        let reply_to_someone_else = message("and then?", json!([]), Some(5));
        assert!(!addressed_to_bot(&reply_to_someone_else, BOT, "nexus_bot"));

        let cmd = message(
            "/new@nexus_bot",
            json!([{"type": "bot_command", "offset": 0, "length": 14}]),
            None,
        );
        assert!(addressed_to_bot(&cmd, BOT, "nexus_bot"));
        let cmd_other = message(
            "/new@other_bot",
            json!([{"type": "bot_command", "offset": 0, "length": 14}]),
            None,
        );
        assert!(!addressed_to_bot(&cmd_other, BOT, "nexus_bot"));
    }

    #[test]
    fn mentions_after_emoji_are_found_by_utf16_offsets() {
        // 😀 is two UTF-16 units: the entity offset counts them as Telegram does.
        let m = message(
            "😀 @nexus_bot",
            json!([{"type": "mention", "offset": 3, "length": 10}]),
            None,
        );
        assert!(addressed_to_bot(&m, BOT, "nexus_bot"));
    }

    #[test]
    fn commands_are_parsed_with_an_optional_bot_name() {
        assert_eq!(command("/start", "nexus_bot"), Some(("start".into(), true)));
        assert_eq!(
            command("/Help@Nexus_Bot please", "nexus_bot"),
            Some(("help".into(), true))
        );
        assert_eq!(
            command("/help@someone_else", "nexus_bot"),
            Some(("help".into(), false))
        );
        assert_eq!(command("/new", "nexus_bot"), Some(("new".into(), true)));
        assert_eq!(command("hello /start", "nexus_bot"), None);
        assert_eq!(command("/ not a command", "nexus_bot"), None);
        assert_eq!(command("/etc/passwd", "nexus_bot"), None);
    }

    #[test]
    fn upstream_ids_combine_chat_and_message() {
        assert_eq!(upstream_id(ChatId(-100200), 5), "-100200:5");
    }

    #[test]
    fn the_largest_photo_size_is_chosen() {
        let m: Message = serde_json::from_value(json!({
            "message_id": 9,
            "date": 1_700_000_000,
            "chat": {"id": 42, "type": "private", "first_name": "Ada"},
            "from": {"id": 42, "is_bot": false, "first_name": "Ada"},
            "photo": [
                {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90, "file_size": 100},
                {"file_id": "large", "file_unique_id": "l", "width": 1280, "height": 960, "file_size": 9000},
                {"file_id": "medium", "file_unique_id": "m", "width": 320, "height": 240, "file_size": 1000}
            ],
            "caption": "look"
        }))
        .unwrap();
        let file = media_of(&m).unwrap();
        assert_eq!(file.meta.id.0, "large");
        assert_eq!(file.kind, media_ref::Kind::Image);
    }
}
