//! Every failure a caller can see, mapped to an HTTP response and a gRPC status
//! here and nowhere else. Bodies follow OpenAI's error shape
//! (`{"error": {"message", "type", "code"}}`), so OpenAI clients report them well.

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    #[error("{0}")]
    BadRequest(String),
    /// A body the HTTP layer refused (too large, not JSON, wrong content type).
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error(
        "no reply within {secs}s; the turn may still finish: fetch its reply later with GET /v1/messages/{turn_id}"
    )]
    Timeout { turn_id: String, secs: u64 },
    /// The agent answered with an error (OpenAI-compatible endpoint only; elsewhere it is a reply of kind `error`).
    #[error("{message}")]
    TurnFailed { turn_id: String, message: String },
    /// NATS or a service behind it is not there.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "authentication_error"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            Self::Rejected { status, .. } => (*status, "invalid_request_error"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::TurnFailed { .. } => (StatusCode::BAD_GATEWAY, "upstream_error"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    /// The JSON error body (also sent as the last event of a stream that fails).
    pub fn body(&self) -> serde_json::Value {
        let (status, kind) = self.parts();
        let mut error = json!({
            "message": self.to_string(),
            "type": kind,
            "code": status.as_u16(),
        });
        if let Self::Timeout { turn_id, .. } | Self::TurnFailed { turn_id, .. } = self {
            error["turn_id"] = json!(turn_id);
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.parts();
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e {
            ApiError::Unauthenticated(_) => Self::unauthenticated(message),
            ApiError::BadRequest(_) | ApiError::Rejected { .. } => Self::invalid_argument(message),
            ApiError::NotFound(_) => Self::not_found(message),
            ApiError::Timeout { .. } => Self::deadline_exceeded(message),
            ApiError::TurnFailed { .. } => Self::aborted(message),
            ApiError::Unavailable(_) => Self::unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases() -> Vec<(ApiError, u16, tonic::Code)> {
        vec![
            (
                ApiError::from(AuthError::Invalid),
                401,
                tonic::Code::Unauthenticated,
            ),
            (
                ApiError::from(AuthError::NoKeysConfigured),
                401,
                tonic::Code::Unauthenticated,
            ),
            (
                ApiError::BadRequest("x".into()),
                400,
                tonic::Code::InvalidArgument,
            ),
            (ApiError::NotFound("x".into()), 404, tonic::Code::NotFound),
            (
                ApiError::Timeout {
                    turn_id: "api:1".into(),
                    secs: 3,
                },
                504,
                tonic::Code::DeadlineExceeded,
            ),
            (
                ApiError::Unavailable("nats".into()),
                503,
                tonic::Code::Unavailable,
            ),
        ]
    }

    #[test]
    fn each_error_has_one_http_status_and_one_grpc_code() {
        for (e, http, _) in cases() {
            assert_eq!(e.body()["error"]["code"], http);
            assert_eq!(e.into_response().status().as_u16(), http);
        }
        for (e, _, grpc) in cases() {
            assert_eq!(tonic::Status::from(e).code(), grpc);
        }
    }

    #[test]
    fn a_timeout_says_where_the_reply_can_be_fetched_later() {
        let timeout = ApiError::Timeout {
            turn_id: "api:1".into(),
            secs: 3,
        };
        let body = timeout.body();
        assert_eq!(body["error"]["turn_id"], "api:1");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("GET /v1/messages/api:1"),
            "{body}"
        );
    }
}
