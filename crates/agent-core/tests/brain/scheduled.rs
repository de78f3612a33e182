//! Turns a scheduled job starts: the owner's turn in the job's chat, told that a
//! job fired; NO_REPLY stores the turn and sends nothing; usage names the job.

use std::time::Duration;

use futures::StreamExt as _;
use nexus_bus::{Bus, TraceContext};
use nexus_common::domain::{fire_id, scheduled};
use nexus_proto::v1::{ChatRef, Event, InboundKind, InboundMessage, Sender, event};
use nexus_testkit::{
    Stack, TestEnv,
    fake_openai::{FakeOpenAi, Reply},
};
use prost::Message as _;

use super::{llm_env, refs, replies, send};

/// Publishes a fire of `job` the way the scheduler does.
async fn fire(bus: &Bus, job: &str, due_ms: i64, text: &str) -> String {
    let msg = InboundMessage {
        id: fire_id(job, due_ms),
        channel: "test".into(),
        chat: Some(ChatRef {
            chat_id: "c1".into(),
            ..Default::default()
        }),
        sender: Some(Sender {
            id: "ada".into(),
            display_name: format!("scheduled job {job}"),
            user_id: "ada".into(),
        }),
        text: text.into(),
        sent_at_ms: due_ms,
        kind: InboundKind::Scheduled as i32,
        metadata: [
            (scheduled::JOB_ID.to_owned(), job.to_owned()),
            (scheduled::DUE_MS.to_owned(), due_ms.to_string()),
            (scheduled::SCHEDULE.to_owned(), "every 1 h".to_owned()),
        ]
        .into(),
        ..Default::default()
    };
    bus.publish_inbound_as(&msg, &msg.id, &TraceContext::new_root())
        .await
        .unwrap();
    msg.id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fire_runs_the_owners_turn_and_nothing_to_report_sends_nothing() {
    let test = TestEnv::new();
    test.write("USER_ada.md", "# Profile\nName: Ada Lovelace\n");
    let fake = FakeOpenAi::start(Reply::EchoUserMessages).await;
    fake.push([
        Reply::Text("NO_REPLY".into()),
        Reply::Text("Time to stretch, Ada!".into()),
    ]);
    let env = llm_env(&fake);
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;
    let mut usage = bus
        .client()
        .subscribe(bus.subjects().event(nexus_bus::event_kind::LLM_USAGE))
        .await
        .unwrap();

    let quiet = fire(
        &bus,
        "job-7",
        1_000,
        "Check the build; tell the user if it broke",
    )
    .await;
    let loud = fire(&bus, "job-7", 2_000, "Remind the user to stretch").await;
    // The chat's turns run in order, so this one comes after both fires.
    send(&bus, "c1", 0, "what did you do?").await;
    let all = replies(&bus, 2, Duration::from_secs(60)).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0].in_reply_to, loud);
    assert_eq!(all[0].text, "Time to stretch, Ada!");
    assert!(
        all.iter().all(|r| r.in_reply_to != quiet),
        "NO_REPLY sent a message: {all:?}"
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    let system = requests[0]["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("## Scheduled job") && system.contains("job-7 (every 1 h)"),
        "{system}"
    );
    assert!(
        system.contains("Name: Ada Lovelace"),
        "the owner's profile: {system}"
    );
    let last_user = |i: usize| {
        requests[i]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .unwrap()["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        last_user(0),
        "[scheduled job job-7] Check the build; tell the user if it broke"
    );
    // Both fires, the silent one too, are part of the chat's history.
    assert!(
        all[1]
            .text
            .contains("[scheduled job job-7] Check the build")
            && all[1]
                .text
                .contains("[scheduled job job-7] Remind the user to stretch"),
        "{}",
        all[1].text
    );
    let history = requests[2]["messages"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|m| m["role"] == "assistant" && m["content"] == "NO_REPLY"),
        "{history:?}"
    );

    let mut purposes = Vec::new();
    while purposes.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), usage.next())
            .await
            .unwrap()
            .unwrap();
        if let Some(event::Kind::LlmUsage(u)) = Event::decode(ev.payload).unwrap().kind {
            purposes.push((u.purpose, u.user_id));
        }
    }
    let owner = |p: &str, u: &str| (p.to_owned(), u.to_owned());
    assert_eq!(
        purposes,
        [
            owner("job:job-7", "ada"),
            owner("job:job-7", "ada"),
            owner("turn", "test_u1")
        ]
    );
}
