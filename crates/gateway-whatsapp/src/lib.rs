//! gateway-whatsapp: the WhatsApp channel of Nexus, as a WebSocket client of
//! `bridge/` (Node.js + Baileys, which owns the WhatsApp session).
//!
//! Intake: each bridge `message` passes the allow-list (phone number and LID both
//! count), becomes an `InboundMessage` with upstream id = the WhatsApp message id
//! (attachments go to the object store), and is acknowledged to the bridge (which
//! then marks it read) only after `Gateway::intake` returned the PubAck. A replay
//! after a reconnect is a JetStream duplicate, so it starts no second turn.
//!
//! Delivery: while the bridge and WhatsApp are both connected, replies from
//! `N.outbound.whatsapp` become bridge `send`s; otherwise they wait in `N_OUTBOUND`.
//!
//! QR codes and status changes are published as `service` events
//! (`ServiceNotice { service: "gateway-whatsapp", status, detail }`). Operators ask
//! for a new pairing on `N.gateway.whatsapp.login` (`commands`, `nexus whatsapp login`).
//!
//! Only this crate (and bridge/) know the bridge protocol; it never builds a NATS subject.

mod bridge;
pub mod commands;
pub mod inbound;
pub mod outbound;
pub mod protocol;
pub mod settings;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use nexus_common::{Config, shutdown::CancellationToken};
use nexus_gateway::{DeliveryError, Gateway};
use nexus_proto::v1::OutboundMessage;
use tokio_util::task::TaskTracker;

pub use bridge::{Link, LinkState};
pub use settings::{Secret, WhatsAppSettings};

/// The channel name: subjects `N.inbound.whatsapp` / `N.outbound.whatsapp`, ids `whatsapp:<message id>`.
pub const CHANNEL: &str = "whatsapp";
/// The service name registered with NATS and used in events.
pub const SERVICE: &str = "gateway-whatsapp";

/// What the tasks of one running gateway share.
pub(crate) struct Ctx {
    pub gateway: Gateway,
    pub link: Link,
    pub settings: WhatsAppSettings,
    pub tasks: TaskTracker,
}

impl Ctx {
    async fn send_reply(&self, reply: OutboundMessage) -> Result<(), DeliveryError> {
        let Some(cmd) =
            outbound::to_send(&self.gateway, &reply, self.settings.max_media_bytes).await?
        else {
            tracing::info!(id = %reply.id, "empty reply not sent");
            return Ok(());
        };
        let result = self.link.request(cmd, self.settings.send_timeout).await?;
        outbound::outcome(result)
    }
}

/// Runs the gateway until `shutdown`, with settings from the environment and `[channels.whatsapp]`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = WhatsAppSettings::load(&config.channel(CHANNEL))?;
    run_with(config, settings, shutdown).await
}

/// Runs the gateway with explicit settings (tests use this).
pub async fn run_with(
    config: Config,
    settings: WhatsAppSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let gateway = Gateway::connect(&config, CHANNEL)
        .await
        .context("connecting to NATS")?;
    if gateway.settings().allow_from.is_empty() {
        tracing::warn!(
            "[channels.whatsapp] allow_from is empty: nobody may talk to the agent; \
             senders are told their id once so an admin can add it"
        );
    }
    tracing::info!(bridge = %settings.bridge_url, "gateway-whatsapp starting");
    let stop = shutdown.child_token();
    let ctx = Arc::new(Ctx {
        gateway,
        link: Link::new(),
        settings,
        tasks: TaskTracker::new(),
    });

    let connection = async {
        let result = bridge::maintain(ctx.clone(), stop.clone()).await;
        stop.cancel();
        result
    };
    let delivery = async {
        let result = deliver_while_ready(ctx.clone(), stop.clone()).await;
        stop.cancel();
        result
    };
    let commands = async {
        let result = commands::serve(ctx.clone(), stop.clone()).await;
        stop.cancel();
        result
    };
    let (connection, delivery, commands) = tokio::join!(connection, delivery, commands);

    ctx.tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), ctx.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("access notices still in flight at shutdown were abandoned");
    }
    match Arc::try_unwrap(ctx) {
        Ok(ctx) => ctx.gateway.close().await,
        Err(ctx) => ctx.gateway.bus().drain().await,
    }
    connection.context("WhatsApp bridge")?;
    delivery.context("delivering replies")?;
    commands.context("serving operator commands")?;
    tracing::info!("gateway-whatsapp stopped");
    Ok(())
}

/// Pulls replies only while they can be sent: a bridge or WhatsApp outage leaves
/// them in `N_OUTBOUND` (instead of burning their deliveries into dead letters).
async fn deliver_while_ready(ctx: Arc<Ctx>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut state = ctx.link.subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            ready = async { state.wait_for(LinkState::ready).await.is_ok() } => if !ready { return Ok(()) },
        }
        let round = stop.child_token();
        let sender = ctx.clone();
        let deliver = ctx.gateway.deliver(round.clone(), move |reply| {
            let sender = sender.clone();
            async move { sender.send_reply(reply).await }
        });
        tokio::pin!(deliver);
        tokio::select! {
            result = &mut deliver => result?,
            _ = async { state.wait_for(|s| !s.ready()).await.is_ok() } => {
                tracing::info!("pausing delivery until the bridge and WhatsApp are connected again");
                round.cancel();
                deliver.await?;
            }
        }
        if stop.is_cancelled() {
            return Ok(());
        }
    }
}
