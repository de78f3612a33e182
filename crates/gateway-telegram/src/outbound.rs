//! One `OutboundMessage` → Telegram messages: text chunks (HTML, with a plain-text
//! retry when Telegram refuses the markup), then media from the object store.
//!
//! Errors are mapped to `DeliveryError` here and only here: rate limits and
//! outages are retried, a blocked bot or a vanished chat is permanent.

use std::time::Duration;

use nexus_gateway::DeliveryError;
use nexus_proto::v1::{MediaRef, OutboundMessage, media_ref};
use teloxide::{
    ApiError, RequestError,
    payloads::{SendDocumentSetters, SendMessageSetters, SendPhotoSetters},
    requests::Requester,
    types::{ChatId, InputFile, MessageId, ParseMode, ReplyParameters, ThreadId},
};

use crate::{
    format::{self, Chunk},
    telegram::Telegram,
};

/// Largest file sent from the object store (the Bot API accepts 50 MB uploads).
const MAX_UPLOAD_BYTES: usize = 50 * 1024 * 1024;
/// Longest media caption Telegram accepts, in UTF-16 units.
const MAX_CAPTION: usize = 1024;
/// Wait before retrying after a network failure.
const NETWORK_RETRY: Duration = Duration::from_secs(5);

enum Part {
    Text(Chunk),
    Media(MediaRef),
}

/// Where a reply goes.
struct Target {
    chat: ChatId,
    thread: Option<ThreadId>,
    reply_to: Option<MessageId>,
}

impl Telegram {
    /// Hands one reply to Telegram. Called by `Gateway::deliver`, which acks on `Ok`.
    pub(crate) async fn send(&self, reply: OutboundMessage) -> Result<(), DeliveryError> {
        let chat_ref = reply.chat.clone().unwrap_or_default();
        let chat = chat_ref.chat_id.parse::<i64>().map(ChatId).map_err(|_| {
            DeliveryError::Permanent(format!("{:?} is not a Telegram chat id", chat_ref.chat_id))
        })?;
        let target = Target {
            chat,
            thread: chat_ref
                .thread_id
                .parse::<i32>()
                .ok()
                .map(|t| ThreadId(MessageId(t))),
            reply_to: reply
                .reply_to_upstream_id
                .rsplit(':')
                .next()
                .and_then(|m| m.parse::<i32>().ok())
                .map(MessageId),
        };

        let mut parts: Vec<Part> = format::render(&reply.text)
            .into_iter()
            .map(Part::Text)
            .collect();
        parts.extend(reply.media.iter().cloned().map(Part::Media));

        // A one-part reply needs no record: the delivered id covers it.
        let done = if parts.len() > 1 {
            self.parts.done(&reply.id).await?
        } else {
            0
        };
        for (index, part) in parts.iter().enumerate().skip(done) {
            // Only the first message quotes the user's; the rest follow it.
            let reply_to = if index == 0 { target.reply_to } else { None };
            let result = match part {
                Part::Text(chunk) => self.send_text(&target, reply_to, chunk).await,
                Part::Media(media) => self.send_media(&target, reply_to, media).await,
            };
            if let Err(error) = result {
                if matches!(error, DeliveryError::Permanent(_)) {
                    // Dead-lettered: nothing will continue this reply.
                    self.parts.clear(&reply.id).await;
                    self.typing.stop(chat);
                }
                tracing::warn!(id = %reply.id, part = index, %error, "reply not delivered yet");
                return Err(error);
            }
            if index + 1 < parts.len() {
                self.parts.record(&reply.id, index + 1).await?;
            }
        }
        // The part count is dropped by delivery once the reply's id is recorded.
        self.typing.stop(chat);
        tracing::info!(id = %reply.id, messages = parts.len(), "reply delivered");
        Ok(())
    }

    async fn send_text(
        &self,
        target: &Target,
        reply_to: Option<MessageId>,
        chunk: &Chunk,
    ) -> Result<(), DeliveryError> {
        let html = self
            .send_message(target, reply_to, chunk.html.clone(), Some(ParseMode::Html))
            .await;
        match html {
            Ok(()) => Ok(()),
            Err(RequestError::Api(ApiError::CantParseEntities(why))) => {
                tracing::warn!(reason = %why, "Telegram refused the formatting; sending plain text");
                let mut first = true;
                for piece in format::split_plain(&chunk.plain, format::MAX_MESSAGE_LEN) {
                    let to = if first { reply_to } else { None };
                    first = false;
                    self.send_message(target, to, piece, None)
                        .await
                        .map_err(|e| self.delivery_error(e))?;
                }
                Ok(())
            }
            Err(e) => Err(self.delivery_error(e)),
        }
    }

    async fn send_message(
        &self,
        target: &Target,
        reply_to: Option<MessageId>,
        text: String,
        parse_mode: Option<ParseMode>,
    ) -> Result<(), RequestError> {
        let mut req = self.bot.send_message(target.chat, text);
        if let Some(mode) = parse_mode {
            req = req.parse_mode(mode);
        }
        if let Some(thread) = target.thread {
            req = req.message_thread_id(thread);
        }
        if let Some(id) = reply_to {
            // A deleted original must not make the reply undeliverable.
            req = req.reply_parameters(ReplyParameters::new(id).allow_sending_without_reply());
        }
        req.await.map(|_| ())
    }

    async fn send_media(
        &self,
        target: &Target,
        reply_to: Option<MessageId>,
        media: &MediaRef,
    ) -> Result<(), DeliveryError> {
        let bytes = self
            .gateway
            .bus()
            .get_media(media, MAX_UPLOAD_BYTES)
            .await
            .map_err(|e| DeliveryError::Retry {
                reason: format!("reading media {}: {e}", media.key),
                after: NETWORK_RETRY,
            })?;
        let name = if media.file_name.is_empty() {
            "file".to_owned()
        } else {
            media.file_name.clone()
        };
        let file = InputFile::memory(bytes).file_name(name);
        let caption = truncate_utf16(&media.caption, MAX_CAPTION);
        let params = reply_to.map(|id| ReplyParameters::new(id).allow_sending_without_reply());
        let result = if media.kind == media_ref::Kind::Image as i32 {
            let mut req = self.bot.send_photo(target.chat, file);
            if !caption.is_empty() {
                req = req.caption(caption);
            }
            if let Some(t) = target.thread {
                req = req.message_thread_id(t);
            }
            if let Some(p) = params {
                req = req.reply_parameters(p);
            }
            req.await.map(|_| ())
        } else {
            let mut req = self.bot.send_document(target.chat, file);
            if !caption.is_empty() {
                req = req.caption(caption);
            }
            if let Some(t) = target.thread {
                req = req.message_thread_id(t);
            }
            if let Some(p) = params {
                req = req.reply_parameters(p);
            }
            req.await.map(|_| ())
        };
        result.map_err(|e| self.delivery_error(e))
    }

    fn delivery_error(&self, error: RequestError) -> DeliveryError {
        match error {
            RequestError::RetryAfter(wait) => DeliveryError::Retry {
                reason: format!("Telegram rate limit: retry after {}s", wait.seconds()),
                after: wait.duration(),
            },
            RequestError::Api(api) if is_permanent(&api) => {
                DeliveryError::Permanent(format!("Telegram refused the reply: {api}"))
            }
            RequestError::MigrateToChatId(to) => DeliveryError::Permanent(format!(
                "the group became supergroup {to}; replies to the old chat cannot be delivered"
            )),
            other => DeliveryError::Retry {
                reason: self.scrub(&other),
                after: NETWORK_RETRY,
            },
        }
    }
}

/// Bad requests and refusals (bot blocked, chat not found, kicked) never succeed on retry;
/// an unknown answer that is not one of those (a 5xx text) might.
fn is_permanent(api: &ApiError) -> bool {
    match api {
        ApiError::InvalidToken => false,
        ApiError::Unknown(text) => text.starts_with("Bad Request") || text.starts_with("Forbidden"),
        _ => true,
    }
}

fn truncate_utf16(s: &str, max: usize) -> String {
    let mut used = 0;
    s.chars()
        .take_while(|c| {
            used += c.len_utf16();
            used <= max
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_bots_and_missing_chats_are_permanent_and_outages_are_not() {
        assert!(is_permanent(&ApiError::BotBlocked));
        assert!(is_permanent(&ApiError::ChatNotFound));
        assert!(is_permanent(&ApiError::Unknown(
            "Forbidden: something new".into()
        )));
        assert!(!is_permanent(&ApiError::Unknown(
            "Internal Server Error".into()
        )));
        assert!(!is_permanent(&ApiError::InvalidToken));
    }

    #[test]
    fn captions_are_truncated_on_character_boundaries() {
        assert_eq!(truncate_utf16("😀😀😀", 5), "😀😀");
        assert_eq!(truncate_utf16("abc", 10), "abc");
    }
}
