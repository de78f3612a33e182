//! What the other crates need of NATS beyond the durable paths, so that they ask
//! the bus and not the raw client: core pub/sub (at most once, for live views,
//! announcements and /stop), and reading the namespace's streams and buckets
//! (their state, ordered feeds, a bucket that may not exist yet).

use async_nats::{
    Subscriber,
    jetstream::{
        self,
        consumer::pull,
        context::{GetStreamError, GetStreamErrorKind, KeyValueErrorKind},
        kv,
    },
};
use bytes::Bytes;

use crate::{Bus, BusError};

/// A feed from [`Bus::ordered_feed`].
pub struct Feed {
    /// Messages that matched when the feed was opened (0: nothing to read back).
    pub pending: u64,
    pub messages: pull::Ordered,
}

impl Bus {
    /// Subscribes to `subject` on core NATS: only what is published from now on,
    /// nothing kept while this process is away.
    pub async fn subscribe(&self, subject: String) -> Result<Subscriber, BusError> {
        self.client
            .subscribe(subject.clone())
            .await
            .map_err(|e| BusError::Nats(format!("cannot subscribe to {subject}: {e}")))
    }

    /// Publishes on core NATS, at most once: for what only live listeners want
    /// (progress, tool announcements). Durable traffic goes through `publish_*`.
    pub async fn publish_live(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        self.client
            .publish(subject, payload)
            .await
            .map_err(BusError::nats)
    }

    /// Whether the client is connected now, as the client itself knows it (a
    /// [`Bus::link`] of a bus from [`Bus::from_client`] does not follow it).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(BusError::nats)
    }

    /// A stream of the namespace, to read its state or its messages.
    pub async fn stream(&self, name: &str) -> Result<jetstream::stream::Stream, BusError> {
        self.js
            .get_stream(name)
            .await
            .map_err(|e| BusError::Nats(format!("stream {name}: {e}")))
    }

    /// The state of stream `name` (messages, bytes, sequences), or `None` when it
    /// cannot be read (not created yet, NATS away): for status pages.
    pub async fn stream_state(&self, name: &str) -> Option<jetstream::stream::State> {
        // Fetching the stream reads its info: no second round trip for the state.
        let stream = self.stream(name).await.ok()?;
        Some(stream.cached_info().state.clone())
    }

    /// An ordered, ephemeral feed of `stream` (flow control and gaps handled by
    /// async-nats): for readers that follow a stream without acknowledging.
    pub async fn ordered_feed(
        &self,
        stream: &str,
        config: pull::OrderedConfig,
    ) -> Result<Feed, BusError> {
        let failed = |e: &dyn std::fmt::Display| BusError::Nats(format!("feed of {stream}: {e}"));
        let consumer = self
            .stream(stream)
            .await?
            .create_consumer(config)
            .await
            .map_err(|e| failed(&e))?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(|e| failed(&e))?;
        Ok(Feed { pending, messages })
    }

    /// Opens a KV bucket its owner creates, or `None` while it does not exist (for
    /// readers that must not create it with settings of their own).
    pub async fn existing_kv_bucket(&self, bucket: &str) -> Result<Option<kv::Store>, BusError> {
        match self.js.get_key_value(bucket).await {
            Ok(store) => Ok(Some(store)),
            Err(e) if e.kind() == KeyValueErrorKind::GetBucket && stream_not_found(&e) => Ok(None),
            Err(e) => Err(BusError::Nats(format!("KV bucket {bucket}: {e}"))),
        }
    }
}

/// Whether a bucket could not be opened because its stream does not exist.
fn stream_not_found(e: &(dyn std::error::Error + 'static)) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<GetStreamError>())
        .is_some_and(|g| {
            matches!(g.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
        })
}
