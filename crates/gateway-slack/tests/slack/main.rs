//! gateway-slack end to end: the built binaries as processes over real NATS, a fake
//! Slack (Web API, files, Socket Mode) and a fake OpenAI on loopback. Requests to the
//! Events API are signed here with Slack's algorithm, independently of the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_slack;
mod pairing;

use std::time::Duration;

use bytes::Bytes;
use fake_slack::{APP_TOKEN, BOT_TOKEN, BOT_USER, Failure, FakeSlack};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use nexus_bus::{Bus, TraceContext};
use nexus_proto::v1::{ChatRef, InboundMessage, OutboundKind, OutboundMessage, media_ref};
use nexus_testkit::{
    ServiceProcess, Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
};
use prost::Message as _;
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "test-signing-secret-0000";
const ALLOWED: &str = "UALLOWED";
const WAIT: Duration = Duration::from_secs(60);

/// Extra request headers.
type Headers = Vec<(&'static str, String)>;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Slack's signature, computed here rather than with the gateway's code.
fn slack_signature(secret: &str, ts: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A DM `message.im` event_callback as Slack sends it.
fn dm(event_id: &str, user: &str, text: &str, ts: &str) -> Value {
    json!({
        "token": "legacy-verification-token",
        "team_id": "T1",
        "api_app_id": "A1",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": now_secs(),
        "event": {
            "type": "message", "channel": "D123", "channel_type": "im", "user": user,
            "text": text, "ts": ts, "event_ts": ts, "client_msg_id": format!("c-{event_id}")
        },
        "authorizations": [{"team_id": "T1", "user_id": BOT_USER, "is_bot": true}]
    })
}

/// An `app_mention` in a public channel.
fn mention(event_id: &str, user: &str, text: &str, ts: &str) -> Value {
    json!({
        "team_id": "T1",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": now_secs(),
        "event": {
            "type": "app_mention", "channel": "C777", "user": user,
            "text": format!("<@{BOT_USER}> {text}"), "ts": ts, "event_ts": ts
        },
        "authorizations": [{"team_id": "T1", "user_id": BOT_USER, "is_bot": true}]
    })
}

/// One test's world: NATS namespace, fake Slack, fake LLM, optionally the core services.
struct World {
    test: TestEnv,
    slack: FakeSlack,
    llm: FakeOpenAi,
    stack: Option<Stack>,
    port: u16,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    bus: Bus,
}

impl World {
    /// With agent-core, memory-svc and tool-runner running.
    async fn with_stack(reply: Reply) -> Self {
        let mut w = Self::bare(reply).await;
        let env = w.llm.env();
        let env: Vec<_> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.stack = Some(Stack::start(&w.test, &env).await);
        w
    }

    /// NATS and the fakes only: enough for intake and delivery on their own.
    async fn bare(reply: Reply) -> Self {
        let test = TestEnv::new();
        let bus = test.bus("slack-test").await;
        Self {
            slack: FakeSlack::start().await,
            llm: FakeOpenAi::start(reply).await,
            stack: None,
            port: free_port(),
            http: Client::builder(TokioExecutor::new()).build_http(),
            bus,
            test,
        }
    }

    fn gateway_env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = match &self.stack {
            Some(s) => s.env().to_vec(),
            None => self.test.process_env(),
        };
        for (k, v) in [
            ("SLACK_BOT_TOKEN", BOT_TOKEN.to_owned()),
            ("SLACK_SIGNING_SECRET", SECRET.to_owned()),
            ("SLACK_API_URL", self.slack.api_url()),
            (
                "NEXUS__CHANNELS__SLACK__LISTEN",
                format!("127.0.0.1:{}", self.port),
            ),
            ("NEXUS__CHANNELS__SLACK__ALLOW_FROM", ALLOWED.to_owned()),
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

    /// Starts gateway-slack and waits until `/healthz` answers.
    async fn gateway(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut gw = ServiceProcess::spawn("gateway-slack", &[], &self.gateway_env(extra));
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.get("/healthz").await != Some(200) {
            if let Some(status) = gw.try_status() {
                panic!("gateway-slack exited early with {status} (TEST_LOG=1 shows why)");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway-slack did not answer /healthz within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gw
    }

    async fn get(&self, path: &str) -> Option<u16> {
        let req = axum::http::Request::get(format!("http://127.0.0.1:{}{path}", self.port))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.http.request(req).await.ok()?;
        Some(resp.status().as_u16())
    }

    /// POSTs raw bytes to `/slack/events` with the given headers.
    async fn post_raw(&self, body: &[u8], headers: &[(&str, String)]) -> (u16, String) {
        let mut req =
            axum::http::Request::post(format!("http://127.0.0.1:{}/slack/events", self.port))
                .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = self
            .http
            .request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// POSTs an event signed now with the right secret; `retry` sets X-Slack-Retry-Num.
    async fn post_event(&self, event: &Value, retry: Option<u32>) -> (u16, String) {
        let body = event.to_string();
        let ts = now_secs().to_string();
        let mut headers = vec![
            ("x-slack-request-timestamp", ts.clone()),
            (
                "x-slack-signature",
                slack_signature(SECRET, &ts, body.as_bytes()),
            ),
        ];
        if let Some(n) = retry {
            headers.push(("x-slack-retry-num", n.to_string()));
            headers.push(("x-slack-retry-reason", "http_timeout".to_owned()));
        }
        self.post_raw(body.as_bytes(), &headers).await
    }

    async fn stream_count(&self, stream: String) -> u64 {
        let mut s = self.bus.jetstream().get_stream(&stream).await.unwrap();
        s.info().await.unwrap().state.messages
    }

    async fn inbound_count(&self) -> u64 {
        self.stream_count(self.bus.subjects().inbound_stream())
            .await
    }

    async fn outbound_count(&self) -> u64 {
        self.stream_count(self.bus.subjects().outbound_stream())
            .await
    }

    async fn inbound(&self, seq: u64) -> InboundMessage {
        let s = self
            .bus
            .jetstream()
            .get_stream(self.bus.subjects().inbound_stream())
            .await
            .unwrap();
        let raw = s.get_raw_message(seq).await.unwrap();
        InboundMessage::decode(raw.payload).unwrap()
    }

    async fn wait_posts(&self, n: usize) -> Vec<Value> {
        eventually(&format!("{n} chat.postMessage calls"), WAIT, || async {
            let posts = self.slack.posts();
            (posts.len() >= n).then_some(posts)
        })
        .await
    }

    /// Sends a fresh DM from the allowed user and waits for its answer: everything
    /// sent before it has then had every chance to start a turn.
    async fn barrier(&self, expected_posts: usize) -> Vec<Value> {
        let (status, _) = self
            .post_event(
                &dm("EvBarrier", ALLOWED, "barrier", "1700000999.000100"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        self.wait_posts(expected_posts).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_direct_message_is_answered_once_in_its_thread() {
    let w = World::with_stack(Reply::Text(
        "**Hello** from [Nexus](https://nexus.example) & co".into(),
    ))
    .await;
    let gw = w.gateway(&[]).await;

    let (status, _) = w
        .post_event(
            &dm(
                "Ev0001",
                ALLOWED,
                "hi <@UBOT> &amp; you",
                "1700000000.000100",
            ),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // Slack's 200 came only after JetStream stored the message.
    assert_eq!(w.inbound_count().await, 1);
    let stored = w.inbound(1).await;
    assert_eq!(stored.id, "slack:Ev0001");
    assert_eq!(stored.text, "hi & you");
    let chat = stored.chat.unwrap();
    assert_eq!(
        (
            chat.chat_id.as_str(),
            chat.thread_id.as_str(),
            chat.is_group
        ),
        ("D123", "1700000000.000100", false)
    );
    assert_eq!(stored.sender.unwrap().id, ALLOWED);

    let posts = w.wait_posts(1).await;
    assert_eq!(posts[0]["channel"], "D123");
    assert_eq!(posts[0]["thread_ts"], "1700000000.000100");
    assert_eq!(
        posts[0]["text"],
        "*Hello* from <https://nexus.example|Nexus> &amp; co"
    );
    assert_eq!(w.llm.requests().len(), 1);
    // The message got the "received" reaction, once.
    let reactions = w.slack.calls("reactions.add");
    assert_eq!(reactions.len(), 1, "{reactions:?}");
    assert_eq!(
        (
            &reactions[0].body["channel"],
            &reactions[0].body["timestamp"],
            &reactions[0].body["name"]
        ),
        (&json!("D123"), &json!("1700000000.000100"), &json!("eyes"))
    );

    // Graceful stop: SIGTERM ends the gateway with status 0.
    assert!(gw.terminate(Duration::from_secs(30)).await.success());
    assert_eq!(w.slack.posts().len(), 1, "exactly one reply");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_forged_and_stale_requests_are_refused_and_start_no_turn() {
    let w = World::with_stack(Reply::Text("answer".into())).await;
    let _gw = w.gateway(&[]).await;
    let body = dm("EvForged", ALLOWED, "let me in", "1700000001.000100").to_string();
    let now = now_secs();
    let signed = |secret: &str, ts: i64, body: &str| {
        vec![
            ("x-slack-request-timestamp", ts.to_string()),
            (
                "x-slack-signature",
                slack_signature(secret, &ts.to_string(), body.as_bytes()),
            ),
        ]
    };

    let cases: Vec<(&str, Headers, String)> = vec![
        ("no signature", vec![], body.clone()),
        (
            "wrong secret",
            signed("not-the-secret", now, &body),
            body.clone(),
        ),
        (
            "stale timestamp",
            signed(SECRET, now - 301, &body),
            body.clone(),
        ),
        (
            "future timestamp",
            signed(SECRET, now + 301, &body),
            body.clone(),
        ),
        (
            "body changed after signing",
            signed(SECRET, now, &body),
            body.replace("let me in", "let me In"),
        ),
        (
            "garbage signature",
            vec![
                ("x-slack-request-timestamp", now.to_string()),
                ("x-slack-signature", "v0=nothex".to_owned()),
            ],
            body.clone(),
        ),
    ];
    for (what, headers, body) in cases {
        let (status, _) = w.post_raw(body.as_bytes(), &headers).await;
        assert_eq!(status, 401, "{what}");
    }
    assert_eq!(w.inbound_count().await, 0);

    let posts = w.barrier(1).await;
    assert_eq!(posts.len(), 1);
    assert_eq!(
        w.llm.requests().len(),
        1,
        "only the signed message started a turn"
    );
    assert_eq!(w.inbound_count().await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_event_starts_one_turn_and_gets_one_reply() {
    let w = World::with_stack(Reply::Text("once".into())).await;
    let _gw = w.gateway(&[]).await;
    let event = dm("EvRetry", ALLOWED, "are you there?", "1700000002.000100");
    for retry in [None, Some(1), Some(2), Some(3)] {
        let (status, _) = w.post_event(&event, retry).await;
        assert_eq!(status, 200, "retry {retry:?}");
    }
    assert_eq!(w.inbound_count().await, 1);

    let posts = w.barrier(2).await;
    assert_eq!(
        w.llm.requests().len(),
        2,
        "one turn each for the retried and the barrier message"
    );
    assert_eq!(posts.len(), 2);
    assert_eq!(
        posts
            .iter()
            .filter(|p| p["thread_ts"] == "1700000002.000100")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn url_verification_is_answered_with_the_challenge_and_oversized_bodies_are_refused() {
    let w = World::bare(Reply::Text("unused".into())).await;
    let _gw = w
        .gateway(&[("NEXUS__CHANNELS__SLACK__MAX_BODY_BYTES", "4096")])
        .await;
    let challenge = json!({
        "token": "legacy", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
        "type": "url_verification"
    });
    let (status, body) = w.post_event(&challenge, None).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );

    let (status, _) = w.post_raw(challenge.to_string().as_bytes(), &[]).await;
    assert_eq!(status, 401, "an unsigned challenge is not answered");

    let huge = dm("EvHuge", ALLOWED, &"x".repeat(8000), "1700000003.000100");
    let (status, _) = w.post_event(&huge, None).await;
    assert_eq!(status, 413);
    assert_eq!(w.inbound_count().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_not_on_the_allow_list_gets_one_notice_with_their_id_and_no_turn() {
    let w = World::with_stack(Reply::Text("for allowed users only".into())).await;
    let _gw = w.gateway(&[]).await;
    for (id, ts) in [
        ("EvDenied1", "1700000010.000100"),
        ("EvDenied2", "1700000011.000100"),
    ] {
        let (status, _) = w.post_event(&dm(id, "UDENIED", "hello?", ts), None).await;
        assert_eq!(status, 200);
    }
    // In a channel the notice is ephemeral: only the sender sees it.
    let (status, _) = w
        .post_event(
            &mention("EvDenied3", "UDENIED2", "hi", "1700000012.000100"),
            None,
        )
        .await;
    assert_eq!(status, 200);

    let posts = w.barrier(2).await;
    let notices: Vec<&Value> = posts
        .iter()
        .filter(|p| p["text"].as_str().unwrap_or("").contains("UDENIED"))
        .collect();
    assert_eq!(notices.len(), 1, "one notice for two messages: {posts:?}");
    assert_eq!(notices[0]["channel"], "D123");
    let ephemeral = eventually("the ephemeral notice", WAIT, || async {
        let calls = w.slack.calls("chat.postEphemeral");
        (!calls.is_empty()).then_some(calls)
    })
    .await;
    assert_eq!(ephemeral.len(), 1);
    assert_eq!(ephemeral[0].body["user"], "UDENIED2");
    assert_eq!(ephemeral[0].body["channel"], "C777");
    assert!(
        ephemeral[0].body["text"]
            .as_str()
            .unwrap()
            .contains("UDENIED2")
    );

    assert_eq!(
        w.llm.requests().len(),
        1,
        "only the allowed sender started a turn"
    );
    assert_eq!(w.inbound_count().await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_waits_in_n_outbound_while_the_gateway_is_down_and_is_posted_when_it_returns() {
    let mut w = World::with_stack(Reply::Text("worth the wait".into())).await;
    let gw = w.gateway(&[]).await;
    // agent-core is stopped so the reply can only be produced after the gateway is gone.
    let agent = w.stack.as_mut().unwrap().agent.take().unwrap();
    assert!(agent.terminate(Duration::from_secs(30)).await.success());

    let (status, _) = w
        .post_event(
            &dm("EvWait", ALLOWED, "answer later", "1700000020.000100"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        gw.terminate(Duration::from_secs(30)).await.success(),
        "SIGTERM exits 0"
    );

    let stack = w.stack.as_mut().unwrap();
    stack.agent = Some(stack.spawn("agent-core"));
    eventually("the reply in N_OUTBOUND", WAIT, || async {
        (w.outbound_count().await >= 1).then_some(())
    })
    .await;
    assert!(w.slack.posts().is_empty(), "nobody could have posted it");

    let _gw = w.gateway(&[]).await;
    let posts = w.wait_posts(1).await;
    assert_eq!(posts[0]["text"], "worth the wait");
    assert_eq!(posts[0]["thread_ts"], "1700000020.000100");
}

#[tokio::test(flavor = "multi_thread")]
async fn intake_that_cannot_store_answers_500_so_slack_retries() {
    let w = World::bare(Reply::Text("unused".into())).await;
    let _gw = w.gateway(&[]).await;
    w.bus
        .jetstream()
        .delete_stream(w.bus.subjects().inbound_stream())
        .await
        .unwrap();

    let event = dm("EvLost", ALLOWED, "do not lose me", "1700000030.000100");
    let (status, _) = w.post_event(&event, None).await;
    assert_eq!(status, 500, "no 200 without a PubAck");

    w.bus.ensure_streams().await.unwrap();
    let (status, _) = w.post_event(&event, Some(1)).await;
    assert_eq!(status, 200);
    assert_eq!(w.inbound_count().await, 1);
    assert_eq!(w.inbound(1).await.id, "slack:EvLost");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attached_file_is_downloaded_with_the_bot_token_and_referenced_by_the_message() {
    let w = World::bare(Reply::Text("unused".into())).await;
    let _gw = w.gateway(&[]).await;
    let url = w.slack.serve_file("report.txt", b"quarterly numbers: 42");
    let mut event = dm("EvFile", ALLOWED, "see attached", "1700000040.000100");
    event["event"]["subtype"] = json!("file_share");
    event["event"]["files"] = json!([{
        "id": "F42", "name": "report.txt", "title": "Report", "mimetype": "text/plain",
        "size": 21, "url_private": url, "url_private_download": url
    }, {
        "id": "F43", "name": "gone.txt", "mimetype": "text/plain", "size": 3,
        "url_private_download": w.slack.serve_file("gone.txt", b"x").replace("gone", "missing")
    }]);
    let (status, _) = w.post_event(&event, None).await;
    assert_eq!(status, 200);

    let msg = w.inbound(1).await;
    assert_eq!(msg.media.len(), 1, "{msg:?}");
    let media = &msg.media[0];
    assert_eq!(media.kind, media_ref::Kind::Document as i32);
    assert_eq!(media.file_name, "report.txt");
    assert_eq!(media.mime_type, "text/plain");
    let bytes = w.bus.get_media(media, 1024).await.unwrap();
    assert_eq!(bytes, b"quarterly numbers: 42");
    assert!(
        msg.text.starts_with("see attached") && msg.text.contains("gone.txt could not be fetched"),
        "{}",
        msg.text
    );
}

fn reply(id: &str, text: &str, thread: &str) -> OutboundMessage {
    OutboundMessage {
        id: id.to_owned(),
        channel: "slack".into(),
        chat: Some(ChatRef {
            chat_id: "C900".into(),
            thread_id: thread.into(),
            is_group: true,
        }),
        recipient_id: ALLOWED.into(),
        text: text.into(),
        kind: OutboundKind::Reply as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_rate_limited_reply_is_split_and_each_part_posted_once() {
    let w = World::bare(Reply::Text("unused".into())).await;
    let _gw = w
        .gateway(&[("NEXUS__CHANNELS__SLACK__CHUNK_CHARS", "120")])
        .await;
    // The second part hits a rate limit (429, Retry-After: 1); the retry must not
    // repost the first.
    w.slack
        .fail_next_posts([Failure::Pass, Failure::RateLimited(1)]);
    let paragraphs: Vec<String> = ["alpha", "bravo", "charlie"]
        .iter()
        .map(|w| format!("{w} ").repeat(15).trim().to_owned())
        .collect();
    let text = paragraphs.join("\n\n");
    w.bus
        .publish_outbound(
            &reply("reply:slack:EvLong", &text, "1700000050.000100"),
            &TraceContext::new_root(),
        )
        .await
        .unwrap();
    let posts = w.wait_posts(3).await;
    let texts: Vec<&str> = posts.iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert!(texts.iter().all(|t| t.chars().count() <= 120), "{texts:?}");
    assert!(
        texts[0].starts_with("alpha")
            && texts[1].starts_with("bravo")
            && texts[2].starts_with("charlie"),
        "{texts:?}"
    );
    assert!(posts.iter().all(|p| p["thread_ts"] == "1700000050.000100"));
    assert_eq!(
        w.slack.calls("chat.postMessage").len(),
        4,
        "three parts and one refused try"
    );
    // Give a spurious repost the chance to show up behind a later reply.
    w.bus
        .publish_outbound(
            &reply("reply:slack:EvAfter", "after", "1700000051.000100"),
            &TraceContext::new_root(),
        )
        .await
        .unwrap();
    let posts = w.wait_posts(4).await;
    assert_eq!(posts.len(), 4, "{posts:?}");
    assert_eq!(posts[3]["text"], "after");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_slack_refuses_for_good_is_dead_lettered_and_the_next_one_delivered() {
    let w = World::bare(Reply::Text("unused".into())).await;
    let _gw = w.gateway(&[]).await;
    w.slack
        .fail_next_posts([Failure::Error("channel_not_found")]);
    for (id, text) in [
        ("reply:slack:EvGone", "to nowhere"),
        ("reply:slack:EvOk", "delivered"),
    ] {
        w.bus
            .publish_outbound(
                &reply(id, text, "1700000060.000100"),
                &TraceContext::new_root(),
            )
            .await
            .unwrap();
    }
    let posts = w.wait_posts(1).await;
    assert_eq!(posts[0]["text"], "delivered");
    eventually("the dead letter", WAIT, || async {
        let mut s = w
            .bus
            .jetstream()
            .get_stream(w.bus.subjects().deadletter_stream())
            .await
            .ok()?;
        (s.info().await.ok()?.state.messages == 1).then_some(())
    })
    .await;
    assert_eq!(
        w.slack.calls("chat.postMessage").len(),
        2,
        "channel_not_found is not retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_with_a_file_is_uploaded_into_the_thread() {
    let w = World::bare(Reply::Text("unused".into())).await;
    let _gw = w.gateway(&[]).await;
    let media = w
        .bus
        .put_media(
            "out/chart.png",
            media_ref::Kind::Image,
            "image/png",
            "chart.png",
            "The chart",
            b"\x89PNG fake",
        )
        .await
        .unwrap();
    let mut msg = reply(
        "reply:slack:EvChart",
        "Here is the chart.",
        "1700000070.000100",
    );
    msg.media = vec![media];
    w.bus
        .publish_outbound(&msg, &TraceContext::new_root())
        .await
        .unwrap();

    let complete = eventually("files.completeUploadExternal", WAIT, || async {
        let calls = w.slack.calls("files.completeUploadExternal");
        (!calls.is_empty()).then_some(calls)
    })
    .await;
    assert_eq!(complete.len(), 1);
    let body = &complete[0].body;
    assert_eq!(body["channel_id"], "C900");
    assert_eq!(body["thread_ts"], "1700000070.000100");
    assert_eq!(body["files"][0]["title"], "The chart");
    let file_id = body["files"][0]["id"].as_str().unwrap();
    assert_eq!(w.slack.uploads()[file_id], b"\x89PNG fake");
    let asked = w.slack.calls("files.getUploadURLExternal");
    assert_eq!(asked[0].body["filename"], "chart.png");
    assert_eq!(asked[0].body["length"], "9");
    let posts = w.slack.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0]["text"], "Here is the chart.");
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_mode_acknowledges_each_envelope_after_intake_and_replies_once() {
    let w = World::with_stack(Reply::Text("over the socket".into())).await;
    let gw = w
        .gateway(&[
            ("SLACK_APP_TOKEN", APP_TOKEN),
            ("SLACK_SIGNING_SECRET", ""),
            ("NEXUS__CHANNELS__SLACK__MODE", "socket"),
        ])
        .await;
    eventually("the Socket Mode connection", WAIT, || async {
        (w.slack.socket_connections() >= 1).then_some(())
    })
    .await;
    // In Socket Mode the HTTP events endpoint is not served.
    let (status, _) = w
        .post_event(&dm("EvHttp", ALLOWED, "x", "1700000080.000100"), None)
        .await;
    assert_eq!(status, 404);

    let envelope = |retry: u32| {
        json!({
            "envelope_id": format!("env-{retry}"),
            "type": "events_api",
            "accepts_response_payload": false,
            "retry_attempt": retry,
            "retry_reason": if retry == 0 { "" } else { "timeout" },
            "payload": dm("EvSock", ALLOWED, "via socket", "1700000081.000100"),
        })
    };
    assert!(w.slack.push(&envelope(0)));
    eventually("the ack of env-0", WAIT, || async {
        w.slack.acks().contains(&"env-0".to_owned()).then_some(())
    })
    .await;
    assert_eq!(w.inbound_count().await, 1, "acknowledged only once stored");

    assert!(w.slack.push(&envelope(1)));
    eventually("the ack of env-1", WAIT, || async {
        w.slack.acks().contains(&"env-1".to_owned()).then_some(())
    })
    .await;
    assert_eq!(
        w.inbound_count().await,
        1,
        "a redelivered envelope is not stored twice"
    );

    let posts = w.wait_posts(1).await;
    assert_eq!(posts[0]["text"], "over the socket");
    assert_eq!(posts[0]["thread_ts"], "1700000081.000100");

    assert!(gw.terminate(Duration::from_secs(30)).await.success());
    assert_eq!(w.llm.requests().len(), 1);
    assert_eq!(w.slack.posts().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_credentials_stop_the_gateway_with_an_error_naming_them() {
    let test = TestEnv::new();
    let out = tokio::process::Command::new(nexus_testkit::bin_path("gateway-slack"))
        .env_clear()
        .envs(test.process_env())
        .env("SLACK_BOT_TOKEN", BOT_TOKEN)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SLACK_SIGNING_SECRET"), "{stderr}");
    assert!(
        !stderr.contains(BOT_TOKEN),
        "the token never prints: {stderr}"
    );
}
