//! The Events API endpoint (`POST /slack/events`) and `GET /healthz`.
//!
//! Every request is verified against the signing secret before its body is read as
//! JSON. Slack gets its 200 only after the event is stored; a failed intake answers
//! 500 so Slack retries. This is the only place that maps intake results to HTTP.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use crate::{
    intake::{Envelope, Handled, Intake},
    settings::Secret,
    signature,
};

/// Shared state of the HTTP handlers.
pub struct EventsApi {
    pub intake: Arc<Intake>,
    /// `None` in Socket Mode: the events route is then not served.
    pub signing_secret: Option<Secret>,
}

/// The router: `/slack/events` (Events API mode only) and `/healthz`.
pub fn router(api: Arc<EventsApi>, max_body_bytes: usize) -> Router {
    let mut router = Router::new().route("/healthz", get(healthz));
    if api.signing_secret.is_some() {
        router = router.route("/slack/events", post(events));
    }
    router
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(api)
}

async fn healthz() -> &'static str {
    "ok"
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn events(State(api): State<Arc<EventsApi>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &api.signing_secret else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Err(e) = signature::verify(
        secret.expose(),
        header(&headers, signature::TIMESTAMP_HEADER),
        header(&headers, signature::SIGNATURE_HEADER),
        &body,
        signature::now_secs(),
    ) {
        tracing::warn!(reason = %e, "Events API request refused");
        return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
    }
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "Events API body is not an event envelope");
            return (StatusCode::BAD_REQUEST, "not a Slack event envelope").into_response();
        }
    };
    match envelope {
        Envelope::UrlVerification { challenge } => {
            Json(json!({ "challenge": challenge })).into_response()
        }
        Envelope::EventCallback(cb) => {
            let retry = header(&headers, "x-slack-retry-num").unwrap_or("0");
            match api.intake.handle(&cb).await {
                Ok(handled) => {
                    if let Handled::Stored { duplicate } = handled {
                        tracing::info!(event_id = %cb.event_id, retry, duplicate, "event stored");
                    }
                    StatusCode::OK.into_response()
                }
                Err(error) => {
                    tracing::error!(%error, event_id = %cb.event_id, retry, "event not stored; Slack will retry");
                    (StatusCode::INTERNAL_SERVER_ERROR, "not stored, retry").into_response()
                }
            }
        }
        Envelope::Other => StatusCode::OK.into_response(),
    }
}
