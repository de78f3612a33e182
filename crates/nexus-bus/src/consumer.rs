//! Durable consumers: created, pulled one message at a time, kept in progress and settled.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use nexus_common::backoff::Backoff;

use crate::{Bus, BusError, Link, LinkState};

impl Bus {
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
/// Every pull is answered on one inbox, subscribed once for the puller's life:
/// `async-nats`'s batch subscribes a fresh inbox per pull and unsubscribes after it,
/// which cost nats-server a SUB, an UNSUB and a subscription-cache reset for every
/// message consumed (three per turn). With one inbox, a late answer to an earlier
/// pull is not lost either: it is the next message.
///
/// A pull request lives on one connection: when it drops (NATS restarted, network
/// cut) the request is pulled again as soon as the connection is back, rather than
/// when it would have expired.
pub struct Puller {
    consumer: jetstream::consumer::PullConsumer,
    client: async_nats::Client,
    js: jetstream::Context,
    link: Link,
    inbox: Option<(async_nats::Subject, async_nats::Subscriber)>,
    /// The pull waiting at the server: when the client stops waiting for its answer,
    /// and the connection it was sent on.
    pending: Option<(tokio::time::Instant, LinkState)>,
    /// Pulls that failed in a row, and the wait before the next.
    backoff: Backoff,
    /// How long the server keeps one pull request.
    expires: Duration,
}

/// How long the server keeps one pull request; the client gives up 5 s later.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
const PULL_GRACE: Duration = Duration::from_secs(5);
/// How long [`Puller::next_batch`] waits for the answer to a pull that does not wait.
const SWEEP_GRACE: Duration = Duration::from_secs(2);
/// Wait before pulling again after a failed pull: 0.5 s, doubling while failures
/// go on, at most 5 s.
const PULL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));

/// A message the server delivered on a pull inbox, ackable through JetStream.
fn delivered(js: &jetstream::Context, message: async_nats::Message) -> jetstream::Message {
    jetstream::Message {
        message,
        context: js.clone(),
    }
}

/// What ended a wait for the answer to a pull.
enum Answer {
    Message(Option<async_nats::Message>),
    ConnectionChanged,
    GaveUp,
}

impl Puller {
    pub async fn new(
        bus: &Bus,
        consumer: &jetstream::consumer::PullConsumer,
    ) -> Result<Self, BusError> {
        Ok(Self {
            consumer: consumer.clone(),
            client: bus.client.clone(),
            js: bus.js.clone(),
            link: bus.link().clone(),
            inbox: None,
            pending: None,
            backoff: PULL_BACKOFF,
            expires: PULL_EXPIRES,
        })
    }

    /// Pulls that wait `expires` at the server (30 s by default) before they are
    /// answered with nothing and made again.
    pub fn expiring_after(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }

    /// The next message, or `None` once `shutdown` is cancelled.
    pub async fn next(
        &mut self,
        shutdown: &nexus_common::shutdown::CancellationToken,
    ) -> Option<jetstream::Message> {
        loop {
            if self.inbox.is_none() {
                let inbox = async_nats::Subject::from(self.client.new_inbox());
                let subscribed = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    s = self.client.subscribe(inbox.clone()) => s,
                };
                match subscribed {
                    Ok(subscriber) => self.inbox = Some((inbox, subscriber)),
                    Err(error) => {
                        self.backoff.fail();
                        tracing::warn!(%error, failures = self.backoff.failures(), "subscribing to the pull inbox failed; retrying");
                        self.pause(shutdown).await?;
                        continue;
                    }
                }
            }
            let Some((inbox, subscriber)) = self.inbox.as_mut() else {
                continue;
            };
            let (give_up, since) = match self.pending {
                Some(pending) => pending,
                None => {
                    let since = self.link.state();
                    let request = pull::BatchConfig {
                        batch: 1,
                        expires: Some(self.expires),
                        ..Default::default()
                    };
                    let pulled = tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        r = self.consumer.request_batch(request, inbox.clone()) => r,
                    };
                    if let Err(error) = pulled {
                        // A consumer that is gone (or NATS down) fails every pull: back off.
                        self.backoff.fail();
                        tracing::warn!(%error, failures = self.backoff.failures(), "pulling messages failed; retrying");
                        self.pause(shutdown).await?;
                        continue;
                    }
                    self.backoff.reset();
                    let give_up = tokio::time::Instant::now() + self.expires + PULL_GRACE;
                    *self.pending.insert((give_up, since))
                }
            };
            let link = self.link.clone();
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return None,
                m = subscriber.next() => Answer::Message(m),
                _ = link.changed_from(since) => Answer::ConnectionChanged,
                _ = tokio::time::sleep_until(give_up) => Answer::GaveUp,
            };
            // A pull serves one message at most: whatever came, the next one needs a new pull.
            self.pending = None;
            match answer {
                Answer::Message(Some(message)) => {
                    match message.status.unwrap_or(async_nats::StatusCode::OK) {
                        async_nats::StatusCode::OK => return Some(delivered(&self.js, message)),
                        // Expired with nothing to deliver: long-poll again.
                        async_nats::StatusCode::TIMEOUT | async_nats::StatusCode::NOT_FOUND => {}
                        // A status instead of a message (e.g. the consumer is at its ack limit).
                        status => {
                            tracing::debug!(%status, description = ?message.description, "pull ended without a message; pulling again");
                            self.pause(shutdown).await?;
                        }
                    }
                }
                // The client is gone; subscribe again (after a pause) if it comes back.
                Answer::Message(None) => {
                    self.inbox = None;
                    self.backoff.fail();
                    self.pause(shutdown).await?;
                }
                // The request went with the connection: ask again once it is back.
                Answer::ConnectionChanged => {
                    tracing::debug!("connection to NATS changed; pulling again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = link.reconnected() => {}
                    }
                }
                // The server's expiry notice was lost: pull again.
                Answer::GaveUp => {}
            }
        }
    }

    /// [`Puller::next`], then, without waiting, up to `max - 1` more messages that
    /// are there already: one pull that does not wait, answered with them and a
    /// status (404 when there were none, 408 when fewer than asked). For a consumer
    /// whose work costs less in batches (the usage ledger: one transaction, one pull
    /// for many events); its `max_ack_pending` must allow `max`. `None` on shutdown.
    pub async fn next_batch(
        &mut self,
        max: usize,
        shutdown: &nexus_common::shutdown::CancellationToken,
    ) -> Option<Vec<jetstream::Message>> {
        let first = self.next(shutdown).await?;
        let mut batch = vec![first];
        let Some((inbox, subscriber)) = self.inbox.as_mut().filter(|_| max > 1) else {
            return Some(batch);
        };
        let request = pull::BatchConfig {
            batch: max - 1,
            no_wait: true,
            ..Default::default()
        };
        if let Err(error) = self.consumer.request_batch(request, inbox.clone()).await {
            tracing::debug!(%error, "no batch pulled; going on with one message");
            return Some(batch);
        }
        // The server answers at once; this only bounds a lost answer (a late status
        // then ends one later long-poll early, which is pulled again).
        let give_up = tokio::time::Instant::now() + SWEEP_GRACE;
        while batch.len() < max {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = subscriber.next() => m,
                _ = tokio::time::sleep_until(give_up) => break,
            };
            match answer {
                Some(message)
                    if message
                        .status
                        .is_none_or(|s| s == async_nats::StatusCode::OK) =>
                {
                    batch.push(delivered(&self.js, message));
                }
                Some(_status) => break,
                None => {
                    self.inbox = None;
                    break;
                }
            }
        }
        Some(batch)
    }

    /// Waits before the next pull; `None` if shutdown came first. While NATS is
    /// unreachable the wait ends when the connection is back, not at the backoff.
    async fn pause(&self, shutdown: &nexus_common::shutdown::CancellationToken) -> Option<()> {
        let wait = self.backoff.delay(self.backoff.failures());
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
#[derive(Debug, Clone)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_pulls_back_off_to_five_seconds() {
        let ms = |f| PULL_BACKOFF.delay(f).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4), ms(9)],
            [500, 500, 1000, 2000, 4000, 5000]
        );
    }
}
