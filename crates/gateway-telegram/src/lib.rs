//! gateway-telegram: the Telegram channel of Nexus. Telegram Bot API ↔ NATS.
//!
//! Intake: updates arrive by `getUpdates` long polling that this crate drives
//! itself ([`polling`]), or by webhook ([`webhook`]). Each message becomes an
//! `InboundMessage` with upstream id `<chat_id>:<message_id>`, and the polling
//! offset moves past an update only after `Gateway::intake` returned the PubAck,
//! so a crash neither loses nor (thanks to `Nats-Msg-Id`) doubles a message.
//!
//! Delivery: replies from `N.outbound.telegram` are rendered from Markdown to
//! Telegram HTML ([`format`]), split at 4096 UTF-16 units, and sent as replies.
//!
//! Only this crate knows Telegram's payloads; it never builds a NATS subject.

pub mod format;
mod inbound;
mod outbound;
mod polling;
pub mod settings;
mod telegram;
mod typing;
mod webhook;

use std::sync::Arc;

use anyhow::Context as _;
use nexus_common::{Config, shutdown::CancellationToken};
use nexus_gateway::Gateway;
use tokio_util::task::TaskTracker;

pub use settings::{Mode, TelegramSettings};

/// The channel name: subjects `N.inbound.telegram` / `N.outbound.telegram`, ids `telegram:<chat>:<msg>`.
pub const CHANNEL: &str = "telegram";
/// The service name registered with NATS and used in events.
pub const SERVICE: &str = "gateway-telegram";

/// Runs the gateway until `shutdown`: intake (polling or webhook) and delivery side by side.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = TelegramSettings::load(&config.channel(CHANNEL))?;
    let gateway = Gateway::connect(&config, CHANNEL)
        .await
        .context("connecting to NATS")?;
    if gateway.settings().allow_from.is_empty() {
        tracing::warn!(
            "[channels.telegram] allow_from is empty: nobody may talk to the bot; \
             senders are told their id once so an admin can add it"
        );
    }
    let bot = telegram::new_bot(&settings)?;
    let me = match telegram::identify(&bot, &settings, &shutdown).await {
        Ok(Some(me)) => me,
        Ok(None) => {
            gateway.close().await;
            return Ok(());
        }
        Err(e) => {
            gateway.close().await;
            return Err(e);
        }
    };
    tracing::info!(
        bot = me.user.username.as_deref().unwrap_or_default(),
        mode = match settings.mode {
            Mode::Polling => "polling",
            Mode::Webhook { .. } => "webhook",
        },
        "connected to Telegram"
    );

    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();
    let parts = gateway.part_log(stop.clone());
    let tg = Arc::new(telegram::Telegram::new(
        gateway,
        bot,
        me,
        settings,
        parts,
        stop.clone(),
        tasks.clone(),
    ));

    let intake = async {
        let result = match tg.settings.mode.clone() {
            Mode::Polling => polling::run(&tg, stop.clone()).await,
            Mode::Webhook { .. } => webhook::serve(tg.clone(), stop.clone()).await,
        };
        // Whatever ends intake ends the gateway: a process that cannot take in is restarted.
        stop.cancel();
        result
    };
    let delivery = async {
        let sender = tg.clone();
        let result = tg
            .gateway
            .deliver(stop.clone(), move |reply| {
                let sender = sender.clone();
                async move { sender.send(reply).await }
            })
            .await;
        stop.cancel();
        result
    };
    let (intake, delivery) = tokio::join!(intake, delivery);

    tasks.close();
    tasks.wait().await;
    match Arc::try_unwrap(tg) {
        Ok(tg) => tg.gateway.close().await,
        Err(tg) => tg.gateway.bus().drain().await,
    }
    intake.context("Telegram intake")?;
    delivery.context("delivering replies")?;
    tracing::info!("gateway-telegram stopped");
    Ok(())
}
