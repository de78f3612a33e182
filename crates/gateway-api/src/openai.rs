//! `POST /v1/chat/completions`, compatible with OpenAI's Chat Completions API, so
//! any OpenAI client can talk to the agent by pointing its base URL here.
//!
//! The agent keeps its own history, so only the LAST user message of `messages`
//! becomes the turn's text; earlier messages are ignored. The session is the
//! `X-Nexus-Session` header, else the request's `user` field, else `default`.
//! `model` is echoed back (the agent's own model choice applies). Streaming sends
//! `chat.completion.chunk` events and ends with `data: [DONE]`; tool activity
//! travels as SSE comments, which clients ignore.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue},
    response::{IntoResponse, Response, sse::Event},
};
use nexus_common::now_ms;
use nexus_proto::v1::{OutboundKind, OutboundMessage, turn_progress};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    error::ApiError,
    http::{AppState, IDEMPOTENCY_HEADER, JsonBody, SESSION_HEADER, User, header_str, sse},
    turns::{Ask, TurnEvent},
};

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

/// The text of the last user message: a string, or the text parts of a content array.
fn last_user_text(messages: &[ChatMessage]) -> Result<String, ApiError> {
    let last = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .ok_or_else(|| {
            ApiError::BadRequest("messages holds no message with role \"user\"".into())
        })?;
    let text = match &last.content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "the last user message has no text".into(),
        ));
    }
    Ok(text)
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    User(user): User,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let text = last_user_text(&req.messages)?;
    let session = header_str(&headers, SESSION_HEADER).or(req.user.clone());
    let pending = state
        .turns
        .start(Ask {
            user,
            session,
            text,
            idempotency_key: header_str(&headers, IDEMPOTENCY_HEADER),
        })
        .await?;
    let ids = Completion {
        id: completion_id(&pending.turn_id),
        model: req
            .model
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "nexus".into()),
        created: now_ms() / 1000,
    };
    let turn_headers = [
        (
            HeaderName::from_static("x-nexus-turn-id"),
            header_value(&pending.turn_id),
        ),
        (
            HeaderName::from_static(SESSION_HEADER),
            header_value(&pending.session),
        ),
    ];
    if req.stream {
        let turn_id = pending.turn_id.clone();
        let first = vec![ids.chunk(json!({"role": "assistant", "content": ""}), None)];
        // Text of the current model call streamed so far, to finish the answer without repeating it.
        let mut streamed = String::new();
        let events = pending.stream(first, move |e| match e {
            Ok(TurnEvent::Progress(turn_progress::Kind::TextDelta(d))) => {
                streamed.push_str(&d);
                (vec![ids.chunk(json!({"content": d}), None)], false)
            }
            Ok(TurnEvent::Progress(turn_progress::Kind::LlmCall(n)))
                if n > 1 && !streamed.is_empty() =>
            {
                // What came before the tool calls was not the answer: set the answer apart.
                streamed.clear();
                (vec![ids.chunk(json!({"content": "\n\n"}), None)], false)
            }
            Ok(TurnEvent::Progress(turn_progress::Kind::Tool(t))) => {
                let status = if t.ok {
                    "ok".to_owned()
                } else {
                    format!("failed: {}", t.error_kind)
                };
                (
                    vec![Event::default().comment(format!("tool {} ({status})", t.name))],
                    false,
                )
            }
            Ok(TurnEvent::Progress(_)) => (vec![], false),
            Ok(TurnEvent::Reply(reply)) if reply.kind == OutboundKind::Error as i32 => {
                let e = ApiError::TurnFailed {
                    turn_id: turn_id.clone(),
                    message: reply.text,
                };
                (vec![data(&e.body()), done()], true)
            }
            Ok(TurnEvent::Reply(reply)) => {
                let rest = remainder(&streamed, &reply.text);
                let mut out = Vec::new();
                if !rest.is_empty() {
                    out.push(ids.chunk(json!({"content": rest}), None));
                }
                out.push(ids.chunk(json!({}), Some("stop")));
                out.push(done());
                (out, true)
            }
            Err(e) => (vec![data(&e.body()), done()], true),
        });
        return Ok((turn_headers, sse(events)).into_response());
    }
    let turn_id = pending.turn_id.clone();
    let reply = pending.reply().await?;
    if reply.kind == OutboundKind::Error as i32 {
        return Err(ApiError::TurnFailed {
            turn_id,
            message: reply.text,
        });
    }
    Ok((turn_headers, Json(ids.full(&reply))).into_response())
}

/// What a stream still has to send once the reply is known.
fn remainder(streamed: &str, reply: &str) -> String {
    if let Some(rest) = reply.strip_prefix(streamed) {
        rest.to_owned()
    } else if streamed.is_empty() {
        reply.to_owned()
    } else {
        // The streamed text was not the start of the answer: give the answer whole, set apart.
        format!("\n\n{reply}")
    }
}

struct Completion {
    id: String,
    model: String,
    created: i64,
}

impl Completion {
    fn full(&self, reply: &OutboundMessage) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
                "logprobs": null,
            }],
            // Over every model call of the turn (tool loops make several).
            "usage": {
                "prompt_tokens": reply.input_tokens,
                "completion_tokens": reply.output_tokens,
                "total_tokens": reply.input_tokens.saturating_add(reply.output_tokens),
            },
        })
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Event {
        data(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        }))
    }
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

fn done() -> Event {
    Event::default().data("[DONE]")
}

fn completion_id(turn_id: &str) -> String {
    let id: String = turn_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("chatcmpl-{id}")
}

fn header_value(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: Value) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Some(content),
        }
    }

    #[test]
    fn only_the_last_user_message_becomes_the_turn() {
        let messages = vec![
            msg("system", json!("be brief")),
            msg("user", json!("first")),
            msg("assistant", json!("ok")),
            msg(
                "user",
                json!([{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {"url": "x"}}]),
            ),
        ];
        assert_eq!(last_user_text(&messages).unwrap(), "second");
        assert!(last_user_text(&[msg("system", json!("x"))]).is_err());
    }

    #[test]
    fn the_end_of_a_stream_completes_the_answer_without_repeating_it() {
        assert_eq!(remainder("Hel", "Hello"), "lo");
        assert_eq!(remainder("", "Hello"), "Hello");
        assert_eq!(remainder("Hello", "Hello"), "");
        assert_eq!(remainder("Let me look.", "Found it"), "\n\nFound it");
    }
}
