//! agent-core binary: configuration, telemetry, signals, then [`agent_core::run`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match nexus_common::Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent-core: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = nexus_common::telemetry::init("agent-core", &config);
    let shutdown = nexus_common::shutdown::on_signals();
    match agent_core::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "agent-core failed");
            ExitCode::FAILURE
        }
    }
}
