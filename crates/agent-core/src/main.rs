//! agent-core binary: configuration, telemetry, signals, then [`agent_core::run`].

use std::process::ExitCode;

use clap::Parser;

/// The reasoning loop of Nexus: consumes N.inbound, calls the model and tools,
/// publishes replies. Run as many replicas as you like.
///
/// Configured by nexus.toml (NEXUS_CONFIG) and the environment: NATS_URL,
/// NEXUS_NAMESPACE, provider keys (OPENAI_API_KEY, ANTHROPIC_API_KEY, …), NEXUS__LLM__*.
#[derive(Parser)]
#[command(name = "agent-core", version, about)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    nexus_common::malloc::trim_when_idle();
    let _cli = Cli::parse();
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
