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
use futures::StreamExt as _;
use nexus_bus::{Bus, TraceContext, async_nats::service};
use nexus_tools::{DynTool, ServeOptions, ToolServer};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::ops::{Memory, Op};

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
    let mut endpoints = Vec::new();
    for op in Op::ALL {
        let subject = bus.subjects().memory(op.name());
        let endpoint = tool_server
            .endpoint_builder()
            .context("the service stopped while starting")?
            .name(op.name())
            .add(subject.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve {subject}: {e}"))?;
        endpoints.push(endpoint.map(move |request| (op, request)));
    }
    for tool in tools {
        tool_server.add(tool).await?;
    }
    let announcing = {
        let (server, shutdown) = (tool_server.clone(), shutdown.clone());
        tokio::spawn(async move { server.run(shutdown).await })
    };
    let mut requests = futures::stream::select_all(endpoints);
    tracing::info!(
        namespace = %bus.subjects().namespace(),
        subjects = %bus.subjects().memory("*"),
        tools = ?tool_server.names(),
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
        let Some((op, request)) = next else {
            break Err(anyhow::anyhow!(
                "the NATS subscriptions of memory-svc closed"
            ));
        };
        let memory = Arc::clone(&memory);
        tasks.spawn(async move {
            let _permit = permit;
            answer(&memory, op, request).await;
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
    match announcing.await {
        Ok(Err(error)) => tracing::warn!(%error, "memory tools did not stop cleanly"),
        Err(error) => tracing::error!(%error, "memory tools task failed"),
        Ok(Ok(())) => {}
    }
    tool_server.stop_service().await;
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
