//! The `gateway-whatsapp` binary: loads config, starts telemetry, and runs the
//! gateway until SIGINT/SIGTERM. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use nexus_common::{Config, shutdown, telemetry};

/// WhatsApp ↔ NATS, through bridge/ (Node.js + Baileys) over a WebSocket.
///
/// Configured by the environment: WHATSAPP_BRIDGE_URL (default ws://127.0.0.1:3001),
/// WHATSAPP_BRIDGE_TOKEN (required, shared with the bridge), NATS_URL, NEXUS_NAMESPACE;
/// and by [channels.whatsapp] in nexus.toml (allow_from, login_on_start, …).
#[derive(Parser)]
#[command(name = "gateway-whatsapp", version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    nexus_common::malloc::trim_when_idle();
    let _cli = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gateway-whatsapp: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = telemetry::init("gateway-whatsapp", &config);
    match gateway_whatsapp::run(config, shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "gateway-whatsapp failed");
            ExitCode::FAILURE
        }
    }
}
