//! Traces and metrics of one turn: the services export over OTLP (HTTP/protobuf)
//! to a receiver run by the test, and agent-core serves Prometheus text.

use std::collections::BTreeSet;

use nexus_testkit::{
    Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
    otlp::{Exported, OtlpCollector, connected_trace, parent_of},
};
use serde_json::json;

use super::{ALICE, Api, WAIT, World, free_port};

/// A GitHub token used as the session name: it lands in span attributes (the
/// session of the turn and of the tool call) and must leave only redacted.
const TOKEN: &str = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";

/// The core services and a gateway-api, all exporting to `otlp`, plus `extra`.
async fn world_exporting(otlp: &str, extra: &[(&str, &str)]) -> (World, Api) {
    let test = TestEnv::new();
    test.write("notes.txt", "The launch code word is PELICAN-42.\n");
    test.write(
        ".test-nexus.toml",
        &format!("[api.keys]\n\"{ALICE}\" = \"alice\"\n"),
    );
    let fake = FakeOpenAi::start(Reply::Text("unexpected".into())).await;
    fake.push([
        Reply::ToolCalls(vec![("read_file".into(), json!({"path": "notes.txt"}))]),
        Reply::EchoLastTool("notes.txt says: ".into()),
    ]);
    let base_url = fake.base_url();
    let mut env = vec![
        ("OPENAI_API_KEY", "sk-test-00000000"),
        ("OPENAI_BASE_URL", base_url.as_str()),
        ("NEXUS__LLM__MODEL", "gpt-4.1-mini"),
        ("NEXUS__LLM__STREAM", "false"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ];
    env.extend_from_slice(extra);
    let stack = Stack::start(&test, &env).await;
    let world = World { test, fake, stack };
    let api = world.api(&[]).await;
    (world, api)
}

/// SIGTERM to every process; each must exit, having flushed what it batched.
async fn stop_all(world: &mut World, api: Api) {
    let status = api.process.terminate(WAIT).await;
    assert!(status.success(), "gateway-api exited with {status}");
    for p in [
        world.stack.agent.take(),
        world.stack.tools.take(),
        world.stack.memory.take(),
    ]
    .into_iter()
    .flatten()
    {
        let name = p.name().to_owned();
        let status = p.terminate(WAIT).await;
        assert!(status.success(), "{name} exited with {status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_turn_with_a_tool_call_is_one_connected_trace_across_the_services() {
    let (collector, otlp) = OtlpCollector::start().await;
    let (mut world, api) = world_exporting(&otlp, &[]).await;

    let reply = api
        .ask(ALICE, "What does notes.txt in the workspace say?", TOKEN)
        .await;
    assert!(
        reply["reply"].as_str().unwrap_or("").contains("PELICAN-42"),
        "{reply}"
    );
    assert_eq!(
        world.fake.requests().len(),
        2,
        "tool choice, then the answer"
    );

    // Everything read below was sent by processes that have exited: flushed on shutdown.
    stop_all(&mut world, api).await;
    let spans = collector.spans();

    let intakes: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.span.name == "intake api")
        .collect();
    assert_eq!(intakes.len(), 1, "one intake: {spans:#?}");
    let root = intakes[0];
    assert_eq!(root.service, "gateway-api");
    // Connected: every span but the intake has its parent in the same trace.
    let trace = connected_trace(&spans, root);
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    for service in ["gateway-api", "agent-core", "tool-runner", "memory-svc"] {
        assert!(
            services.contains(service),
            "{service} missing: {services:?}"
        );
    }
    let parent_of = |s: &Exported| parent_of(&trace, s);
    let named = |name: &str, service: &str| -> Vec<&Exported> {
        trace
            .iter()
            .filter(|s| s.span.name == name && s.service == service)
            .copied()
            .collect()
    };

    // The turn descends from the intake; the model calls from the turn.
    let turns = named("turn", "agent-core");
    assert_eq!(turns.len(), 1, "one turn span");
    assert_eq!(
        parent_of(turns[0]).map(|p| p.span.name.as_str()),
        Some("intake api")
    );
    let llm = named("chat gpt-4.1-mini", "agent-core");
    assert_eq!(llm.len(), 2, "two model calls");
    for call in &llm {
        assert_eq!(call.text("gen_ai.system"), "openai");
        assert_eq!(call.text("gen_ai.operation.name"), "chat");
        assert_eq!(call.text("gen_ai.request.model"), "gpt-4.1-mini");
        // What the fake reported as usage.
        assert_eq!(
            call.int("gen_ai.usage.input_tokens"),
            Some(42),
            "{:?}",
            call.span.attributes
        );
        assert_eq!(call.int("gen_ai.usage.output_tokens"), Some(7));
        let mut up = parent_of(call);
        while let Some(p) = up.filter(|p| p.span.name != "turn") {
            up = parent_of(p);
        }
        assert!(up.is_some(), "a model call outside the turn");
    }
    // The tool call on both sides: tool-runner's span is a child of agent-core's.
    let served = named("execute_tool read_file", "tool-runner");
    assert_eq!(served.len(), 1, "tool-runner ran the call once");
    let mut up = parent_of(served[0]);
    while let Some(p) = up.filter(|p| p.service == "tool-runner") {
        up = parent_of(p);
    }
    let caller = up.expect("the tool call's caller");
    assert_eq!(caller.service, "agent-core");
    assert!(
        trace
            .iter()
            .any(|s| s.span.name == "execute_tool read_file" && s.service == "agent-core"),
        "agent-core's tool-call span"
    );
    assert!(
        trace
            .iter()
            .any(|s| s.service == "memory-svc" && s.span.name.starts_with("memory ")),
        "memory-svc's request spans"
    );
    assert!(
        !named("deliver api", "gateway-api").is_empty(),
        "the gateway's delivery span"
    );

    // The session (a token) is in span attributes, redacted.
    let all_text = format!("{spans:?}");
    assert!(!all_text.contains(TOKEN), "a token left over OTLP");
    assert!(
        trace
            .iter()
            .any(|s| format!("{:?}", s.span.attributes).contains("gh_[REDACTED]")),
        "the session attribute is gone altogether, so redaction was not tested"
    );

    // Metrics went over OTLP as well, flushed on shutdown.
    let metrics = collector.metric_names();
    let agent = metrics.get("agent-core").cloned().unwrap_or_default();
    for name in [
        "nexus.turns",
        "nexus.turn.duration",
        "nexus.llm.duration",
        "nexus.llm.tokens",
    ] {
        assert!(
            agent.contains(name),
            "{name} missing from agent-core: {metrics:?}"
        );
    }
    let tools = metrics.get("tool-runner").cloned().unwrap_or_default();
    assert!(tools.contains("nexus.tool.calls"), "{metrics:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_prometheus_endpoint_serves_the_turn_counter_after_a_turn() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // No OTLP endpoint: metrics are served for scraping only.
    let (mut world, api) = world_exporting(
        "",
        &[("NEXUS__METRICS__LISTEN__AGENT_CORE", listen.as_str())],
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://{listen}/metrics");
    let scrape = || async {
        let r = client.get(&url).send().await.ok()?;
        assert!(r.status().is_success());
        r.text().await.ok()
    };
    let before = eventually("the metrics endpoint", WAIT, scrape).await;
    assert!(!before.contains("nexus_turns_total{"), "{before}");

    api.ask(ALICE, "What does notes.txt in the workspace say?", "s1")
        .await;
    // The turn is counted when its message is settled, just after the reply; the
    // queue depth is sampled when agent-core starts.
    let after = eventually("the turn counted", WAIT, || async {
        scrape().await.filter(|t| {
            t.lines().any(|l| l.starts_with("nexus_turns_total{"))
                && t.contains("nexus_queue_depth{")
        })
    })
    .await;
    let line = after
        .lines()
        .find(|l| l.starts_with("nexus_turns_total{"))
        .unwrap();
    assert!(
        line.contains("outcome=\"ack\"") && line.ends_with(" 1"),
        "{line}"
    );
    assert!(after.contains("nexus_llm_tokens_total{"), "{after}");
    let depth = after
        .lines()
        .find(|l| l.starts_with("nexus_queue_depth{"))
        .unwrap();
    assert!(
        depth.contains("consumer=\"agent-core\"") && depth.contains("_INBOUND\""),
        "{depth}"
    );
    assert!(
        after.contains("nexus_turn_duration_seconds_bucket{"),
        "{after}"
    );
    stop_all(&mut world, api).await;
}
