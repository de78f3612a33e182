//! SIGKILL of each service in turn (agent-core, tool-runner, memory-svc, the
//! scheduler, gateway-api) while 20 sessions carry a steady load, each killed
//! service started again at once. Every turn fetches a slow page through
//! tool-runner (`fetch_url`) and gets its context from memory-svc, so the deaths hit
//! turns in the middle of a tool call, a model call, a memory call.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use nexus_testkit::{Stack, fake_openai::Reply};
use serde_json::{Value, json};

use super::*;

const ALICE: &str = "key-alice-0123456789";
/// Of the 20 sessions, these go through gateway-api over HTTP; the rest are stored
/// on the test channel the way any gateway stores them.
const API_SESSIONS: usize = 4;

/// A web page on loopback that takes a while to answer, counting the requests it
/// is answering, so tool-runner can be killed in the middle of a `fetch_url`.
struct SlowPage {
    url: String,
    in_flight: Arc<AtomicUsize>,
}

impl SlowPage {
    const BODY: &str = "The chaos marker is 7f3a.";

    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/drill",
            listener.local_addr().unwrap().port()
        );
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = in_flight.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    // The page is slow: the time a kill has to land in.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        Self::BODY.len(),
                        Self::BODY
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { url, in_flight }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// gateway-api on a port it keeps across restarts, so its clients just retry.
struct Api {
    port: u16,
    env: Vec<(String, String)>,
}

impl Api {
    fn new(stack: &Stack) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let grpc = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut env = stack.env().to_vec();
        env.push(("NEXUS__API__LISTEN".into(), format!("127.0.0.1:{port}")));
        env.push((
            "NEXUS__API__GRPC_LISTEN".into(),
            format!("127.0.0.1:{grpc}"),
        ));
        // A client whose reply is late asks again with the same key.
        env.push((
            "NEXUS__CHANNELS__API__REPLY_TIMEOUT_SECS".into(),
            "15".into(),
        ));
        Self { port, env }
    }

    /// Starts the gateway and waits until it answers /healthz.
    async fn spawn(&self) -> ServiceProcess {
        let process = ServiceProcess::spawn("gateway-api", &[], &self.env);
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        let client = reqwest::Client::new();
        eventually("gateway-api to listen", Duration::from_secs(60), || async {
            let r = client.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        process
    }
}

/// A client of gateway-api: its session's messages one after the other, each sent
/// again under the same Idempotency-Key until a reply comes back (the gateway may be
/// dead, or restarted). Returns the reply texts in order.
async fn api_client(port: u16, session: String, n: usize, done: Arc<AtomicUsize>) -> Vec<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/messages");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let text = load_text(&session, i);
        let key = format!("{session}-{i}");
        let body: Value = eventually("gateway-api to answer", within(240), || async {
            let r = client
                .post(&url)
                .bearer_auth(ALICE)
                .header("Idempotency-Key", &key)
                .json(&json!({"text": text, "session": session}))
                .send()
                .await
                .ok()?;
            match r.status().as_u16() {
                200 => r.json().await.ok(),
                // Not stored (NATS or the gateway going), or the reply is late: again.
                502..=504 => None,
                other => panic!("gateway-api answered {other}: {:?}", r.text().await),
            }
        })
        .await;
        out.push(body["reply"].as_str().unwrap_or_default().to_owned());
        done.fetch_add(1, Ordering::SeqCst);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_killed_in_turn_under_load_loses_no_message_and_doubles_none() {
    let test = TestEnv::new();
    let page = SlowPage::start().await;
    test.write(
        "MEMORY.md",
        "# Memory\n## Facts\n- The chaos drill is on Tuesdays.\n",
    );
    test.write(
        ".test-nexus.toml",
        &format!("[api.keys]\n\"{ALICE}\" = \"alice\"\n"),
    );
    let fake = FakeOpenAi::start(Reply::ToolThenEchoLastUser {
        tool: "fetch_url".into(),
        args: json!({"url": page.url}),
        prefix: "re: ".into(),
    })
    .await;
    // Turns take long enough to be caught in the middle.
    fake.set_delay(Duration::from_millis(40));
    let mut env = llm_env(&fake);
    env.push(("NEXUS__SCHEDULER__MIN_INTERVAL_SECS".into(), "1".into()));
    env.push(("NEXUS__TOOLS__WEB__ALLOW_HOSTS".into(), "127.0.0.1".into()));
    // A fetch whose tool-runner died is given up after this (plus 2 s).
    env.push(("NEXUS__TOOLS__WEB__TIMEOUT_SECS".into(), "3".into()));
    let mut stack = Stack::start(&test, &refs(&env)).await;
    let mut scheduler = stack.spawn("scheduler");
    wait_registered(&test, &mut [&mut scheduler], &["scheduler"]).await;
    let api = Api::new(&stack);
    let mut gateway = api.spawn().await;
    let bus = test.bus("test").await;

    // A job firing every second into its own chat: the scheduler has work when it dies.
    let added = nexus_testkit::nexus(
        stack.env(),
        &[
            "cron",
            "add",
            "--user",
            "ada",
            "--channel",
            "test",
            "--chat",
            "cron",
            "--every",
            "1",
            "-m",
            "tick",
        ],
    )
    .await;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    let per_session = 6 * scale();
    let bus_sessions = SESSIONS - API_SESSIONS;
    let mut senders = load(&bus, bus_sessions, per_session, Duration::from_millis(150));
    let api_done = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for s in 0..API_SESSIONS {
        let done = api_done.clone();
        let port = api.port;
        clients.spawn(async move {
            let session = format!("a{s}");
            let replies = api_client(port, session.clone(), per_session, done).await;
            (session, replies)
        });
    }

    // Each kill comes once a further share of the load is answered, so every one
    // lands while messages are still coming and going.
    let total = SESSIONS * per_session;
    let step = total / 7;
    let mut killed = Vec::new();
    // gateway-api first: its clients cannot have finished (they alone hold more
    // replies than the first share).
    for (k, name) in [
        "gateway-api",
        "agent-core",
        "tool-runner",
        "memory-svc",
        "scheduler",
    ]
    .into_iter()
    .enumerate()
    {
        wait_outbound(&bus, step * (k + 1), within(120)).await;
        match name {
            "agent-core" => {
                // In the middle of a model call.
                eventually("a turn in flight", within(60), || async {
                    (fake.in_flight("gpt-4.1-mini") > 0).then_some(())
                })
                .await;
                stack.agent.take().unwrap().kill().await;
                stack.agent = Some(stack.spawn("agent-core"));
            }
            "tool-runner" => {
                // In the middle of a fetch.
                eventually("a fetch in flight", within(60), || async {
                    (page.in_flight() > 0).then_some(())
                })
                .await;
                stack.tools.take().unwrap().kill().await;
                stack.tools = Some(stack.spawn("tool-runner"));
            }
            "memory-svc" => {
                stack.memory.take().unwrap().kill().await;
                stack.memory = Some(stack.spawn("memory-svc"));
            }
            "scheduler" => {
                std::mem::replace(&mut scheduler, stack.spawn("scheduler"))
                    .kill()
                    .await;
            }
            _ => {
                // While its clients wait for replies.
                let answered = api_done.load(Ordering::SeqCst);
                assert!(
                    answered < API_SESSIONS * per_session,
                    "the API clients finished before their gateway died"
                );
                gateway.kill().await;
                gateway = api.spawn().await;
            }
        }
        killed.push((name, outbound_count(&bus).await));
        stack.wait_ready(&test, &[name]).await;
    }
    wait_registered(&test, &mut [&mut scheduler], &["scheduler"]).await;
    let fires_before_restart = count_fires(&replies(&bus, within(30)).await);

    while let Some(sent) = senders.join_next().await {
        sent.unwrap();
    }
    let mut api_replies = BTreeMap::new();
    while let Some(done) = clients.join_next().await {
        let (session, replies) = done.unwrap();
        api_replies.insert(session, replies);
    }
    // The restarted scheduler fires again before it stops for the count.
    eventually(
        "a fire after the scheduler's restart",
        within(60),
        || async {
            let now = count_fires(&replies(&bus, within(30)).await);
            (now > fires_before_restart).then_some(())
        },
    )
    .await;
    let status = scheduler.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "the restarted scheduler: {status}");

    settled(&bus, within(120)).await;
    let all = replies(&bus, within(60)).await;
    let sent: BTreeMap<String, usize> = (0..bus_sessions)
        .map(|s| (format!("s{s}"), per_session))
        .collect();
    let by_chat = assert_once_and_in_order(&all, &sent);
    assert_load_answers(&by_chat);

    // The HTTP clients got their own answers, in order, and each request was one turn.
    for (session, replies) in &api_replies {
        let expected: Vec<String> = (0..per_session)
            .map(|i| format!("re: {}", load_text(session, i)))
            .collect();
        assert_eq!(replies, &expected, "API session {session}");
    }
    let api_turns: Vec<&OutboundMessage> = all.iter().filter(|r| r.channel == "api").collect();
    assert_eq!(
        api_turns.len(),
        API_SESSIONS * per_session,
        "an API request started a second turn, or lost one"
    );
    let stored: Vec<InboundMessage> = nexus_testkit::stream_messages(
        &bus,
        &bus.subjects().inbound_stream(),
        bus.subjects().inbound_all(),
    )
    .await;
    let inbound_api: Vec<InboundMessage> =
        stored.into_iter().filter(|m| m.channel == "api").collect();
    assert_eq!(inbound_api.len(), API_SESSIONS * per_session);

    // The premise: turns went through the tool and the memory, and tool-runner's
    // death cut a fetch short (the turn answered after the tool failed).
    let requests = fake.requests();
    let tool_results: Vec<String> = requests
        .iter()
        .filter_map(|r| {
            let last = r["messages"].as_array()?.last()?;
            (last["role"] == "tool").then(|| last["content"].to_string())
        })
        .collect();
    let fetched = tool_results.iter().filter(|t| t.contains("7f3a")).count();
    let cut_short = tool_results.len() - fetched;
    tracing::info!(fetched, cut_short, "fetches");
    assert!(
        fetched >= total / 2,
        "only {fetched} of {total} turns fetched the page"
    );
    assert!(cut_short > 0, "the kill of tool-runner hit no fetch");
    assert!(
        requests
            .iter()
            .all(|r| r["messages"][0]["content"].to_string().contains("Tuesdays")),
        "a turn went without its memory"
    );
    tracing::info!(?killed, "kills (service, replies stored at the time)");
}

/// Replies to the scheduler's fires.
fn count_fires(replies: &[OutboundMessage]) -> usize {
    replies
        .iter()
        .filter(|r| r.chat.as_ref().is_some_and(|c| c.chat_id == "cron"))
        .count()
}

/// The state of gateway-api's durable consumer of `N_OUTBOUND`: (waiting, unacked).
async fn api_consumer(bus: &Bus) -> Option<(u64, usize)> {
    let s = bus.subjects();
    let stream = bus.jetstream().get_stream(s.outbound_stream()).await.ok()?;
    let name = s.gateway_consumer(&nexus_common::domain::ChannelName::parse("api").ok()?);
    let mut consumer = stream.get_consumer::<pull::Config>(&name).await.ok()?;
    let info = consumer.info().await.ok()?;
    Some((info.num_pending, info.num_ack_pending))
}

/// Guarantee 5 (replies wait) for a whole burst, on gateway-api: its clients lose
/// their connections when it dies, the turns finish while it is down, and once it
/// is back its consumer takes every waiting reply once and each client fetches its
/// own. (gateway-telegram's and gateway-whatsapp's suites show one reply waiting.)
#[tokio::test(flavor = "multi_thread")]
async fn replies_to_a_burst_wait_while_the_gateway_is_down_and_are_there_when_it_returns() {
    let test = TestEnv::new();
    test.write(
        ".test-nexus.toml",
        &format!("[api.keys]\n\"{ALICE}\" = \"alice\"\n"),
    );
    let fake = FakeOpenAi::start(Reply::EchoLastUser("re: ".into())).await;
    // The turns outlast the gateway.
    fake.set_delay(Duration::from_secs(1));
    let env = llm_env(&fake);
    let stack = Stack::start(&test, &refs(&env)).await;
    let api = Api::new(&stack);
    let gateway = api.spawn().await;
    let bus = test.bus("test").await;
    let burst = SESSIONS * scale();

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/messages", api.port);
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..burst {
        let (client, url) = (client.clone(), url.clone());
        requests.spawn(async move {
            // Cut off when the gateway dies.
            let _ = client
                .post(&url)
                .bearer_auth(ALICE)
                .header("Idempotency-Key", format!("burst-{i}"))
                .json(&json!({"text": format!("burst {i}"), "session": format!("b{i}")}))
                .send()
                .await;
        });
    }
    eventually("the burst stored", within(60), || async {
        let stored: Vec<InboundMessage> = nexus_testkit::stream_messages(
            &bus,
            &bus.subjects().inbound_stream(),
            bus.subjects().inbound_all(),
        )
        .await;
        (stored.len() == burst).then_some(())
    })
    .await;
    gateway.kill().await;
    while requests.join_next().await.is_some() {}

    wait_outbound(&bus, burst, within(120)).await;
    settled(&bus, within(60)).await;
    let waiting = api_consumer(&bus).await;
    assert!(
        waiting.is_some_and(|(pending, _)| pending > 0),
        "no reply waited for the gateway: {waiting:?}"
    );

    let _gateway = api.spawn().await;
    eventually("every waiting reply taken once", within(60), || async {
        (api_consumer(&bus).await == Some((0, 0))).then_some(())
    })
    .await;
    let client = reqwest::Client::new();
    for i in 0..burst {
        let turn = format!(
            "http://127.0.0.1:{}/v1/messages/api:alice:burst-{i}",
            api.port
        );
        let body: Value = eventually("the stored reply", within(30), || async {
            let r = client.get(&turn).bearer_auth(ALICE).send().await.ok()?;
            (r.status() == 200).then_some(r.json().await.ok()?)
        })
        .await;
        assert_eq!(body["reply"], format!("re: burst {i}"));
    }
    let all = replies(&bus, within(30)).await;
    assert_eq!(all.len(), burst, "a reply doubled");
    assert_once_and_in_order(&all, &BTreeMap::new());
    assert_eq!(fake.requests().len(), burst, "a turn ran twice");
}
