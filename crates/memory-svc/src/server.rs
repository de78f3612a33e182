//! memory-svc on NATS: one service endpoint per memory operation, and the memory
//! tools (`N.tool.remember`, `N.tool.memory_search`) through the shared tool
//! runtime, which also bounds the requests in flight and drains them on shutdown
//! (`nexus_tools::serve_with_ops`).
//!
//! It must never decide what an operation or a tool means (that is `ops` and
//! `tools`) and never leave a spawned task behind.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use nexus_bus::{Bus, MemoryOp, TraceContext, async_nats::service};
use nexus_tools::{DynTool, OpLimits, ServeOptions, ToolServer, serve_with_ops};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::ops::Memory;

/// Name in the NATS service API (`nats micro ls`).
pub const SERVICE_NAME: &str = "memory-svc";
const DESCRIPTION: &str = "Session history and the Markdown memory of the workspace";

/// Requests handled at once; more wait in the subscription, so a burst costs
/// bounded memory and database connections.
const MAX_IN_FLIGHT: usize = 64;
/// How long requests in flight may take to answer after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves the memory operations (and, through the shared tool runtime, the memory
/// tools) on `bus` until `shutdown` is cancelled.
pub async fn serve(
    bus: &Bus,
    memory: Arc<Memory>,
    tools: Vec<Arc<dyn DynTool>>,
    max_output_bytes: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = bus
        .register_service(SERVICE_NAME, DESCRIPTION)
        .await
        .context("cannot register with the NATS service API")?;
    let tool_server = ToolServer::new(
        bus.clone(),
        service,
        SERVICE_NAME,
        env!("CARGO_PKG_VERSION"),
        ServeOptions {
            max_output_bytes,
            ..ServeOptions::default()
        },
    );
    for tool in tools {
        tool_server.add(tool).await?;
    }
    tracing::info!(
        namespace = %bus.subjects().namespace(),
        subjects = %bus.subjects().memory_all(),
        tools = ?tool_server.names(),
        "memory-svc ready"
    );
    let ops = MemoryOp::ALL
        .into_iter()
        .map(|op| (op, op.name(), bus.subjects().memory(op)))
        .collect();
    let limits = OpLimits {
        max_in_flight: MAX_IN_FLIGHT,
        grace: SHUTDOWN_GRACE,
    };
    serve_with_ops(tool_server, ops, limits, shutdown, move |op, request| {
        let memory = Arc::clone(&memory);
        async move { answer(&memory, op, request).await }
    })
    .await
}

/// Handles one request and sends its reply.
async fn answer(memory: &Memory, op: MemoryOp, request: service::Request) {
    let trace = TraceContext::from_headers(request.message.headers.as_ref());
    let span = tracing::info_span!(
        "memory_op",
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        op = op.name(),
        trace_id = trace.trace_id()
    );
    nexus_common::telemetry::name_span(&span, "server", || format!("memory {}", op.name()));
    let span = trace.span(span);
    async {
        let reply = memory.handle(op, &request.message.payload).await;
        if let Err(error) = request.respond(reply).await {
            tracing::warn!(%error, "reply not sent; the caller will time out");
        }
    }
    .instrument(span)
    .await;
}
