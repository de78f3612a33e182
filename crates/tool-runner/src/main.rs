//! The `tool-runner` binary: loads config, starts telemetry, and runs the
//! service until SIGINT/SIGTERM. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use nexus_common::{Config, shutdown, telemetry};

/// Executes the agent's tools inside the workspace sandbox, over NATS.
///
/// Configured by nexus.toml (NEXUS_CONFIG) and the environment: NATS_URL,
/// NEXUS_NAMESPACE, NEXUS_WORKSPACE, NEXUS__TOOLS__*.
#[derive(Parser)]
#[command(name = "tool-runner", version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    nexus_common::malloc::trim_when_idle();
    let _cli = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tool-runner: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = telemetry::init("tool-runner", &config);
    match tool_runner::run(config, shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "tool-runner failed");
            ExitCode::FAILURE
        }
    }
}
