//! The live view of turns: `N.events.>` as it happens, over server-sent events, with
//! what the turn did and never what was said — no message text, tool arguments or
//! tool output (a turn's error is shown only as "failed").

use std::{convert::Infallible, sync::Arc};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures::StreamExt as _;
use nexus_proto::{
    Message as _,
    v1::{Event, event},
};
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
        model calls and tools they make. Never message text, tool arguments or output.</p>\
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

/// `GET /admin/live/events`: one SSE event per turn event, named after its kind.
pub async fn events(State(state): State<Arc<AdminState>>, _: Admin) -> Response {
    let bus = &state.bus;
    let sub = match bus.client().subscribe(bus.subjects().events_all()).await {
        Ok(sub) => sub,
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("subscribing: {e}")).into_response();
        }
    };
    // Subscribed on the server before the response starts: nothing after it is missed.
    if let Err(e) = bus.client().flush().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("subscribing: {e}")).into_response();
    }
    let stream = sub.filter_map(|msg| async move {
        let event = Event::decode(msg.payload).ok()?;
        let (name, data) = summary(event.kind?)?;
        Some(Ok::<_, Infallible>(
            SseEvent::default().event(name).data(data.to_string()),
        ))
    });
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
}
