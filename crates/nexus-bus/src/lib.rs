//! The NATS layer of Nexus: the only crate that builds subject strings, knows
//! stream and consumer settings, and sets the `Nats-Msg-Id` and `traceparent`
//! headers. Services talk to each other through [`Bus`] alone.
//!
//! It must never hold business logic: it moves typed protobuf messages.
mod access;
mod consumer;
mod dead_letter;
mod depth;
mod discovery;
mod events;
mod health;
mod kv;
pub mod limits;
mod link;
mod live;
mod media;
mod publish;
mod request;
mod streams;
pub mod subjects;
mod trace;

use std::time::Duration;

use async_nats::jetstream;
use nexus_common::{Config, domain::Namespace};

pub use access::{NatsAccess, connect_options};
pub use async_nats;
pub use consumer::{InProgress, Outcome, Puller, settle};
pub use discovery::{ServiceInstance, reply_bytes};
pub use events::EVENT_PATIENCE;
pub use kv::kv_key;
pub use link::{Link, LinkState};
pub use live::Feed;
pub use publish::Stored;
pub use request::decode;
pub use streams::DUPLICATE_WINDOW;
pub use subjects::{INBOUND_PARTITIONS, MemoryOp, Subjects, event_kind, gateway_op, scheduler_op};
pub use trace::TraceContext;

/// Header carrying the idempotency key.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// Header carrying W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Errors of the bus, split by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "cannot connect to NATS at {url}: {message}. Is nats-server running? (`nexus up` starts one)"
    )]
    Connect { url: String, message: String },
    /// The NATS credentials or TLS variables are wrong (named in the message).
    #[error("NATS settings: {0}")]
    Settings(String),
    #[error("nobody serves {subject}: is the {service} service running?")]
    NoResponders { subject: String, service: String },
    #[error("{subject} did not answer within {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    /// The connection to NATS was lost before the answer came: the request may or
    /// may not have been served. Retry once connected if that is safe.
    #[error("the connection to NATS was lost while waiting for {subject}")]
    Disconnected { subject: String },
    #[error("{subject} answered with error {code}: {message}")]
    Remote {
        subject: String,
        code: u16,
        message: String,
    },
    #[error("cannot decode {what}: {message}")]
    Decode { what: &'static str, message: String },
    #[error("JetStream did not store the message on {subject}: {message}")]
    Publish { subject: String, message: String },
    #[error("NATS error: {0}")]
    Nats(String),
}

impl BusError {
    fn nats(e: impl std::fmt::Display) -> Self {
        Self::Nats(e.to_string())
    }
}

/// A connection to NATS scoped to one namespace.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    source: String,
    request_timeout: Duration,
    link: Link,
    /// `[nats] replicas`: copies of each stream and bucket this bus creates.
    replicas: usize,
    /// What `/readyz` reports: set by [`Bus::register_service`], cleared by [`Bus::drain`].
    readiness: health::Readiness,
}

impl Bus {
    /// Connects to `config.nats.url` as `service` (used in events and the NATS connection name).
    pub async fn connect(config: &Config, service: &str) -> Result<Self, BusError> {
        let ns = Namespace::parse(&config.namespace).map_err(|e| BusError::Nats(e.to_string()))?;
        let (feed, link) = link::LinkFeed::new();
        let access = NatsAccess::from_env(&config.nats.url)?;
        tracing::debug!(url = %config.nats.url, "connecting to NATS {}", access.describe());
        // No retry_on_initial_connect: a missing server must be an error at start,
        // not a timeout on the first request. Supervisors (nexus up, compose) restart us.
        let client = access
            .options()?
            .name(format!("{}:{service}", config.namespace))
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(link::reconnect_delay)
            .event_callback(move |event| {
                let feed = feed.clone();
                async move {
                    match &event {
                        async_nats::Event::Connected | async_nats::Event::Disconnected => {
                            tracing::info!(%event, "NATS connection")
                        }
                        // Permission violations and authorization errors: the server
                        // refused something this service did, so operators must see it.
                        async_nats::Event::ServerError(_) => {
                            tracing::warn!(%event, "NATS server error")
                        }
                        _ => tracing::debug!(%event, "NATS connection event"),
                    }
                    feed.event(&event);
                }
            })
            .connect(NatsAccess::servers(&config.nats.url)?);
        let client = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .map_err(|_| BusError::Connect {
                url: config.nats.url.clone(),
                message: "timed out after 10s".into(),
            })?
            .map_err(|e| match e.kind() {
                // Not a server that is down: one that does not accept these credentials.
                async_nats::ConnectErrorKind::AuthorizationViolation
                | async_nats::ConnectErrorKind::Authentication => BusError::Settings(format!(
                    "NATS at {} refused the connection {}: {e}. Check NATS_CREDS, \
                     NATS_USER/NATS_PASSWORD or NATS_TOKEN",
                    config.nats.url,
                    access.describe()
                )),
                _ => BusError::Connect {
                    url: config.nats.url.clone(),
                    message: format!("{e} (connecting {})", access.describe()),
                },
            })?;
        let mut bus = Self::from_client(
            client,
            ns,
            service,
            Duration::from_secs(config.nats.request_timeout_secs.max(1)),
        );
        bus.link = link;
        bus.replicas = config.nats.replicas.max(1);
        if let Some(addr) = config.health.listen_of(service) {
            health::serve(addr, bus.readiness.clone(), bus.link.clone()).await?;
        }
        Ok(bus)
    }

    /// Wraps an existing client. Its connection state is not followed: waits on
    /// [`Bus::link`] see a connection that never drops (tests' probes use this).
    pub fn from_client(
        client: async_nats::Client,
        ns: Namespace,
        service: &str,
        request_timeout: Duration,
    ) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            client,
            js,
            subjects: Subjects::new(ns),
            source: service.to_owned(),
            request_timeout,
            link: Link::fixed(),
            replicas: 1,
            readiness: health::Readiness::default(),
        }
    }

    /// Creates streams and buckets with `replicas` copies (a bus from [`Bus::connect`]
    /// takes `[nats] replicas`; one from [`Bus::from_client`] starts with 1).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// The state of the connection to NATS.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The raw client, for tests that inspect what services stored or did; the
    /// services' own code asks `Bus` (tests/bus/names.rs checks that).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
    /// The raw JetStream context; as [`Bus::client`].
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Drains the connection: pending publishes are flushed, subscriptions closed.
    pub async fn drain(&self) {
        self.readiness.set(false);
        if let Err(error) = self.client.drain().await {
            tracing::debug!(%error, "drain");
        }
    }
}

#[cfg(test)]
mod fuzz;
