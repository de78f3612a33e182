//! scheduler: persistent cron, interval and one-shot jobs, fired exactly once per
//! due time as `INBOUND_KIND_SCHEDULED` messages on the chat each job was made in.
//!
//! It owns the jobs (`store`, SQL: SQLite or PostgreSQL), the meaning of the
//! requests about them (`jobs`), the `cron` tool (`tool`), the operators'
//! endpoints on `N.scheduler.<op>` (`server`), time (`cron`, `schedule`: civil
//! time in IANA zones with jiff) and the tick loop that claims and publishes fires
//! (`runner`). Any number of replicas may run; a claim in SQL picks one per due time.
//!
//! It must never call an LLM, never read another service's store, and never fire a
//! due time twice or drop one it claimed.

pub mod cron;
pub mod job;
pub mod jobs;
pub mod runner;
pub mod schedule;
pub mod server;
pub mod store;
pub mod tool;

use std::time::Duration;

use anyhow::Context as _;
use nexus_bus::Bus;
use nexus_common::Config;
use tokio_util::sync::CancellationToken;

pub use jobs::{Actor, JobError, Jobs, NewJob};
pub use runner::Runner;
pub use store::Store;

/// Runs the scheduler until `shutdown`: the job store, NATS, the tick loop and
/// the service. Returns once requests in flight answered and the loop stopped.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url())
        .await
        .context("cannot open the job store")?;
    tracing::info!(backend = store.backend(), "job store ready");
    let result = async {
        let bus = Bus::connect(&config, server::SERVICE_NAME).await?;
        bus.ensure_streams().await.context("creating streams")?;
        let instance = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let runner = Runner::new(
            store.clone(),
            bus.clone(),
            instance,
            Duration::from_secs(config.scheduler.misfire_grace_secs),
        );
        let jobs = Jobs::new(
            store.clone(),
            Some(runner.clone()),
            config.scheduler.clone(),
            config.memory.timezone.clone(),
        );
        let ticking = {
            let (runner, shutdown) = (runner.clone(), shutdown.clone());
            tokio::spawn(async move { runner.run(shutdown).await })
        };
        let served = server::serve(&bus, jobs, &config.tools, shutdown.clone()).await;
        // A failed service must not leave the loop firing without it.
        shutdown.cancel();
        if let Err(error) = ticking.await {
            tracing::error!(%error, "the tick loop failed");
        }
        bus.drain().await;
        served
    }
    .await;
    store.close().await;
    result
}
