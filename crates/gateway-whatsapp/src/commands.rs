//! Operator commands on `N.gateway.whatsapp.<op>`, endpoints of the `gateway-whatsapp`
//! service registration: `login` asks the bridge to pair afresh (`nexus whatsapp login`).
//!
//! A command answers at once with what the gateway did or found; it never waits for
//! the pairing itself: QR codes and the outcome travel as `service` events.

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use nexus_bus::{decode, gateway_op, reply_bytes};
use nexus_proto::v1::{GatewayCommandRequest, GatewayCommandResponse};
use tokio_util::sync::CancellationToken;

use crate::{
    Ctx,
    bridge::LinkState,
    protocol::{GatewayCommand, WaState},
};

/// Right after the gateway (re)connects, the bridge's first `status` is on its way:
/// this long a command waits for it rather than answer from an unknown state.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// The answers of `login` (`GatewayCommandResponse.status`), as documented in gateway.proto.
pub mod login_status {
    pub const LOGIN_REQUESTED: &str = "login_requested";
    pub const IN_PROGRESS: &str = "in_progress";
    pub const CONNECTED: &str = "connected";
    pub const BRIDGE_UNAVAILABLE: &str = "bridge_unavailable";
}

/// Serves the commands until `stop`.
pub(crate) async fn serve(ctx: Arc<Ctx>, stop: CancellationToken) -> anyhow::Result<()> {
    let subject = ctx
        .gateway
        .bus()
        .subjects()
        .gateway_command(ctx.gateway.channel(), gateway_op::LOGIN);
    let mut endpoint = ctx
        .gateway
        .service()
        .endpoint_builder()
        .name(gateway_op::LOGIN)
        .add(subject.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve {subject}: {e}"))?;
    tracing::debug!(subject, "serving operator commands");
    loop {
        let request = tokio::select! {
            _ = stop.cancelled() => break,
            r = endpoint.next() => match r {
                Some(r) => r,
                None => anyhow::bail!("the subscription of {subject} closed"),
            },
        };
        let reply = login(&ctx, &request.message.payload).await;
        if let Err(error) = request.respond(reply_bytes(reply)).await {
            tracing::warn!(%error, "login reply not sent; the operator's request times out");
        }
    }
    if let Err(error) = endpoint.stop().await {
        tracing::debug!(%error, "stopping the login endpoint");
    }
    Ok(())
}

/// `login`: pair afresh when WhatsApp waits for it, else say why not.
async fn login(ctx: &Ctx, payload: &[u8]) -> Result<GatewayCommandResponse, (u16, String)> {
    decode::<GatewayCommandRequest>(payload).map_err(|e| (400, e.to_string()))?;
    let mut state = ctx.link.subscribe();
    let settled = |s: &LinkState| !s.bridge_connected() || s.wa != WaState::Unknown;
    // On timeout, an unknown state (a newer bridge's) is answered as in progress below.
    let _ = tokio::time::timeout(STATUS_WAIT, state.wait_for(settled)).await;
    let now = state.borrow().clone();
    Ok(answer(ctx, &now))
}

fn answer(ctx: &Ctx, now: &LinkState) -> GatewayCommandResponse {
    let reply = |status: &str, detail: String| GatewayCommandResponse {
        status: status.to_owned(),
        detail,
    };
    let unavailable = || {
        reply(
            login_status::BRIDGE_UNAVAILABLE,
            format!(
                "gateway-whatsapp is not connected to the WhatsApp bridge at {}: is bridge/ \
                 running, and do WHATSAPP_BRIDGE_URL and WHATSAPP_BRIDGE_TOKEN match? \
                 (the gateway's log says why)",
                ctx.settings.bridge_url
            ),
        )
    };
    if !now.bridge_connected() {
        return unavailable();
    }
    match now.wa {
        WaState::Connected => reply(
            login_status::CONNECTED,
            now.account.clone().unwrap_or_default(),
        ),
        wa if wa.needs_login() => {
            if !ctx.link.command(&GatewayCommand::Login) {
                return unavailable();
            }
            tracing::info!(
                state = wa.as_str(),
                "login requested by an operator: the bridge pairs afresh"
            );
            reply(
                login_status::LOGIN_REQUESTED,
                format!(
                    "WhatsApp was {}; the bridge starts pairing afresh and QR codes follow",
                    wa.as_str()
                ),
            )
        }
        wa => reply(
            login_status::IN_PROGRESS,
            format!(
                "WhatsApp is {}; QR codes follow if it has to pair",
                wa.as_str()
            ),
        ),
    }
}
