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

    /// Waits until an instance of each of `names` answers in this namespace, asking
    /// again every `every` (a service that registers later answers the next ask), so
    /// the wait ends within `every` of the last one's start; false once `within` passed.
    pub async fn services_answer(
        &self,
        names: &[&str],
        every: Duration,
        within: Duration,
    ) -> Result<bool, BusError> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(BusError::nats)?;
        let namespace = self.subjects.namespace().to_string();
        let mut missing: Vec<&str> = names.to_vec();
        let deadline = tokio::time::Instant::now() + within;
        let mut ask = tokio::time::interval(every);
        let answered = loop {
            tokio::select! {
                _ = ask.tick() => {
                    self.client
                        .publish_with_reply("$SRV.PING", inbox.clone(), Bytes::new())
                        .await
                        .map_err(BusError::nats)?;
                }
                msg = sub.next() => {
                    let Some(msg) = msg else { break false };
                    if let Ok(ping) = serde_json::from_slice::<ServiceInstance>(&msg.payload)
                        && ping.metadata.get("namespace") == Some(&namespace)
                    {
                        missing.retain(|n| *n != ping.name);
                        if missing.is_empty() {
                            break true;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break false,
            }
        };
        let _ = sub.unsubscribe().await;
        Ok(answered)
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
