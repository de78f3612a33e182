//! The `gateway-slack` binary: loads config, starts telemetry, and runs the
//! gateway until SIGINT/SIGTERM. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use nexus_common::{Config, shutdown, telemetry};

/// Slack ↔ NATS: the Events API (or Socket Mode) in, chat.postMessage out.
///
/// Configured by nexus.toml (NEXUS_CONFIG) and the environment: SLACK_BOT_TOKEN,
/// SLACK_SIGNING_SECRET, SLACK_APP_TOKEN, SLACK_API_URL, NATS_URL, NEXUS_NAMESPACE,
/// NEXUS__CHANNELS__SLACK__* ([channels.slack] listen, allow_from, mention_only, mode).
#[derive(Parser)]
#[command(name = "gateway-slack", version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    nexus_common::malloc::trim_when_idle();
    let _cli = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gateway-slack: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = telemetry::init("gateway-slack", &config);
    match gateway_slack::run(config, shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "gateway-slack failed");
            ExitCode::FAILURE
        }
    }
}
