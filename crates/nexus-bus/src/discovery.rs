//! The NATS service API: registering a service and finding the live ones.

use std::{collections::HashMap, time::Duration};

use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;

use crate::{Bus, BusError};

impl Bus {
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
        let mut pings = Pings::open(self).await?;
        pings.ask("$SRV.PING".to_owned()).await?;
        let mut found = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(instance)) = tokio::time::timeout_at(deadline, pings.next()).await {
            found.push(instance);
        }
        pings.close().await;
        found.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(found)
    }

    /// Whether a live instance of `service` answers in this namespace: returns at
    /// the first answer (a `$SRV.PING.<service>`), `false` once `wait` passed.
    pub async fn is_served(&self, service: &str, wait: Duration) -> Result<bool, BusError> {
        let mut pings = Pings::open(self).await?;
        pings.ask(format!("$SRV.PING.{service}")).await?;
        let found = matches!(tokio::time::timeout(wait, pings.next()).await, Ok(Some(_)));
        pings.close().await;
        Ok(found)
    }

    /// Waits until an instance of each of `names` answers in this namespace, asking
    /// again every `every` (a service that registers later answers the next ask), so
    /// the wait ends within `every` of the last one's start; false once `within` passed.
    pub async fn services_answer(
        &self,
        names: &[&str],
        every: Duration,
        within: Duration,
    ) -> Result<bool, BusError> {
        let mut pings = Pings::open(self).await?;
        let mut missing: Vec<&str> = names.to_vec();
        let deadline = tokio::time::Instant::now() + within;
        let mut ask = tokio::time::interval(every);
        let answered = loop {
            tokio::select! {
                _ = ask.tick() => pings.ask("$SRV.PING".to_owned()).await?,
                instance = pings.next() => {
                    let Some(instance) = instance else { break false };
                    missing.retain(|n| *n != instance.name);
                    if missing.is_empty() {
                        break true;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break false,
            }
        };
        pings.close().await;
        Ok(answered)
    }
}

/// Answers to `$SRV.PING` asks on an inbox of their own, from this namespace only.
struct Pings {
    client: async_nats::Client,
    inbox: String,
    sub: async_nats::Subscriber,
    namespace: String,
}

impl Pings {
    async fn open(bus: &Bus) -> Result<Self, BusError> {
        let inbox = bus.client.new_inbox();
        let sub = bus
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(BusError::nats)?;
        Ok(Self {
            client: bus.client.clone(),
            inbox,
            sub,
            namespace: bus.subjects.namespace().to_string(),
        })
    }

    /// Asks every service `subject` reaches to answer on this inbox.
    async fn ask(&self, subject: String) -> Result<(), BusError> {
        self.client
            .publish_with_reply(subject, self.inbox.clone(), Bytes::new())
            .await
            .map_err(BusError::nats)
    }

    /// The next answer from this namespace; `None` when the subscription ended.
    async fn next(&mut self) -> Option<ServiceInstance> {
        while let Some(msg) = self.sub.next().await {
            if let Ok(instance) = serde_json::from_slice::<ServiceInstance>(&msg.payload)
                && instance.metadata.get("namespace") == Some(&self.namespace)
            {
                return Some(instance);
            }
        }
        None
    }

    async fn close(mut self) {
        let _ = self.sub.unsubscribe().await;
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
