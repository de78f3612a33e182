//! gateway-slack: Slack ↔ NATS.
//!
//! Events arrive on the Events API (`POST /slack/events`, signed with
//! `SLACK_SIGNING_SECRET`) or, with `[channels.slack] mode = "socket"`, over Socket
//! Mode. Each accepted event is stored in `N_INBOUND` under `slack:<event_id>` before
//! Slack is acknowledged; replies are drained from `N_OUTBOUND` and posted with
//! `chat.postMessage` in the thread of the message they answer.
//!
//! Layout: [`settings`] (variables and keys), [`signature`] (request signing),
//! [`intake`] (event → `InboundMessage`), [`http`] (Events API routes), [`socket`]
//! (Socket Mode), [`outbound`] (reply → Slack), [`api`] (the Web API client),
//! [`mrkdwn`] (text conversion and splitting).
//!
//! This crate must never start a turn for an unsigned request, and never
//! acknowledge Slack before the event is stored.

pub mod api;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod intake;
pub mod mrkdwn;
pub mod outbound;
pub mod settings;
pub mod signature;
pub mod socket;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use nexus_common::{Config, shutdown::CancellationToken};
use nexus_gateway::Gateway;

use crate::{
    api::{ApiError, BotIdentity, SlackApi},
    http::EventsApi,
    intake::Intake,
    outbound::Outbound,
    settings::{Mode, SlackSettings},
};

/// How long open requests may take to finish after shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the gateway until `shutdown`, with settings from the environment and `[channels.slack]`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = SlackSettings::load(&config.channel("slack"))?;
    run_with(config, settings, shutdown).await
}

/// Runs the gateway with explicit settings.
pub async fn run_with(
    config: Config,
    settings: SlackSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = SlackApi::new(&settings)?;
    let bot = identify(&api).await?;
    let gateway = Arc::new(Gateway::connect(&config, "slack").await?);
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} ([channels.slack] listen)",
                settings.listen
            )
        })?;
    tracing::info!(listen = %settings.listen, mode = ?settings.mode, "gateway-slack ready");

    let intake = Arc::new(Intake::new(
        gateway.clone(),
        api.clone(),
        settings.clone(),
        bot,
    ));
    // Cancelled on shutdown, or when one part fails for good so the others stop too.
    let stop = shutdown.child_token();
    let outbound = Outbound::new(
        api.clone(),
        gateway.bus().clone(),
        gateway.part_log(stop.clone()),
        settings.chunk_chars,
        settings.max_file_bytes,
    );

    let events_api = Arc::new(EventsApi {
        intake: intake.clone(),
        signing_secret: match settings.mode {
            Mode::Events => settings.signing_secret.clone(),
            Mode::Socket => None,
        },
    });
    let app = http::router(events_api, settings.max_body_bytes);
    let server = async {
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future();
        let result = tokio::select! {
            r = serve => r.context("Events API server failed"),
            _ = async { stop.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!("requests still open {SHUTDOWN_GRACE:?} after shutdown; closing them");
                Ok(())
            }
        };
        if result.is_err() {
            stop.cancel();
        }
        result
    };
    let socket = async {
        if settings.mode != Mode::Socket {
            return Ok(());
        }
        let result = socket::run(api.clone(), intake.clone(), stop.clone()).await;
        if result.is_err() {
            stop.cancel();
        }
        result
    };
    let delivery = async {
        let result = gateway
            .deliver(stop.clone(), |msg| outbound.send(msg))
            .await;
        if result.is_err() {
            stop.cancel();
        }
        result
    };
    let (served, socketed, delivered) = tokio::join!(server, socket, delivery);

    drop(intake);
    match Arc::try_unwrap(gateway) {
        Ok(gateway) => gateway.close().await,
        Err(gateway) => gateway.bus().drain().await,
    }
    tracing::info!("gateway-slack stopped");
    served.and(socketed).and(delivered)
}

/// Asks Slack who the bot is. A refused token is fatal; an unreachable Slack is not
/// (the bot's user id is then learnt from the events themselves).
async fn identify(api: &SlackApi) -> anyhow::Result<BotIdentity> {
    match api.auth_test().await {
        Ok(bot) => {
            tracing::info!(bot_user = %bot.user_id, "Slack accepted the bot token");
            Ok(bot)
        }
        Err(ApiError::Permanent(reason)) => {
            anyhow::bail!("Slack refused SLACK_BOT_TOKEN (auth.test: {reason})")
        }
        Err(error) => {
            tracing::warn!(%error, "auth.test failed; continuing, the bot's user id comes from events");
            Ok(BotIdentity::default())
        }
    }
}
