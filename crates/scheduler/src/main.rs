//! The scheduler binary: configuration, telemetry and signals, then [`scheduler::run`].

use std::process::ExitCode;

use clap::Parser;
use nexus_common::{Config, shutdown, telemetry};

/// Persistent cron, interval and one-shot jobs of a Nexus deployment, fired over NATS.
///
/// Configured by nexus.toml (NEXUS_CONFIG) and the environment: NATS_URL,
/// NEXUS_NAMESPACE, NEXUS_WORKSPACE, DATABASE_URL, NEXUS__SCHEDULER__*.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    nexus_common::malloc::trim_when_idle();
    let Cli {} = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("scheduler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = telemetry::init("scheduler", &config);
    match scheduler::run(config, shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "scheduler failed");
            ExitCode::FAILURE
        }
    }
}
