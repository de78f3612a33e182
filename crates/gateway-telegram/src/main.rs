//! The `gateway-telegram` binary: loads config, starts telemetry, and runs the
//! Telegram gateway until SIGINT/SIGTERM. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use nexus_common::{Config, shutdown, telemetry};

/// Connects a Telegram bot to Nexus: Bot API (long polling or webhook) ↔ NATS.
///
/// Configured by the environment (TELEGRAM_BOT_TOKEN, TELEGRAM_API_URL, NATS_URL,
/// NEXUS_NAMESPACE) and `[channels.telegram]` in nexus.toml (allow_from, mode,
/// listen, webhook_secret, group_mention_only), or NEXUS__CHANNELS__TELEGRAM__*.
#[derive(Parser)]
#[command(name = "gateway-telegram", version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    nexus_common::malloc::trim_when_idle();
    let _cli = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gateway-telegram: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = telemetry::init("gateway-telegram", &config);
    match gateway_telegram::run(config, shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "gateway-telegram failed");
            ExitCode::FAILURE
        }
    }
}
