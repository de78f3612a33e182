//! The `gateway-api` binary: loads config, starts telemetry, and serves the HTTP
//! and gRPC API until SIGINT/SIGTERM. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use nexus_common::{Config, shutdown, telemetry};

/// HTTP and gRPC API of the agent, with an OpenAI-compatible chat endpoint.
///
/// Configured by nexus.toml (NEXUS_CONFIG) and the environment: NATS_URL,
/// NEXUS_NAMESPACE, `[api] listen` / `grpc_listen` / `[api.keys]`
/// (NEXUS__API__*), `[channels.api] reply_timeout_secs` (NEXUS__CHANNELS__API__*).
#[derive(Parser)]
#[command(name = "gateway-api", version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    nexus_common::malloc::trim_when_idle();
    let _cli = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gateway-api: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = telemetry::init("gateway-api", &config);
    match gateway_api::run(config, shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "gateway-api failed");
            ExitCode::FAILURE
        }
    }
}
