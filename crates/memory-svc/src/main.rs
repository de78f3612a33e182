//! The memory-svc binary: configuration, telemetry and signals, then [`memory_svc::run`].

use std::process::ExitCode;

use clap::Parser;
use nexus_common::{Config, shutdown, telemetry};

/// Session history and the Markdown memory of a Nexus workspace, served over NATS.
///
/// Configured by nexus.toml (NEXUS_CONFIG) and the environment: NATS_URL,
/// NEXUS_NAMESPACE, NEXUS_WORKSPACE, DATABASE_URL.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    let Cli {} = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("memory-svc: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = telemetry::init("memory-svc", &config);
    match memory_svc::run(config, shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "memory-svc failed");
            ExitCode::FAILURE
        }
    }
}
