//! The Slack Web API as gateway-slack uses it: slack-morphism's client pointed at
//! `SLACK_API_URL`, plus the authenticated file download that slack-morphism does
//! not offer. Slack's `ok:false` errors are sorted here, once, into retry or give up.
//!
//! Tokens never appear in errors or logs from this module.

use std::{sync::Arc, time::Duration};

use axum::http::{Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use slack_morphism::{
    SlackApiToken, SlackApiTokenValue, SlackChannelId, SlackClient, SlackMessageContent, SlackTs,
    SlackUserId,
    errors::SlackClientError,
    hyper_tokio::SlackClientHyperConnector,
    prelude::{
        SlackApiAppsConnectionOpenRequest, SlackApiChatPostEphemeralRequest,
        SlackApiChatPostMessageRequest, SlackApiFilesComplete,
        SlackApiFilesCompleteUploadExternalRequest, SlackApiFilesGetUploadUrlExternalRequest,
        SlackApiFilesUploadViaUrlRequest, SlackApiReactionsAddRequest, SlackReactionName,
    },
};

use crate::settings::{Secret, SlackSettings};

/// Calls to Slack give up after this long; the caller retries.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// When Slack says "rate limited" without saying for how long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

type Https = HttpsConnector<HttpConnector>;

/// A failed Slack call, sorted by what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// HTTP 429 or `ratelimited`: try again after the delay.
    #[error("Slack rate limit: retry after {0:?}")]
    RateLimited(Duration),
    /// Network trouble, 5xx, Slack-side errors: worth another try.
    #[error("Slack unavailable: {0}")]
    Transient(String),
    /// The request will never succeed (bad token, unknown channel, not a member).
    #[error("Slack refused: {0}")]
    Permanent(String),
}

impl ApiError {
    /// Slack error codes that a retry can fix; every other `ok:false` code is final.
    fn from_code(code: &str) -> Self {
        match code {
            "ratelimited" | "rate_limited" => Self::RateLimited(DEFAULT_RETRY_AFTER),
            "internal_error"
            | "fatal_error"
            | "service_unavailable"
            | "request_timeout"
            | "team_added_to_org"
            | "ekm_access_denied" => Self::Transient(code.to_owned()),
            _ => Self::Permanent(code.to_owned()),
        }
    }
}

impl From<SlackClientError> for ApiError {
    fn from(e: SlackClientError) -> Self {
        match e {
            SlackClientError::ApiError(e) => Self::from_code(&e.code),
            SlackClientError::RateLimitError(e) => {
                Self::RateLimited(e.retry_after.unwrap_or(DEFAULT_RETRY_AFTER))
            }
            SlackClientError::HttpError(e) if e.status_code.is_server_error() => {
                Self::Transient(format!("HTTP {}", e.status_code))
            }
            SlackClientError::HttpError(e)
                if matches!(
                    e.status_code,
                    StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
                ) =>
            {
                Self::Transient(format!("HTTP {}", e.status_code))
            }
            SlackClientError::HttpError(e) => Self::Permanent(format!("HTTP {}", e.status_code)),
            // A body that is not what Slack documents: a proxy page, a truncated answer.
            SlackClientError::ProtocolError(e) => {
                Self::Transient(format!("unexpected answer: {}", e.json_error))
            }
            other => Self::Transient(first_line(&other.to_string())),
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// Who the bot is, from `auth.test`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BotIdentity {
    pub user_id: String,
    pub bot_id: String,
}

/// One uploaded file for [`SlackApi::upload_file`].
pub struct Upload<'a> {
    pub file_name: &'a str,
    pub title: &'a str,
    pub mime_type: &'a str,
    pub bytes: &'a [u8],
}

/// The Web API client of one workspace (bot token) and, for Socket Mode, the app token.
#[derive(Clone)]
pub struct SlackApi {
    client: Arc<SlackClient<SlackClientHyperConnector<Https>>>,
    http: Client<Https, Full<Bytes>>,
    bot_token: SlackApiToken,
    bot_secret: Secret,
    app_token: Option<SlackApiToken>,
    api_url: String,
}

fn token(secret: &Secret) -> SlackApiToken {
    SlackApiToken::new(SlackApiTokenValue::new(secret.expose().to_owned()))
}

impl SlackApi {
    /// A client for `settings.api_url` (https, or plain http for a server on this machine).
    pub fn new(settings: &SlackSettings) -> anyhow::Result<Self> {
        // Other crates in the process may enable a second rustls provider; pick one explicitly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let https = || -> anyhow::Result<Https> {
            Ok(HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
                .map_err(|e| anyhow::anyhow!("loading the system's root certificates: {e}"))?
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .build())
        };
        let connector = SlackClientHyperConnector::with_connector(https()?)
            .with_slack_api_url(&settings.api_url);
        Ok(Self {
            client: Arc::new(SlackClient::new(connector)),
            http: Client::builder(TokioExecutor::new()).build(https()?),
            bot_token: token(&settings.bot_token),
            bot_secret: settings.bot_token.clone(),
            app_token: settings.app_token.as_ref().map(token),
            api_url: settings.api_url.clone(),
        })
    }

    async fn timed<T>(
        fut: impl Future<Output = Result<T, SlackClientError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(ApiError::Transient(format!(
                "no answer within {CALL_TIMEOUT:?}"
            ))),
        }
    }

    /// `auth.test`: who the bot token belongs to.
    pub async fn auth_test(&self) -> Result<BotIdentity, ApiError> {
        let session = self.client.open_session(&self.bot_token);
        let r = Self::timed(session.auth_test()).await?;
        Ok(BotIdentity {
            user_id: r.user_id.0,
            bot_id: r.bot_id.map(|b| b.0).unwrap_or_default(),
        })
    }

    /// `chat.postMessage` with `text` (mrkdwn), in `thread_ts` when given.
    pub async fn post_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        text: &str,
    ) -> Result<(), ApiError> {
        let req = SlackApiChatPostMessageRequest::new(
            SlackChannelId::new(channel.to_owned()),
            SlackMessageContent::new().with_text(text.to_owned()),
        )
        .opt_thread_ts(thread_ts.map(|t| SlackTs::new(t.to_owned())));
        let session = self.client.open_session(&self.bot_token);
        Self::timed(session.chat_post_message(&req))
            .await
            .map(|_| ())
    }

    /// `reactions.add`: the bot reacts to the message `ts` in `channel` (needs `reactions:write`).
    pub async fn add_reaction(&self, channel: &str, ts: &str, name: &str) -> Result<(), ApiError> {
        let req = SlackApiReactionsAddRequest::new(
            SlackChannelId::new(channel.to_owned()),
            SlackReactionName(name.to_owned()),
            SlackTs::new(ts.to_owned()),
        );
        let session = self.client.open_session(&self.bot_token);
        Self::timed(session.reactions_add(&req)).await.map(|_| ())
    }

    /// `chat.postEphemeral`: seen only by `user`.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        thread_ts: Option<&str>,
        text: &str,
    ) -> Result<(), ApiError> {
        let req = SlackApiChatPostEphemeralRequest::new(
            SlackChannelId::new(channel.to_owned()),
            SlackUserId::new(user.to_owned()),
            SlackMessageContent::new().with_text(text.to_owned()),
        )
        .opt_thread_ts(thread_ts.map(|t| SlackTs::new(t.to_owned())));
        let session = self.client.open_session(&self.bot_token);
        Self::timed(session.chat_post_ephemeral(&req))
            .await
            .map(|_| ())
    }

    /// Shares a file in a channel (and thread): `files.getUploadURLExternal`, the upload,
    /// then `files.completeUploadExternal`.
    pub async fn upload_file(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        file: Upload<'_>,
    ) -> Result<(), ApiError> {
        let session = self.client.open_session(&self.bot_token);
        let target = Self::timed(session.get_upload_url_external(
            &SlackApiFilesGetUploadUrlExternalRequest::new(
                file.file_name.to_owned(),
                file.bytes.len(),
            ),
        ))
        .await?;
        let mime = if file.mime_type.is_empty() {
            "application/octet-stream"
        } else {
            file.mime_type
        };
        Self::timed(
            session.files_upload_via_url(&SlackApiFilesUploadViaUrlRequest::new(
                target.upload_url,
                file.bytes.to_vec(),
                mime.to_owned(),
            )),
        )
        .await?;
        let title = if file.title.is_empty() {
            file.file_name
        } else {
            file.title
        };
        let complete = SlackApiFilesCompleteUploadExternalRequest::new(vec![
            SlackApiFilesComplete::new(target.file_id).with_title(title.to_owned()),
        ])
        .with_channel_id(SlackChannelId::new(channel.to_owned()))
        .opt_thread_ts(thread_ts.map(|t| SlackTs::new(t.to_owned())));
        Self::timed(session.files_complete_upload_external(&complete))
            .await
            .map(|_| ())
    }

    /// `apps.connections.open` with the app token: a fresh Socket Mode WebSocket URL.
    pub async fn open_socket(&self) -> Result<String, ApiError> {
        let Some(app_token) = &self.app_token else {
            return Err(ApiError::Permanent("SLACK_APP_TOKEN is not set".into()));
        };
        let session = self.client.open_session(app_token);
        let r =
            Self::timed(session.apps_connections_open(&SlackApiAppsConnectionOpenRequest::new()))
                .await?;
        Ok(r.url.0.to_string())
    }

    /// Downloads a private file (`url_private`) with the bot token, at most `max_bytes`.
    /// The token is sent only to Slack's own hosts (or the configured API host).
    pub async fn download(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| ApiError::Permanent("file URL does not parse".into()))?;
        if !self.may_send_token_to(&uri) {
            return Err(ApiError::Permanent(format!(
                "file host {} is not Slack's",
                uri.host().unwrap_or_default()
            )));
        }
        let req = Request::get(uri)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.bot_secret.expose()),
            )
            .body(Full::new(Bytes::new()))
            .map_err(|e| ApiError::Permanent(format!("file request: {e}")))?;
        let fetch = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ApiError::Transient(format!("file download: {e}")))?;
            let status = resp.status();
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return Err(ApiError::Transient(format!("file download: HTTP {status}")));
            }
            if !status.is_success() {
                return Err(ApiError::Permanent(format!("file download: HTTP {status}")));
            }
            let body = Limited::new(resp.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|e| ApiError::Permanent(format!("file download: {e}")))?;
            Ok(body.to_bytes().to_vec())
        };
        match tokio::time::timeout(CALL_TIMEOUT, fetch).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Transient("file download timed out".into())),
        }
    }

    fn may_send_token_to(&self, uri: &Uri) -> bool {
        let Some(host) = uri.host() else {
            return false;
        };
        let api_host = self
            .api_url
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned));
        let slack = host == "slack.com" || host.ends_with(".slack.com");
        let https = uri.scheme_str() == Some("https");
        (slack && https) || api_host.as_deref() == Some(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_error_codes_sort_into_retry_and_give_up() {
        assert_eq!(
            ApiError::from_code("ratelimited"),
            ApiError::RateLimited(DEFAULT_RETRY_AFTER)
        );
        assert!(matches!(
            ApiError::from_code("internal_error"),
            ApiError::Transient(_)
        ));
        for code in [
            "channel_not_found",
            "not_in_channel",
            "invalid_auth",
            "is_archived",
        ] {
            assert!(
                matches!(ApiError::from_code(code), ApiError::Permanent(_)),
                "{code}"
            );
        }
    }

    #[test]
    fn the_bot_token_goes_only_to_slack_or_the_configured_api_host() {
        let settings = SlackSettings::from_sources(&Default::default(), |k| match k {
            "SLACK_BOT_TOKEN" => Some("xoxb-1".into()),
            "SLACK_SIGNING_SECRET" => Some("s".into()),
            "SLACK_API_URL" => Some("http://127.0.0.1:9/api".into()),
            _ => None,
        })
        .unwrap();
        let api = SlackApi::new(&settings).unwrap();
        let ok = |u: &str| api.may_send_token_to(&u.parse().unwrap());
        assert!(ok("https://files.slack.com/files-pri/T1-F1/x.png"));
        assert!(ok("http://127.0.0.1:9/files/x"));
        assert!(!ok("http://files.slack.com/files-pri/T1-F1/x.png"));
        assert!(!ok("https://slack.com.evil.example/x"));
        assert!(!ok("https://example.com/x"));
    }
}
