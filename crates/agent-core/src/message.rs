//! The `message` tool: the agent sends text (and a workspace file) to a chat on any
//! channel ("tell Alice on Telegram that the report is ready"). Served by agent-core
//! itself, since it only puts an `OutboundMessage` in `N_OUTBOUND` — the way replies
//! travel; a file is copied into the media store by tool-runner (`N.files.stage`).
//!
//! It must never reach a chat that channel's allow-list does not admit, and never
//! send twice for one turn: the message's id is derived from the turn and the
//! message itself, so a redone turn's resend is dropped by JetStream's duplicate window.

use std::time::Duration;

use nexus_bus::{Bus, BusError, TraceContext};
use nexus_common::{Config, domain::ChannelName, now_ms};
use nexus_proto::v1::{
    ChatRef, MediaRef, OutboundKind, OutboundMessage, StageFileRequest, StageFileResponse, ToolSpec,
};
use nexus_tools::{ToolFailure, parse_args, schema_of};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub const NAME: &str = "message";
/// Longest text, in characters; gateways split long messages, this bounds a runaway model.
const MAX_TEXT_CHARS: usize = 16_000;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageArgs {
    /// Channel to send on: telegram, slack, whatsapp, …
    pub channel: String,
    /// The chat on that channel: a Telegram chat id, a Slack channel or user id, a
    /// WhatsApp number
    pub chat_id: String,
    /// The message
    pub text: String,
    /// A file of the workspace to send with it, e.g. "reports/q3.pdf"
    pub file: Option<String>,
}

/// The spec agent-core offers beside the providers' tools.
pub fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.to_owned(),
        description: "Send a message to a chat on any channel, for example to tell someone \
                      on Telegram that a report is ready. Only chats the channel's allow-list \
                      admits can be reached. Your answer to the person you are talking to \
                      needs no message call."
            .to_owned(),
        parameters_json_schema: schema_of::<MessageArgs>().to_string(),
        requires_approval: false,
        timeout_ms: 10_000,
        provider: format!("agent-core/{}", env!("CARGO_PKG_VERSION")),
        encoding: String::new(),
    }
}

/// Sends the message of one call made during turn `turn_id`; the text is for the model.
pub async fn send(
    bus: &Bus,
    config: &Config,
    turn_id: &str,
    arguments: serde_json::Value,
    trace: &TraceContext,
) -> Result<String, ToolFailure> {
    let args: MessageArgs = parse_args(arguments)?;
    let channel = ChannelName::parse(args.channel.trim())
        .map_err(|e| ToolFailure::invalid_args(format!("channel: {e}")))?;
    let chat_id = args.chat_id.trim();
    if chat_id.is_empty() {
        return Err(ToolFailure::invalid_args("chat_id is empty"));
    }
    let text = args.text.trim();
    if text.is_empty() {
        return Err(ToolFailure::invalid_args("text is empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ToolFailure::invalid_args(format!(
            "text is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    let allow = &config.channel(channel.as_str()).allow_from;
    if !allow.iter().any(|a| a == "*" || a == chat_id) {
        return Err(ToolFailure::denied(format!(
            "{channel} chat {chat_id} is not in [channels.{channel}] allow_from, so the agent may not write to it"
        )));
    }
    let file = args
        .file
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty());
    let id = message_id(turn_id, &channel, chat_id, text, file.unwrap_or(""));
    let media = match file {
        Some(path) => vec![stage(bus, &id, path, trace).await?],
        None => Vec::new(),
    };
    let msg = OutboundMessage {
        id,
        media,
        in_reply_to: turn_id.to_owned(),
        channel: channel.to_string(),
        chat: Some(ChatRef {
            chat_id: chat_id.to_owned(),
            ..Default::default()
        }),
        recipient_id: chat_id.to_owned(),
        text: text.to_owned(),
        kind: OutboundKind::Notice as i32,
        created_at_ms: now_ms(),
        ..Default::default()
    };
    let stored = bus
        .publish_outbound(&msg, trace)
        .await
        .map_err(|e| ToolFailure::upstream(format!("the message was not queued: {e}")))?;
    tracing::info!(%channel, chat_id, id = msg.id, duplicate = stored.duplicate, "message queued");
    Ok(if stored.duplicate {
        format!("This message to {channel} chat {chat_id} was already sent.")
    } else {
        format!(
            "Queued for {channel} chat {chat_id}; it is delivered as soon as the channel is up."
        )
    })
}

/// Has tool-runner copy a workspace file into the media store, under a key derived
/// from the message (a retry overwrites it).
async fn stage(
    bus: &Bus,
    message_id: &str,
    path: &str,
    trace: &TraceContext,
) -> Result<MediaRef, ToolFailure> {
    let req = StageFileRequest {
        path: path.to_owned(),
        key: format!("{}/{}", message_id.replace(':', "/"), "file"),
        max_bytes: 0,
    };
    let staged: Result<StageFileResponse, BusError> = bus
        .request_idempotent(
            bus.subjects().files_stage(),
            &req,
            trace,
            Some(Duration::from_secs(60)),
        )
        .await;
    match staged {
        Ok(StageFileResponse { media: Some(m) }) => Ok(m),
        Ok(_) => Err(ToolFailure::upstream("tool-runner staged no file")),
        Err(BusError::Remote { code, message, .. }) => Err(match code {
            403 => ToolFailure::denied(message),
            404 => ToolFailure::not_found(message),
            400 | 413 => ToolFailure::invalid_args(message),
            _ => ToolFailure::upstream(message),
        }),
        Err(e) => Err(ToolFailure::upstream(format!(
            "the file could not be attached: {e}"
        ))),
    }
}

/// `message:<turn>:<digest of channel, chat, text and file>`: the same message of
/// the same turn has the same id, so a redone turn does not send it again.
fn message_id(
    turn_id: &str,
    channel: &ChannelName,
    chat_id: &str,
    text: &str,
    file: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [channel.as_str(), chat_id, text, file] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    format!("message:{turn_id}:{}", hex::encode(&digest[..12]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_same_message_of_a_turn_has_one_id_and_any_difference_another() {
        let tg = ChannelName::parse("telegram").unwrap();
        let a = message_id("t1", &tg, "42", "hi", "");
        assert_eq!(a, message_id("t1", &tg, "42", "hi", ""));
        assert_ne!(a, message_id("t2", &tg, "42", "hi", ""));
        assert_ne!(a, message_id("t1", &tg, "43", "hi", ""));
        assert_ne!(a, message_id("t1", &tg, "42", "hi!", ""));
        assert_ne!(
            message_id("t1", &tg, "4", "2hi", ""),
            message_id("t1", &tg, "42", "hi", "")
        );
        assert_ne!(a, message_id("t1", &tg, "42", "hi", "a.pdf"));
        assert!(a.starts_with("message:t1:"));
    }

    #[test]
    fn the_schema_names_the_three_arguments() {
        let spec = spec();
        let schema: serde_json::Value = serde_json::from_str(&spec.parameters_json_schema).unwrap();
        assert_eq!(
            schema["required"],
            serde_json::json!(["channel", "chat_id", "text"])
        );
    }
}
