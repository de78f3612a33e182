//! A provider's own request/reply operations (`N.memory.<op>`, `N.scheduler.<op>`)
//! served beside its tools, on the same service registration: bounded concurrency
//! while running, and on shutdown intake stops, requests in flight answer within a
//! grace period, the tools are withdrawn and the service is unregistered.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::service::Request;
use futures::StreamExt as _;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::server::ToolServer;

/// How many requests run at once, and how long they may take once shutdown began.
#[derive(Debug, Clone, Copy)]
pub struct OpLimits {
    /// More wait in the subscription, so a burst costs bounded memory and connections.
    pub max_in_flight: usize,
    pub grace: Duration,
}

/// Serves `ops` (each `(op, endpoint name, subject)`) with `handle`, and runs
/// `server`'s announcements, until `shutdown`; then drains as the module says.
pub async fn serve_with_ops<Op, H, Fut>(
    server: ToolServer,
    ops: Vec<(Op, &'static str, String)>,
    limits: OpLimits,
    shutdown: CancellationToken,
    handle: H,
) -> anyhow::Result<()>
where
    Op: Copy + Send + 'static,
    H: Fn(Op, Request) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut endpoints = Vec::with_capacity(ops.len());
    for (op, name, subject) in ops {
        let endpoint = server
            .endpoint_builder()
            .context("the service stopped while starting")?
            .name(name)
            .add(subject.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve {subject}: {e}"))?;
        endpoints.push(endpoint.map(move |request| (op, request)));
    }
    let announcing = {
        let (server, shutdown) = (server.clone(), shutdown.clone());
        tokio::spawn(async move { server.run(shutdown).await })
    };
    let mut requests = futures::stream::select_all(endpoints);
    let permits = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let outcome = loop {
        // A free slot first, so a request taken off the subscription is handled at once.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break Err(anyhow::anyhow!("request slots closed")),
            },
        };
        let next = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            next = requests.next() => next,
        };
        let Some((op, request)) = next else {
            break Err(anyhow::anyhow!(
                "the NATS subscriptions of the service closed"
            ));
        };
        let work = handle(op, request);
        tasks.spawn(async move {
            let _permit = permit;
            work.await;
        });
        // Reap finished tasks so the set holds only work in flight.
        while tasks.try_join_next().is_some() {}
    };

    // Dropping the endpoints unsubscribes them: new requests go to other replicas.
    drop(requests);
    tracing::info!(in_flight = tasks.len(), "stopping");
    let joined = tokio::time::timeout(limits.grace, async {
        while let Some(result) = tasks.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "a request task failed");
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!(
            left = tasks.len(),
            grace = ?limits.grace,
            "requests still running at the deadline; abandoning them"
        );
        tasks.shutdown().await;
    }
    match announcing.await {
        Ok(Err(error)) => tracing::warn!(%error, "the tools did not stop cleanly"),
        Err(error) => tracing::error!(%error, "the tools task failed"),
        Ok(Ok(())) => {}
    }
    server.stop_service().await;
    outcome
}
