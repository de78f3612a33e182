//! The Python example plugin (`examples/python-plugin/weather.py`) against the Rust
//! side of the tool protocol (`proto/TOOL_PROTOCOL.md`): found by `ToolDirectory`,
//! called in JSON, sharing calls in its queue group, answering discover at once,
//! withdrawn on SIGTERM and forgotten after its ttl when killed. Real NATS, the
//! real script in a real `python3`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use nexus_bus::Bus;
use nexus_common::domain::ToolName;
use nexus_proto::v1::{
    ToolAnnouncement, ToolCall, ToolContext, ToolErrorKind, ToolResult, tool_result::Outcome,
};
use nexus_testkit::{TestEnv, eventually, plugins::python_weather};
use nexus_tools::{
    ToolDirectory,
    wire::{self, Encoding},
};
use tokio_util::sync::CancellationToken;

/// What the example says for Paris, every time.
const PARIS: &str = "Paris: 18 °C, light rain";
/// Bounds every wait for the plugin to start (a cold `python3` on a busy machine).
const START: Duration = Duration::from_secs(30);

fn weather_subject(bus: &Bus) -> String {
    bus.subjects().tool(&ToolName::parse("weather").unwrap())
}

/// Sends one JSON call as agent-core does and decodes the JSON answer.
async fn call(bus: &Bus, call_id: &str, arguments_json: &str) -> ToolResult {
    let call = ToolCall {
        call_id: call_id.into(),
        name: "weather".into(),
        arguments_json: arguments_json.into(),
        context: Some(ToolContext {
            session_id: "cli:s1".into(),
            user_id: "u1".into(),
            channel: "cli".into(),
            chat_id: "s1".into(),
            turn_id: "t1".into(),
            approved: false,
            timezone: String::new(),
        }),
    };
    let payload = wire::encode_call(&call, Encoding::Json);
    request(bus, payload).await
}

async fn request(bus: &Bus, payload: bytes::Bytes) -> ToolResult {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        bus.client()
            .request_with_headers(weather_subject(bus), Encoding::Json.headers(), payload),
    )
    .await
    .expect("the plugin answers within its timeout")
    .expect("the plugin answers");
    assert_eq!(
        Encoding::of_headers(reply.headers.as_ref()),
        Encoding::Json,
        "a JSON call gets a JSON reply that says so"
    );
    wire::decode_result(&reply.payload, Encoding::Json).unwrap()
}

fn output(r: &ToolResult) -> &str {
    match &r.outcome {
        Some(Outcome::Output(o)) => o,
        other => panic!("expected output, got {other:?}"),
    }
}

fn error(r: &ToolResult) -> (ToolErrorKind, &str, bool) {
    match &r.outcome {
        Some(Outcome::Error(e)) => (e.kind(), e.message.as_str(), e.retryable),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Returns once the server has taken in every subscription this connection sent:
/// it answers "no responders" only after what came before on the connection.
/// (A flush only writes them out; another client's message could still come first.)
async fn subscribed(bus: &Bus) {
    let nobody = format!("{}.test.nobody", bus.subjects().namespace());
    let answer = bus.client().request(nobody, bytes::Bytes::new()).await;
    assert!(
        matches!(&answer, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "{answer:?}"
    );
}

async fn directory(bus: &Bus) -> (ToolDirectory, CancellationToken) {
    let stop = CancellationToken::new();
    let d = ToolDirectory::start(bus, stop.clone()).await.unwrap();
    (d, stop)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_plugin_is_discovered_and_answers_json_calls_as_the_protocol_says() {
    let test = TestEnv::new();
    let bus = test.bus("plugin-probe").await;
    let plugin = python_weather(&test.process_env());
    let (tools, stop) = directory(&bus).await;

    let spec = eventually("the weather tool to be announced", START, || async {
        tools.specs().get("weather").cloned()
    })
    .await;
    assert_eq!(spec.encoding, wire::JSON_ENCODING, "calls to it are JSON");
    assert_eq!(spec.provider, "weather-py/0.1.0");
    assert_eq!(spec.timeout_ms, 5000);
    assert!(!spec.requires_approval);
    let schema: serde_json::Value = serde_json::from_str(&spec.parameters_json_schema).unwrap();
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], serde_json::json!(["city"]));
    assert_eq!(schema["properties"]["city"]["type"], "string");
    let providers = tools.providers();
    assert_eq!(providers.len(), 1, "{providers:?}");
    assert_eq!(providers[0].provider, "weather-py");
    assert_eq!(providers[0].tools, ["weather"]);

    let ok = call(&bus, "call-1", r#"{"city":"Paris"}"#).await;
    assert_eq!(output(&ok), PARIS);
    assert_eq!(ok.call_id, "call-1", "the call id is echoed");
    assert_eq!(ok.name, "weather");
    assert!(!ok.truncated);

    let wrong = call(&bus, "call-2", r#"{"town":"Paris"}"#).await;
    let (kind, message, retryable) = error(&wrong);
    assert_eq!(kind, ToolErrorKind::InvalidArgs);
    assert!(
        message.contains("city"),
        "tells the model what to fix: {message}"
    );
    assert!(!retryable, "the same arguments fail again");
    assert_eq!(wrong.call_id, "call-2");

    // Text the model wrote that is not JSON travels as a JSON string.
    let garbled = call(&bus, "call-3", "{city: Paris").await;
    assert_eq!(error(&garbled).0, ToolErrorKind::InvalidArgs);
    // A payload that is not a call at all still gets an answer.
    let junk = request(&bus, bytes::Bytes::from_static(b"not json")).await;
    assert_eq!(error(&junk).0, ToolErrorKind::InvalidArgs);

    stop.cancel();
    let status = plugin.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_plugin_announces_at_once_whenever_asked_to_discover() {
    let test = TestEnv::new();
    let bus = test.bus("plugin-probe").await;
    let s = bus.subjects();
    let mut announcements = bus.client().subscribe(s.tools_announce()).await.unwrap();
    subscribed(&bus).await;
    let _plugin = python_weather(&test.process_env());

    let first = tokio::time::timeout(START, announcements.next())
        .await
        .expect("the plugin announces when it starts")
        .unwrap();
    let a = wire::decode_announcement(&first.payload, first.headers.as_ref()).unwrap();
    assert_eq!(
        (a.protocol, a.provider.as_str(), a.ttl_ms, a.withdrawn),
        (1, "weather-py", 6000, false)
    );
    assert!(!a.instance.is_empty());

    // Every discover is answered by an announcement. Announcing every 2 s alone
    // would bring at most 11 in the 20 s this waits, so 20 prove the answers.
    const ASKS: usize = 20;
    for _ in 0..ASKS {
        bus.client()
            .publish(s.tools_discover(), bytes::Bytes::new())
            .await
            .unwrap();
    }
    bus.client().flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while seen < ASKS {
        let m = tokio::time::timeout_at(deadline, announcements.next())
            .await
            .unwrap_or_else(|_| panic!("only {seen} announcements answered {ASKS} discovers"))
            .unwrap();
        let again = wire::decode_announcement(&m.payload, m.headers.as_ref()).unwrap();
        assert_eq!(again.instance, a.instance);
        seen += 1;
    }
}

/// Joins the plugin's queue group on its tool's subject, answers what it gets with
/// "spy", and when stopped says how many calls it received.
async fn spy_in_queue_group(
    bus: &Bus,
    group: String,
) -> (CancellationToken, tokio::task::JoinHandle<usize>) {
    let stop = CancellationToken::new();
    let (client, until) = (bus.client().clone(), stop.clone());
    let mut sub = client
        .queue_subscribe(weather_subject(bus), group)
        .await
        .unwrap();
    subscribed(bus).await;
    let task = tokio::spawn(async move {
        let received = Arc::new(AtomicUsize::new(0));
        let answer = |m: async_nats::Message| {
            let (client, received) = (client.clone(), received.clone());
            async move {
                received.fetch_add(1, Ordering::SeqCst);
                let call = wire::decode_call(&m.payload, Encoding::Json).unwrap();
                let result = ToolResult {
                    call_id: call.call_id,
                    name: call.name,
                    outcome: Some(Outcome::Output("spy".into())),
                    ..Default::default()
                };
                let body = wire::encode_result(&result, Encoding::Json);
                let reply = m.reply.unwrap();
                client
                    .publish_with_headers(reply, Encoding::Json.headers(), body)
                    .await
                    .unwrap();
            }
        };
        loop {
            tokio::select! {
                () = until.cancelled() => break,
                m = sub.next() => match m {
                    Some(m) => answer(m).await,
                    None => break,
                },
            }
        }
        // What was delivered before the unsubscribe is still read, and counted.
        sub.unsubscribe().await.unwrap();
        while let Some(m) = sub.next().await {
            answer(m).await;
        }
        received.load(Ordering::SeqCst)
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_calls_and_a_stopped_one_withdraws_at_once_while_a_killed_one_expires() {
    let test = TestEnv::new();
    let bus = test.bus("plugin-probe").await;
    let env = test.process_env();
    let first = python_weather(&env);
    let second = python_weather(&env);
    let (tools, stop) = directory(&bus).await;
    let instances: BTreeSet<String> =
        eventually("both replicas to be announced", START, || async {
            let live = tools.providers();
            (live.len() == 2).then(|| live.into_iter().map(|p| p.instance).collect())
        })
        .await;
    assert_eq!(tools.specs().len(), 1, "two replicas, one tool");

    // A third member of the group `N_<provider>`: each call reaches exactly one
    // member, so the spy's calls and the plugins' answers add up to the calls sent.
    // A plugin outside that group would get every call, and so would the spy.
    let (spy_stop, spy) = spy_in_queue_group(&bus, bus.subjects().queue_group("weather-py")).await;
    const CALLS: usize = 40;
    let mut by_plugins = 0;
    for i in 0..CALLS {
        let r = call(&bus, &format!("call-{i}"), r#"{"city":"Paris"}"#).await;
        match output(&r) {
            "spy" => {}
            PARIS => by_plugins += 1,
            other => panic!("unexpected output {other:?}"),
        }
    }
    spy_stop.cancel();
    let by_spy = spy.await.unwrap();
    assert!(
        by_plugins > 0 && by_spy > 0,
        "plugins {by_plugins}, spy {by_spy}"
    );
    assert_eq!(by_plugins + by_spy, CALLS, "each call went to one member");

    // SIGTERM: the withdrawal arrives, and the directory forgets the instance well
    // before the 6 s its last announcement holds.
    let mut announcements = bus
        .client()
        .subscribe(bus.subjects().tools_announce())
        .await
        .unwrap();
    subscribed(&bus).await;
    let status = first.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    let withdrawn: ToolAnnouncement = tokio::time::timeout(START, async {
        while let Some(m) = announcements.next().await {
            let a = wire::decode_announcement(&m.payload, m.headers.as_ref()).unwrap();
            if a.withdrawn {
                return a;
            }
        }
        panic!("the announcements ended")
    })
    .await
    .expect("the stopped replica withdraws");
    assert!(instances.contains(&withdrawn.instance));
    assert!(withdrawn.specs.is_empty());
    eventually(
        "the withdrawn replica to be forgotten",
        Duration::from_secs(3),
        || async { (tools.providers().len() == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        output(&call(&bus, "after-stop", r#"{"city":"Paris"}"#).await),
        PARIS,
        "the other replica serves on"
    );

    // SIGKILL: no withdrawal; the tool goes when the last announcement expires.
    second.kill().await;
    eventually("the killed replica's tool to expire", START, || async {
        (tools.specs().is_empty() && tools.providers().is_empty()).then_some(())
    })
    .await;
    stop.cancel();
}
