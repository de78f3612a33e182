//! gateway-telegram end to end: the built binary as a process, real NATS, the
//! real agent-core / memory-svc / tool-runner where a turn is needed, a fake
//! OpenAI, and a fake Telegram Bot API server that teloxide is pointed at
//! through `TELEGRAM_API_URL`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_telegram;
mod pairing;
mod scheduled;
mod telemetry;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream;
use fake_telegram::FakeTelegram;
use nexus_bus::{Bus, TraceContext};
use nexus_common::domain::ChannelName;
use nexus_proto::v1::{
    ChatRef, DeadLetter, Event, InboundMessage, OutboundKind, OutboundMessage, event, media_ref,
};
use nexus_testkit::{
    NatsServer, ServiceProcess, Stack, TcpProxy, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
    stream_messages,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "123456789:TEST-fake_token_abcdefghijklmnopqrstuv";
const ADA: i64 = 4242;
const WAIT: Duration = Duration::from_secs(90);

/// One test's world: namespace, fakes, and (when a turn is needed) the core services.
struct World {
    test: TestEnv,
    llm: FakeOpenAi,
    tg: FakeTelegram,
    stack: Option<Stack>,
    allow_from: String,
}

impl World {
    async fn new(reply: Reply, with_stack: bool) -> Self {
        Self::on(TestEnv::new(), reply, with_stack).await
    }

    /// A world on the NATS that `test` names.
    async fn on(test: TestEnv, reply: Reply, with_stack: bool) -> Self {
        let llm = FakeOpenAi::start(reply).await;
        let tg = FakeTelegram::start(TOKEN).await;
        let stack = if with_stack {
            let env = llm.env();
            let env: Vec<_> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Some(Stack::start(&test, &env).await)
        } else {
            None
        };
        Self {
            test,
            llm,
            tg,
            stack,
            allow_from: ADA.to_string(),
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = match &self.stack {
            Some(s) => s.env().to_vec(),
            None => self.test.process_env(),
        };
        for (k, v) in [
            ("TELEGRAM_BOT_TOKEN", TOKEN.to_owned()),
            ("TELEGRAM_API_URL", self.tg.api_url()),
            (
                "NEXUS__CHANNELS__TELEGRAM__ALLOW_FROM",
                self.allow_from.clone(),
            ),
            (
                "NEXUS__CHANNELS__TELEGRAM__POLL_TIMEOUT_SECS",
                "2".to_owned(),
            ),
        ] {
            env.push((k.to_owned(), v));
        }
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    }

    /// Starts the gateway and waits until it polls.
    async fn gateway(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        let before = self.tg.get_updates_calls();
        let process = ServiceProcess::spawn("gateway-telegram", &[], &self.env(extra));
        eventually("the gateway to poll Telegram", WAIT, || async {
            (self.tg.get_updates_calls() > before).then_some(())
        })
        .await;
        process
    }

    async fn bus(&self) -> Bus {
        self.test.bus("telegram-test").await
    }

    /// Waits until `chat` got `n` messages and returns them.
    async fn replies(&self, chat: i64, n: usize) -> Vec<fake_telegram::Sent> {
        eventually(&format!("{n} message(s) to chat {chat}"), WAIT, || async {
            let sent = self.tg.sent_to(chat);
            (sent.len() >= n).then_some(sent)
        })
        .await
    }
}

async fn inbound(bus: &Bus) -> Vec<InboundMessage> {
    let s = bus.subjects();
    stream_messages(bus, &s.inbound_stream(), s.inbound_all()).await
}

async fn outbound_count(bus: &Bus) -> u64 {
    let mut stream = bus
        .jetstream()
        .get_stream(bus.subjects().outbound_stream())
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

/// True once every reply in `N_OUTBOUND` was acked by the gateway (nothing will be sent again).
async fn deliveries_settled(bus: &Bus) -> bool {
    let s = bus.subjects();
    let channel = ChannelName::parse("telegram").unwrap();
    let Ok(stream) = bus.jetstream().get_stream(s.outbound_stream()).await else {
        return false;
    };
    let Ok(mut consumer) = stream
        .get_consumer::<jetstream::consumer::pull::Config>(&s.gateway_consumer(&channel))
        .await
    else {
        return false;
    };
    match consumer.info().await {
        Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
        Err(_) => false,
    }
}

async fn settle(bus: &Bus) {
    eventually("every reply to be acked", WAIT, || async {
        deliveries_settled(bus).await.then_some(())
    })
    .await;
}

fn user_messages(request: &serde_json::Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_message_is_answered_in_the_same_chat_as_a_reply_to_it() {
    let w = World::new(Reply::Text("Hello **Ada**! 1 < 2".into()), true).await;
    let gw = w.gateway(&[]).await;

    let (_, message_id) = w.tg.push_text(ADA, "ada", "Hi there");
    let sent = w.replies(ADA, 1).await;

    assert_eq!(sent[0].method, "sendmessage");
    assert_eq!(
        sent[0].reply_to,
        Some(message_id),
        "the reply quotes the message"
    );
    assert_eq!(sent[0].parse_mode.as_deref(), Some("HTML"));
    assert_eq!(sent[0].text, "Hello <b>Ada</b>! 1 &lt; 2");
    assert!(
        w.tg.actions().contains(&(ADA, "typing".to_owned())),
        "no typing indicator: {:?}",
        w.tg.actions()
    );
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        user_messages(&requests[0])
            .iter()
            .any(|m| m.contains("Hi there"))
    );

    let inbound = inbound(&w.bus().await).await;
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].id, format!("telegram:{ADA}:{message_id}"));
    assert_eq!(inbound[0].sender.as_ref().unwrap().id, ADA.to_string());

    assert!(
        gw.terminate(Duration::from_secs(30)).await.success(),
        "SIGTERM must exit 0"
    );
    assert_eq!(w.tg.sent_to(ADA).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_in_the_middle_of_a_burst_answers_every_message_exactly_once() {
    let mut w = World::new(Reply::Text("noted".into()), true).await;
    let bus = w.bus().await;
    // agent-core waits until the gateway is back, so the crash cannot cut a delivery short
    // and every turn is counted after the replays.
    let stack = w.stack.as_mut().unwrap();
    let agent = stack.agent.take().unwrap();
    assert!(agent.terminate(Duration::from_secs(30)).await.success());
    // A long poll, so the call in flight is still waiting when the burst arrives.
    let gw = w
        .gateway(&[("NEXUS__CHANNELS__TELEGRAM__POLL_TIMEOUT_SECS", "20")])
        .await;

    // Later calls never reach "Telegram": the first batch is stored but never confirmed.
    w.tg.hold_get_updates(true);
    let calls = w.tg.get_updates_calls();
    let first: Vec<String> = (0..10).map(|i| format!("burst message {i}")).collect();
    let first = w.tg.push_texts(ADA, "ada", &first);
    eventually(
        "the first batch stored and the next poll sent",
        WAIT,
        || async {
            (inbound(&bus).await.len() == 10 && w.tg.get_updates_calls() > calls).then_some(())
        },
    )
    .await;
    gw.kill().await;

    let second: Vec<String> = (10..20).map(|i| format!("burst message {i}")).collect();
    let second = w.tg.push_texts(ADA, "ada", &second);
    w.tg.hold_get_updates(false);
    let gw = w.gateway(&[]).await;
    let stack = w.stack.as_mut().unwrap();
    stack.agent = Some(stack.spawn("agent-core"));

    let all: Vec<(i64, i64)> = first.iter().chain(&second).copied().collect();
    eventually("a reply to each of the 20 messages", WAIT, || async {
        let sent = w.tg.sent_to(ADA);
        all.iter()
            .all(|(_, m)| sent.iter().any(|s| s.reply_to == Some(*m)))
            .then_some(())
    })
    .await;
    for (update_id, _) in &first {
        assert_eq!(
            w.tg.deliveries(*update_id),
            2,
            "the unconfirmed batch must come again after the crash"
        );
    }
    settle(&bus).await;
    assert!(gw.terminate(Duration::from_secs(30)).await.success());

    let mut per_message: HashMap<i64, usize> = HashMap::new();
    for s in w.tg.sent_to(ADA) {
        *per_message.entry(s.reply_to.unwrap_or(-1)).or_default() += 1;
    }
    assert_eq!(per_message.len(), 20, "{per_message:?}");
    for (_, m) in &all {
        assert_eq!(
            per_message.get(m),
            Some(&1),
            "message {m} answered {per_message:?}"
        );
    }
    assert_eq!(
        inbound(&bus).await.len(),
        20,
        "replays must not be stored twice"
    );
    assert_eq!(w.llm.requests().len(), 20, "one turn per message");
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_recovers_by_itself_after_telegram_fails_for_a_while() {
    let w = World::new(Reply::Text("back again".into()), true).await;
    let bus = w.bus().await;
    let gw = w
        .gateway(&[("NEXUS__CHANNELS__TELEGRAM__POLL_TIMEOUT_SECS", "1")])
        .await;

    w.tg.fail_get_updates_for(Duration::from_secs(5));
    eventually("getUpdates to fail", WAIT, || async {
        (w.tg.failed_get_updates() > 0).then_some(())
    })
    .await;
    let (_, message_id) = w.tg.push_text(ADA, "ada", "sent during the outage");

    let sent = w.replies(ADA, 1).await;
    assert_eq!(sent[0].reply_to, Some(message_id));

    let s = bus.subjects();
    let statuses = eventually("degraded and recovered events", WAIT, || async {
        let events: Vec<Event> = stream_messages(&bus, &s.events_stream(), s.events_all()).await;
        let statuses: Vec<String> = events
            .into_iter()
            .filter_map(|e| match e.kind {
                Some(event::Kind::Service(n)) if n.service == "gateway-telegram" => Some(n.status),
                _ => None,
            })
            .collect();
        statuses
            .contains(&"recovered".to_owned())
            .then_some(statuses)
    })
    .await;
    let degraded = statuses.iter().position(|s| s == "degraded");
    let recovered = statuses.iter().position(|s| s == "recovered");
    assert!(degraded < recovered && degraded.is_some(), "{statuses:?}");
    assert!(gw.terminate(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn when_telegram_refuses_the_markup_the_reply_goes_out_as_plain_text() {
    let w = World::new(Reply::Text("**Bold** claim_with_underscores".into()), true).await;
    let _gw = w.gateway(&[]).await;
    w.tg.reject_markup(1);

    let (_, message_id) = w.tg.push_text(ADA, "ada", "format something");
    let sent = w.replies(ADA, 1).await;

    let rejected = w.tg.rejected();
    assert_eq!(rejected.len(), 1, "the HTML attempt was refused once");
    assert_eq!(rejected[0]["parse_mode"], "HTML");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].parse_mode, None, "the retry carries no markup");
    assert_eq!(sent[0].text, "**Bold** claim_with_underscores");
    assert_eq!(sent[0].reply_to, Some(message_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_who_is_not_allowed_gets_no_turn_and_one_notice_with_their_id() {
    let mut w = World::new(Reply::Text("welcome".into()), true).await;
    w.allow_from = format!("{ADA},@Carol");
    let bus = w.bus().await;
    let _gw = w.gateway(&[]).await;

    let mut last = 0;
    for text in ["hello?", "anyone?", "please answer"] {
        last = w.tg.push_text(99, "eve", text).0;
    }
    eventually("the three messages to be handled", WAIT, || async {
        (w.tg.confirmed_offset() > last).then_some(())
    })
    .await;
    let notices = w.tg.sent_to(99);
    assert_eq!(notices.len(), 1, "exactly one notice: {notices:?}");
    assert!(notices[0].text.contains("99"), "{}", notices[0].text);
    assert!(
        w.llm.requests().is_empty(),
        "a denied sender started a turn"
    );
    assert!(inbound(&bus).await.is_empty());

    // Allowed by @username, case-insensitively.
    let (_, message_id) = w.tg.push_text(5555, "carol", "hi, I am Carol");
    let sent = w.replies(5555, 1).await;
    assert_eq!(sent[0].reply_to, Some(message_id));
    assert_eq!(w.llm.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_longer_than_4096_characters_arrives_as_several_messages_in_order() {
    let long: Vec<String> = (0..60)
        .map(|i| {
            format!(
                "Paragraph {i:02}: {}",
                "lorem ipsum dolor sit amet ".repeat(8)
            )
        })
        .collect();
    let text = long.join("\n\n");
    let w = World::new(Reply::Text(text.clone()), true).await;
    let bus = w.bus().await;
    let _gw = w.gateway(&[]).await;

    let (_, message_id) = w.tg.push_text(ADA, "ada", "tell me a lot");
    // ~13 000 characters: at least four messages.
    let expected = gateway_telegram::format::render(&text).len();
    assert!(expected >= 4, "{expected}");
    w.replies(ADA, expected).await;
    settle(&bus).await;
    let sent = w.tg.sent_to(ADA);
    assert_eq!(sent.len(), expected);
    assert!(
        sent[1..].iter().all(|s| s.reply_to.is_none()),
        "only the first part quotes"
    );
    assert!(w.tg.rejected().is_empty(), "{:?}", w.tg.rejected());
    assert_eq!(sent[0].reply_to, Some(message_id));
    let joined: String = sent
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    let mut from = 0;
    for i in 0..60 {
        let marker = format!("Paragraph {i:02}:");
        let at = joined[from..]
            .find(&marker)
            .unwrap_or_else(|| panic!("{marker} missing or out of order"));
        from += at + marker.len();
    }
    for s in &sent {
        assert!(s.text.encode_utf16().count() <= 4096);
        assert_eq!(s.parse_mode.as_deref(), Some("HTML"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_in_the_middle_of_a_long_reply_does_not_send_its_first_part_again() {
    let text = (0..30)
        .map(|i| format!("Section {i:02}: {}", "words to fill the message ".repeat(8)))
        .collect::<Vec<_>>()
        .join("\n\n");
    let parts = gateway_telegram::format::render(&text).len();
    assert!(parts >= 2, "{parts}");
    let w = World::new(Reply::Text("unused".into()), false).await;
    let bus = w.bus().await;
    let gw = w.gateway(&[]).await;

    // The first part goes out, then Telegram rate-limits the rest.
    w.tg.rate_limit_after(1, 1_000);
    bus.publish_outbound(
        &outbound_message("reply:test:long", ADA, &text),
        &TraceContext::new_root(),
    )
    .await
    .unwrap();
    eventually(
        "the first part sent and the second refused",
        WAIT,
        || async { (w.tg.sent_to(ADA).len() == 1 && w.tg.limited() > 0).then_some(()) },
    )
    .await;
    gw.kill().await;
    w.tg.rate_limit_after(0, 0);

    let _gw = w.gateway(&[]).await;
    let sent = w.replies(ADA, parts).await;
    settle(&bus).await;
    let sent_now = w.tg.sent_to(ADA);
    assert_eq!(sent_now.len(), parts, "a part was sent twice or lost");
    assert!(sent[0].text.starts_with("Section 00:"), "{}", sent[0].text);
    assert!(
        !sent[1].text.contains("Section 00:"),
        "the first part again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_wait_in_n_outbound_while_the_gateway_is_down() {
    let mut w = World::new(Reply::Text("you were away".into()), true).await;
    let bus = w.bus().await;
    let stack = w.stack.as_mut().unwrap();
    let agent = stack.agent.take().unwrap();
    assert!(agent.terminate(Duration::from_secs(30)).await.success());

    let gw = w.gateway(&[]).await;
    let (_, message_id) = w.tg.push_text(ADA, "ada", "answer me later");
    eventually("the message to be stored", WAIT, || async {
        (inbound(&bus).await.len() == 1).then_some(())
    })
    .await;
    assert!(
        gw.terminate(Duration::from_secs(30)).await.success(),
        "SIGTERM must exit 0"
    );

    let stack = w.stack.as_mut().unwrap();
    stack.agent = Some(stack.spawn("agent-core"));
    eventually("the reply to wait in N_OUTBOUND", WAIT, || async {
        (outbound_count(&bus).await == 1).then_some(())
    })
    .await;
    assert!(w.tg.sent_to(ADA).is_empty(), "nobody could have sent it");

    let _gw = w.gateway(&[]).await;
    let sent = w.replies(ADA, 1).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].text, "you were away");
    assert_eq!(sent[0].reply_to, Some(message_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_photo_is_stored_in_the_object_store_and_referenced_by_the_inbound_message() {
    let w = World::new(Reply::Text("nice picture".into()), true).await;
    let bus = w.bus().await;
    let _gw = w.gateway(&[]).await;

    let photo: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let (_, message_id) = w.tg.push_photo(ADA, "ada", "look at this", &photo);
    let sent = w.replies(ADA, 1).await;
    assert_eq!(sent[0].reply_to, Some(message_id));

    let inbound = inbound(&bus).await;
    assert_eq!(inbound.len(), 1);
    assert_eq!(
        inbound[0].text, "look at this",
        "the caption becomes the text"
    );
    assert_eq!(inbound[0].media.len(), 1);
    let media = &inbound[0].media[0];
    assert_eq!(media.kind, media_ref::Kind::Image as i32);
    assert_eq!(media.caption, "look at this");
    let stored = bus.get_media(media, 1 << 20).await.unwrap();
    assert_eq!(stored, photo, "the largest size is stored");
    assert!(
        user_messages(&w.llm.requests()[0])
            .iter()
            .any(|m| m.contains("look at this"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_offset_moves_past_an_update_only_after_jetstream_stored_it() {
    let w = World::new(Reply::Text("unused".into()), false).await;
    let bus = w.bus().await;
    let _gw = w.gateway(&[]).await;

    // Without its stream, JetStream cannot store the message.
    bus.jetstream()
        .delete_stream(bus.subjects().inbound_stream())
        .await
        .unwrap();
    let (update_id, message_id) = w.tg.push_text(ADA, "ada", "store me");
    eventually("the update to be fetched again", WAIT, || async {
        (w.tg.deliveries(update_id) >= 2).then_some(())
    })
    .await;
    assert!(
        w.tg.confirmed_offset() <= update_id,
        "confirmed before it was stored"
    );

    bus.ensure_streams().await.unwrap();
    eventually("the update to be confirmed once stored", WAIT, || async {
        (w.tg.confirmed_offset() > update_id).then_some(())
    })
    .await;
    let inbound = inbound(&bus).await;
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].upstream_id, format!("{ADA}:{message_id}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn start_and_help_are_answered_locally_and_new_goes_to_the_agent() {
    let w = World::new(Reply::Text("unused".into()), false).await;
    let bus = w.bus().await;
    let _gw = w.gateway(&[]).await;

    w.tg.push_text(ADA, "ada", "/start");
    let help = w.replies(ADA, 1).await;
    assert!(help[0].text.contains("/new"), "{}", help[0].text);
    let (help_update, _) = w.tg.push_text(ADA, "ada", "/help");
    w.replies(ADA, 2).await;
    eventually("/help to be confirmed", WAIT, || async {
        (w.tg.confirmed_offset() > help_update).then_some(())
    })
    .await;
    assert!(
        inbound(&bus).await.is_empty(),
        "commands answered locally start no turn"
    );

    w.tg.push_text(ADA, "ada", "/new");
    let inbound = eventually("/new to reach the agent", WAIT, || async {
        let i = inbound(&bus).await;
        (!i.is_empty()).then_some(i)
    })
    .await;
    assert_eq!(inbound[0].text, "/new");
}

/// A minimal HTTP/1.1 POST; returns the status code.
async fn post(addr: &str, path: &str, secret: Option<&str>, body: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let secret = secret
        .map(|s| format!("X-Telegram-Bot-Api-Secret-Token: {s}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{secret}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_updates_need_the_secret_and_get_200_only_once_stored() {
    let w = World::new(Reply::Text("unused".into()), false).await;
    let bus = w.bus().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let listen = addr.clone();
    let gw = ServiceProcess::spawn(
        "gateway-telegram",
        &[],
        &w.env(&[
            ("NEXUS__CHANNELS__TELEGRAM__MODE", "webhook"),
            ("NEXUS__CHANNELS__TELEGRAM__LISTEN", &listen),
            (
                "NEXUS__CHANNELS__TELEGRAM__WEBHOOK_SECRET",
                "s3cret-Token_1",
            ),
        ]),
    );
    eventually("the webhook to listen", WAIT, || async {
        tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
    })
    .await;

    let update = serde_json::json!({"update_id": 1, "message": {
        "message_id": 31, "date": 1_700_000_000,
        "chat": {"id": ADA, "type": "private", "first_name": "Ada"},
        "from": fake_telegram::user(ADA, "ada"),
        "text": "via webhook"
    }})
    .to_string();
    let path = "/telegram/webhook";
    assert_eq!(post(&addr, path, None, &update).await, 401);
    assert_eq!(
        post(&addr, path, Some("s3cret-Token_2"), &update).await,
        401
    );
    assert_eq!(post(&addr, path, Some("s3cret"), &update).await, 401);
    assert!(
        inbound(&bus).await.is_empty(),
        "unauthenticated updates were stored"
    );

    assert_eq!(
        post(&addr, path, Some("s3cret-Token_1"), &update).await,
        200
    );
    let stored = inbound(&bus).await;
    assert_eq!(stored.len(), 1, "200 came before the message was stored");
    assert_eq!(stored[0].text, "via webhook");
    // Telegram retries the same update: still one message.
    assert_eq!(
        post(&addr, path, Some("s3cret-Token_1"), &update).await,
        200
    );
    assert_eq!(inbound(&bus).await.len(), 1);
    assert_eq!(w.tg.get_updates_calls(), 0, "webhook mode must not poll");
    assert!(gw.terminate(Duration::from_secs(30)).await.success());
}

fn outbound_message(id: &str, chat: i64, text: &str) -> OutboundMessage {
    OutboundMessage {
        id: id.to_owned(),
        channel: "telegram".into(),
        chat: Some(ChatRef {
            chat_id: chat.to_string(),
            ..Default::default()
        }),
        recipient_id: chat.to_string(),
        text: text.to_owned(),
        kind: OutboundKind::Reply as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn media_goes_out_from_the_object_store_and_rate_limits_are_waited_out() {
    let w = World::new(Reply::Text("unused".into()), false).await;
    let bus = w.bus().await;
    let _gw = w.gateway(&[]).await;

    let chart: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
    let media = bus
        .put_media(
            "test/chart",
            media_ref::Kind::Image,
            "image/png",
            "chart.png",
            "the chart",
            &chart,
        )
        .await
        .unwrap();
    let mut reply = outbound_message("reply:test:1", ADA, "Here is the chart.");
    reply.media.push(media);
    w.tg.rate_limit(1);
    bus.publish_outbound(&reply, &TraceContext::new_root())
        .await
        .unwrap();

    let sent = w.replies(ADA, 2).await;
    assert_eq!(sent[0].method, "sendmessage");
    assert_eq!(sent[0].text, "Here is the chart.");
    assert_eq!(sent[1].method, "sendphoto");
    assert_eq!(sent[1].text, "the chart");
    assert_eq!(sent[1].file.as_ref().unwrap().1, chart);
    settle(&bus).await;
    assert_eq!(
        w.tg.sent_to(ADA).len(),
        2,
        "a rate-limited reply is sent once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_to_a_chat_that_blocked_the_bot_is_dead_lettered_at_once() {
    let w = World::new(Reply::Text("unused".into()), false).await;
    let bus = w.bus().await;
    let _gw = w.gateway(&[]).await;
    w.tg.block_chat(666);

    let reply = outbound_message("reply:test:blocked", 666, "you blocked me");
    bus.publish_outbound(&reply, &TraceContext::new_root())
        .await
        .unwrap();
    let s = bus.subjects();
    let dead = eventually("the dead letter", WAIT, || async {
        let d: Vec<DeadLetter> =
            stream_messages(&bus, &s.deadletter_stream(), s.deadletter()).await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].deliveries, 1, "a permanent refusal is not retried");
    assert!(dead[0].reason.contains("blocked"), "{}", dead[0].reason);
    assert!(w.tg.sent_to(666).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_token_is_a_clear_error_and_exit_code_1() {
    let test = TestEnv::new();
    let out = tokio::process::Command::new(nexus_testkit::bin_path("gateway-telegram"))
        .env_clear()
        .envs(test.process_env())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TELEGRAM_BOT_TOKEN"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_sent_just_before_nats_dies_is_not_sent_again_when_nats_returns() {
    // NATS of our own, killed at the worst moment: Telegram has the reply, and what
    // the gateway writes next (the record of it, the ack) is lost with the server.
    // The gateway reaches NATS through a proxy that swallows those bytes, as a
    // socket to a dying server does; the other services connect directly.
    let mut nats = NatsServer::start().await;
    let proxy = TcpProxy::start(nats.url().trim_start_matches("nats://")).await;
    let w = World::on(
        TestEnv::with_nats(nats.url()),
        Reply::Text("noted".into()),
        true,
    )
    .await;
    let gw = w.gateway(&[("NATS_URL", &proxy.nats_url())]).await;
    let kill = nats.killer();
    let swallow = {
        let state = Arc::new(proxy);
        let hook = state.clone();
        w.tg.after_next_send(move || {
            hook.black_hole();
            kill();
        });
        state
    };

    let (_, first) = w.tg.push_text(ADA, "ada", "first");
    w.replies(ADA, 1).await;
    // Down longer than a publish waits for its ack, so the gateway's writes fail.
    tokio::time::sleep(Duration::from_secs(8)).await;
    nats.restart().await;
    swallow.restore();

    // Replies go out one at a time, in order: the second comes only after the first
    // is settled, so a resend of the first would show up before it.
    let (_, second) = w.tg.push_text(ADA, "ada", "second");
    eventually("the reply to the second message", WAIT, || async {
        let sent = w.tg.sent_to(ADA);
        sent.iter()
            .any(|s| s.reply_to == Some(second))
            .then_some(())
    })
    .await;
    settle(&w.bus().await).await;
    let replies: Vec<Option<i64>> = w.tg.sent_to(ADA).iter().map(|s| s.reply_to).collect();
    assert_eq!(
        replies,
        vec![Some(first), Some(second)],
        "each message answered once, in order"
    );
    assert!(gw.terminate(Duration::from_secs(30)).await.success());
    assert_eq!(w.tg.sent_to(ADA).len(), 2);
}
