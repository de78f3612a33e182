//! nats-server SIGKILLed in the middle of a load and started again on the same
//! port and file store (a server of the test's own; the shared one is never
//! touched): every service finds it again by itself, and nothing is lost or doubled.

use nexus_testkit::{NatsServer, Stack, fake_openai::Reply};
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn nats_killed_and_restarted_under_load_loses_no_message_and_doubles_none() {
    let mut nats = NatsServer::start().await;
    let test = TestEnv::with_nats(nats.url());
    test.write("notes/drill.txt", "The chaos marker is 7f3a.\n");
    test.write(
        "MEMORY.md",
        "# Memory\n## Facts\n- The chaos drill is on Tuesdays.\n",
    );
    let fake = FakeOpenAi::start(Reply::ToolThenEchoLastUser {
        tool: "read_file".into(),
        args: json!({"path": "notes/drill.txt"}),
        prefix: "re: ".into(),
    })
    .await;
    fake.set_delay(Duration::from_millis(40));
    let env = llm_env(&fake);
    let mut stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    let per_session = 5 * scale();
    let total = SESSIONS * per_session;
    let mut senders = load(&bus, SESSIONS, per_session, Duration::from_millis(100));

    wait_outbound(&bus, total / 3, within(120)).await;
    eventually("a turn in flight", within(60), || async {
        (fake.in_flight("gpt-4.1-mini") > 0).then_some(())
    })
    .await;
    nats.kill();
    let asked_before = fake.requests().len();
    nats.restart().await;

    // Nobody restarts the services: they come back on the service API by themselves.
    stack
        .wait_ready(&test, &["memory-svc", "tool-runner", "agent-core"])
        .await;
    while let Some(sent) = senders.join_next().await {
        sent.unwrap();
    }
    wait_outbound(&bus, total, within(180)).await;
    settled(&bus, within(120)).await;
    let all = replies(&bus, within(60)).await;
    let sent: BTreeMap<String, usize> = (0..SESSIONS)
        .map(|s| (format!("s{s}"), per_session))
        .collect();
    let by_chat = assert_once_and_in_order(&all, &sent);
    assert_load_answers(&by_chat);
    assert_eq!(all.len(), total, "a reply to something else");

    // After the restart, turns still read the file through tool-runner and got their
    // memory from memory-svc.
    let after: Vec<serde_json::Value> = fake.requests().split_off(asked_before);
    assert!(
        after
            .iter()
            .any(|r| r["messages"].as_array().is_some_and(|m| m
                .iter()
                .any(|m| m["role"] == "tool" && m["content"].to_string().contains("7f3a")))),
        "no turn read the file after the restart"
    );
    assert!(
        after
            .iter()
            .all(|r| r["messages"][0]["content"].to_string().contains("Tuesdays")),
        "a turn after the restart went without its memory"
    );
    for p in [
        stack.agent.as_mut(),
        stack.tools.as_mut(),
        stack.memory.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(p.try_status().is_none(), "{} exited", p.name());
    }
}
