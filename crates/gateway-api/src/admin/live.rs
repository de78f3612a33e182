//! The live view of turns: `N.events.>` and `N.progress.>` as they happen, over
//! server-sent events, with what the turn did and not what was said — no message
//! text, tool arguments or tool output (a turn's error is shown only as "failed").
//! The model's text as it streams is sent only when the admin ticks "show text"
//! (`?text=1`), and that is logged.

use std::{convert::Infallible, sync::Arc};

use axum::{
    extract::{Query, State},
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures::StreamExt as _;
use nexus_proto::{
    Message as _,
    v1::{Event, TurnProgress, event, turn_progress},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Admin, AdminState,
    page::{Notice, page},
};

/// The one script of the console: it appends each event to the list.
pub const SCRIPT: &str = include_str!("live.js");

/// `GET /admin/live`: the list the script fills.
pub async fn live(admin: Admin) -> Response {
    let body = "<p>Turns as they happen on every channel: when they start and finish, the \
        model calls and tools they make, and how much text the model has written so far. \
        Never tool arguments or output; the text itself only while \"Show text\" is ticked.</p>\
        <p><input id=\"live-show-text\" type=\"checkbox\"> \
        <label for=\"live-show-text\" class=\"inline\">Show text</label></p>\
        <p id=\"live-state\" role=\"status\">Connecting…</p>\
        <ol id=\"live-turns\" aria-live=\"polite\" reversed></ol>\
        <script src=\"/admin/live.js\"></script>";
    page(
        StatusCode::OK,
        "Live turns",
        "/admin/live",
        Some(&admin.csrf),
        &Notice::None,
        body,
    )
}

/// `GET /admin/live.js`.
pub async fn script(_: Admin) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        SCRIPT,
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct LiveQuery {
    /// `1`: include the model's text as it streams.
    #[serde(default)]
    text: Option<String>,
}

/// `GET /admin/live/events[?text=1]`: one SSE event per turn event (named after its
/// kind) and per progress message of a turn.
pub async fn events(
    State(state): State<Arc<AdminState>>,
    _: Admin,
    Query(query): Query<LiveQuery>,
) -> Response {
    let show_text = query.text.as_deref() == Some("1");
    let bus = &state.bus;
    let unavailable =
        |e: &dyn std::fmt::Display| (StatusCode::SERVICE_UNAVAILABLE, format!("subscribing: {e}"));
    let events = match bus.subscribe(bus.subjects().events_all()).await {
        Ok(sub) => sub,
        Err(e) => return unavailable(&e).into_response(),
    };
    let progress = match bus.subscribe(bus.subjects().progress_all()).await {
        Ok(sub) => sub,
        Err(e) => return unavailable(&e).into_response(),
    };
    // Subscribed on the server before the response starts: nothing after it is missed.
    if let Err(e) = bus.flush().await {
        return unavailable(&e).into_response();
    }
    if show_text {
        tracing::info!("admin console: the live view shows message text");
    }
    let events = events.filter_map(|msg| async move {
        let event = Event::decode(msg.payload).ok()?;
        summary(event.kind?)
    });
    let progress = progress.filter_map(move |msg| async move {
        let channel = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let p = TurnProgress::decode(msg.payload).ok()?;
        progress_summary(&channel, p, show_text)
    });
    let stream = futures::stream::select(events, progress)
        .map(|(name, data)| {
            Ok::<_, Infallible>(SseEvent::default().event(name).data(data.to_string()))
        })
        .take_until(state.stop.clone().cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The kinds of a turn, without bodies; `None` for other events.
fn summary(kind: event::Kind) -> Option<(&'static str, Value)> {
    Some(match kind {
        event::Kind::TurnStarted(t) => (
            "turn_started",
            json!({"turn_id": t.turn_id, "channel": t.channel, "user": t.user_id}),
        ),
        event::Kind::TurnFinished(t) => (
            "turn_finished",
            json!({"turn_id": t.turn_id, "ok": t.ok, "tool_calls": t.tool_calls,
                   "llm_calls": t.llm_calls, "duration_ms": t.duration_ms}),
        ),
        event::Kind::ToolCalled(t) => (
            "tool_called",
            json!({"turn_id": t.turn_id, "tool": t.name, "ok": t.ok,
                   "error_kind": t.error_kind, "duration_ms": t.duration_ms}),
        ),
        event::Kind::LlmUsage(u) => (
            "llm_call",
            json!({"turn_id": u.turn_id, "model": u.model, "input_tokens": u.input_tokens,
                   "output_tokens": u.output_tokens, "duration_ms": u.duration_ms,
                   "purpose": u.purpose}),
        ),
        _ => return None,
    })
}

/// A turn's progress: how much text so far (the text itself only with `show_text`),
/// which tool finished, which model call began.
fn progress_summary(
    channel: &str,
    p: TurnProgress,
    show_text: bool,
) -> Option<(&'static str, Value)> {
    Some(match p.kind? {
        turn_progress::Kind::TextDelta(text) => {
            let mut data = json!({"turn_id": p.turn_id, "channel": channel, "seq": p.seq,
                                  "chars": text.chars().count()});
            if show_text {
                data["text"] = Value::String(text);
            }
            ("progress_text", data)
        }
        turn_progress::Kind::Tool(t) => (
            "progress_tool",
            json!({"turn_id": p.turn_id, "channel": channel, "seq": p.seq, "tool": t.name,
                   "ok": t.ok}),
        ),
        turn_progress::Kind::LlmCall(n) => (
            "progress_llm",
            json!({"turn_id": p.turn_id, "channel": channel, "seq": p.seq, "call": n}),
        ),
    })
}

#[cfg(test)]
mod tests {
    use nexus_proto::v1::{ToolCalled, TurnStarted};

    use super::*;

    #[test]
    fn tool_calls_are_shown_without_their_arguments_or_output() {
        let (name, data) = summary(event::Kind::ToolCalled(ToolCalled {
            turn_id: "api:1".into(),
            name: "read_file".into(),
            arguments_json: "{\"path\":\"secret.txt\"}".into(),
            output_preview: "the secret".into(),
            ok: true,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(name, "tool_called");
        let text = data.to_string();
        assert!(
            text.contains("read_file") && !text.contains("secret"),
            "{text}"
        );
        let (name, _) = summary(event::Kind::TurnStarted(TurnStarted::default())).unwrap();
        assert_eq!(name, "turn_started");
    }

    #[test]
    fn streamed_text_is_counted_and_shown_only_when_asked() {
        let delta = || TurnProgress {
            turn_id: "api:1".into(),
            seq: 2,
            kind: Some(turn_progress::Kind::TextDelta("the secret plan".into())),
            ..Default::default()
        };
        let (name, hidden) = progress_summary("api", delta(), false).unwrap();
        assert_eq!(name, "progress_text");
        assert_eq!(hidden["chars"], 15);
        assert!(!hidden.to_string().contains("secret"), "{hidden}");
        let (_, shown) = progress_summary("api", delta(), true).unwrap();
        assert_eq!(shown["text"], "the secret plan");
        let tool = TurnProgress {
            kind: Some(turn_progress::Kind::Tool(ToolCalled {
                name: "read_file".into(),
                arguments_json: "{\"path\":\"secret.txt\"}".into(),
                output_preview: "the secret".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let (_, data) = progress_summary("api", tool, true).unwrap();
        assert!(!data.to_string().contains("secret"), "{data}");
    }
}
