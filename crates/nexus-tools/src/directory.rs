//! The caller side: which tools are live now, from the providers' announcements.
//! A provider's tools appear when it announces, and disappear when it withdraws
//! (graceful stop) or when its last announcement outlives its `ttl_ms` (killed,
//! or cut off from NATS) — without restarting anyone.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use nexus_bus::{Bus, BusError};
use nexus_common::domain::ToolName;
use nexus_proto::v1::{ToolAnnouncement, ToolSpec};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::wire;

/// How long `start` waits for the first answers to its discovery request.
const FIRST_ANSWERS: Duration = Duration::from_millis(300);
/// `start` stops waiting once no announcement came for this long.
const QUIET: Duration = Duration::from_millis(50);
/// Announcements that do not say how long they hold are held this long.
const DEFAULT_TTL: Duration = Duration::from_secs(6);

/// One live provider instance, as `nexus status` shows it.
#[derive(Debug, Clone)]
pub struct LiveProvider {
    pub provider: String,
    pub instance: String,
    pub version: String,
    pub tools: Vec<String>,
    pub status: BTreeMap<String, String>,
    /// Since the last announcement.
    pub age: Duration,
}

/// The live tools of a namespace. Cheap to clone.
#[derive(Clone)]
pub struct ToolDirectory {
    known: Arc<Mutex<HashMap<String, Known>>>,
}

struct Known {
    announcement: ToolAnnouncement,
    seen: Instant,
    expires: Instant,
}

impl ToolDirectory {
    /// Listens to announcements until `shutdown`, asks every provider to announce
    /// now (again after each reconnect), and returns once the first answers came.
    pub async fn start(bus: &Bus, shutdown: CancellationToken) -> Result<Self, BusError> {
        let s = bus.subjects();
        let mut announcements = bus.subscribe(s.tools_announce()).await?;
        let directory = Self {
            known: Arc::default(),
        };
        let discover = {
            let bus = bus.clone();
            let subject = s.tools_discover();
            move || {
                let (bus, subject) = (bus.clone(), subject.clone());
                async move {
                    if let Err(error) = bus.publish_live(subject, bytes::Bytes::new()).await {
                        tracing::debug!(%error, "tool discovery not sent");
                    }
                }
            }
        };
        discover().await;
        // The first answers, so a turn right after start sees the tools.
        let deadline = Instant::now() + FIRST_ANSWERS;
        loop {
            let wait = QUIET.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, announcements.next()).await {
                Ok(Some(m)) => directory.take(&m),
                _ => break,
            }
        }
        let live = directory.clone();
        let link = bus.link().clone();
        tokio::spawn(async move {
            loop {
                let since = link.state();
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    m = announcements.next() => match m {
                        Some(m) => live.take(&m),
                        None => break,
                    },
                    () = link.changed_from(since) => {
                        // Providers may have come and gone meanwhile: ask again.
                        link.reconnected().await;
                        discover().await;
                    }
                }
            }
            let _ = announcements.unsubscribe().await;
        });
        Ok(directory)
    }

    fn take(&self, msg: &async_nats::Message) {
        match wire::decode_announcement(&msg.payload, msg.headers.as_ref()) {
            Ok(a) => self.record(a),
            Err(error) => tracing::warn!(error, "ignoring a tool announcement"),
        }
    }

    /// Takes one announcement in.
    pub fn record(&self, mut a: ToolAnnouncement) {
        if a.protocol > wire::PROTOCOL {
            tracing::warn!(
                provider = a.provider,
                protocol = a.protocol,
                "ignoring a tool announcement of a newer protocol than this service speaks"
            );
            return;
        }
        if a.instance.is_empty() {
            tracing::warn!(
                provider = a.provider,
                "ignoring a tool announcement without instance"
            );
            return;
        }
        a.specs.retain(|spec| {
            let ok = ToolName::parse(&spec.name).is_ok();
            if !ok {
                tracing::warn!(
                    provider = a.provider,
                    tool = spec.name,
                    "ignoring a tool with an invalid name"
                );
            }
            ok
        });
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        if a.withdrawn {
            known.remove(&a.instance);
            return;
        }
        let now = Instant::now();
        let ttl = match a.ttl_ms {
            0 => DEFAULT_TTL,
            ms => Duration::from_millis(ms),
        };
        known.insert(
            a.instance.clone(),
            Known {
                announcement: a,
                seen: now,
                expires: now + ttl,
            },
        );
    }

    /// The tools live now, by name. Two providers of one name: the latest announced wins.
    pub fn specs(&self) -> BTreeMap<String, ToolSpec> {
        let now = Instant::now();
        let Ok(mut known) = self.known.lock() else {
            return BTreeMap::new();
        };
        known.retain(|_, k| k.expires > now);
        let mut live: Vec<&Known> = known.values().collect();
        live.sort_by_key(|k| k.seen);
        let mut out = BTreeMap::new();
        for k in live {
            for spec in &k.announcement.specs {
                out.insert(spec.name.clone(), spec.clone());
            }
        }
        out
    }

    /// Live provider instances, by provider name then instance.
    pub fn providers(&self) -> Vec<LiveProvider> {
        let now = Instant::now();
        let Ok(mut known) = self.known.lock() else {
            return Vec::new();
        };
        known.retain(|_, k| k.expires > now);
        let mut out: Vec<LiveProvider> = known
            .values()
            .map(|k| LiveProvider {
                provider: k.announcement.provider.clone(),
                instance: k.announcement.instance.clone(),
                version: k.announcement.version.clone(),
                tools: k
                    .announcement
                    .specs
                    .iter()
                    .map(|s| s.name.clone())
                    .collect(),
                status: k.announcement.status.clone().into_iter().collect(),
                age: now.saturating_duration_since(k.seen),
            })
            .collect();
        out.sort_by(|a, b| (&a.provider, &a.instance).cmp(&(&b.provider, &b.instance)));
        out
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn announcement(instance: &str, tools: &[&str], ttl_ms: u64) -> ToolAnnouncement {
        ToolAnnouncement {
            protocol: 1,
            provider: "p".into(),
            instance: instance.into(),
            specs: tools
                .iter()
                .map(|t| ToolSpec {
                    name: (*t).into(),
                    description: instance.into(),
                    ..Default::default()
                })
                .collect(),
            ttl_ms,
            ..Default::default()
        }
    }

    fn directory() -> ToolDirectory {
        ToolDirectory {
            known: Arc::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tools_live_until_withdrawn_or_their_announcement_expires() {
        let d = directory();
        d.record(announcement("a", &["read_file", "bad name!"], 6000));
        d.record(announcement("b", &["weather"], 6000));
        assert_eq!(
            d.specs().keys().collect::<Vec<_>>(),
            ["read_file", "weather"]
        );
        d.record(ToolAnnouncement {
            withdrawn: true,
            ..announcement("b", &[], 0)
        });
        assert_eq!(d.specs().keys().collect::<Vec<_>>(), ["read_file"]);
        tokio::time::advance(Duration::from_millis(5900)).await;
        assert_eq!(d.specs().len(), 1);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(d.specs().is_empty(), "a silent provider is forgotten");
        assert!(d.providers().is_empty());
    }

    #[test]
    fn an_announcement_of_a_newer_protocol_is_ignored() {
        let d = directory();
        d.record(ToolAnnouncement {
            protocol: 2,
            ..announcement("a", &["read_file"], 6000)
        });
        assert!(d.specs().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_of_one_tool_give_one_spec_the_latest_announced() {
        let d = directory();
        d.record(announcement("a", &["read_file"], 6000));
        tokio::time::advance(Duration::from_millis(10)).await;
        d.record(announcement("b", &["read_file"], 6000));
        let specs = d.specs();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs["read_file"].description, "b");
        assert_eq!(d.providers().len(), 2);
    }
}
