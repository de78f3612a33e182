//! Very large and hostile input: a 10 MB message, a message as large as NATS
//! takes, deeply nested JSON from a tool and from the model, Unicode and
//! right-to-left text, and one session of many turns. Nothing may crash, double a
//! reply, or leave a consumer stuck.

use nexus_testkit::{Stack, fake_openai::Reply};
use serde_json::{Value, json};

use super::*;

const ALICE: &str = "key-alice-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_megabyte_message_is_refused_at_the_edge_and_nothing_gets_stuck() {
    let test = TestEnv::new();
    test.write(
        ".test-nexus.toml",
        &format!("[api.keys]\n\"{ALICE}\" = \"alice\"\n"),
    );
    let fake = FakeOpenAi::start(Reply::Text("short answer".into())).await;
    let env = llm_env(&fake);
    let stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    // Over HTTP: gateway-api refuses the body before any turn (limit 1 MiB by default).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let mut api_env = stack.env().to_vec();
    api_env.push(("NEXUS__API__LISTEN".into(), format!("127.0.0.1:{port}")));
    api_env.push((
        "NEXUS__API__GRPC_LISTEN".into(),
        format!("127.0.0.1:{grpc}"),
    ));
    let mut gateway = ServiceProcess::spawn("gateway-api", &[], &api_env);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    eventually("gateway-api to listen", Duration::from_secs(60), || async {
        let r = client.get(format!("{base}/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let ten_mb = "x".repeat(10 * 1024 * 1024);
    let sent = client
        .post(format!("{base}/v1/messages"))
        .bearer_auth(ALICE)
        .json(&json!({"text": ten_mb}))
        .send()
        .await;
    match sent {
        Ok(r) => assert_eq!(r.status(), 413, "{:?}", r.text().await),
        // The 413 came while the body was still being sent, and the gateway closed
        // the connection: the client sees the write fail instead.
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }
    let r = client
        .post(format!("{base}/v1/messages"))
        .bearer_auth(ALICE)
        .json(&json!({"text": "and a normal one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reply"], "short answer");
    assert_eq!(
        fake.requests().len(),
        1,
        "the refused message reached the model"
    );
    assert!(gateway.try_status().is_none(), "gateway-api died");

    // On the bus: NATS itself refuses a message over its max_payload (1 MB by
    // default), so a gateway cannot store it and gets an error to act on.
    let refused = bus
        .publish_inbound(&inbound("big", 0, &ten_mb), &TraceContext::new_root())
        .await;
    assert!(refused.is_err(), "a 10 MB message was stored");

    // The largest message NATS takes runs a turn, and the session goes on after it.
    let largest = "é".repeat(400 * 1024);
    send(&bus, "big", 1, &largest).await;
    send(&bus, "big", 2, "something small").await;
    send(&bus, "big", 3, "and once more").await;
    settled(&bus, within(120)).await;
    let all = replies(&bus, within(60)).await;
    let big: Vec<&OutboundMessage> = all
        .iter()
        .filter(|r| r.chat.as_ref().is_some_and(|c| c.chat_id == "big"))
        .collect();
    let ids: Vec<&str> = big.iter().map(|r| r.in_reply_to.as_str()).collect();
    assert_eq!(ids, ["test:big-1", "test:big-2", "test:big-3"]);
    tracing::info!(
        kind = big[0].kind,
        len = big[0].text.len(),
        "the largest message"
    );
    for r in &big[1..] {
        assert_eq!(r.kind, OutboundKind::Reply as i32, "{}", r.text);
        assert_eq!(r.text, "short answer");
    }
    assert!(gateway.try_status().is_none(), "gateway-api died");
    for p in [&stack.agent, &stack.tools, &stack.memory]
        .into_iter()
        .flatten()
    {
        assert!(p.id().is_some());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unicode_and_right_to_left_text_round_trip_intact() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::EchoUserMessages).await;
    let env = llm_env(&fake);
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    let texts = [
        "שלום עולם, מה שלומך?",
        "مرحبا بالعالم ١٢٣ — مع English في الوسط",
        "\u{202E}evil.txt\u{202C} and \u{2067}isolated\u{2069} and \u{200F}marks\u{200E}",
        "👩‍👩‍👧‍👦 🏳️‍🌈 e\u{301} Z\u{351}\u{35b}\u{35e}a\u{322}l\u{327}g\u{32d}o",
        "日本語のテキスト、中文文本，한국어 텍스트",
        "tabs\tand\r\nnewlines\u{2028}separators\u{feff} zero\u{200b}width",
    ];
    for (i, text) in texts.iter().enumerate() {
        send(&bus, "u", i, text).await;
    }
    settled(&bus, within(60)).await;
    let all = replies(&bus, within(60)).await;
    assert_eq!(all.len(), texts.len());
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.in_reply_to, format!("test:u-{i}"));
        assert_eq!(r.kind, OutboundKind::Reply as i32, "{}", r.text);
        // Each reply repeats every message so far: through the model, memory-svc's
        // history and N_OUTBOUND, byte for byte.
        let said = texts[..=i].join(" | ");
        assert_eq!(r.text, format!("You said: {said}"));
    }
}

/// `[[[…]]]` nested `depth` deep.
fn nested_text(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test(flavor = "multi_thread")]
async fn deeply_nested_json_from_a_tool_or_the_model_ends_the_turn_once() {
    let test = TestEnv::new();
    test.write("nested.json", &nested_text(100_000));
    let fake = FakeOpenAi::start(Reply::EchoLastTool("tool said: ".into())).await;
    // Arguments nested deeper than JSON parsers allow by default (128).
    let mut deep = json!("bottom");
    for _ in 0..300 {
        deep = json!([deep]);
    }
    fake.push([
        Reply::ToolCalls(vec![("read_file".into(), json!({"path": "nested.json"}))]),
        Reply::ToolCalls(vec![("read_file".into(), json!({"path": deep}))]),
    ]);
    let env = llm_env(&fake);
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    send(&bus, "n", 0, "read nested.json").await;
    send(&bus, "n", 1, "now this").await;
    send(&bus, "n", 2, "still there?").await;
    settled(&bus, within(120)).await;
    let all = replies(&bus, within(60)).await;
    let ids: Vec<&str> = all.iter().map(|r| r.in_reply_to.as_str()).collect();
    assert_eq!(ids, ["test:n-0", "test:n-1", "test:n-2"]);
    assert_eq!(all[0].kind, OutboundKind::Reply as i32, "{}", all[0].text);
    assert!(
        all[0].text.starts_with("tool said: ") && all[0].text.contains("[[[[[[[["),
        "{}",
        &all[0].text[..all[0].text.len().min(300)]
    );
    // The model's nested arguments: an answer or a clear failure, once.
    assert!(!all[1].text.is_empty());
    tracing::info!(kind = all[1].kind, text = %all[1].text, "nested arguments");
    assert_eq!(all[2].kind, OutboundKind::Reply as i32, "{}", all[2].text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_of_many_turns_keeps_its_order_and_a_bounded_context() {
    let turns = long_session_turns();
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::EchoLastUser("re: ".into())).await;
    let env = llm_env(&fake);
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    let mut senders = load(&bus, 1, turns, Duration::from_millis(1));
    while let Some(sent) = senders.join_next().await {
        sent.unwrap();
    }
    wait_outbound(&bus, turns, Duration::from_secs(60 + turns as u64 / 4)).await;
    settled(&bus, within(60)).await;
    let all = replies(&bus, within(60)).await;
    let by_chat = assert_once_and_in_order(&all, &BTreeMap::from([("s0".to_owned(), turns)]));
    assert_load_answers(&by_chat);

    // The model is shown recent history only ([memory] history_turns, 20 by default):
    // the last request is no larger than one from early on, once history was full.
    let requests = fake.requests();
    assert_eq!(requests.len(), turns);
    let size = |r: &Value| r["messages"].to_string().len();
    let messages = |r: &Value| r["messages"].as_array().map_or(0, Vec::len);
    let most = requests.iter().map(messages).max().unwrap_or(0);
    assert!(most <= 2 * 20 + 2, "{most} messages in one request");
    let early = size(&requests[(turns / 10).max(25).min(turns - 1)]);
    let last = size(&requests[turns - 1]);
    assert!(
        last <= early + early / 5,
        "the context grew from {early} to {last} bytes"
    );
}
