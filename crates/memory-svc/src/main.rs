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

fn main() -> ExitCode {
    // sqlx runs each SQLite connection on a thread of its own, each with an arena:
    // the bench's soak grew memory-svc by 16.6 MiB over 20,000 turns, 8.3 with two.
    nexus_common::malloc::limit_arenas();
    nexus_common::malloc::trim_when_idle();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("memory-svc: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve())
}

async fn serve() -> ExitCode {
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
