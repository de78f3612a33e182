//! Socket Mode: `apps.connections.open` with the app token, then a WebSocket on which
//! Slack pushes envelopes. Each `events_api` envelope is acknowledged only after
//! [`Intake::handle`] stored it; an envelope that could not be stored stays
//! unacknowledged, so Slack sends it again. The connection is reopened when Slack
//! asks (`disconnect`) or drops it, with a growing pause after failures.

use std::{sync::Arc, time::Duration};

use futures::{SinkExt, StreamExt};
use nexus_common::{backoff::Backoff, shutdown::CancellationToken};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    api::{ApiError, SlackApi},
    intake::{Envelope, Intake},
};

/// Waits between connection attempts: 1 s doubling to a minute.
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type", default)]
    kind: String,
    envelope_id: Option<String>,
    payload: Option<serde_json::Value>,
    reason: Option<String>,
    retry_attempt: Option<u32>,
}

/// Receives events over Socket Mode until `shutdown`.
pub async fn run(
    api: SlackApi,
    intake: Arc<Intake>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = BACKOFF;
    while !shutdown.is_cancelled() {
        let url = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = api.open_socket() => r,
        };
        let url = match url {
            Ok(url) => url,
            Err(ApiError::Permanent(e)) => {
                anyhow::bail!(
                    "Socket Mode: apps.connections.open refused ({e}); check SLACK_APP_TOKEN"
                )
            }
            Err(error) => {
                let wait = backoff.fail();
                tracing::warn!(%error, ?wait, "Socket Mode: cannot open a connection; retrying");
                pause(&shutdown, wait).await;
                continue;
            }
        };
        let ws = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tokio_tungstenite::connect_async(url.as_str()) => r,
        };
        match ws {
            Ok((ws, _)) => {
                tracing::info!("Socket Mode connected");
                backoff.reset();
                session(ws, &intake, &shutdown).await;
            }
            Err(error) => {
                let wait = backoff.fail();
                tracing::warn!(%error, ?wait, "Socket Mode: WebSocket connect failed; retrying");
                pause(&shutdown, wait).await;
            }
        }
    }
    Ok(())
}

async fn pause(shutdown: &CancellationToken, wait: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

/// One connection: returns when Slack closes it, asks to reconnect, or on shutdown.
async fn session<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    intake: &Intake,
    shutdown: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        // Only the wait for the next frame is interrupted: an intake in flight finishes.
        let frame = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            f = ws.next() => f,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => {
                tracing::info!("Socket Mode connection closed; reconnecting");
                return;
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                tracing::warn!(%error, "Socket Mode connection failed; reconnecting");
                return;
            }
        };
        let frame: Frame = match serde_json::from_str(text.as_str()) {
            Ok(f) => f,
            Err(error) => {
                tracing::warn!(%error, "Socket Mode frame is not JSON; ignored");
                continue;
            }
        };
        let ack = match frame.kind.as_str() {
            "hello" => {
                tracing::debug!("Socket Mode hello");
                None
            }
            "disconnect" => {
                tracing::info!(
                    reason = frame.reason.as_deref().unwrap_or(""),
                    "Slack asked to reconnect"
                );
                let _ = ws.close(None).await;
                return;
            }
            "events_api" => match handle_events_api(&frame, intake).await {
                true => frame.envelope_id.clone(),
                false => None,
            },
            // Slash commands and interactions are not used; acknowledge so Slack stops resending.
            _ => frame.envelope_id.clone(),
        };
        if let Some(id) = ack {
            let body = serde_json::json!({ "envelope_id": id }).to_string();
            if let Err(error) = ws.send(Message::Text(body.into())).await {
                // Slack redelivers an unacknowledged envelope; intake deduplicates it.
                tracing::warn!(%error, "Socket Mode ack not sent; reconnecting");
                return;
            }
        }
    }
}

/// True when the envelope may be acknowledged.
async fn handle_events_api(frame: &Frame, intake: &Intake) -> bool {
    let Some(payload) = frame.payload.clone() else {
        return true;
    };
    let envelope: Envelope = match serde_json::from_value(payload) {
        Ok(e) => e,
        Err(error) => {
            // It will never parse better: acknowledge rather than have it resent forever.
            tracing::warn!(%error, "Socket Mode payload is not an event envelope; dropped");
            return true;
        }
    };
    let Envelope::EventCallback(cb) = envelope else {
        return true;
    };
    match intake.handle(&cb).await {
        Ok(_) => true,
        Err(error) => {
            tracing::error!(%error, event_id = %cb.event_id, retry = frame.retry_attempt.unwrap_or(0), "event not stored; not acknowledged, Slack will resend");
            false
        }
    }
}

#[cfg(test)]
mod fuzz;
