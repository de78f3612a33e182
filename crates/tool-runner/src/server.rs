//! The NATS side of tool-runner: opens the workspace, registers the service and
//! hands its tools to the shared runtime (`nexus_tools::ToolServer`), which
//! serves, announces and drains them.

use std::sync::Arc;

use anyhow::Context;
use nexus_bus::Bus;
use nexus_common::Config;
use nexus_tools::{ServeOptions, ToolServer};
use tokio_util::sync::CancellationToken;

use crate::{
    mcp,
    sandbox::Workspace,
    stage,
    tools::{BraveApi, Registry, ToolEnv},
};

/// Name of the service in the NATS service API, and its prefix in specs.
pub const SERVICE: &str = "tool-runner";
const DESCRIPTION: &str = "Executes the agent's tools inside the workspace sandbox";

/// Serves the tools until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let workspace = Workspace::open(&config.workspace).with_context(|| {
        format!(
            "cannot open the workspace {} (NEXUS_WORKSPACE)",
            config.workspace.display()
        )
    })?;
    let env = ToolEnv {
        workspace: Arc::new(workspace),
        config: config.tools.clone(),
        brave: BraveApi::from_env(),
    };
    let registry = Registry::build(&env);
    let start = async {
        let bus = Bus::connect(&config, SERVICE).await?;
        let service = bus
            .register_service(SERVICE, DESCRIPTION)
            .await
            .context("registering with the NATS service API")?;
        anyhow::Ok((bus, service))
    };
    // A signal while NATS is slow to answer stops the start, not only the serving.
    let (bus, service) = tokio::select! {
        started = start => started?,
        () = shutdown.cancelled() => {
            tracing::info!("shutdown requested before tool-runner was serving");
            return Ok(());
        }
    };
    let server = ToolServer::new(
        bus.clone(),
        service,
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        ServeOptions {
            max_output_bytes: config.tools.max_output_bytes,
            require_approval: config.tools.require_approval.clone(),
            ..ServeOptions::default()
        },
    );
    for (_, tool) in registry.iter() {
        server.add(tool.clone()).await?;
    }
    for (name, why) in registry.not_offered() {
        server.set_status(name, format!("not offered ({why})"));
    }
    tracing::info!(
        tools = ?server.names(),
        disabled = ?registry.disabled(),
        not_offered = ?registry.not_offered(),
        workspace = %env.workspace.root().display(),
        "tool-runner serving"
    );
    // Files for messages (agent-core touches no disk), on the same service.
    let stage_stop = CancellationToken::new();
    let staging = match server.endpoint_builder() {
        Some(builder) => {
            let endpoint = builder
                .name("files_stage")
                .add(bus.subjects().files_stage())
                .await
                .map_err(|e| anyhow::anyhow!("cannot serve file staging: {e}"))?;
            Some(tokio::spawn(stage::serve(
                endpoint,
                bus.clone(),
                env.workspace.clone(),
                stage_stop.clone(),
            )))
        }
        None => None,
    };
    // MCP servers stop after the runtime drained, so calls in flight can finish.
    let mcp_stop = CancellationToken::new();
    let mcp = mcp::start(&config.tools, server.clone(), mcp_stop.clone());
    let result = server.run(shutdown).await;
    stage_stop.cancel();
    if let Some(staging) = staging {
        let _ = staging.await;
    }
    mcp_stop.cancel();
    mcp.join().await;
    server.stop_service().await;
    bus.drain().await;
    tracing::info!("tool-runner stopped");
    result
}
