//! The NATS layer of Nexus: the only crate that builds subject strings, knows
//! stream and consumer settings, and sets the `Nats-Msg-Id` and `traceparent`
//! headers. Services talk to each other through [`Bus`] alone.
//!
//! It must never hold business logic: it moves typed protobuf messages.

mod access;
mod depth;
mod health;
pub mod limits;
mod link;
pub mod subjects;
mod trace;

use std::{collections::HashMap, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{self, consumer::pull, stream},
    service::{self, ServiceExt},
};
use bytes::Bytes;
use futures::StreamExt;
use nexus_common::{Config, domain::Namespace, now_ms};
use nexus_proto::v1::{self, DeadLetter, DeadLetterNotice, Event, event};
use prost::Message;

pub use access::{NatsAccess, connect_options};
pub use async_nats;
pub use link::{Link, LinkState};
pub use subjects::{INBOUND_PARTITIONS, Subjects, event_kind, gateway_op, memory_op, scheduler_op};
pub use trace::TraceContext;

/// Header carrying the idempotency key.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// How long an event that is counted from is retried before it is given up.
pub const EVENT_PATIENCE: Duration = Duration::from_secs(60);

/// Header carrying W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// How long JetStream remembers message ids. Platforms retry for longer than the
/// 2-minute default (Slack up to an hour), so the window is set explicitly.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(60 * 60);

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

/// Result of publishing to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub sequence: u64,
    /// JetStream had already stored a message with this id.
    pub duplicate: bool,
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

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Creates or updates the streams of the namespace. Idempotent; every service calls it at start.
    pub async fn ensure_streams(&self) -> Result<(), BusError> {
        let s = &self.subjects;
        let configs = [
            stream::Config {
                name: s.inbound_stream(),
                subjects: vec![s.inbound_all()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                duplicate_window: DUPLICATE_WINDOW,
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            },
            stream::Config {
                name: s.outbound_stream(),
                subjects: vec![s.outbound_all()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                duplicate_window: DUPLICATE_WINDOW,
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            },
            stream::Config {
                name: s.events_stream(),
                subjects: vec![s.events_all()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                // Bounded: events are for operators, not a ledger.
                max_age: Duration::from_secs(3 * 24 * 3600),
                // Bounded by count and age, not bytes: a byte limit is reserved up front
                // against the account's JetStream storage even while the stream is empty.
                max_messages: 200_000,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            },
            // Sub-agent tasks: each item is removed once a replica acks it (finished,
            // failed, timed out or cancelled).
            stream::Config {
                name: s.tasks_stream(),
                subjects: vec![s.tasks_all()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: DUPLICATE_WINDOW,
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            },
            stream::Config {
                name: s.deadletter_stream(),
                subjects: vec![s.deadletter()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                max_age: Duration::from_secs(30 * 24 * 3600),
                max_messages: 100_000,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            },
        ];
        for config in configs {
            let name = config.name.clone();
            // A stream that is already as wanted is left alone: then only the users
            // allowed to manage streams (agent-core and admin in deploy/nats) need
            // the JetStream API's create and update subjects.
            if let Ok(stream) = self.js.get_stream(&name).await
                && stream_is_as_configured(&stream.cached_info().config, &config)
            {
                continue;
            }
            self.js
                .create_or_update_stream(config)
                .await
                .map_err(|e| BusError::Nats(format!("stream {name}: {e}")))?;
        }
        Ok(())
    }

    /// Publishes to a stream subject with an idempotency key and waits for the `PubAck`.
    pub async fn publish_durable(
        &self,
        subject: String,
        msg_id: &str,
        trace: &TraceContext,
        payload: Bytes,
    ) -> Result<Stored, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, msg_id);
        headers.insert(TRACEPARENT, trace.header_from_here().as_str());
        let fut = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| BusError::Publish {
                subject: subject.clone(),
                message: e.to_string(),
            })?;
        let ack = fut.await.map_err(|e| BusError::Publish {
            subject,
            message: e.to_string(),
        })?;
        Ok(Stored {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Stores an inbound message in `N_INBOUND` under its id, on its session's partition.
    pub async fn publish_inbound(
        &self,
        msg: &v1::InboundMessage,
        trace: &TraceContext,
    ) -> Result<Stored, BusError> {
        self.publish_inbound_as(msg, &msg.id, trace).await
    }

    /// Like [`Bus::publish_inbound`] with an explicit idempotency key (for routing a
    /// message that already sits in the stream under its own id).
    pub async fn publish_inbound_as(
        &self,
        msg: &v1::InboundMessage,
        msg_id: &str,
        trace: &TraceContext,
    ) -> Result<Stored, BusError> {
        let channel = nexus_common::domain::ChannelName::parse(&msg.channel)
            .map_err(|e| BusError::Nats(e.to_string()))?;
        let chat = msg.chat.clone().unwrap_or_default();
        let partition = Subjects::partition_of(channel.as_str(), &chat.chat_id, &chat.thread_id);
        self.publish_durable(
            self.subjects.inbound_partition(&channel, partition),
            msg_id,
            trace,
            msg.encode_to_vec().into(),
        )
        .await
    }

    /// Stores an outbound message in `N_OUTBOUND` under its id.
    pub async fn publish_outbound(
        &self,
        msg: &v1::OutboundMessage,
        trace: &TraceContext,
    ) -> Result<Stored, BusError> {
        let channel = nexus_common::domain::ChannelName::parse(&msg.channel)
            .map_err(|e| BusError::Nats(e.to_string()))?;
        self.publish_durable(
            self.subjects.outbound(&channel),
            &msg.id,
            trace,
            msg.encode_to_vec().into(),
        )
        .await
    }

    /// Records an event on `N.events.<kind>`. Events are best effort: a failure is logged, not returned.
    pub async fn emit(&self, kind: event::Kind) {
        let name = event_name(&kind);
        let event = Event {
            at_ms: now_ms(),
            source: self.source.clone(),
            kind: Some(kind),
        };
        let subject = self.subjects.event(name);
        let result = async {
            self.js
                .publish(subject.clone(), event.encode_to_vec().into())
                .await
                .map_err(BusError::nats)?
                .await
                .map_err(BusError::nats)
        };
        if let Err(error) = tokio::time::timeout(Duration::from_secs(5), result)
            .await
            .unwrap_or_else(|_| Err(BusError::Nats("timed out".into())))
        {
            tracing::warn!(%error, subject, "event not recorded");
        }
    }

    /// Records an event that something is counted from (LLM usage: the ledger and
    /// budgets): stored under an id of its own and sent again, waiting for the
    /// connection, until JetStream has it or `EVENT_PATIENCE` passed. A NATS outage
    /// then neither loses it nor, since the id dedupes a resend, counts it twice.
    pub async fn emit_counted(&self, kind: event::Kind) {
        let name = event_name(&kind);
        let event = Event {
            at_ms: now_ms(),
            source: self.source.clone(),
            kind: Some(kind),
        };
        let id = format!("event:{}", uuid::Uuid::new_v4().simple());
        let payload: Bytes = event.encode_to_vec().into();
        let subject = self.subjects.event(name);
        let deadline = tokio::time::Instant::now() + EVENT_PATIENCE;
        let mut wait = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let sent = if self.link.connected(left).await {
                self.publish_durable(
                    subject.clone(),
                    &id,
                    &TraceContext::new_root(),
                    payload.clone(),
                )
                .await
            } else {
                Err(BusError::Nats("not connected".into()))
            };
            match sent {
                Ok(_) => return,
                Err(error) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::debug!(%error, subject, "counted event not stored yet; sending it again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    tracing::error!(%error, subject, "counted event lost: NATS did not take it in time");
                    return;
                }
            }
        }
    }

    /// Sets a message aside on `N.deadletter` with the reason, and emits a `dead_letter` event.
    pub async fn dead_letter(
        &self,
        subject: &str,
        payload: &[u8],
        headers: Option<&HeaderMap>,
        reason: &str,
        stream_sequence: u64,
        deliveries: u64,
    ) -> Result<(), BusError> {
        let headers_map: HashMap<String, String> = headers
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        let joined = v.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(",");
                        (k.to_string(), joined)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dl = DeadLetter {
            subject: subject.to_owned(),
            payload: payload.to_vec(),
            reason: reason.to_owned(),
            headers: headers_map,
            stream_sequence,
            deliveries,
            at_ms: now_ms(),
            source: self.source.clone(),
        };
        // `<ns>.inbound.…` → `inbound`: which flow lost a message, without ids.
        nexus_common::telemetry::metrics()
            .dead_letter(subject.split('.').nth(1).unwrap_or("other"));
        let id = format!("dl:{subject}:{stream_sequence}");
        self.publish_durable(
            self.subjects.deadletter(),
            &id,
            &TraceContext::from_headers(headers),
            dl.encode_to_vec().into(),
        )
        .await?;
        tracing::warn!(
            subject,
            reason,
            stream_sequence,
            deliveries,
            "message dead-lettered"
        );
        self.emit(event::Kind::DeadLetter(DeadLetterNotice {
            subject: subject.to_owned(),
            reason: reason.to_owned(),
            stream_sequence,
            deliveries,
        }))
        .await;
        Ok(())
    }

    /// Typed request/reply with timeout, trace propagation and typed errors.
    ///
    /// While NATS is unreachable the request waits for the connection (within the
    /// timeout) rather than being buffered blind; if the connection drops before the
    /// answer, it fails at once with [`BusError::Disconnected`] instead of waiting out
    /// the timeout. It is sent once: use [`Bus::request_idempotent`] to have it
    /// sent again after a reconnect.
    #[tracing::instrument(skip_all, fields(subject = %subject))]
    pub async fn request<Req: Message, Resp: Message + Default>(
        &self,
        subject: String,
        req: &Req,
        trace: &TraceContext,
        timeout: Option<Duration>,
    ) -> Result<Resp, BusError> {
        let payload = req.encode_to_vec().into();
        decode(
            &self
                .request_bytes(subject, payload, HeaderMap::new(), trace, timeout)
                .await?,
        )
    }

    /// [`Bus::request`] for a payload encoded by the caller (with `headers` saying
    /// how, e.g. JSON for a tool provider that speaks it); the answer comes back raw.
    #[tracing::instrument(skip_all, fields(subject = %subject))]
    pub async fn request_bytes(
        &self,
        subject: String,
        payload: Bytes,
        headers: HeaderMap,
        trace: &TraceContext,
        timeout: Option<Duration>,
    ) -> Result<Bytes, BusError> {
        let timeout = timeout.unwrap_or(self.request_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        self.request_once(subject, payload, Some(headers), trace, deadline, timeout)
            .await
    }

    /// Like [`Bus::request`], for requests that may be served twice (reads, and
    /// writes keyed by an id): sent again, until the timeout, when the connection
    /// dropped before the answer or nobody served the subject yet (a service that is
    /// restarting, or resubscribing after NATS came back).
    #[tracing::instrument(skip_all, fields(subject = %subject))]
    pub async fn request_idempotent<Req: Message, Resp: Message + Default>(
        &self,
        subject: String,
        req: &Req,
        trace: &TraceContext,
        timeout: Option<Duration>,
    ) -> Result<Resp, BusError> {
        let timeout = timeout.unwrap_or(self.request_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let payload: Bytes = req.encode_to_vec().into();
        let mut pause = Duration::from_millis(50);
        loop {
            match self
                .request_once(
                    subject.clone(),
                    payload.clone(),
                    None,
                    trace,
                    deadline,
                    timeout,
                )
                .await
            {
                Err(e @ (BusError::Disconnected { .. } | BusError::NoResponders { .. }))
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(error = %e, "request not served; sending it again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return decode(&other?),
            }
        }
    }

    async fn request_once(
        &self,
        subject: String,
        payload: Bytes,
        headers: Option<HeaderMap>,
        trace: &TraceContext,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        let timed_out = || BusError::Timeout {
            subject: subject.clone(),
            timeout,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !self.link.connected(left).await {
            return Err(timed_out());
        }
        let since = self.link.state();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        let mut headers = headers.unwrap_or_default();
        headers.insert(TRACEPARENT, trace.header_from_here().as_str());
        let request = async_nats::Request::new()
            .payload(payload)
            .headers(headers)
            .timeout(Some(left));
        let answer = tokio::select! {
            answer = self.client.send_request(subject.clone(), request) => answer,
            _ = self.link.changed_from(since) => {
                return Err(BusError::Disconnected { subject });
            }
        };
        let reply = answer.map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => BusError::NoResponders {
                service: service_of(&subject),
                subject: subject.clone(),
            },
            async_nats::RequestErrorKind::TimedOut => timed_out(),
            _ => BusError::nats(e),
        })?;
        if let Some(h) = &reply.headers
            && let Some(err) = h.get(service::NATS_SERVICE_ERROR)
        {
            let code = h
                .get(service::NATS_SERVICE_ERROR_CODE)
                .and_then(|c| c.as_str().parse().ok())
                .unwrap_or(500);
            return Err(BusError::Remote {
                subject,
                code,
                message: err.to_string(),
            });
        }
        Ok(reply.payload)
    }

    /// Registers this process with the NATS service API so `nats micro ls` and
    /// `nexus status` see it. The namespace travels in the metadata.
    pub async fn register_service(
        &self,
        name: &str,
        description: &str,
    ) -> Result<service::Service, BusError> {
        let mut metadata = HashMap::new();
        metadata.insert(
            "namespace".to_owned(),
            self.subjects.namespace().to_string(),
        );
        let service = self
            .client
            .service_builder()
            .description(description)
            .metadata(metadata)
            .queue_group(self.subjects.queue_group(name))
            .start(name, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| BusError::Nats(format!("service registration of {name}: {e}")))?;
        self.readiness.set(true);
        Ok(service)
    }

    /// Live service instances of this namespace, gathered from `$SRV.PING` replies within `wait`.
    pub async fn discover_services(
        &self,
        wait: Duration,
    ) -> Result<Vec<ServiceInstance>, BusError> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(BusError::nats)?;
        self.client
            .publish_with_reply("$SRV.PING", inbox, Bytes::new())
            .await
            .map_err(BusError::nats)?;
        let mut found = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            let Some(msg) = msg else { break };
            let Ok(ping) = serde_json::from_slice::<ServiceInstance>(&msg.payload) else {
                continue;
            };
            if ping.metadata.get("namespace").map(String::as_str)
                == Some(self.subjects.namespace().as_str())
            {
                found.push(ping);
            }
        }
        let _ = sub.unsubscribe().await;
        found.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(found)
    }

    /// Whether a live instance of `service` answers in this namespace: returns at
    /// the first answer (a `$SRV.PING.<service>`), `false` once `wait` passed.
    pub async fn is_served(&self, service: &str, wait: Duration) -> Result<bool, BusError> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(BusError::nats)?;
        self.client
            .publish_with_reply(format!("$SRV.PING.{service}"), inbox, Bytes::new())
            .await
            .map_err(BusError::nats)?;
        let namespace = self.subjects.namespace().to_string();
        let found = tokio::time::timeout(wait, async {
            while let Some(msg) = sub.next().await {
                if let Ok(ping) = serde_json::from_slice::<ServiceInstance>(&msg.payload)
                    && ping.metadata.get("namespace") == Some(&namespace)
                {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        let _ = sub.unsubscribe().await;
        Ok(found)
    }

    /// Opens a KV bucket, creating it (with `history` revisions per key) if missing.
    ///
    /// Not `create_key_value`: async-nats 0.51 first queries the account and cannot
    /// parse a 2.9 server's answer (no `reserved_memory`), so the bucket's backing
    /// stream is created here with the KV layout, which every server version accepts.
    pub async fn ensure_kv_bucket(
        &self,
        bucket: &str,
        history: i64,
        max_age: Option<Duration>,
        description: &str,
    ) -> Result<jetstream::kv::Store, BusError> {
        if let Ok(store) = self.js.get_key_value(bucket).await {
            return Ok(store);
        }
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history.max(1),
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            max_age: max_age.unwrap_or_default(),
            ..Default::default()
        };
        // Another replica may create it at the same moment; opening afterwards decides.
        let created = self.js.create_stream(config).await;
        self.js.get_key_value(bucket).await.map_err(|e| {
            BusError::Nats(format!(
                "KV bucket {bucket}: {e}{}",
                created
                    .err()
                    .map(|c| format!(" (create: {c})"))
                    .unwrap_or_default()
            ))
        })
    }

    /// The media object store of the namespace (created on first use; objects expire after 30 days).
    pub async fn media_store(&self) -> Result<jetstream::object_store::ObjectStore, BusError> {
        let bucket = self.subjects.media_bucket();
        if let Ok(store) = self.js.get_object_store(&bucket).await {
            return Ok(store);
        }
        self.js
            .create_object_store(jetstream::object_store::Config {
                bucket: bucket.clone(),
                description: Some("media carried by messages".into()),
                max_age: Duration::from_secs(30 * 24 * 3600),
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Nats(format!("object store {bucket}: {e}")))
    }

    /// Stores media bytes and returns the reference a message carries. `key` should be
    /// derived from the upstream id so a redelivery overwrites instead of duplicating.
    pub async fn put_media(
        &self,
        key: &str,
        kind: v1::media_ref::Kind,
        mime_type: &str,
        file_name: &str,
        caption: &str,
        bytes: &[u8],
    ) -> Result<v1::MediaRef, BusError> {
        let store = self.media_store().await?;
        let mut reader = bytes;
        store
            .put(key, &mut reader)
            .await
            .map_err(|e| BusError::Nats(format!("storing media {key}: {e}")))?;
        Ok(v1::MediaRef {
            kind: kind as i32,
            bucket: self.subjects.media_bucket(),
            key: key.to_owned(),
            mime_type: mime_type.to_owned(),
            file_name: file_name.to_owned(),
            size_bytes: bytes.len() as u64,
            caption: caption.to_owned(),
        })
    }

    /// Reads the bytes behind a media reference (at most `max_bytes`).
    pub async fn get_media(
        &self,
        media: &v1::MediaRef,
        max_bytes: usize,
    ) -> Result<Vec<u8>, BusError> {
        use tokio::io::AsyncReadExt;
        if media.bucket != self.subjects.media_bucket() {
            return Err(BusError::Nats(format!(
                "media bucket {} is not this namespace's",
                media.bucket
            )));
        }
        let store = self.media_store().await?;
        let object = store
            .get(&media.key)
            .await
            .map_err(|e| BusError::Nats(format!("reading media {}: {e}", media.key)))?;
        let mut out = Vec::new();
        object
            .take(max_bytes as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| BusError::Nats(format!("reading media {}: {e}", media.key)))?;
        if out.len() > max_bytes {
            return Err(BusError::Nats(format!(
                "media {} is larger than {max_bytes} bytes",
                media.key
            )));
        }
        Ok(out)
    }

    /// Creates (or binds to) a durable pull consumer. `max_ack_pending = 1` makes it
    /// strictly serial across every process that pulls from it.
    pub async fn durable_consumer(
        &self,
        stream_name: &str,
        durable: &str,
        filter_subject: String,
        ack_wait: Duration,
        max_deliver: i64,
        max_ack_pending: i64,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
        let stream = self
            .js
            .get_stream(stream_name)
            .await
            .map_err(|e| BusError::Nats(format!("stream {stream_name}: {e}")))?;
        let config = pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver,
            max_ack_pending,
            ..Default::default()
        };
        match stream.create_consumer(config.clone()).await {
            Ok(c) => Ok(c),
            // A consumer that exists with other settings (an older `ack_wait`, say) is
            // updated in place; if the server refuses, the existing one is used as is.
            Err(_) => match stream.update_consumer(config).await {
                Ok(c) => Ok(c),
                Err(error) => {
                    tracing::debug!(%error, durable, "consumer not updated; using it as it is");
                    stream
                        .get_consumer(durable)
                        .await
                        .map_err(|e| BusError::Nats(format!("consumer {durable}: {e}")))
                }
            },
        }
    }

    /// Drains the connection: pending publishes are flushed, subscriptions closed.
    pub async fn drain(&self) {
        self.readiness.set(false);
        if let Err(error) = self.client.drain().await {
            tracing::debug!(%error, "drain");
        }
    }
}

/// One live replica, as the NATS service API reports it.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct ServiceInstance {
    pub name: String,
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// Pulls a durable consumer one message at a time, the way every Nexus consumer does:
/// one pull request for one message, issued only when the caller asks for the next
/// one (after it settled the last), long-polled, re-issued when it expires or fails;
/// `None` on shutdown.
///
/// A standing pull stream that prefetches asks the server for the next message while
/// the last is still unacknowledged; with `max_ack_pending = 1` (every Nexus consumer)
/// that request could be lost, and the stream only noticed through missed heartbeats:
/// a message then waited ~30 s in its partition (seen in `just bench`). Pulling after
/// the ack never asks for more than the consumer may hand out.
///
/// A pull request lives on one connection: when it drops (NATS restarted, network
/// cut) the request is pulled again as soon as the connection is back, rather than
/// when it would have expired.
pub struct Puller {
    consumer: jetstream::consumer::PullConsumer,
    link: Link,
    batch: Option<(pull::Batch, LinkState)>,
    /// Pulls that failed in a row, for the backoff.
    failures: u32,
}

/// How long the server keeps one pull request; the client gives up 5 s later.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Wait before pulling again after a failed pull, doubling while failures go on.
const PULL_RETRY: Duration = Duration::from_millis(500);
const PULL_RETRY_MAX: Duration = Duration::from_secs(5);

impl Puller {
    pub async fn new(
        bus: &Bus,
        consumer: &jetstream::consumer::PullConsumer,
    ) -> Result<Self, BusError> {
        Ok(Self {
            consumer: consumer.clone(),
            link: bus.link().clone(),
            batch: None,
            failures: 0,
        })
    }

    /// The next message, or `None` once `shutdown` is cancelled.
    pub async fn next(
        &mut self,
        shutdown: &nexus_common::shutdown::CancellationToken,
    ) -> Option<jetstream::Message> {
        loop {
            let (batch, since) = match self.batch.as_mut() {
                Some((batch, since)) => (batch, *since),
                None => {
                    let since = self.link.state();
                    let pulled = tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        b = self.consumer.batch().max_messages(1).expires(PULL_EXPIRES).messages() => b,
                    };
                    match pulled {
                        Ok(batch) => {
                            self.failures = 0;
                            let (batch, since) = self.batch.insert((batch, since));
                            (batch, *since)
                        }
                        Err(error) => {
                            // A consumer that is gone (or NATS down) fails every pull: back off.
                            self.failures = self.failures.saturating_add(1);
                            tracing::warn!(%error, failures = self.failures, "pulling messages failed; retrying");
                            self.pause(shutdown).await?;
                            continue;
                        }
                    }
                }
            };
            let link = self.link.clone();
            let item = tokio::select! {
                _ = shutdown.cancelled() => return None,
                m = batch.next() => Some(m),
                _ = link.changed_from(since) => None,
            };
            // A pull serves one message at most: whatever came, the next one needs a new pull.
            self.batch = None;
            let Some(item) = item else {
                // The request went with the connection: ask again once it is back.
                tracing::debug!("connection to NATS changed; pulling again");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = link.reconnected() => continue,
                }
            };
            match item {
                Some(Ok(m)) => return Some(m),
                // A status instead of a message (e.g. the consumer is at its ack limit).
                Some(Err(error)) => {
                    tracing::debug!(%error, "pull ended without a message; pulling again");
                    self.pause(shutdown).await?;
                }
                // Expired with nothing to deliver: long-poll again.
                None => {}
            }
        }
    }

    /// Waits before the next pull; `None` if shutdown came first. While NATS is
    /// unreachable the wait ends when the connection is back, not at the backoff.
    async fn pause(&self, shutdown: &nexus_common::shutdown::CancellationToken) -> Option<()> {
        let wait = pull_retry_wait(self.failures);
        let link = &self.link;
        tokio::select! {
            _ = shutdown.cancelled() => None,
            _ = tokio::time::sleep(wait) => Some(()),
            _ = async {
                if link.is_connected() {
                    std::future::pending::<()>().await
                }
                link.reconnected().await
            } => Some(()),
        }
    }
}

/// 0.5 s, doubling with each failed pull in a row, at most 5 s.
fn pull_retry_wait(failures: u32) -> Duration {
    PULL_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(4))
        .min(PULL_RETRY_MAX)
}

/// Keeps a message ours while it is worked on: a progress ack every third of
/// `ack_wait`, until dropped. Consumers keep `ack_wait` short, so the message of a
/// process that died is redelivered within seconds, and long work stays covered.
pub struct InProgress(tokio::task::JoinHandle<()>);

impl InProgress {
    pub fn keep(msg: &jetstream::Message, ack_wait: Duration) -> Self {
        let msg = msg.clone();
        Self(tokio::spawn(async move {
            let mut tick = tokio::time::interval(ack_wait / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // A progress ack lost with the connection is followed by the next one.
                if let Err(error) = msg.ack_with(jetstream::AckKind::Progress).await {
                    tracing::debug!(%error, "progress ack not sent");
                }
            }
        }))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a JetStream handler decided for one message.
#[derive(Debug)]
pub enum Outcome {
    /// The effect is durable: remove the message.
    Ack,
    /// Try again later (redelivered until `max_deliver`).
    Retry { delay: Duration, reason: String },
    /// Never going to work: dead-letter it and stop redelivery.
    Poison { reason: String },
}

/// Applies an outcome to a JetStream message; a retry on the last allowed
/// delivery becomes a dead letter, so nothing loops forever.
pub async fn settle(bus: &Bus, msg: &jetstream::Message, outcome: Outcome, max_deliver: i64) {
    let (seq, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    let result = match outcome {
        Outcome::Ack => ack(bus, msg).await,
        Outcome::Retry { delay, reason } if delivered < max_deliver => {
            tracing::warn!(subject = %msg.subject, delivered, reason, "will retry");
            msg.ack_with(jetstream::AckKind::Nak(Some(delay))).await
        }
        Outcome::Retry { reason, .. } | Outcome::Poison { reason } => {
            let reason = if delivered >= max_deliver {
                format!("gave up after {delivered} deliveries: {reason}")
            } else {
                reason
            };
            match bus
                .dead_letter(
                    msg.subject.as_str(),
                    &msg.payload,
                    msg.headers.as_ref(),
                    &reason,
                    seq,
                    delivered as u64,
                )
                .await
            {
                Ok(()) => msg.ack_with(jetstream::AckKind::Term).await,
                // Without the dead letter stored, keep the original: losing it is worse.
                Err(e) => {
                    tracing::error!(error = %e, "dead letter not stored; message will be redelivered");
                    msg.ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(5))))
                        .await
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::warn!(%error, subject = %msg.subject, "ack failed; JetStream will redeliver");
    }
}

/// Acks and waits for JetStream's confirmation; an ack lost with the connection is
/// sent again once it is back, so the consumer does not wait out `ack_wait` (it
/// holds its next message until then) and the message is not redelivered.
async fn ack(bus: &Bus, msg: &jetstream::Message) -> Result<(), async_nats::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        match msg.double_ack().await {
            Ok(()) => return Ok(()),
            Err(error) if tries < ACK_TRIES => {
                tracing::debug!(%error, tries, "ack not confirmed; sending it again when connected");
                let _ = bus.link().connected(ACK_RECONNECT_WAIT).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// An ack is sent at most this often; each waits up to `ACK_RECONNECT_WAIT` for
/// the connection (JetStream redelivers anyway if all of them are lost).
const ACK_TRIES: u32 = 3;
const ACK_RECONNECT_WAIT: Duration = Duration::from_secs(15);

/// Decodes a protobuf payload; the error says what it expected.
pub fn decode<T: Message + Default>(payload: &[u8]) -> Result<T, BusError> {
    T::decode(payload).map_err(|e| BusError::Decode {
        what: std::any::type_name::<T>(),
        message: e.to_string(),
    })
}

/// Maps a service handler result to a service reply (error headers on failure).
pub fn reply_bytes<M: Message>(
    result: Result<M, (u16, String)>,
) -> Result<Bytes, service::error::Error> {
    result
        .map(|m| Bytes::from(m.encode_to_vec()))
        .map_err(|(code, status)| service::error::Error {
            code: code as usize,
            status,
        })
}

fn event_name(kind: &event::Kind) -> &'static str {
    match kind {
        event::Kind::TurnStarted(_) => event_kind::TURN_STARTED,
        event::Kind::TurnFinished(_) => event_kind::TURN_FINISHED,
        event::Kind::ToolCalled(_) => event_kind::TOOL_CALLED,
        event::Kind::LlmUsage(_) => event_kind::LLM_USAGE,
        event::Kind::Approval(_) => event_kind::APPROVAL,
        event::Kind::DeadLetter(_) => event_kind::DEAD_LETTER,
        event::Kind::Service(_) => event_kind::SERVICE,
        event::Kind::Journal(_) => event_kind::JOURNAL,
        event::Kind::LimitReached(_) => event_kind::LIMIT_REACHED,
        event::Kind::Pairing(_) => event_kind::PAIRING,
    }
}

/// Whether a stream's settings are those `ensure_streams` asks for (a setting left
/// at zero is the server's default, which it reports filled in). Every field that
/// `ensure_streams` sets must be compared here, or a change to it never reaches
/// existing streams.
fn stream_is_as_configured(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects == want.subjects
        && have.num_replicas.max(1) == want.num_replicas.max(1)
        && have.storage == want.storage
        && have.retention == want.retention
        && (want.duplicate_window.is_zero() || have.duplicate_window == want.duplicate_window)
        && have.max_age == want.max_age
        && have.max_messages.max(0) == want.max_messages.max(0)
        && have.discard == want.discard
}

/// KV keys allow `[-/_=.a-zA-Z0-9]` and may not start or end with `.`; anything
/// outside `[-/_a-zA-Z0-9]` is written as `=xx` (hex), so distinct ids stay distinct.
pub fn kv_key(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02x}"));
        }
    }
    out
}

/// Best guess at which service serves a subject, for error messages.
fn service_of(subject: &str) -> String {
    match subject.split('.').nth(1) {
        Some("tool") => "tool-runner".into(),
        Some("memory") => "memory-svc".into(),
        Some("scheduler") => "scheduler".into(),
        Some(other) => other.into(),
        None => subject.into(),
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_pulls_back_off_to_five_seconds() {
        let ms = |f| pull_retry_wait(f).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4), ms(9)],
            [500, 500, 1000, 2000, 4000, 5000]
        );
    }

    #[test]
    fn a_stream_as_the_server_reports_it_matches_what_was_asked() {
        let want = stream::Config {
            name: "n_EVENTS".into(),
            subjects: vec!["n.events.>".into()],
            max_age: Duration::from_secs(60),
            ..Default::default()
        };
        // The server fills in its defaults: unlimited messages, 2 min window, 1 replica.
        let have = stream::Config {
            max_messages: -1,
            duplicate_window: Duration::from_secs(120),
            num_replicas: 1,
            ..want.clone()
        };
        assert!(stream_is_as_configured(&have, &want));
        let older = stream::Config {
            max_age: Duration::from_secs(30),
            ..have.clone()
        };
        assert!(!stream_is_as_configured(&older, &want));
        let three = stream::Config {
            num_replicas: 3,
            ..want.clone()
        };
        assert!(!stream_is_as_configured(&have, &three));
    }

    #[test]
    fn kv_keys_are_valid_and_distinct() {
        assert_eq!(kv_key("reply:telegram:12"), "reply=3atelegram=3a12");
        assert_eq!(kv_key("+49.1"), "=2b49=2e1");
        assert_ne!(kv_key("a:b"), kv_key("a=3ab"));
        assert!(!kv_key(".x.").starts_with('.') && !kv_key(".x.").ends_with('.'));
        assert!(
            kv_key("+49 151@s.whatsapp.net")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_/=.".contains(&b))
        );
    }
}
