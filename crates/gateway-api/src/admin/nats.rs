//! The console's own NATS connection. In production it logs in as its own user
//! (`console` in deploy/nats/authorization.conf), which may do what the console
//! reads and does, so the public API's user (`gateway-api`) stays as narrow as its
//! job. Its credentials are the NATS ones with the prefix `CONSOLE_`
//! (`CONSOLE_NATS_CREDS`, `CONSOLE_NATS_USER` + `CONSOLE_NATS_PASSWORD`,
//! `CONSOLE_NATS_TOKEN`); TLS is the process's. Without any, the console shares the
//! service's connection (development, where NATS has no users).

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use nexus_bus::{Bus, NatsAccess, async_nats};
use nexus_common::{Config, domain::Namespace};

/// The prefix of the console's NATS credentials.
pub const PREFIX: &str = "CONSOLE_";

/// The console's bus: its own connection when `CONSOLE_NATS_*` credentials are
/// set, else `service`.
pub async fn connect(config: &Config, service: &Bus) -> anyhow::Result<Bus> {
    let url = &config.nats.url;
    let Some(access) = NatsAccess::from_env_prefixed(PREFIX, url)? else {
        return Ok(service.clone());
    };
    let ns = Namespace::parse(&config.namespace).context("NEXUS_NAMESPACE")?;
    let connecting = access
        .options()?
        .name(format!("{}:gateway-api-console", config.namespace))
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match &event {
                // What the console's user was refused: operators must see it.
                async_nats::Event::ServerError(_) => {
                    tracing::warn!(%event, "NATS server error (admin console)")
                }
                _ => tracing::debug!(%event, "NATS connection event (admin console)"),
            }
        })
        .connect(NatsAccess::servers(url)?);
    let client = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| anyhow!("the admin console's connection to NATS at {url} timed out"))?
        .map_err(|e| {
            anyhow!(
                "NATS at {url} refused the admin console's connection {}: {e}. Check \
                 CONSOLE_NATS_CREDS, CONSOLE_NATS_USER/CONSOLE_NATS_PASSWORD or CONSOLE_NATS_TOKEN",
                access.describe()
            )
        })?;
    tracing::info!("admin console: connected to NATS {}", access.describe());
    Ok(Bus::from_client(
        client,
        ns,
        "gateway-api",
        Duration::from_secs(config.nats.request_timeout_secs.max(1)),
    )
    .with_replicas(config.nats.replicas))
}
