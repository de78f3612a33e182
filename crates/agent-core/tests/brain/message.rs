//! The `message` tool: the agent writes to another chat, only where the channel's
//! allow-list admits, and a turn redone after a crash does not send it twice.

use std::time::Duration;

use nexus_testkit::{
    ServiceProcess, Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
};
use serde_json::json;

use super::{llm_env, refs, replies, send};

fn calls() -> Reply {
    Reply::ToolCalls(vec![
        (
            "message".into(),
            json!({"channel": "telegram", "chat_id": "4242", "text": "The report is ready."}),
        ),
        (
            "message".into(),
            json!({"channel": "telegram", "chat_id": "999", "text": "psst"}),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_reaches_an_allowed_chat_once_even_when_the_turn_is_redone() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("unused".into())).await;
    // The first turn stops in its second model call, after the message went out.
    fake.push([calls(), Reply::Hang]);
    let mut env = llm_env(&fake);
    env.push(("NEXUS__LLM__MODEL", "openai::model-m".into()));
    env.push(("NEXUS__CHANNELS__TELEGRAM__ALLOW_FROM", "4242".into()));
    let mut stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    send(
        &bus,
        "c1",
        0,
        "tell Ada on Telegram that the report is ready",
    )
    .await;
    let first = replies(&bus, 1, Duration::from_secs(60)).await;
    assert_eq!(first[0].channel, "telegram");
    assert_eq!(first[0].chat.as_ref().unwrap().chat_id, "4242");
    assert_eq!(first[0].text, "The report is ready.");
    eventually(
        "the turn to wait in its second model call",
        Duration::from_secs(60),
        || {
            let n = fake.in_flight("model-m");
            async move { (n == 1).then_some(()) }
        },
    )
    .await;

    // A crash mid-turn: another agent-core redoes the whole turn, model calls included.
    stack.agent.take().unwrap().kill().await;
    fake.push([calls(), Reply::Text("Done: Ada knows.".into())]);
    let _again = ServiceProcess::spawn("agent-core", &[], stack.env());

    let all = replies(&bus, 2, Duration::from_secs(60)).await;
    let answer = all
        .iter()
        .find(|r| r.channel == "test")
        .expect("the turn's answer");
    assert_eq!(answer.text, "Done: Ada knows.");
    let to_telegram: Vec<_> = all.iter().filter(|r| r.channel == "telegram").collect();
    assert_eq!(to_telegram.len(), 1, "sent once: {to_telegram:?}");
    assert_eq!(all.len(), 2, "{all:?}");

    // The chat the allow-list does not admit got nothing, and the model was told why.
    let last = fake.requests().last().cloned().unwrap();
    let tool_texts: Vec<String> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| m["content"].as_str().map(str::to_owned))
        .collect();
    assert!(
        tool_texts
            .iter()
            .any(|t| t.contains("not in [channels.telegram] allow_from")),
        "{tool_texts:?}"
    );
    assert!(
        tool_texts.iter().any(|t| t.contains("already sent")),
        "the redone turn's message was recognised as sent: {tool_texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_can_carry_a_workspace_file_but_not_one_outside_it() {
    let test = TestEnv::new();
    test.write("reports/q3.md", "# Q3\nRevenue up.\n");
    let fake = FakeOpenAi::start(Reply::Text("Sent.".into())).await;
    fake.push([Reply::ToolCalls(vec![
        (
            "message".into(),
            json!({"channel": "telegram", "chat_id": "4242", "text": "Q3 report", "file": "reports/q3.md"}),
        ),
        (
            "message".into(),
            json!({"channel": "telegram", "chat_id": "4242", "text": "secrets", "file": "../../etc/passwd"}),
        ),
    ])]);
    let mut env = llm_env(&fake);
    env.push(("NEXUS__CHANNELS__TELEGRAM__ALLOW_FROM", "4242".into()));
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    send(&bus, "c1", 0, "send Ada the Q3 report").await;
    let all = replies(&bus, 2, Duration::from_secs(60)).await;
    let to_telegram: Vec<_> = all.iter().filter(|r| r.channel == "telegram").collect();
    assert_eq!(to_telegram.len(), 1, "{to_telegram:?}");
    let media = &to_telegram[0].media;
    assert_eq!(media.len(), 1);
    assert_eq!(media[0].file_name, "q3.md");
    assert_eq!(media[0].mime_type, "text/markdown");
    let bytes = bus.get_media(&media[0], 1 << 20).await.unwrap();
    assert_eq!(bytes, b"# Q3\nRevenue up.\n");

    let last = fake.requests().last().cloned().unwrap();
    let refused = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| m["content"].as_str())
        .any(|t| t.contains("[denied]") && t.contains("leave the workspace"));
    assert!(refused, "{last}");
}
