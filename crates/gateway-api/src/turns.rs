//! Turns started over the API, and the routing of their progress and replies back
//! to the request that waits for them.
//!
//! One [`Turns`] per process holds a map from turn id (the `InboundMessage.id`) to
//! the waiting requests. Two feeds, opened before the listeners start, fill it:
//! - replies: an ordered (ephemeral) JetStream consumer on `N.outbound.api` that
//!   starts at the first new message, so every replica sees every API reply and
//!   keeps the ones its own clients wait for (see the crate docs for why);
//! - progress: a core NATS subscription on `N.progress.api` (best effort, dropped
//!   when a client reads too slowly).
//!
//! A request registers itself before its message is stored, so nothing can slip
//! past it; it unregisters when dropped (client gone, reply sent, timeout).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::{Stream, StreamExt, stream};
use nexus_bus::{Bus, BusError, MemoryOp, TraceContext};
use nexus_common::{domain::ChannelName, now_ms, shutdown::CancellationToken};
use nexus_gateway::Gateway;
use nexus_proto::v1::{
    AnsweredRequest, AnsweredResponse, ChatRef, OutboundMessage, Sender, TurnProgress,
    turn_progress,
};
use prost::Message as _;
use tokio::{sync::mpsc, time::Instant};

use crate::error::ApiError;

/// Progress messages buffered per request; further ones are dropped until the client reads.
const PROGRESS_BUFFER: usize = 256;
/// Longest session id or idempotency key.
const MAX_ID_CHARS: usize = 128;

/// What a waiting request hears about its turn.
#[derive(Debug, Clone)]
pub enum TurnEvent {
    Progress(turn_progress::Kind),
    Reply(OutboundMessage),
}

/// One message to send to the agent.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The authenticated user id (from the API key).
    pub user: String,
    /// The user's conversation; `None` or empty means `"default"`.
    pub session: Option<String>,
    pub text: String,
    /// A retry with the same key starts no second turn.
    pub idempotency_key: Option<String>,
}

struct Waiter {
    id: u64,
    progress: mpsc::Sender<turn_progress::Kind>,
    reply: mpsc::Sender<OutboundMessage>,
}

type Waiters = Arc<Mutex<HashMap<String, Vec<Waiter>>>>;

/// Starts turns and hands each one's progress and reply to whoever waits for it.
pub struct Turns {
    gateway: Arc<Gateway>,
    channel: ChannelName,
    waiters: Waiters,
    next_waiter: AtomicU64,
    reply_timeout: Duration,
}

/// A started turn: events arrive through [`Pending::next`] until the reply or the timeout.
pub struct Pending {
    pub turn_id: String,
    pub session: String,
    progress: mpsc::Receiver<turn_progress::Kind>,
    reply: mpsc::Receiver<OutboundMessage>,
    deadline: Instant,
    timeout: Duration,
    _registration: Registration,
}

/// Removes a waiter from the map when its request ends, however it ends.
struct Registration {
    waiters: Waiters,
    turn_id: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = map.get_mut(&self.turn_id) {
            list.retain(|w| w.id != self.id);
            if list.is_empty() {
                map.remove(&self.turn_id);
            }
        }
    }
}

/// The reply and progress feeds, opened before the listeners so no reply is missed.
pub struct Feeds {
    replies: pull::Ordered,
    progress: async_nats::Subscriber,
    /// The stream's last sequence when the feed opened: a reopened feed starts after it.
    opened_after: u64,
}

impl Feeds {
    pub async fn open(bus: &Bus, channel: &ChannelName) -> anyhow::Result<Self> {
        // The stream as fetched carries its state: one round trip, not two.
        let opened_after = bus
            .stream(&bus.subjects().outbound_stream())
            .await?
            .cached_info()
            .state
            .last_sequence;
        Ok(Self {
            opened_after,
            replies: open_replies(
                bus,
                channel,
                DeliverPolicy::ByStartSequence {
                    start_sequence: opened_after + 1,
                },
            )
            .await?,
            progress: bus
                .subscribe(bus.subjects().progress(channel))
                .await
                .context("subscribing to progress")?,
        })
    }
}

async fn open_replies(
    bus: &Bus,
    channel: &ChannelName,
    deliver_policy: DeliverPolicy,
) -> anyhow::Result<pull::Ordered> {
    let s = bus.subjects();
    Ok(bus
        .ordered_feed(
            &s.outbound_stream(),
            pull::OrderedConfig {
                name: Some(
                    s.reply_feed_consumer(channel, &uuid::Uuid::new_v4().simple().to_string()),
                ),
                filter_subject: s.outbound(channel),
                deliver_policy,
                ..Default::default()
            },
        )
        .await
        .context("reply consumer")?
        .messages)
}

impl Turns {
    pub fn new(gateway: Arc<Gateway>, reply_timeout: Duration) -> Self {
        Self {
            channel: gateway.channel().clone(),
            gateway,
            waiters: Arc::default(),
            next_waiter: AtomicU64::new(1),
            reply_timeout,
        }
    }

    pub fn bus(&self) -> &Bus {
        self.gateway.bus()
    }

    /// Stores the message in `N_INBOUND` (after registering for its reply) and
    /// returns the turn to wait on. A replayed idempotency key starts no second turn:
    /// it waits for the first one's reply, or gets it from memory-svc if it is out.
    pub async fn start(&self, ask: Ask) -> Result<Pending, ApiError> {
        let session = match ask.session.as_deref().map(str::trim) {
            None | Some("") => "default".to_owned(),
            Some(s) => checked_id("session", s)?.to_owned(),
        };
        if ask.text.trim().is_empty() {
            return Err(ApiError::BadRequest("text is empty".into()));
        }
        let upstream = match ask.idempotency_key.as_deref().map(str::trim) {
            None | Some("") => uuid::Uuid::new_v4().to_string(),
            // Scoped by user: two users' keys never meet.
            Some(key) => format!("{}:{}", ask.user, checked_id("idempotency key", key)?),
        };
        let mut msg = self.gateway.inbound(&upstream);
        // The user id prefixes the chat id: one user cannot reach another's session.
        msg.chat = Some(ChatRef {
            chat_id: format!("{}:{session}", ask.user),
            ..Default::default()
        });
        msg.sender = Some(Sender {
            id: ask.user.clone(),
            display_name: ask.user.clone(),
            user_id: ask.user.clone(),
        });
        msg.text = ask.text;
        msg.sent_at_ms = now_ms();

        let (pending, reply_tx) = self.register(&msg.id, session);
        let stored = self.gateway.intake(&msg).await.map_err(|e| {
            tracing::warn!(error = %e, "intake failed");
            ApiError::Unavailable(format!("the message was not stored: {e}"))
        })?;
        if stored.duplicate {
            // Its reply may be out already (stored by memory-svc before it was published).
            match self.answered(&msg.id).await {
                Ok(Some(reply)) => {
                    let _ = reply_tx.try_send(reply);
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot ask memory-svc for an earlier reply"),
            }
        }
        tracing::info!(turn = %msg.id, duplicate = stored.duplicate, "turn accepted");
        Ok(pending)
    }

    fn register(&self, turn_id: &str, session: String) -> (Pending, mpsc::Sender<OutboundMessage>) {
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (progress_tx, progress) = mpsc::channel(PROGRESS_BUFFER);
        let (reply_tx, reply) = mpsc::channel(1);
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(turn_id.to_owned())
            .or_default()
            .push(Waiter {
                id,
                progress: progress_tx,
                reply: reply_tx.clone(),
            });
        let pending = Pending {
            turn_id: turn_id.to_owned(),
            session,
            progress,
            reply,
            deadline: Instant::now() + self.reply_timeout,
            timeout: self.reply_timeout,
            _registration: Registration {
                waiters: self.waiters.clone(),
                turn_id: turn_id.to_owned(),
                id,
            },
        };
        (pending, reply_tx)
    }

    /// The stored reply of an earlier turn of `user` (after a timeout or a lost connection).
    pub async fn lookup(&self, user: &str, turn_id: &str) -> Result<OutboundMessage, ApiError> {
        let not_found = || {
            ApiError::NotFound(format!(
                "no stored reply for turn {turn_id}: it is still running, it failed, or it is not yours"
            ))
        };
        if !turn_id.starts_with(&format!("{}:", self.channel)) {
            return Err(not_found());
        }
        match self.answered(turn_id).await {
            Ok(Some(reply)) if owned_by(&reply, self.channel.as_str(), user) => Ok(reply),
            Ok(_) => Err(not_found()),
            Err(BusError::Remote { code, message, .. }) if code < 500 => {
                Err(ApiError::BadRequest(message))
            }
            Err(e) => Err(ApiError::Unavailable(format!("memory-svc: {e}"))),
        }
    }

    async fn answered(&self, turn_id: &str) -> Result<Option<OutboundMessage>, BusError> {
        let bus = self.bus();
        let resp: AnsweredResponse = bus
            .request(
                bus.subjects().memory(MemoryOp::Answered),
                &AnsweredRequest {
                    turn_id: turn_id.to_owned(),
                },
                &TraceContext::new_root(),
                Some(Duration::from_secs(10)),
            )
            .await?;
        Ok(resp.reply.filter(|_| resp.answered))
    }

    /// Routes replies and progress to waiting requests until `stop`.
    pub async fn route(&self, mut feeds: Feeds, stop: CancellationToken) {
        let mut last_sequence = feeds.opened_after;
        let link = self.bus().link().clone();
        loop {
            let since = link.state();
            tokio::select! {
                _ = stop.cancelled() => break,
                // An ordered consumer lives in the server's memory: a restarted NATS has
                // forgotten it, and the client notices late. Reopen it at once.
                () = link.changed_from(since) => {
                    link.reconnected().await;
                    tracing::info!("NATS connection back; reopening the reply feed where it stopped");
                    let policy = DeliverPolicy::ByStartSequence { start_sequence: last_sequence + 1 };
                    match open_replies(self.bus(), &self.channel, policy).await {
                        Ok(r) => feeds.replies = r,
                        Err(error) => tracing::warn!(
                            error = %format!("{error:#}"),
                            "reopening replies failed; the consumer recovers by itself"
                        ),
                    }
                }
                m = feeds.replies.next() => match m {
                    Some(Ok(m)) => {
                        if let Ok(info) = m.info() {
                            last_sequence = info.stream_sequence;
                        }
                        match OutboundMessage::decode(m.payload.clone()) {
                            Ok(reply) => {
                                let span = tracing::info_span!(
                                    "delivery",
                                    otel.name = tracing::field::Empty,
                                    otel.kind = tracing::field::Empty,
                                    turn = %reply.in_reply_to,
                                );
                                nexus_common::telemetry::name_span(&span, "consumer", || {
                                    format!("deliver {}", self.channel)
                                });
                                let _delivery = TraceContext::from_headers(m.headers.as_ref())
                                    .span(span)
                                    .entered();
                                self.dispatch_reply(reply)
                            }
                            Err(error) => tracing::warn!(%error, "undecodable reply ignored"),
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "reading replies failed; the consumer recovers");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    None => {
                        tracing::warn!("reply consumer ended; reopening it where it stopped");
                        let policy = DeliverPolicy::ByStartSequence { start_sequence: last_sequence + 1 };
                        match open_replies(self.bus(), &self.channel, policy).await {
                            Ok(r) => feeds.replies = r,
                            Err(error) => {
                                tracing::warn!(error = %format!("{error:#}"), "reopening replies failed; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                },
                p = feeds.progress.next() => match p {
                    Some(p) => {
                        if let Ok(TurnProgress { turn_id, kind: Some(kind), .. }) = TurnProgress::decode(p.payload) {
                            self.dispatch_progress(&turn_id, kind);
                        }
                    }
                    None => {
                        let subject = self.bus().subjects().progress(&self.channel);
                        match self.bus().subscribe(subject).await {
                            Ok(s) => feeds.progress = s,
                            Err(error) => {
                                tracing::warn!(%error, "resubscribing to progress failed; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                },
            }
        }
        let _ = feeds.progress.unsubscribe().await;
    }

    fn dispatch_reply(&self, reply: OutboundMessage) {
        let map = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(&reply.in_reply_to) {
            Some(list) => {
                for w in list {
                    // Full means it already has this reply (from memory-svc).
                    let _ = w.reply.try_send(reply.clone());
                }
            }
            None => {
                tracing::debug!(turn = %reply.in_reply_to, "reply for a request of another replica, or one that ended")
            }
        }
    }

    fn dispatch_progress(&self, turn_id: &str, kind: turn_progress::Kind) {
        let map = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = map.get(turn_id) {
            for w in list {
                // Progress is best effort: a client that reads too slowly misses some.
                let _ = w.progress.try_send(kind.clone());
            }
        }
    }
}

impl Pending {
    /// The next event, in order: queued progress first, then the reply; an error after the timeout.
    pub async fn next(&mut self) -> Result<TurnEvent, ApiError> {
        tokio::select! {
            biased;
            Some(kind) = self.progress.recv() => Ok(TurnEvent::Progress(kind)),
            Some(reply) = self.reply.recv() => Ok(TurnEvent::Reply(reply)),
            _ = tokio::time::sleep_until(self.deadline) => Err(ApiError::Timeout {
                turn_id: self.turn_id.clone(),
                secs: self.timeout.as_secs(),
            }),
        }
    }

    /// Waits for the reply, skipping progress.
    pub async fn reply(mut self) -> Result<OutboundMessage, ApiError> {
        loop {
            if let TurnEvent::Reply(r) = self.next().await? {
                return Ok(r);
            }
        }
    }

    /// The turn as a stream: `first`, then what `on` makes of each event, until
    /// `on` says the stream is done (after the reply or an error).
    pub fn stream<T, F>(self, first: Vec<T>, on: F) -> impl Stream<Item = T> + Send + 'static
    where
        T: Send + 'static,
        F: FnMut(Result<TurnEvent, ApiError>) -> (Vec<T>, bool) + Send + 'static,
    {
        let state = (self, std::collections::VecDeque::from(first), false, on);
        stream::unfold(
            state,
            |(mut pending, mut queue, mut done, mut on)| async move {
                loop {
                    if let Some(item) = queue.pop_front() {
                        return Some((item, (pending, queue, done, on)));
                    }
                    if done {
                        return None;
                    }
                    let (items, finished) = on(pending.next().await);
                    queue.extend(items);
                    done = finished;
                }
            },
        )
    }
}

/// Whether a stored reply belongs to one of `user`'s sessions on this channel.
fn owned_by(reply: &OutboundMessage, channel: &str, user: &str) -> bool {
    reply.channel == channel
        && reply
            .chat
            .as_ref()
            .is_some_and(|c| c.chat_id.starts_with(&format!("{user}:")))
}

/// Session ids and idempotency keys: 1 to 128 visible ASCII characters.
fn checked_id<'a>(what: &str, value: &'a str) -> Result<&'a str, ApiError> {
    if value.len() <= MAX_ID_CHARS && value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(value)
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} must be 1 to {MAX_ID_CHARS} visible ASCII characters (no spaces)"
        )))
    }
}

/// The `kind` of a reply as the HTTP API names it.
pub fn kind_name(reply: &OutboundMessage) -> &'static str {
    use nexus_proto::v1::OutboundKind;
    match OutboundKind::try_from(reply.kind).unwrap_or(OutboundKind::Unspecified) {
        OutboundKind::Error => "error",
        OutboundKind::Notice => "notice",
        OutboundKind::Reply | OutboundKind::Unspecified => "reply",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_belongs_only_to_the_user_whose_session_it_is() {
        let reply = OutboundMessage {
            channel: "api".into(),
            chat: Some(ChatRef {
                chat_id: "alice:default".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(owned_by(&reply, "api", "alice"));
        assert!(!owned_by(&reply, "api", "ali"));
        assert!(!owned_by(&reply, "api", "bob"));
        assert!(!owned_by(&reply, "cli", "alice"));
    }

    #[test]
    fn session_ids_and_keys_are_short_visible_ascii() {
        assert!(checked_id("session", "work-2024.q1").is_ok());
        assert!(checked_id("session", "two words").is_err());
        assert!(checked_id("session", "line\nbreak").is_err());
        assert!(checked_id("session", &"x".repeat(129)).is_err());
    }
}
