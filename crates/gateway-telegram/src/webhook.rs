//! Webhook intake: Telegram POSTs each update to `listen` + `webhook_path` with the
//! secret in `X-Telegram-Bot-Api-Secret-Token`. The answer is 200 only after the
//! update is stored; anything else makes Telegram deliver it again.

use std::sync::Arc;

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use nexus_common::shutdown::CancellationToken;
use subtle::ConstantTimeEq;
use teloxide::{
    payloads::SetWebhookSetters,
    requests::Requester,
    types::{AllowedUpdate, Update},
};

use crate::{settings::Mode, telegram::Telegram};

/// Header Telegram puts the webhook secret in.
pub(crate) const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Serves the webhook until `shutdown`; requests in flight are finished.
pub(crate) async fn serve(tg: Arc<Telegram>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Mode::Webhook {
        listen,
        path,
        secret,
        public_url,
    } = tg.settings.mode.clone()
    else {
        anyhow::bail!("webhook::serve called in polling mode");
    };
    if let Some(url) = public_url {
        tg.bot
            .set_webhook(url.clone())
            .secret_token(secret.expose())
            .allowed_updates([AllowedUpdate::Message])
            .await
            .map_err(|e| anyhow::anyhow!("setWebhook for {url}: {}", tg.scrub(&e)))?;
        tracing::info!(%url, "webhook registered with Telegram");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} for Telegram webhooks"))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(listen), path, "webhook listening");
    let app = Router::new().route(&path, post(receive)).with_state(tg);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("webhook server")
}

async fn receive(State(tg): State<Arc<Telegram>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Mode::Webhook { secret, .. } = &tg.settings.mode else {
        return StatusCode::NOT_FOUND;
    };
    let given = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !secret_matches(given, secret.expose().as_bytes()) {
        tracing::warn!("webhook request without the right secret refused");
        return StatusCode::UNAUTHORIZED;
    }
    let update: Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(error) => {
            tracing::warn!(%error, "webhook body is not a Telegram update");
            return StatusCode::BAD_REQUEST;
        }
    };
    match tg.handle_update(&update).await {
        Ok(handled) => {
            tracing::debug!(update = update.id.0, ?handled, "webhook update handled");
            StatusCode::OK
        }
        Err(error) => {
            tracing::warn!(update = update.id.0, %error, "webhook update not stored; Telegram will retry");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// Constant-time comparison, so response timing does not reveal the secret.
fn secret_matches(given: &[u8], expected: &[u8]) -> bool {
    !expected.is_empty() && given.len() == expected.len() && bool::from(given.ct_eq(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_secret_matches() {
        assert!(secret_matches(b"s3cret", b"s3cret"));
        assert!(!secret_matches(b"s3creT", b"s3cret"));
        assert!(!secret_matches(b"s3cre", b"s3cret"));
        assert!(!secret_matches(b"", b""));
    }
}
