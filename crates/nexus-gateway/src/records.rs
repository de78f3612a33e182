//! What a gateway has already handed to its platform: reply ids delivered and
//! parts of multi-part replies posted. The records live in a KV bucket (they
//! outlive the process) and, for the ids this process sent, in memory too (they
//! outlive a NATS outage).
//!
//! The rule: a record of an effect is written before the message that caused it
//! is acked, however long NATS takes to come back; and an effect whose record
//! cannot be read is not repeated blind — the caller waits, or retries later.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::kv;
use nexus_bus::{Link, kv_key};
use nexus_common::{backoff::Backoff, shutdown::CancellationToken};

use crate::DeliveryError;

/// Records kept in memory: far more than replies in flight, small enough to forget.
const REMEMBERED: usize = 10_000;
/// Waits before writing (or reading) a record again: 100 ms, doubling up to 2 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// How long a record that cannot be written is still tried once shutdown began.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);
/// How long a part count that cannot be read is waited for before the reply is retried.
const READ_PATIENCE: Duration = Duration::from_secs(30);

/// The records of one channel, shared by delivery and the platform's sender.
#[derive(Clone)]
pub(crate) struct Records {
    kv: kv::Store,
    link: Link,
    memory: Arc<Mutex<Memory>>,
}

/// Recent records by KV key, oldest evicted first.
#[derive(Default)]
struct Memory {
    values: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Memory {
    fn put(&mut self, key: String, value: String) {
        if self.values.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.values.remove(&old);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if self.values.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

impl Records {
    pub(crate) fn new(kv: kv::Store, link: Link) -> Self {
        Self {
            kv,
            link,
            memory: Arc::default(),
        }
    }

    fn remembered(&self, key: &str) -> Option<String> {
        self.memory
            .lock()
            .ok()
            .and_then(|m| m.values.get(key).cloned())
    }

    fn remember(&self, key: &str, value: &str) {
        if let Ok(mut m) = self.memory.lock() {
            m.put(key.to_owned(), value.to_owned());
        }
    }

    fn forget(&self, key: &str) {
        if let Ok(mut m) = self.memory.lock() {
            m.remove(key);
        }
    }

    /// The record under `key`: memory first, then KV, read again (after the
    /// connection is back) until it answers, `stop` is cancelled or `patience` runs out.
    async fn read(
        &self,
        key: &str,
        stop: &CancellationToken,
        patience: Option<Duration>,
    ) -> Result<Option<String>, String> {
        if let Some(v) = self.remembered(key) {
            return Ok(Some(v));
        }
        let deadline = patience.map(|p| tokio::time::Instant::now() + p);
        let mut backoff = RETRY;
        loop {
            match self.kv.get(key).await {
                Ok(v) => return Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned())),
                Err(error) => {
                    tracing::warn!(%error, key, "record unreadable; nothing is sent until it can be read");
                    let late =
                        deadline.is_some_and(|d| tokio::time::Instant::now() + backoff.peek() > d);
                    if late || stop.is_cancelled() {
                        return Err(format!("record {key} cannot be read: {error}"));
                    }
                    self.pause(backoff.fail(), stop).await;
                }
            }
        }
    }

    /// Writes `key = value` to memory at once and to KV until it is stored; after
    /// `stop` is cancelled it keeps trying for `SHUTDOWN_PATIENCE`. False if it never got there.
    async fn write(&self, key: &str, value: &str, stop: &CancellationToken) -> bool {
        self.remember(key, value);
        let mut backoff = RETRY;
        let mut given_up_at = None;
        loop {
            match self.kv.put(key, value.to_owned().into()).await {
                Ok(_) => return true,
                Err(error) => {
                    tracing::warn!(%error, key, "record not stored yet; holding the message until it is");
                    if stop.is_cancelled() {
                        let at = *given_up_at
                            .get_or_insert_with(|| tokio::time::Instant::now() + SHUTDOWN_PATIENCE);
                        if tokio::time::Instant::now() + backoff.peek() > at {
                            return false;
                        }
                        tokio::time::sleep(backoff.fail()).await;
                    } else {
                        self.pause(backoff.fail(), stop).await;
                    }
                }
            }
        }
    }

    /// Sleeps `wait`; cut short when the connection comes back or `stop` fires.
    async fn pause(&self, wait: Duration, stop: &CancellationToken) {
        let link = &self.link;
        let was_down = !link.is_connected();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {}
            _ = async {
                if !was_down {
                    std::future::pending::<()>().await
                }
                link.reconnected().await
            } => {}
        }
    }

    /// Whether reply `id` was delivered. `Err` when that cannot be known (NATS down
    /// until `stop`): then the reply must not be sent now.
    pub(crate) async fn delivered(
        &self,
        id: &str,
        stop: &CancellationToken,
    ) -> Result<bool, String> {
        Ok(self.read(&kv_key(id), stop, None).await?.is_some())
    }

    /// Records that reply `id` reached the platform; see [`Records::write`].
    pub(crate) async fn mark_delivered(
        &self,
        id: &str,
        at_ms: i64,
        stop: &CancellationToken,
    ) -> bool {
        self.write(&kv_key(id), &at_ms.to_string(), stop).await
    }

    /// Drops the part count of a reply that is complete (the delivered id covers it
    /// from now on) or given up. Best effort in KV: the record expires anyway.
    pub(crate) async fn forget_parts(&self, id: &str) {
        let key = part_key(id);
        self.forget(&key);
        if let Err(error) = self.kv.purge(&key).await {
            tracing::debug!(%error, id, "parts record not removed; it expires");
        }
    }
}

/// How many parts (messages, files) of a reply the platform already has. Kept
/// beside the delivered ids, so a gateway restarted in the middle of a long reply
/// continues after the last part it sent instead of posting it again.
#[derive(Clone)]
pub struct PartLog {
    pub(crate) records: Records,
    pub(crate) stop: CancellationToken,
}

impl PartLog {
    /// Parts of `reply_id` already sent (0 when none). When that cannot be read
    /// (NATS down), the delivery is retried later rather than parts posted again.
    pub async fn done(&self, reply_id: &str) -> Result<usize, DeliveryError> {
        match self
            .records
            .read(&part_key(reply_id), &self.stop, Some(READ_PATIENCE))
            .await
        {
            Ok(v) => Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0)),
            Err(reason) => Err(DeliveryError::Retry {
                reason,
                after: Duration::from_secs(1),
            }),
        }
    }

    /// Records that the first `parts` parts of `reply_id` were sent; returns once
    /// the record is stored (it waits out a NATS outage). `Err` only at shutdown,
    /// when the record could not be stored: the reply is then retried, and this
    /// process still remembers the parts.
    pub async fn record(&self, reply_id: &str, parts: usize) -> Result<(), DeliveryError> {
        if self
            .records
            .write(&part_key(reply_id), &parts.to_string(), &self.stop)
            .await
        {
            Ok(())
        } else {
            Err(DeliveryError::Retry {
                reason: format!("part {parts} of {reply_id} sent, but its record is not stored"),
                after: Duration::from_secs(1),
            })
        }
    }

    /// Forgets a reply that will not be continued (dead-lettered).
    pub async fn clear(&self, reply_id: &str) {
        self.records.forget_parts(reply_id).await;
    }
}

/// `kv_key` never emits `.`, so the suffix cannot meet another reply's key.
fn part_key(reply_id: &str) -> String {
    format!("{}.parts", kv_key(reply_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_forgets_the_oldest_first() {
        let mut m = Memory::default();
        for i in 0..REMEMBERED + 2 {
            m.put(format!("k{i}"), i.to_string());
        }
        assert_eq!(m.values.len(), REMEMBERED);
        assert!(!m.values.contains_key("k0") && !m.values.contains_key("k1"));
        assert!(m.values.contains_key(&format!("k{}", REMEMBERED + 1)));
        m.put("k2".into(), "again".into());
        assert_eq!(m.order.len(), REMEMBERED, "an update keeps its place");
        m.remove("k2");
        assert_eq!(
            (m.values.len(), m.order.len()),
            (REMEMBERED - 1, REMEMBERED - 1)
        );
    }
}
