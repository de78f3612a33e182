//! The state of the connection to NATS, as the client's events report it, so
//! waits can end the moment the connection is lost or comes back instead of
//! running into their timeouts.

use std::time::Duration;

use tokio::sync::watch;

/// What the connection to NATS is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
    /// Counts connections made, so a wait can tell "reconnected" from "never lost".
    pub epoch: u64,
}

/// A view of the connection state; cheap to clone.
#[derive(Clone)]
pub struct Link {
    rx: watch::Receiver<LinkState>,
}

/// Feeds a [`Link`] from the client's event callback.
#[derive(Clone)]
pub(crate) struct LinkFeed {
    tx: std::sync::Arc<watch::Sender<LinkState>>,
}

impl LinkFeed {
    pub(crate) fn new() -> (Self, Link) {
        let (tx, rx) = watch::channel(LinkState {
            connected: true,
            epoch: 0,
        });
        (
            Self {
                tx: std::sync::Arc::new(tx),
            },
            Link { rx },
        )
    }

    pub(crate) fn event(&self, event: &async_nats::Event) {
        match event {
            // The first connection reports `Connected` too; only a reconnection
            // (after `Disconnected`) starts a new epoch.
            async_nats::Event::Connected => {
                self.tx.send_if_modified(|s| {
                    let reconnected = !s.connected;
                    if reconnected {
                        s.connected = true;
                        s.epoch += 1;
                    }
                    reconnected
                });
            }
            async_nats::Event::Disconnected => self.tx.send_modify(|s| s.connected = false),
            _ => {}
        }
    }
}

impl Link {
    /// A link that never changes, for a bus built around a client made elsewhere.
    pub(crate) fn fixed() -> Self {
        LinkFeed::new().1
    }

    pub fn state(&self) -> LinkState {
        *self.rx.borrow()
    }

    pub fn is_connected(&self) -> bool {
        self.rx.borrow().connected
    }

    /// Waits until connected; false if `within` passed first.
    pub async fn connected(&self, within: Duration) -> bool {
        let mut rx = self.rx.clone();
        matches!(
            tokio::time::timeout(within, rx.wait_for(|s| s.connected)).await,
            Ok(Ok(_))
        )
    }

    /// Waits until connected, however long that takes.
    pub async fn reconnected(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|s| s.connected).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when the connection of `since` is gone: lost, or replaced by a new one
    /// (whatever was in flight on it may be lost). Never resolves while it holds.
    pub async fn changed_from(&self, since: LinkState) {
        let mut rx = self.rx.clone();
        if rx
            .wait_for(|s| !s.connected || s.epoch != since.epoch)
            .await
            .is_err()
        {
            // The feed is gone with the client: nothing will change any more.
            std::future::pending::<()>().await;
        }
    }
}

/// Delay before reconnect attempt `attempts`: fast at first (a restarted server is
/// back within a second), then every second — not the client's default of up to
/// 4 s, which alone made recovery after a short outage take seconds.
pub(crate) fn reconnect_delay(attempts: usize) -> Duration {
    match attempts {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(100u64.saturating_mul(1 << (n - 2).min(4))).min(MAX_DELAY),
    }
}

const MAX_DELAY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_start_at_once_and_settle_at_one_second() {
        let ms = |a| reconnect_delay(a).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5), ms(6), ms(50)],
            [0, 100, 200, 400, 800, 1000, 1000]
        );
    }

    #[tokio::test]
    async fn a_wait_on_the_link_ends_when_it_drops_or_reconnects() {
        let (feed, link) = LinkFeed::new();
        let start = link.state();
        assert!(link.connected(Duration::from_millis(10)).await);
        feed.event(&async_nats::Event::Disconnected);
        link.changed_from(start).await;
        assert!(!link.connected(Duration::from_millis(10)).await);
        feed.event(&async_nats::Event::Connected);
        assert!(link.connected(Duration::from_millis(10)).await);
        let now = link.state();
        assert_eq!(now.epoch, start.epoch + 1);
        // A `Connected` without a `Disconnected` before it is the first connection.
        feed.event(&async_nats::Event::Connected);
        assert_eq!(link.state(), now);
    }
}
