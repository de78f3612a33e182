//! Sub-agents (`spawn`): a task runs in the background on any replica, reports to
//! its chat once (also after its replica is killed), can be listed and cancelled,
//! and is bounded in depth and per user.
//!
//! The sub-agents' model is `sub-model` (`[llm.channel_routes] task`), so the fake
//! answers and delays them apart from the chat's own turns.

use std::time::Duration;

use futures::StreamExt as _;
use nexus_bus::Bus;
use nexus_proto::v1::OutboundMessage;
use nexus_testkit::{
    ServiceProcess, Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
};
use serde_json::{Value, json};

use super::{llm_env, refs, replies, send};

const SUB: &str = "sub-model";

fn env(fake: &FakeOpenAi) -> Vec<(&'static str, String)> {
    let mut env = llm_env(fake);
    env.push(("NEXUS__LLM__ROUTES__SUB", format!("openai::{SUB}")));
    env.push(("NEXUS__LLM__CHANNEL_ROUTES__TASK", "sub".into()));
    env
}

fn spawn_call(task: &str) -> (String, Value) {
    ("spawn".into(), json!({"task": task, "label": "report"}))
}

fn write_report() -> Reply {
    Reply::ToolCalls(vec![(
        "write_file".into(),
        json!({"path": "reports/x.md", "content": "# X\nFindings.\n"}),
    )])
}

fn task_results(all: &[OutboundMessage]) -> Vec<&OutboundMessage> {
    all.iter()
        .filter(|r| r.in_reply_to.starts_with("task:"))
        .collect()
}

/// Tool messages the model was sent, over every request so far.
fn tool_texts(fake: &FakeOpenAi) -> Vec<String> {
    fake.requests()
        .iter()
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| m["content"].as_str().map(str::to_owned))
        .collect()
}

/// The id the `spawn` tool answered with.
async fn spawned_task_id(fake: &FakeOpenAi) -> String {
    eventually("the spawn tool to answer", Duration::from_secs(60), || {
        let id = tool_texts(fake).iter().find_map(|t| {
            let rest = t.split("Started task ").nth(1)?;
            Some(rest.split_whitespace().next()?.to_owned())
        });
        async move { id }
    })
    .await
}

async fn sub_agent_asking(fake: &FakeOpenAi) {
    eventually(
        "the sub-agent to ask its model",
        Duration::from_secs(60),
        || {
            let n = fake.in_flight(SUB);
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
}

async fn queued_tasks(bus: &Bus) -> u64 {
    let mut stream = bus
        .jetstream()
        .get_stream(bus.subjects().tasks_stream())
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_runs_while_the_chat_goes_on_and_reports_once_with_its_file() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::EchoLastUser("re: ".into())).await;
    fake.push([Reply::ToolCalls(vec![spawn_call(
        "Research X and write reports/x.md",
    )])]);
    // Each of the sub-agent's model calls takes 3 s; the first writes the report.
    fake.set_model_reply(SUB, write_report());
    fake.set_model_delay(SUB, Duration::from_secs(3));
    let env = env(&fake);
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;
    let task_channel = nexus_common::domain::ChannelName::parse("task").unwrap();
    let mut progress = bus
        .client()
        .subscribe(bus.subjects().progress(&task_channel))
        .await
        .unwrap();

    send(&bus, "c1", 0, "research X for me").await;
    sub_agent_asking(&fake).await;
    fake.set_model_reply(
        SUB,
        Reply::Text("The report on X is in reports/x.md.".into()),
    );
    send(&bus, "c1", 1, "what else is new").await;
    send(&bus, "c1", 2, "thanks").await;

    // The chat answered all three while the task was still working.
    let first = replies(&bus, 3, Duration::from_secs(60)).await;
    assert!(task_results(&first).is_empty(), "{first:?}");
    let answered: Vec<&str> = first.iter().map(|r| r.in_reply_to.as_str()).collect();
    assert_eq!(answered, ["test:c1-0", "test:c1-1", "test:c1-2"]);

    let all = replies(&bus, 4, Duration::from_secs(60)).await;
    let results = task_results(&all);
    assert_eq!(results.len(), 1, "{all:?}");
    let result = results[0];
    assert_eq!(result.channel, "test");
    assert_eq!(result.chat.as_ref().unwrap().chat_id, "c1");
    assert!(
        result.text.contains("The report on X is in reports/x.md.")
            && result.text.contains("Files written: reports/x.md"),
        "{}",
        result.text
    );
    assert_eq!(
        std::fs::read_to_string(test.workspace_path().join("reports/x.md")).unwrap(),
        "# X\nFindings.\n"
    );
    // Its steps were published as progress, like a turn's.
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), progress.next())
            .await
            .expect("the sub-agent's write_file call as progress")
            .unwrap();
        let p = <nexus_proto::v1::TurnProgress as prost::Message>::decode(m.payload).unwrap();
        if let Some(nexus_proto::v1::turn_progress::Kind::Tool(t)) = p.kind {
            assert_eq!(
                p.session_id,
                format!("task:{}", p.turn_id.trim_start_matches("task:"))
            );
            assert_eq!(t.name, "write_file");
            break;
        }
    }

    // The result is part of the chat's history: the next turn's model sees it.
    send(&bus, "c1", 3, "summarise that report").await;
    let all = replies(&bus, 5, Duration::from_secs(60)).await;
    assert_eq!(task_results(&all).len(), 1, "{all:?}");
    let last = fake
        .requests()
        .into_iter()
        .rfind(|r| r["model"] != SUB)
        .unwrap();
    let seen = last["messages"].as_array().unwrap().iter().any(|m| {
        m["role"] == "assistant"
            && m["content"]
                .as_str()
                .is_some_and(|c| c.contains("The report on X"))
    });
    assert!(seen, "{last}");
    // The sub-agent made its two model calls, no more.
    let sub_requests = fake.requests().iter().filter(|r| r["model"] == SUB).count();
    assert_eq!(sub_requests, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_whose_replica_is_killed_restarts_elsewhere_and_reports_once() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::EchoLastUser("re: ".into())).await;
    fake.push([Reply::ToolCalls(vec![spawn_call("Write reports/x.md")])]);
    fake.set_model_reply(SUB, Reply::Hang);
    let env = env(&fake);
    let mut stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    send(&bus, "c1", 0, "write the report in the background").await;
    sub_agent_asking(&fake).await;
    replies(&bus, 1, Duration::from_secs(60)).await;
    stack.agent.take().unwrap().kill().await;
    fake.set_model_reply(SUB, Reply::Text("Report written.".into()));
    fake.set_model_delay(SUB, Duration::ZERO);
    let _other = ServiceProcess::spawn("agent-core", &[], stack.env());

    let all = replies(&bus, 2, Duration::from_secs(90)).await;
    let results = task_results(&all);
    assert_eq!(results.len(), 1, "{all:?}");
    assert!(
        results[0].text.contains("Report written.") && results[0].text.contains("restarted"),
        "{}",
        results[0].text
    );
    // The work item is gone, and a later turn is answered with still one result.
    eventually(
        "the task to leave the queue",
        Duration::from_secs(30),
        || {
            let bus = bus.clone();
            async move { (queued_tasks(&bus).await == 0).then_some(()) }
        },
    )
    .await;
    send(&bus, "c1", 1, "anything else?").await;
    let all = replies(&bus, 3, Duration::from_secs(60)).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(task_results(&all).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_lists_a_running_task_and_cancel_stops_it_without_a_result() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::EchoLastUser("re: ".into())).await;
    fake.push([Reply::ToolCalls(vec![spawn_call("Write reports/x.md")])]);
    // Would hold its work item for 10 minutes, far past the waits below, were the
    // cancel not noticed while its model call runs.
    fake.set_model_reply(SUB, Reply::Text("Report written.".into()));
    fake.set_model_delay(SUB, Duration::from_secs(600));
    let env = env(&fake);
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    send(&bus, "c1", 0, "write the report in the background").await;
    sub_agent_asking(&fake).await;
    let id = spawned_task_id(&fake).await;
    replies(&bus, 1, Duration::from_secs(60)).await;

    send(&bus, "c1", 1, "/tasks").await;
    let listed = replies(&bus, 2, Duration::from_secs(60)).await;
    let text = &listed[1].text;
    assert!(
        text.contains(&id) && text.contains("running") && text.contains("report"),
        "{text}"
    );

    send(&bus, "c1", 2, &format!("/cancel {id}")).await;
    let cancelled = replies(&bus, 3, Duration::from_secs(60)).await;
    assert!(
        cancelled[2].text.contains(&format!("Cancelled task {id}")),
        "{}",
        cancelled[2].text
    );
    eventually(
        "the cancelled task to leave the queue",
        Duration::from_secs(30),
        || {
            let bus = bus.clone();
            async move { (queued_tasks(&bus).await == 0).then_some(()) }
        },
    )
    .await;
    // A task's result is published before its item is acked, so none can follow now.
    send(&bus, "c1", 3, "/tasks").await;
    let all = replies(&bus, 4, Duration::from_secs(60)).await;
    assert!(all[3].text.contains("cancelled"), "{}", all[3].text);
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(task_results(&all).is_empty(), "{all:?}");
    send(&bus, "c1", 4, &format!("/cancel {id}")).await;
    let all = replies(&bus, 5, Duration::from_secs(60)).await;
    assert!(all[4].text.contains("already cancelled"), "{}", all[4].text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_task_over_the_user_limit_is_refused_clearly() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("Working on it.".into())).await;
    fake.push([
        Reply::ToolCalls(vec![spawn_call("first report")]),
        Reply::ToolCalls(vec![spawn_call("second report")]),
    ]);
    fake.set_model_reply(SUB, Reply::Hang);
    let mut env = env(&fake);
    env.push(("NEXUS__SUBAGENTS__MAX_RUNNING_PER_USER", "1".into()));
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    send(&bus, "c1", 0, "write two reports").await;
    replies(&bus, 1, Duration::from_secs(60)).await;
    let texts = tool_texts(&fake);
    assert!(
        texts.iter().any(|t| t.contains("Started task")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("ERROR [denied]")
            && t.contains("too many tasks")
            && t.contains("max_running_per_user")),
        "{texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sub_agent_is_not_offered_spawn_and_is_refused_when_it_calls_it() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("Started.".into())).await;
    fake.push([Reply::ToolCalls(vec![spawn_call("nest")])]);
    fake.set_model_reply(SUB, Reply::ToolCalls(vec![spawn_call("deeper")]));
    let mut env = env(&fake);
    env.push(("NEXUS__SUBAGENTS__MAX_ITERATIONS", "2".into()));
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    send(&bus, "c1", 0, "start a task").await;
    let all = replies(&bus, 2, Duration::from_secs(60)).await;
    assert_eq!(task_results(&all).len(), 1, "{all:?}");
    let sub: Vec<Value> = fake
        .requests()
        .into_iter()
        .filter(|r| r["model"] == SUB)
        .collect();
    let first_tools: Vec<&str> = sub[0]["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["function"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(!first_tools.contains(&"spawn"), "{first_tools:?}");
    assert!(!first_tools.contains(&"message"), "{first_tools:?}");
    let texts = tool_texts(&fake);
    assert!(
        texts
            .iter()
            .any(|t| t.contains("may not start further tasks") && t.contains("max_depth")),
        "{texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_a_running_task_back_and_the_next_replica_reports_it_once() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::EchoLastUser("re: ".into())).await;
    fake.push([Reply::ToolCalls(vec![spawn_call("Write reports/x.md")])]);
    fake.set_model_reply(SUB, Reply::Hang);
    let mut env = env(&fake);
    // Long, so only a hand-back (a nak) can bring the task to the next replica in time.
    env.push(("NEXUS__AGENT__ACK_WAIT_SECS", "60".into()));
    let mut stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    send(&bus, "c1", 0, "write the report in the background").await;
    sub_agent_asking(&fake).await;
    replies(&bus, 1, Duration::from_secs(60)).await;
    // The task would hang for ever; SIGTERM must not wait for it, nor drop it.
    let status = stack
        .agent
        .take()
        .unwrap()
        .terminate(Duration::from_secs(30))
        .await;
    assert!(status.success(), "agent-core exited with {status}");
    assert_eq!(queued_tasks(&bus).await, 1, "the task left the queue");
    // Handed back: a nak marks it for redelivery at once, where a dropped item would
    // wait out the 60 s ack wait.
    eventually(
        "the task to be handed back",
        Duration::from_secs(10),
        || {
            let bus = bus.clone();
            async move {
                let mut consumer: async_nats::jetstream::consumer::PullConsumer = bus
                    .jetstream()
                    .get_stream(bus.subjects().tasks_stream())
                    .await
                    .ok()?
                    .get_consumer(&bus.subjects().tasks_consumer())
                    .await
                    .ok()?;
                let info = consumer.info().await.ok()?;
                (info.num_redelivered == 1).then_some(())
            }
        },
    )
    .await;

    fake.set_model_reply(SUB, Reply::Text("Report written.".into()));
    let _next = ServiceProcess::spawn("agent-core", &[], stack.env());
    let all = replies(&bus, 2, Duration::from_secs(30)).await;
    let results = task_results(&all);
    assert_eq!(results.len(), 1, "{all:?}");
    assert!(
        results[0].text.contains("Report written.") && results[0].text.contains("restarted"),
        "{}",
        results[0].text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sub_agents_model_calls_are_billed_to_the_spawning_user_and_the_task() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("Done.".into())).await;
    fake.push([Reply::ToolCalls(vec![spawn_call("Write reports/x.md")])]);
    let env = env(&fake);
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;
    let mut usage = bus
        .client()
        .subscribe(bus.subjects().event(nexus_bus::event_kind::LLM_USAGE))
        .await
        .unwrap();

    send(&bus, "c1", 0, "write the report in the background").await;
    let all = replies(&bus, 2, Duration::from_secs(60)).await;
    assert_eq!(task_results(&all).len(), 1, "{all:?}");
    let id = spawned_task_id(&fake).await;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|u: &nexus_proto::v1::LlmUsage| u.purpose.starts_with("task:"))
    {
        let ev = tokio::time::timeout(Duration::from_secs(10), usage.next())
            .await
            .expect("a usage event of the task")
            .unwrap();
        if let Some(nexus_proto::v1::event::Kind::LlmUsage(u)) =
            <nexus_proto::v1::Event as prost::Message>::decode(ev.payload)
                .unwrap()
                .kind
        {
            seen.push(u);
        }
    }
    let turn = seen.iter().find(|u| u.purpose == "turn").unwrap();
    let task = seen
        .iter()
        .find(|u| u.purpose.starts_with("task:"))
        .unwrap();
    assert_eq!(task.purpose, format!("task:{id}"));
    assert_eq!(task.user_id, turn.user_id);
    assert!(!task.user_id.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_over_its_time_limit_reports_once_that_it_timed_out() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("Started.".into())).await;
    fake.push([Reply::ToolCalls(vec![spawn_call("Write reports/x.md")])]);
    fake.set_model_reply(SUB, Reply::Hang);
    let mut env = env(&fake);
    env.push(("NEXUS__SUBAGENTS__TIMEOUT_SECS", "2".into()));
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    send(&bus, "c1", 0, "write the report in the background").await;
    let all = replies(&bus, 2, Duration::from_secs(60)).await;
    let results = task_results(&all);
    assert_eq!(results.len(), 1, "{all:?}");
    assert!(
        results[0].text.contains("timed out") && results[0].text.contains("timeout_secs"),
        "{}",
        results[0].text
    );
    eventually(
        "the task to leave the queue",
        Duration::from_secs(30),
        || {
            let bus = bus.clone();
            async move { (queued_tasks(&bus).await == 0).then_some(()) }
        },
    )
    .await;
    send(&bus, "c1", 1, "/tasks").await;
    let all = replies(&bus, 3, Duration::from_secs(60)).await;
    assert!(all[2].text.contains("failed"), "{}", all[2].text);
    assert_eq!(task_results(&all).len(), 1, "{all:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_over_the_deployment_limit_is_refused_clearly() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("Working on it.".into())).await;
    fake.set_model_reply(SUB, Reply::Hang);
    let mut env = env(&fake);
    env.push(("NEXUS__SUBAGENTS__MAX_RUNNING_TOTAL", "1".into()));
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    fake.push([Reply::ToolCalls(vec![spawn_call("first report")])]);
    send(&bus, "c1", 0, "write a report").await;
    replies(&bus, 1, Duration::from_secs(60)).await;
    // Another user, in another chat: the deployment's limit, not the user's, refuses.
    fake.push([Reply::ToolCalls(vec![spawn_call("second report")])]);
    super::send_as(&bus, "c2", 0, "write a report too", "u2").await;
    replies(&bus, 2, Duration::from_secs(60)).await;
    let texts = tool_texts(&fake);
    assert!(
        texts.iter().any(|t| t.contains("ERROR [denied]")
            && t.contains("too many tasks")
            && t.contains("max_running_total")),
        "{texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_turn_redone_after_a_crash_does_not_spawn_its_task_twice() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("unused".into())).await;
    // The first turn spawns, then hangs in its second model call.
    fake.push([
        Reply::ToolCalls(vec![spawn_call("Write reports/x.md")]),
        Reply::Hang,
    ]);
    fake.set_model_reply(SUB, Reply::Text("Report written.".into()));
    let env = env(&fake);
    let mut stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    send(&bus, "c1", 0, "write the report in the background").await;
    eventually(
        "the turn to wait in its second model call",
        Duration::from_secs(60),
        || {
            let n = fake.in_flight("gpt-4.1-mini");
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    stack.agent.take().unwrap().kill().await;
    fake.push([
        Reply::ToolCalls(vec![spawn_call("Write reports/x.md")]),
        Reply::Text("On it.".into()),
    ]);
    let _again = ServiceProcess::spawn("agent-core", &[], stack.env());

    let all = replies(&bus, 2, Duration::from_secs(60)).await;
    assert_eq!(task_results(&all).len(), 1, "{all:?}");
    let texts = tool_texts(&fake);
    assert!(
        texts.iter().any(|t| t.contains("was already started")),
        "{texts:?}"
    );
    // One work item was ever stored.
    let mut stream = bus
        .jetstream()
        .get_stream(bus.subjects().tasks_stream())
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.last_sequence, 1);
    send(&bus, "c1", 1, "thanks").await;
    let all = replies(&bus, 3, Duration::from_secs(60)).await;
    assert_eq!(task_results(&all).len(), 1, "{all:?}");
}
