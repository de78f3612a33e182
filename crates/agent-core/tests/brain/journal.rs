//! Journaling and consolidation end to end: agent-core summarizes with the
//! journal route while turns go on, memory-svc keeps each summary exactly once
//! and writes `memories/YYYY-MM-DD.md`, and contexts recall what fell out of
//! the history window.

use std::{collections::BTreeMap, time::Duration};

use nexus_proto::v1::{Event, event};
use nexus_testkit::{
    Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
};

use super::{llm_env, refs, replies, send};

/// The journal's model at the fake (`[memory] journal_route = "openai::journal-model"`).
const JOURNAL_MODEL: &str = "journal-model";

/// Summaries that quote the transcript they were given, so a test can tell
/// exactly which turns each one covered; and one lasting fact.
fn quoting_summaries() -> Reply {
    Reply::Template(
        r#"{"summary": {last_user_json}, "facts": [{"text": "The person in chat c1 drinks green tea.", "about": "test_u1"}]}"#
            .into(),
    )
}

fn journal_env(fake: &FakeOpenAi) -> Vec<(&'static str, String)> {
    let mut env = llm_env(fake);
    env.extend([
        // Off by default in tests (TestEnv), on here.
        ("NEXUS__MEMORY__JOURNAL", "true".into()),
        (
            "NEXUS__MEMORY__JOURNAL_ROUTE",
            "openai::journal-model".into(),
        ),
        ("NEXUS__MEMORY__JOURNAL_BATCH_TURNS", "10".into()),
        ("NEXUS__MEMORY__JOURNAL_SWEEP_SECS", "1".into()),
        ("NEXUS__MEMORY__JOURNAL_IDLE_SECS", "3600".into()),
        ("NEXUS__MEMORY__HISTORY_TURNS", "20".into()),
        // A short lease (about 17 s), so turns a killed replica had claimed are
        // taken over soon, yet room for a slow, loaded test machine.
        ("NEXUS__LLM__REQUEST_TIMEOUT_SECS", "6".into()),
        ("NEXUS__LLM__MAX_RETRIES", "1".into()),
    ]);
    env
}

/// Every journal in the workspace, by file name.
fn journals(test: &TestEnv) -> BTreeMap<String, String> {
    let dir = test.workspace_path().join("memories");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".md")
                .then(|| Some((name, std::fs::read_to_string(e.path()).ok()?)))?
        })
        .collect()
}

/// How often each user line `<user>: <chat> message <i>` appears across the journals.
fn quoted(journals: &BTreeMap<String, String>, user: &str, chat: &str, n: usize) -> Vec<usize> {
    let all: String = journals.values().cloned().collect();
    (0..n)
        .map(|i| {
            all.matches(&format!("{user}: {chat} message {i}\n"))
                .count()
        })
        .collect()
}

/// Errors of failed summaries, collected from `journal` events as they come.
async fn journal_failures(bus: &nexus_bus::Bus) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use futures::StreamExt as _;
    let failed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut events = bus
        .client()
        .subscribe(bus.subjects().event("journal"))
        .await
        .unwrap();
    let sink = failed.clone();
    tokio::spawn(async move {
        while let Some(m) = events.next().await {
            if let Ok(Event {
                kind: Some(event::Kind::Journal(j)),
                ..
            }) = prost::Message::decode(m.payload)
                && !j.ok
            {
                sink.lock().unwrap().push(j.error);
            }
        }
    });
    failed
}

/// The transcripts the journal model was sent, in order.
fn journal_requests(fake: &FakeOpenAi) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r["model"] == JOURNAL_MODEL)
        .map(|r| {
            r["messages"]
                .as_array()
                .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// The first user line of a transcript: where its batch starts.
fn first_turn(transcript: &str) -> String {
    transcript
        .lines()
        .find(|l| l.contains("] test_u1: "))
        .and_then(|l| l.split("] ").nth(1))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_turns_are_journaled_once_each_within_the_window_even_across_a_crash() {
    // agent-core and memory-svc are killed mid-summary; two replicas run after that.
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::EchoLastUser("re: ".into())).await;
    fake.set_model_reply(JOURNAL_MODEL, quoting_summaries());
    // Slow summaries, so the crash below lands while one is being written.
    fake.set_model_delay(JOURNAL_MODEL, Duration::from_millis(800));
    let env = journal_env(&fake);
    let mut stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;
    let failed = journal_failures(&bus).await;

    const TURNS: usize = 200;
    for i in 0..TURNS {
        send(&bus, "c1", i, &format!("c1 message {i}")).await;
    }
    // Crash both services in the middle of a summary: the model has the batch,
    // nothing is committed yet.
    eventually("a summary in flight", Duration::from_secs(60), || async {
        (fake.in_flight(JOURNAL_MODEL) > 0).then_some(())
    })
    .await;
    stack.agent.take().unwrap().kill().await;
    stack.memory.take().unwrap().kill().await;
    let killed = journal_requests(&fake);
    fake.set_model_delay(JOURNAL_MODEL, Duration::ZERO);
    stack.memory = Some(stack.spawn("memory-svc"));
    stack.agent = Some(stack.spawn("agent-core"));
    // From here on two replicas: both writers sweep, and compete for each lease.
    let _second = stack.spawn("agent-core");
    stack.wait_ready(&test, &["memory-svc", "agent-core"]).await;

    let r = replies(&bus, TURNS, Duration::from_secs(180)).await;
    super::assert_once_and_in_order(&r, 1, TURNS);

    // Every turn ends up in the journal, and none twice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let journals = loop {
        let j = journals(&test);
        let counts = quoted(&j, "test_u1", "c1", TURNS);
        if counts.iter().all(|n| *n >= 1) {
            break j;
        }
        if tokio::time::Instant::now() > deadline {
            let missing: Vec<usize> = (0..TURNS).filter(|i| counts[*i] == 0).collect();
            let failures: Vec<String> = failed.lock().unwrap().clone();
            panic!("turns never journaled: {missing:?}; failed summaries: {failures:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The batch the crash interrupted was claimed again and summarized after all.
    let interrupted = first_turn(killed.last().unwrap());
    assert!(
        journal_requests(&fake)[killed.len()..]
            .iter()
            .any(|t| first_turn(t) == interrupted),
        "the interrupted batch (from {interrupted}) was not redone"
    );
    let counts = quoted(&journals, "test_u1", "c1", TURNS);
    let twice: Vec<usize> = (0..TURNS).filter(|i| counts[*i] != 1).collect();
    assert!(
        twice.is_empty(),
        "turns summarized more than once: {twice:?}"
    );
    let all: String = journals.values().cloned().collect();
    let mut ids: Vec<&str> = all
        .lines()
        .filter_map(|l| l.strip_prefix("<!-- nexus:journal id="))
        .map(|rest| rest.split(' ').next().unwrap_or_default())
        .collect();
    let sections = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), sections, "a section was written twice");
    assert!(sections >= TURNS / 40, "{sections} sections");
    for (name, text) in &journals {
        assert!(name.len() == "YYYY-MM-DD.md".len(), "{name}");
        assert!(text.starts_with("# Journal · "), "{text}");
        assert!(text.contains("users=test_u1 -->"), "{text}");
    }
    // The lasting fact went to the user's own memory, once.
    let profile = std::fs::read_to_string(test.workspace_path().join("USER_test_u1.md")).unwrap();
    assert_eq!(
        profile
            .matches("The person in chat c1 drinks green tea.")
            .count(),
        1,
        "{profile}"
    );
    let shared = std::fs::read_to_string(test.workspace_path().join("MEMORY.md")).unwrap();
    assert!(!shared.contains("green tea"), "{shared}");

    // One more turn, now that everything is summarized: its context holds the
    // last 20 turns as messages and recalls earlier ones from the summaries.
    send(&bus, "c1", TURNS, &format!("c1 message {TURNS}")).await;
    replies(&bus, TURNS + 1, Duration::from_secs(60)).await;
    let chats: Vec<serde_json::Value> = fake
        .requests()
        .into_iter()
        .filter(|r| r["model"] == "gpt-4.1-mini")
        .collect();
    let users = |r: &serde_json::Value| {
        r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .count()
    };
    assert!(
        chats.iter().all(|r| users(r) <= 21),
        "the window did not hold"
    );
    let last = chats.last().unwrap();
    assert_eq!(users(last), 21);
    let system = last["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("## Earlier in this conversation"),
        "{system}"
    );
    let recalled: Vec<usize> = (0..TURNS)
        .filter(|i| system.contains(&format!("test_u1: c1 message {i}\n")))
        .collect();
    assert!(
        recalled.iter().any(|i| *i < TURNS - 20),
        "nothing from before the window recalled: {recalled:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn new_journals_the_conversation_and_a_day_question_sees_only_its_own_journal() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("noted".into())).await;
    fake.set_model_reply(
        JOURNAL_MODEL,
        Reply::Template(r#"{"summary": {last_user_json}, "facts": []}"#.into()),
    );
    let env = journal_env(&fake);
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    // Two people (senders u1 and u2 of the test channel), two chats.
    send(&bus, "a", 0, "a message 0 alpha offsite plan").await;
    super::send_as(&bus, "b", 0, "b message 0 bravo salary talk", "u2").await;
    replies(&bus, 2, Duration::from_secs(60)).await;
    // /new archives each conversation, and the journal gets it at once (2 < batch of 10).
    send(&bus, "a", 1, "/new").await;
    super::send_as(&bus, "b", 1, "/new", "u2").await;
    let r = replies(&bus, 4, Duration::from_secs(60)).await;
    assert!(r[2].text.contains("goes to the journal"), "{}", r[2].text);
    let journal = eventually(
        "both conversations journaled",
        Duration::from_secs(60),
        || async {
            let all: String = journals(&test).values().cloned().collect();
            (all.contains("alpha offsite") && all.contains("bravo salary")).then_some(all)
        },
    )
    .await;
    assert!(journal.contains("users=test_u1 -->"), "{journal}");
    assert!(journal.contains("users=test_u2 -->"), "{journal}");

    // "today" names the day: u1's context holds u1's journal section, not u2's.
    send(&bus, "a", 2, "what did we discuss today?").await;
    replies(&bus, 5, Duration::from_secs(60)).await;
    let asked = fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r["model"] == "gpt-4.1-mini")
        .unwrap();
    let system = asked["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("## Notes from the journal"), "{system}");
    assert!(system.contains("alpha offsite plan"), "{system}");
    assert!(
        !system.contains("bravo"),
        "another user's journal leaked: {system}"
    );
    // And the history after /new is empty: only the question itself.
    assert_eq!(
        asked["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_journal_model_returning_junk_is_reported_and_files_nothing() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("fine".into())).await;
    fake.set_model_reply(
        JOURNAL_MODEL,
        Reply::Text("{\"summary\": [\"cut off".into()),
    );
    let env = journal_env(&fake);
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;
    let mut events = bus
        .client()
        .subscribe(bus.subjects().event("journal"))
        .await
        .unwrap();

    send(&bus, "j", 0, "j message 0").await;
    send(&bus, "j", 1, "/new").await;
    let r = replies(&bus, 2, Duration::from_secs(60)).await;
    assert_eq!(r[0].text, "fine", "turns are not held up by the journal");

    let failed = tokio::time::timeout(Duration::from_secs(60), async {
        use futures::StreamExt as _;
        while let Some(m) = events.next().await {
            if let Ok(Event {
                kind: Some(event::Kind::Journal(j)),
                ..
            }) = prost::Message::decode(m.payload)
            {
                return j;
            }
        }
        panic!("event subscription ended");
    })
    .await
    .expect("a journal event");
    assert!(!failed.ok);
    assert!(failed.error.contains("malformed JSON"), "{}", failed.error);
    assert_eq!(failed.turns, 1);
    assert!(
        journals(&test).is_empty(),
        "junk was filed: {:?}",
        journals(&test)
    );
}
