//! The HTTP API (axum): `POST /v1/messages` (JSON or SSE), `GET /v1/messages/{turn_id}`,
//! `POST /v1/chat/completions` (OpenAI-compatible, see [`crate::openai`]),
//! `GET /healthz`, `GET /readyz` and `GET /openapi.json`.
//!
//! Authentication runs before the body is read; every error leaves through
//! [`ApiError`]'s one mapping.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures::Stream;
use nexus_proto::v1::{OutboundMessage, turn_progress};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    auth::ApiKeys,
    error::ApiError,
    openai,
    turns::{Ask, Pending, TurnEvent, Turns, kind_name},
};

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");
/// Header that names the session on the OpenAI-compatible endpoint.
pub const SESSION_HEADER: &str = "x-nexus-session";
/// Header with a client-chosen key: a retried request starts no second turn.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// What every handler shares.
pub struct AppState {
    pub turns: Arc<Turns>,
    pub keys: Arc<ApiKeys>,
}

pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/v1/messages", post(post_message))
        .route("/v1/messages/{turn_id}", get(get_message))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// The user id bound to the request's API key.
pub struct User(pub String);

impl FromRequestParts<Arc<AppState>> for User {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        Ok(Self(state.keys.authenticate(header)?))
    }
}

/// A JSON body whose rejections (too large, malformed) speak our error format.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(r) => Err(ApiError::Rejected {
                status: r.status(),
                message: r.body_text(),
            }),
        }
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when NATS is connected and at least one agent-core answers.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let bus = state.turns.bus();
    let unready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "reason": reason})),
        )
            .into_response()
    };
    if !bus.is_connected() {
        return unready("not connected to NATS".into());
    }
    match bus.discover_services(Duration::from_millis(500)).await {
        Ok(found) if found.iter().any(|s| s.name == "agent-core") => {
            Json(json!({"status": "ready"})).into_response()
        }
        Ok(_) => unready("no agent-core is running".into()),
        Err(e) => unready(format!("service discovery failed: {e}")),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Debug, Deserialize)]
struct MessageRequest {
    text: String,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    stream: bool,
}

/// `POST /v1/messages`: the reply as JSON, or the turn as SSE.
async fn post_message(
    State(state): State<Arc<AppState>>,
    User(user): User,
    headers: HeaderMap,
    JsonBody(req): JsonBody<MessageRequest>,
) -> Result<Response, ApiError> {
    let stream = req.stream || wants_event_stream(&headers);
    let pending = state
        .turns
        .start(Ask {
            user,
            session: req.session,
            text: req.text,
            idempotency_key: header_str(&headers, IDEMPOTENCY_HEADER),
        })
        .await?;
    if stream {
        return Ok(sse(message_events(pending)).into_response());
    }
    let (turn_id, session) = (pending.turn_id.clone(), pending.session.clone());
    let reply = pending.reply().await?;
    Ok(Json(message_json(&reply, &turn_id, &session)).into_response())
}

/// `GET /v1/messages/{turn_id}`: the stored reply of an earlier turn of this user.
async fn get_message(
    State(state): State<Arc<AppState>>,
    User(user): User,
    Path(turn_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let reply = state.turns.lookup(&user, &turn_id).await?;
    let session = reply
        .chat
        .as_ref()
        .and_then(|c| c.chat_id.split_once(':'))
        .map(|(_, s)| s.to_owned())
        .unwrap_or_default();
    Ok(Json(message_json(&reply, &turn_id, &session)))
}

/// The body of a reply: `{reply, session, turn_id, kind, model, usage}`.
pub fn message_json(reply: &OutboundMessage, turn_id: &str, session: &str) -> Value {
    json!({
        "reply": reply.text,
        "session": session,
        "turn_id": turn_id,
        "kind": kind_name(reply),
        "model": reply.model,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
    })
}

/// SSE events of `POST /v1/messages`: `accepted`, then `text_delta` / `tool` /
/// `llm_call` while the turn runs, then `reply` (or `error`).
fn message_events(pending: Pending) -> impl Stream<Item = Event> + Send + 'static {
    let (turn_id, session) = (pending.turn_id.clone(), pending.session.clone());
    let accepted = event("accepted", &json!({"turn_id": turn_id, "session": session}));
    pending.stream(vec![accepted], move |e| match e {
        Ok(TurnEvent::Progress(kind)) => (vec![progress_event(kind)], false),
        Ok(TurnEvent::Reply(reply)) => (
            vec![event("reply", &message_json(&reply, &turn_id, &session))],
            true,
        ),
        Err(e) => (vec![event("error", &e.body())], true),
    })
}

fn progress_event(kind: turn_progress::Kind) -> Event {
    match kind {
        turn_progress::Kind::TextDelta(text) => event("text_delta", &json!({"text": text})),
        turn_progress::Kind::LlmCall(n) => event("llm_call", &json!({"n": n})),
        turn_progress::Kind::Tool(t) => event(
            "tool",
            &json!({
                "name": t.name,
                "arguments": t.arguments_json,
                "ok": t.ok,
                "error_kind": t.error_kind,
                "duration_ms": t.duration_ms,
            }),
        ),
    }
}

fn event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

pub fn sse(
    events: impl Stream<Item = Event> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
    use futures::StreamExt as _;
    Sse::new(events.map(Ok)).keep_alive(KeepAlive::default())
}

fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// A header as text, if present and non-empty.
pub fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_description_is_json_and_lists_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/v1/messages",
            "/v1/messages/{turn_id}",
            "/v1/chat/completions",
            "/healthz",
            "/readyz",
            "/openapi.json",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
    }
}
