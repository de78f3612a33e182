//! gateway-api end to end: the built `gateway-api` binary in front of real
//! agent-core, memory-svc and tool-runner processes, over the real NATS, with the
//! fake OpenAI server as the model. Clients are real: reqwest for HTTP/SSE, a tonic
//! client generated from the same proto, and async-openai for the compatible endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_openai::{
    Client as OpenAi,
    config::OpenAIConfig,
    types::chat::{
        ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
        ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
        CreateChatCompletionRequestArgs, FinishReason,
    },
};
use futures::StreamExt;
use gateway_api::proto::agent_api_client::AgentApiClient;
use nexus_bus::{Bus, Subjects, async_nats::jetstream::consumer::pull};
use nexus_common::domain::ChannelName;
use nexus_proto::{
    Message as _,
    v1::{
        InboundMessage, OutboundKind, SendRequest, ToolCalled, TurnProgress, send_event,
        turn_progress,
    },
};
use nexus_testkit::{
    NatsServer, ServiceProcess, Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
};
use serde_json::{Value, json};

mod admin;
mod browser;
mod telemetry;

const ALICE: &str = "key-alice-0123456789";
const BOB: &str = "key-bob-0123456789";
const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// One test's world: namespace, fake model, the core services.
struct World {
    test: TestEnv,
    fake: FakeOpenAi,
    stack: Stack,
}

/// A running gateway-api.
struct Api {
    process: ServiceProcess,
    http: u16,
    grpc: u16,
    client: reqwest::Client,
}

async fn spawn_world(fallback: Reply, llm_stream: bool) -> World {
    spawn_world_on(TestEnv::new(), fallback, llm_stream).await
}

async fn spawn_world_on(test: TestEnv, fallback: Reply, llm_stream: bool) -> World {
    let fake = FakeOpenAi::start(fallback).await;
    // API keys live in the test's nexus.toml (NEXUS_CONFIG of every process).
    test.write(
        ".test-nexus.toml",
        &format!("[api.keys]\n\"{ALICE}\" = \"alice\"\n\"{BOB}\" = \"bob\"\n"),
    );
    let stack = Stack::start(
        &test,
        &[
            ("OPENAI_API_KEY", "sk-test-00000000"),
            ("OPENAI_BASE_URL", &fake.base_url()),
            ("NEXUS__LLM__MODEL", "gpt-4.1-mini"),
            (
                "NEXUS__LLM__STREAM",
                if llm_stream { "true" } else { "false" },
            ),
        ],
    )
    .await;
    World { test, fake, stack }
}

impl World {
    /// Starts a gateway-api on free ports with `extra` environment, and waits until it listens.
    async fn api(&self, extra: &[(&str, &str)]) -> Api {
        let (http, grpc) = (free_port(), free_port());
        let mut env = self.stack.env().to_vec();
        env.push(("NEXUS__API__LISTEN".into(), format!("127.0.0.1:{http}")));
        env.push((
            "NEXUS__API__GRPC_LISTEN".into(),
            format!("127.0.0.1:{grpc}"),
        ));
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let process = ServiceProcess::spawn("gateway-api", &[], &env);
        let api = Api {
            process,
            http,
            grpc,
            client: reqwest::Client::new(),
        };
        eventually("gateway-api to listen", WAIT, || async {
            let r = api.client.get(api.url("/healthz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        api
    }

    async fn bus(&self) -> Bus {
        self.test.bus("test").await
    }
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    async fn post(&self, key: &str, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /v1/messages` and the JSON reply.
    async fn ask(&self, key: &str, text: &str, session: &str) -> Value {
        let r = self
            .post(
                key,
                "/v1/messages",
                json!({"text": text, "session": session}),
            )
            .await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    async fn grpc(&self) -> AgentApiClient<tonic::transport::Channel> {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", self.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap();
        AgentApiClient::new(channel)
    }

    fn openai(&self, key: &str, session: Option<&str>) -> OpenAi<OpenAIConfig> {
        let mut config = OpenAIConfig::new()
            .with_api_base(self.url("/v1"))
            .with_api_key(key);
        if let Some(s) = session {
            config = config.with_header("X-Nexus-Session", s).unwrap();
        }
        OpenAi::with_config(config)
    }
}

fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

/// Reads server-sent events from a response as `(event, data)`; comments are skipped.
struct SseReader {
    response: reqwest::Response,
    buf: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let (mut event, mut data) = (String::from("message"), Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((event, data.join("\n")));
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Every remaining event.
    async fn rest(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

/// Publishes progress for a turn as agent-core does, on `N.progress.api`.
async fn publish_progress(bus: &Bus, turn_id: &str, seq: u32, kind: turn_progress::Kind) {
    let msg = TurnProgress {
        turn_id: turn_id.to_owned(),
        session_id: String::new(),
        seq,
        kind: Some(kind),
    };
    let subject = bus.subjects().progress(&ChannelName::parse("api").unwrap());
    bus.client()
        .publish(subject, msg.encode_to_vec().into())
        .await
        .unwrap();
    bus.client().flush().await.unwrap();
}

/// The last inbound message stored for an API chat, read straight from `N_INBOUND`.
async fn stored_inbound(bus: &Bus, chat_id: &str) -> InboundMessage {
    let s = bus.subjects();
    let api = ChannelName::parse("api").unwrap();
    let subject = s.inbound_partition(&api, Subjects::partition_of("api", chat_id, ""));
    let stream = bus
        .jetstream()
        .get_stream(s.inbound_stream())
        .await
        .unwrap();
    let raw = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .expect("the accepted message is not in N_INBOUND");
    InboundMessage::decode(raw.payload).unwrap()
}

/// Whether the gateway's durable consumer has acked every reply.
async fn all_replies_acked(bus: &Bus) -> bool {
    let s = bus.subjects();
    let Ok(stream) = bus.jetstream().get_stream(s.outbound_stream()).await else {
        return false;
    };
    let name = s.gateway_consumer(&ChannelName::parse("api").unwrap());
    let Ok(mut consumer) = stream.get_consumer::<pull::Config>(&name).await else {
        return false;
    };
    let Ok(info) = consumer.info().await else {
        return false;
    };
    info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0
}

#[tokio::test]
async fn a_message_posted_over_http_gets_the_agents_reply() {
    let w = spawn_world(Reply::EchoLastUser("echo: ".into()), false).await;
    let api = w.api(&[]).await;

    let body = api.ask(ALICE, "hello there", "work").await;
    assert_eq!(body["reply"], "echo: hello there");
    assert_eq!(body["session"], "work");
    assert_eq!(body["kind"], "reply");
    assert_eq!(body["usage"]["input_tokens"], 42);
    assert_eq!(body["usage"]["output_tokens"], 7);
    assert!(
        body["turn_id"].as_str().unwrap().starts_with("api:"),
        "{body}"
    );

    // Without a session the turn goes to "default".
    let body = api.ask(ALICE, "again", "").await;
    assert_eq!(body["session"], "default");
    assert_eq!(body["reply"], "echo: again");
}

#[tokio::test]
async fn users_with_the_same_session_name_never_share_a_conversation() {
    let w = spawn_world(Reply::EchoUserMessages, false).await;
    let api = w.api(&[]).await;

    api.ask(ALICE, "apple", "default").await;
    let bob = api.ask(BOB, "banana", "default").await;
    let bob = bob["reply"].as_str().unwrap();
    assert!(bob.contains("banana") && !bob.contains("apple"), "{bob}");

    let alice = api.ask(ALICE, "cherry", "default").await;
    let alice = alice["reply"].as_str().unwrap();
    assert!(
        alice.contains("apple") && alice.contains("cherry"),
        "{alice}"
    );
    assert!(!alice.contains("banana"), "{alice}");

    // The user id of the key is the sender, and never the key itself.
    let prompts = serde_json::to_string(&w.fake.requests()).unwrap();
    assert!(!prompts.contains(ALICE) && !prompts.contains(BOB));
}

#[tokio::test]
async fn a_streamed_message_sends_progress_then_the_whole_reply() {
    // The model streams its answer, so agent-core publishes text deltas as it goes.
    let w = spawn_world(Reply::EchoLastUser("streamed answer: ".into()), true).await;
    let api = w.api(&[]).await;

    let r = api
        .post(
            ALICE,
            "/v1/messages",
            json!({"text": "tell me", "stream": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut reader = SseReader::new(r);
    let (name, accepted) = reader.next().await.unwrap();
    assert_eq!(name, "accepted");
    // `accepted` is said only once the message is stored in N_INBOUND, as this user's.
    let turn_id = serde_json::from_str::<Value>(&accepted).unwrap()["turn_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = stored_inbound(&w.bus().await, "alice:default").await;
    assert_eq!(stored.id, turn_id);
    let sender = stored.sender.unwrap();
    assert_eq!(
        (sender.id.as_str(), sender.user_id.as_str()),
        ("alice", "alice")
    );
    let mut events = vec![(name, accepted)];
    events.extend(reader.rest().await);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"accepted"), "{names:?}");
    assert_eq!(names.last(), Some(&"reply"), "{names:?}");
    let reply: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(reply["reply"], "streamed answer: tell me");
    // Whatever text streamed before the reply is the start of it.
    let streamed: String = events
        .iter()
        .filter(|(e, _)| e == "text_delta")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        !streamed.is_empty(),
        "no text_delta before the reply: {names:?}"
    );
    assert!(
        reply["reply"].as_str().unwrap().starts_with(&streamed),
        "{streamed:?}"
    );

    // Accept: text/event-stream alone asks for a stream too.
    let r = api
        .client
        .post(api.url("/v1/messages"))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .json(&json!({"text": "quietly"}))
        .send()
        .await
        .unwrap();
    let events = SseReader::new(r).rest().await;
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "reply");
    assert!(data.contains("streamed answer: quietly"), "{data}");
}

#[tokio::test]
async fn a_stream_ends_with_the_whole_reply_when_the_model_does_not_stream() {
    let w = spawn_world(Reply::EchoLastUser("whole: ".into()), false).await;
    let api = w.api(&[]).await;

    let r = api
        .post(
            ALICE,
            "/v1/messages",
            json!({"text": "in one piece", "stream": true}),
        )
        .await;
    let events = SseReader::new(r).rest().await;
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "reply", "{events:?}");
    assert!(data.contains("whole: in one piece"), "{data}");

    // The OpenAI stream carries the answer once, whether or not progress had it.
    let r = api
        .post(
            ALICE,
            "/v1/chat/completions",
            json!({"stream": true, "messages": [{"role": "user", "content": "once please"}]}),
        )
        .await;
    let events = SseReader::new(r).rest().await;
    let text: String = events
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .filter_map(|(_, d)| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "whole: once please", "{events:?}");
}

#[tokio::test]
async fn the_grpc_stream_yields_accepted_progress_and_the_reply() {
    let w = spawn_world(Reply::EchoLastUser("grpc: ".into()), false).await;
    let api = w.api(&[]).await;
    let bus = w.bus().await;
    let mut client = api.grpc().await;

    // Unary.
    let reply = client
        .send(authed(
            SendRequest {
                text: "one".into(),
                session: "g".into(),
                ..Default::default()
            },
            ALICE,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.reply, "grpc: one");
    assert_eq!(reply.session, "g");
    assert_eq!(reply.kind, OutboundKind::Reply as i32);

    // Streaming: the model takes its time, and progress for the turn is published
    // meanwhile exactly as agent-core publishes it.
    w.fake.set_delay(Duration::from_secs(3));
    let mut stream = client
        .send_stream(authed(
            SendRequest {
                text: "two".into(),
                session: "g".into(),
                ..Default::default()
            },
            ALICE,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let Some(send_event::Kind::Accepted(accepted)) = first.kind else {
        panic!("first event is not `accepted`: {first:?}");
    };
    assert_eq!(accepted.session, "g");
    publish_progress(
        &bus,
        "api:someone-else",
        1,
        turn_progress::Kind::TextDelta("not mine".into()),
    )
    .await;
    publish_progress(
        &bus,
        &accepted.turn_id,
        1,
        turn_progress::Kind::TextDelta("thinking".into()),
    )
    .await;
    publish_progress(
        &bus,
        &accepted.turn_id,
        2,
        turn_progress::Kind::Tool(ToolCalled {
            name: "read_file".into(),
            ok: true,
            ..Default::default()
        }),
    )
    .await;

    let mut kinds = Vec::new();
    while let Some(event) = stream.next().await {
        kinds.push(event.unwrap().kind.unwrap());
    }
    assert!(
        kinds.contains(&send_event::Kind::TextDelta("thinking".into())),
        "{kinds:?}"
    );
    assert!(
        !kinds.contains(&send_event::Kind::TextDelta("not mine".into())),
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, send_event::Kind::Tool(t) if t.name == "read_file")),
        "{kinds:?}"
    );
    match kinds.last() {
        Some(send_event::Kind::Reply(r)) => {
            assert_eq!(r.reply, "grpc: two");
            assert_eq!(r.turn_id, accepted.turn_id);
        }
        other => panic!("the stream did not end with the reply: {other:?}"),
    }
}

#[tokio::test]
async fn an_openai_client_gets_the_reply_whole_and_streamed() {
    let w = spawn_world(Reply::EchoLastUser("compat: ".into()), true).await;
    let api = w.api(&[]).await;

    let messages: Vec<ChatCompletionRequestMessage> = vec![
        ChatCompletionRequestSystemMessageArgs::default()
            .content("be brief")
            .build()
            .unwrap()
            .into(),
        ChatCompletionRequestUserMessageArgs::default()
            .content("an old question")
            .build()
            .unwrap()
            .into(),
        ChatCompletionRequestAssistantMessageArgs::default()
            .content("an old answer")
            .build()
            .unwrap()
            .into(),
        ChatCompletionRequestUserMessageArgs::default()
            .content("what now?")
            .build()
            .unwrap()
            .into(),
    ];
    let request = CreateChatCompletionRequestArgs::default()
        .model("nexus-agent")
        .messages(messages.clone())
        .build()
        .unwrap();
    let response = api
        .openai(ALICE, Some("compat"))
        .chat()
        .create(request)
        .await
        .unwrap();
    assert_eq!(response.object, "chat.completion");
    assert_eq!(response.model, "nexus-agent");
    let choice = &response.choices[0];
    assert_eq!(choice.message.content.as_deref(), Some("compat: what now?"));
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    // The turn's usage, as the fake provider reported it for its one call.
    let usage = response.usage.expect("usage");
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (42, 7, 49)
    );
    // Only the last user message became a turn: the model saw it once, not the old one.
    let last = w.fake.requests().last().cloned().unwrap().to_string();
    assert!(
        last.contains("what now?") && !last.contains("an old question"),
        "{last}"
    );

    // Streamed, with the session taken from the `user` field.
    #[allow(deprecated)]
    let request = CreateChatCompletionRequestArgs::default()
        .model("nexus-agent")
        .messages(vec![
            ChatCompletionRequestUserMessageArgs::default()
                .content("and streamed?")
                .build()
                .unwrap()
                .into(),
        ])
        .user("compat-stream")
        .build()
        .unwrap();
    let mut stream = api
        .openai(ALICE, None)
        .chat()
        .create_stream(request)
        .await
        .unwrap();
    let (mut text, mut finish, mut chunks) = (String::new(), None, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        for c in chunk.choices {
            text.push_str(c.delta.content.as_deref().unwrap_or_default());
            finish = c.finish_reason.or(finish);
        }
    }
    assert_eq!(text, "compat: and streamed?");
    assert_eq!(finish, Some(FinishReason::Stop));
    assert!(chunks >= 2, "{chunks}");

    // The raw stream ends with [DONE], and the session came from `user`.
    let r = api
        .post(
            ALICE,
            "/v1/chat/completions",
            json!({"model": "m", "stream": true, "user": "raw", "messages": [{"role": "user", "content": "raw?"}]}),
        )
        .await;
    assert_eq!(r.headers()["x-nexus-session"], "raw");
    let events = SseReader::new(r).rest().await;
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let first: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
}

#[tokio::test]
async fn a_bad_or_missing_key_is_refused_on_http_and_grpc() {
    let w = spawn_world(Reply::Text("should not be asked".into()), false).await;
    let api = w.api(&[]).await;

    let r = api
        .client
        .post(api.url("/v1/messages"))
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");

    for path in ["/v1/messages", "/v1/chat/completions"] {
        let r = api
            .post(
                "key-alice-0123456788",
                path,
                json!({"text": "hi", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = api
        .client
        .get(api.url("/v1/messages/api:x"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let err = api
        .openai("wrong-key", None)
        .chat()
        .create(
            CreateChatCompletionRequestArgs::default()
                .model("m")
                .messages(vec![
                    ChatCompletionRequestUserMessageArgs::default()
                        .content("hi")
                        .build()
                        .unwrap()
                        .into(),
                ])
                .build()
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid API key"), "{err}");

    let mut client = api.grpc().await;
    let req = SendRequest {
        text: "hi".into(),
        ..Default::default()
    };
    let status = client
        .send(tonic::Request::new(req.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = client
        .send_stream(authed(req.clone(), "bad-key-000"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // No keys configured: every request is refused, and says why.
    let empty = w.test.workspace_path().join("no-keys.toml");
    std::fs::write(&empty, "").unwrap();
    let closed = w.api(&[("NEXUS_CONFIG", empty.to_str().unwrap())]).await;
    let r = closed
        .post(ALICE, "/v1/messages", json!({"text": "hi"}))
        .await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("[api.keys]"));
    let status = closed
        .grpc()
        .await
        .send(authed(req, ALICE))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    assert!(
        w.fake.requests().is_empty(),
        "a refused request reached the model"
    );
}

#[tokio::test]
async fn the_openapi_description_parses_and_lists_every_path_and_health_checks_answer() {
    let w = spawn_world(Reply::Text("ok".into()), false).await;
    let mut api = w.api(&[]).await;

    let doc: Value = api
        .client
        .get(api.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/messages",
        "/v1/messages/{turn_id}",
        "/v1/chat/completions",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not described");
    }
    // Every $ref points at something that exists.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/").skip(1) {
        let pointer = format!("/{}", r.split('"').next().unwrap());
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
    }

    let ready = api.client.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    w.stack_agent_kill().await;
    eventually("readyz to notice agent-core is gone", WAIT, || async {
        let r = api.client.get(api.url("/readyz")).send().await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    let health = api.client.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(api.process.try_status().is_none());
}

impl World {
    async fn stack_agent_kill(&self) {
        // Stack's processes are owned; kill agent-core through its pid.
        if let Some(pid) = self.stack.agent.as_ref().and_then(ServiceProcess::id) {
            nexus_common::process::terminate(pid);
        }
    }
}

#[tokio::test]
async fn two_replicas_each_deliver_their_own_clients_replies() {
    let w = spawn_world(Reply::EchoLastUser("echo: ".into()), false).await;
    let extra = [("NEXUS__CHANNELS__API__REPLY_TIMEOUT_SECS", "45")];
    let (a, b) = (w.api(&extra).await, w.api(&extra).await);

    let mut asks = Vec::new();
    for i in 0..4 {
        for (name, api) in [("a", &a), ("b", &b)] {
            let text = format!("message {i} via {name}");
            asks.push(async move {
                let body = api.ask(ALICE, &text, &format!("s-{name}-{i}")).await;
                (text, body)
            });
        }
    }
    for (text, body) in futures::future::join_all(asks).await {
        assert_eq!(body["reply"], format!("echo: {text}"), "{body}");
    }
    let bus = w.bus().await;
    eventually(
        "every reply to be acked by the durable consumer",
        WAIT,
        || async { all_replies_acked(&bus).await.then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn sigterm_lets_a_waiting_request_get_its_reply_then_exits_cleanly() {
    let w = spawn_world(Reply::EchoLastUser("late: ".into()), false).await;
    w.fake.set_delay(Duration::from_secs(3));
    let api = w.api(&[]).await;

    let r = api
        .post(
            ALICE,
            "/v1/messages",
            json!({"text": "finish me", "stream": true}),
        )
        .await;
    let mut events = SseReader::new(r);
    let (name, _) = events.next().await.unwrap();
    assert_eq!(name, "accepted");
    let pid = api.process.id().unwrap();
    nexus_common::process::terminate(pid);
    let rest = events.rest().await;
    let (last, data) = rest.last().unwrap();
    assert_eq!(last, "reply", "{rest:?}");
    assert!(data.contains("late: finish me"));
    let status = api.process.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_reply_that_comes_while_the_gateway_is_down_is_fetched_later_by_its_owner_only() {
    let w = spawn_world(Reply::EchoLastUser("kept: ".into()), false).await;
    w.fake.set_delay(Duration::from_secs(2));
    let api = w.api(&[]).await;

    let r = api
        .post(
            ALICE,
            "/v1/messages",
            json!({"text": "keep this", "stream": true}),
        )
        .await;
    let (name, data) = SseReader::new(r).next().await.unwrap();
    assert_eq!(name, "accepted");
    let turn_id = serde_json::from_str::<Value>(&data).unwrap()["turn_id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.process.kill().await;

    // The turn finishes while no gateway runs.
    eventually("the model to be asked", WAIT, || async {
        (w.fake.requests().len() == 1 && w.fake.in_flight("gpt-4.1-mini") == 0).then_some(())
    })
    .await;

    let api = w.api(&[]).await;
    let url = api.url(&format!("/v1/messages/{turn_id}"));
    let body: Value = eventually("the stored reply", WAIT, || async {
        let r = api.client.get(&url).bearer_auth(ALICE).send().await.ok()?;
        if r.status() == 200 {
            r.json().await.ok()
        } else {
            None
        }
    })
    .await;
    assert_eq!(body["reply"], "kept: keep this");
    assert_eq!(body["turn_id"], turn_id.as_str());
    assert_eq!(body["session"], "default");

    let r = api.client.get(&url).bearer_auth(BOB).send().await.unwrap();
    assert_eq!(r.status(), 404, "bob read alice's reply");

    let bus = w.bus().await;
    eventually(
        "the reply to be acked once the gateway is back",
        WAIT,
        || async { all_replies_acked(&bus).await.then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_reply_later_than_the_timeout_answers_504_with_the_turn_to_fetch() {
    let w = spawn_world(Reply::EchoLastUser("slow: ".into()), false).await;
    w.fake.set_delay(Duration::from_secs(3));
    let api = w
        .api(&[("NEXUS__CHANNELS__API__REPLY_TIMEOUT_SECS", "1")])
        .await;

    let r = api
        .post(ALICE, "/v1/messages", json!({"text": "take your time"}))
        .await;
    assert_eq!(r.status(), 504);
    let body: Value = r.json().await.unwrap();
    let turn_id = body["error"]["turn_id"].as_str().unwrap().to_owned();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET /v1/messages/"),
        "{body}"
    );

    let url = api.url(&format!("/v1/messages/{turn_id}"));
    let body: Value = eventually("the reply after the timeout", WAIT, || async {
        let r = api.client.get(&url).bearer_auth(ALICE).send().await.ok()?;
        if r.status() == 200 {
            r.json().await.ok()
        } else {
            None
        }
    })
    .await;
    assert_eq!(body["reply"], "slow: take your time");
}

#[tokio::test]
async fn a_retried_request_with_the_same_idempotency_key_starts_no_second_turn() {
    let w = spawn_world(Reply::EchoLastUser("once: ".into()), false).await;
    w.fake.set_delay(Duration::from_secs(2));
    let api = w.api(&[]).await;

    let send = |key: &'static str| {
        api.client
            .post(api.url("/v1/messages"))
            .bearer_auth(key)
            .header("Idempotency-Key", "order-42")
            .json(&json!({"text": "pay the invoice"}))
            .send()
    };
    // A retry while the first is still at the model, and one after it answered.
    let (first, second) = tokio::join!(send(ALICE), async {
        eventually("the first request at the model", WAIT, || async {
            (w.fake.in_flight("gpt-4.1-mini") > 0).then_some(())
        })
        .await;
        send(ALICE).await
    });
    let first: Value = first.unwrap().json().await.unwrap();
    let second: Value = second.unwrap().json().await.unwrap();
    let third: Value = send(ALICE).await.unwrap().json().await.unwrap();
    for body in [&second, &third] {
        assert_eq!(body["turn_id"], first["turn_id"]);
        assert_eq!(body["reply"], "once: pay the invoice");
    }
    assert_eq!(w.fake.requests().len(), 1, "a retry started a second turn");

    // The same key from another user is another turn.
    let bob: Value = send(BOB).await.unwrap().json().await.unwrap();
    assert_ne!(bob["turn_id"], first["turn_id"]);
    assert_eq!(w.fake.requests().len(), 2);
}

#[tokio::test]
async fn an_oversized_or_malformed_body_is_refused_before_any_turn() {
    let w = spawn_world(Reply::Text("no".into()), false).await;
    let api = w
        .api(&[("NEXUS__CHANNELS__API__MAX_BODY_BYTES", "2048")])
        .await;

    let r = api
        .post(ALICE, "/v1/messages", json!({"text": "x".repeat(5000)}))
        .await;
    assert_eq!(r.status(), 413);
    let r = api
        .post(ALICE, "/v1/messages", json!({"session": "s"}))
        .await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let r = api
        .post(
            ALICE,
            "/v1/messages",
            json!({"text": "hi", "session": "has space"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = api
        .post(
            ALICE,
            "/v1/chat/completions",
            json!({"messages": [{"role": "system", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(w.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn after_nats_restarts_a_request_gets_its_reply_within_the_reply_timeout() {
    // NATS of our own, killed and restarted on the same port and store. The reply
    // feed is an ordered consumer, which a restarted server has forgotten: the
    // gateway must reopen it, not wait for the client library to notice (~80 s).
    let mut nats = NatsServer::start().await;
    let w = spawn_world_on(
        TestEnv::with_nats(nats.url()),
        Reply::EchoLastUser("re: ".into()),
        false,
    )
    .await;
    let api = w
        .api(&[("NEXUS__CHANNELS__API__REPLY_TIMEOUT_SECS", "30")])
        .await;
    assert_eq!(api.ask(ALICE, "before", "s1").await["reply"], "re: before");

    nats.kill();
    nats.restart().await;
    // Intake may refuse while the gateway reconnects; the answer must not wait for long.
    let reply = eventually("a request accepted after the restart", WAIT, || async {
        let r = api
            .post(
                ALICE,
                "/v1/messages",
                json!({"text": "after", "session": "s1"}),
            )
            .await;
        match r.status().as_u16() {
            200 => Some(r.json::<Value>().await.unwrap()),
            503 => None,
            other => panic!("{other}: {:?}", r.text().await),
        }
    })
    .await;
    assert_eq!(reply["reply"], "re: after");
}
