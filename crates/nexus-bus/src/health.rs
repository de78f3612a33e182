//! `[health.listen]`: the probes supervisors use (compose health checks run
//! `nexus health`, Kubernetes asks over HTTP). `GET /healthz` answers while the
//! process runs; `GET /readyz` only once the service registered on the NATS
//! service API (it set up its streams, consumers and handlers) and while its
//! connection to NATS is up, and no longer once it drains for shutdown.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, http::StatusCode, routing::get};

use crate::{BusError, Link};

/// Whether this process counts as ready; shared by every clone of its bus.
#[derive(Clone, Default)]
pub(crate) struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub(crate) fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Binds `addr` now (a taken port fails the start, loudly) and serves the probes
/// for as long as the process lives.
pub(crate) async fn serve(addr: &str, readiness: Readiness, link: Link) -> Result<(), BusError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| BusError::Settings(format!("[health.listen] {addr}: {e}")))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let (ready, connected) = (readiness.get(), link.is_connected());
                async move {
                    match (ready, connected) {
                        (true, true) => (StatusCode::OK, "ready\n"),
                        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not registered\n"),
                        (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "NATS disconnected\n"),
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "health endpoint stopped");
        }
    });
    Ok(())
}
