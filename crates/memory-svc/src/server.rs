//! The request loop: one NATS service endpoint per memory operation and per
//! memory tool (`N.tool.remember`, `N.tool.memory_search`), requests handled
//! concurrently up to a bound, and a shutdown that stops intake, lets requests
//! in flight answer within a deadline, and joins every task. It also publishes
//! the tools' specs in the tools KV bucket, where agent-core discovers them.
//!
//! It must never decide what an operation or a tool means (that is `ops` and
//! `tools`) and never leave a spawned task behind.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use nexus_bus::{Bus, TraceContext, async_nats::service};
use nexus_common::domain::ToolName;
use nexus_proto::Message as _;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    ops::{Memory, Op},
    tools::{MemoryTool, MemoryTools},
};

/// What a request asks for: a memory operation or a tool call.
#[derive(Debug, Clone, Copy)]
enum Work {
    Op(Op),
    Tool(MemoryTool),
}

/// Name in the NATS service API (`nats micro ls`).
pub const SERVICE_NAME: &str = "memory-svc";
const DESCRIPTION: &str = "Session history and the Markdown memory of the workspace";

/// Requests handled at once; more wait in the subscription, so a burst costs
/// bounded memory and database connections.
const MAX_IN_FLIGHT: usize = 64;
/// How long requests in flight may take to answer after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `memory-svc/<version>`: who serves the memory tools, in their specs.
pub fn provider() -> String {
    format!("{SERVICE_NAME}/{}", env!("CARGO_PKG_VERSION"))
}

/// Puts the spec of every enabled memory tool in the tools KV bucket (one key
/// per tool, beside tool-runner's), and removes the specs of disabled ones.
/// Specs stay when memory-svc stops: other replicas may still serve them.
pub async fn publish_tool_specs(bus: &Bus, tools: &MemoryTools) -> anyhow::Result<()> {
    let bucket = bus.subjects().tools_bucket();
    let store = bus
        .ensure_kv_bucket(&bucket, 1, None, "Tool specs, one key per tool")
        .await?;
    let provider = provider();
    for tool in MemoryTool::ALL {
        if tools.enabled().contains(&tool) {
            let spec = tool.spec(&provider);
            store
                .put(tool.name(), Bytes::from(spec.encode_to_vec()))
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot publish the spec of {} in {bucket}: {e}",
                        tool.name()
                    )
                })?;
        } else if let Ok(Some(_)) = store.get(tool.name()).await
            && let Err(error) = store.delete(tool.name()).await
        {
            tracing::warn!(%error, tool = tool.name(), "spec of a disabled tool not removed");
        }
    }
    Ok(())
}

/// Serves the memory operations and tools on `bus` until `shutdown` is cancelled.
pub async fn serve(
    bus: &Bus,
    memory: Arc<Memory>,
    tools: Arc<MemoryTools>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = bus
        .register_service(SERVICE_NAME, DESCRIPTION)
        .await
        .context("cannot register with the NATS service API")?;
    let work = Op::ALL
        .into_iter()
        .map(Work::Op)
        .chain(tools.enabled().iter().copied().map(Work::Tool));
    let mut endpoints = Vec::new();
    for work in work {
        let (name, subject) = match work {
            Work::Op(op) => (op.name(), bus.subjects().memory(op.name())),
            Work::Tool(tool) => (
                tool.name(),
                bus.subjects().tool(&ToolName::parse(tool.name())?),
            ),
        };
        let endpoint = service
            .endpoint_builder()
            .name(name)
            .add(subject.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve {subject}: {e}"))?;
        endpoints.push(endpoint.map(move |request| (work, request)));
    }
    let mut requests = futures::stream::select_all(endpoints);
    let tool_names: Vec<&str> = tools.enabled().iter().map(|t| t.name()).collect();
    tracing::info!(
        namespace = %bus.subjects().namespace(),
        subjects = %bus.subjects().memory("*"),
        tools = ?tool_names,
        "memory-svc ready"
    );

    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let outcome = loop {
        // Wait for a free slot first, so a request taken off the subscription
        // is always handled at once.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break Err(anyhow::anyhow!("request slots closed")),
            },
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = requests.next() => next,
        };
        let Some((work, request)) = next else {
            break Err(anyhow::anyhow!(
                "the NATS subscriptions of memory-svc closed"
            ));
        };
        let (memory, tools) = (Arc::clone(&memory), Arc::clone(&tools));
        tasks.spawn(async move {
            let _permit = permit;
            match work {
                Work::Op(op) => answer(&memory, op, request).await,
                Work::Tool(tool) => answer_tool(&tools, tool, request).await,
            }
        });
        // Reap finished tasks so the set holds only work in flight.
        while tasks.try_join_next().is_some() {}
    };

    // Dropping the endpoints unsubscribes them: new requests go to other replicas.
    drop(requests);
    tracing::info!(in_flight = tasks.len(), "memory-svc stopping");
    let joined = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(result) = tasks.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "a memory request task failed");
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!(
            left = tasks.len(),
            grace = ?SHUTDOWN_GRACE,
            "requests still running at the deadline; abandoning them"
        );
        tasks.shutdown().await;
    }
    if let Err(error) = service.stop().await {
        tracing::warn!(%error, "service API registration not withdrawn");
    }
    outcome
}

/// Handles one request and sends its reply.
async fn answer(memory: &Memory, op: Op, request: service::Request) {
    let trace = TraceContext::from_headers(request.message.headers.as_ref());
    let span = tracing::info_span!("memory_op", op = op.name(), trace_id = trace.trace_id());
    async {
        let reply = memory.handle(op, &request.message.payload).await;
        if let Err(error) = request.respond(reply).await {
            tracing::warn!(%error, "reply not sent; the caller will time out");
        }
    }
    .instrument(span)
    .await;
}

/// Runs one tool call and sends its `ToolResult`; failures travel inside it.
async fn answer_tool(tools: &MemoryTools, tool: MemoryTool, request: service::Request) {
    let trace = TraceContext::from_headers(request.message.headers.as_ref());
    let span = tracing::info_span!("tool_call", tool = tool.name(), trace_id = trace.trace_id());
    async {
        let result = tools.handle(tool, &request.message.payload).await;
        match &result.outcome {
            Some(nexus_proto::v1::tool_result::Outcome::Error(e)) => tracing::info!(
                error_kind = ?e.kind(),
                duration_ms = result.duration_ms,
                "tool call failed"
            ),
            _ => tracing::info!(duration_ms = result.duration_ms, "tool call finished"),
        }
        let reply = Ok(Bytes::from(result.encode_to_vec()));
        if let Err(error) = request.respond(reply).await {
            tracing::warn!(%error, "tool result not sent; the caller will time out");
        }
    }
    .instrument(span)
    .await;
}
