//! Chaos: the built binaries as processes on real NATS, killed, starved and fed
//! hostile input while they carry a load, with the fake OpenAI server as the model.
//! Every scenario ends with the same questions: was each message answered exactly
//! once, in its session's order, and is nothing left stuck in a consumer?
//!
//! The size of the load comes from `NEXUS_CHAOS_SCALE` (default 1: the short form
//! that `cargo test --workspace` runs) and the length of the long session from
//! `NEXUS_CHAOS_TURNS` (default 200); `just chaos` raises both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod disk;
mod hostile;
mod kills;
mod nats_restart;
mod provider;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use nexus_bus::{Bus, TraceContext};
use nexus_proto::v1::{
    ChatRef, InboundKind, InboundMessage, OutboundKind, OutboundMessage, Sender,
};
use nexus_testkit::{ServiceProcess, TestEnv, eventually, fake_openai::FakeOpenAi};
use prost::Message;

/// Sessions that carry the steady load.
const SESSIONS: usize = 20;

/// `NEXUS_CHAOS_SCALE`: how many times the short form's load to send.
fn scale() -> usize {
    std::env::var("NEXUS_CHAOS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1usize)
        .max(1)
}

/// `NEXUS_CHAOS_TURNS`: the length of the one long session.
fn long_session_turns() -> usize {
    std::env::var("NEXUS_CHAOS_TURNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200usize)
        .max(10)
}

/// A bound on waits that grows with the load; it never asserts on speed.
fn within(base_secs: u64) -> Duration {
    Duration::from_secs(base_secs * scale() as u64)
}

fn llm_env(fake: &FakeOpenAi) -> Vec<(String, String)> {
    let mut env = fake.env();
    env.extend([
        ("NEXUS__LLM__RETRY_BASE_MS", "20".into()),
        // Short, so a killed replica's turns are redelivered quickly.
        ("NEXUS__AGENT__ACK_WAIT_SECS", "3".into()),
        // A request to a killed memory-svc is given up quickly and the turn redone.
        ("NEXUS__NATS__REQUEST_TIMEOUT_SECS", "5".into()),
    ]);
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The `n`th message of `chat` on the test channel, as a gateway would store it.
fn inbound(chat: &str, n: usize, text: &str) -> InboundMessage {
    let upstream = format!("{chat}-{n}");
    InboundMessage {
        id: format!("test:{upstream}"),
        channel: "test".into(),
        chat: Some(ChatRef {
            chat_id: chat.into(),
            ..Default::default()
        }),
        sender: Some(Sender {
            id: "u1".into(),
            ..Default::default()
        }),
        text: text.into(),
        upstream_id: upstream,
        kind: InboundKind::User as i32,
        ..Default::default()
    }
}

/// Stores the message the way a gateway does: retried under the same id until
/// JetStream takes it (NATS may be down), so a retry stores nothing new.
async fn send(bus: &Bus, chat: &str, n: usize, text: &str) -> String {
    let msg = inbound(chat, n, text);
    eventually("the message stored", Duration::from_secs(120), || async {
        bus.publish_inbound(&msg, &TraceContext::new_root())
            .await
            .ok()
    })
    .await;
    msg.id
}

/// The text of message `i` of `chat` in the steady load.
fn load_text(chat: &str, i: usize) -> String {
    format!("{chat} message {i}")
}

/// `per_session` messages in each of `sessions` chats (`s0`, `s1`, …), each chat's in
/// order and paced by `gap`, the chats side by side.
fn load(bus: &Bus, sessions: usize, per_session: usize, gap: Duration) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..sessions {
        let bus = bus.clone();
        tasks.spawn(async move {
            let chat = format!("s{s}");
            let mut pace = tokio::time::interval(gap);
            for i in 0..per_session {
                pace.tick().await;
                send(&bus, &chat, i, &load_text(&chat, i)).await;
            }
        });
    }
    tasks
}

/// How many messages `N_OUTBOUND` holds now (0 while it cannot be asked).
async fn outbound_count(bus: &Bus) -> usize {
    let Ok(mut stream) = bus
        .jetstream()
        .get_stream(bus.subjects().outbound_stream())
        .await
    else {
        return 0;
    };
    stream
        .info()
        .await
        .map(|i| i.state.messages as usize)
        .unwrap_or(0)
}

/// Waits until `N_OUTBOUND` holds at least `n` messages.
async fn wait_outbound(bus: &Bus, n: usize, within: Duration) {
    eventually(&format!("{n} replies stored"), within, || async {
        (outbound_count(bus).await >= n).then_some(())
    })
    .await;
}

/// Every message stored in `N_OUTBOUND`, in stream order.
async fn replies(bus: &Bus, within: Duration) -> Vec<OutboundMessage> {
    eventually("N_OUTBOUND read whole", within, || async {
        let stream = bus
            .jetstream()
            .get_stream(bus.subjects().outbound_stream())
            .await
            .ok()?;
        let mut info = stream.clone();
        let stored = info.info().await.ok()?.state.messages as usize;
        if stored == 0 {
            return Some(Vec::new());
        }
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .ok()?;
        let mut msgs = consumer.messages().await.ok()?;
        let mut out = Vec::with_capacity(stored);
        while out.len() < stored {
            let m = tokio::time::timeout(Duration::from_secs(5), msgs.next())
                .await
                .ok()??
                .ok()?;
            out.push(OutboundMessage::decode(m.payload.clone()).ok()?);
        }
        Some(out)
    })
    .await
}

/// Waits until no inbound message is waiting or being worked on: every turn has
/// published its reply, so no further reply can come (not even a redelivery's).
async fn settled(bus: &Bus, within: Duration) {
    eventually("every inbound message settled", within, || async {
        let stream = bus
            .jetstream()
            .get_stream(bus.subjects().inbound_stream())
            .await
            .ok()?;
        let mut consumers = stream.consumers();
        let mut any = false;
        while let Some(info) = consumers.next().await {
            let info = info.ok()?;
            any = true;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return None;
            }
        }
        any.then_some(())
    })
    .await
}

/// Checks that no message got two replies, and that each test-channel chat in
/// `sent` (chat → messages sent) got one reply to each of its messages, in order.
/// Returns each of those chats' replies in order, for the caller to check the texts.
fn assert_once_and_in_order(
    replies: &[OutboundMessage],
    sent: &BTreeMap<String, usize>,
) -> BTreeMap<String, Vec<OutboundMessage>> {
    let mut seen = BTreeSet::new();
    let mut by_chat: BTreeMap<String, Vec<OutboundMessage>> = BTreeMap::new();
    for r in replies {
        assert!(
            seen.insert(r.in_reply_to.clone()),
            "two replies to {}: the second says {:?}",
            r.in_reply_to,
            r.text
        );
        let Some((chat, _)) = r
            .in_reply_to
            .strip_prefix("test:")
            .and_then(|rest| rest.rsplit_once('-'))
        else {
            continue;
        };
        if sent.contains_key(chat) {
            by_chat.entry(chat.to_owned()).or_default().push(r.clone());
        }
    }
    for (chat, n) in sent {
        let got: Vec<&str> = by_chat
            .get(chat)
            .map(|r| r.iter().map(|r| r.in_reply_to.as_str()).collect())
            .unwrap_or_default();
        let expected: Vec<String> = (0..*n).map(|i| format!("test:{chat}-{i}")).collect();
        assert_eq!(got, expected, "chat {chat}: a reply lost, or out of order");
    }
    by_chat
}

/// Asserts every reply of the load says what the model was asked to say.
fn assert_load_answers(by_chat: &BTreeMap<String, Vec<OutboundMessage>>) {
    for (chat, replies) in by_chat {
        for (i, r) in replies.iter().enumerate() {
            assert_eq!(r.kind, OutboundKind::Reply as i32, "{}", r.text);
            assert_eq!(r.text, format!("re: {}", load_text(chat, i)));
        }
    }
}

/// Waits until each of `names` has a live instance on the service API.
async fn wait_registered(test: &TestEnv, processes: &mut [&mut ServiceProcess], names: &[&str]) {
    let bus = test.bus("chaos-probe").await;
    nexus_testkit::wait_registered(&bus, processes, names, Duration::from_secs(60)).await;
}
