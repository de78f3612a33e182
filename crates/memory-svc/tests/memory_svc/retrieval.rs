//! Retrieval and the memory tools, black-box: files written by hand or by
//! `remember`, read back through `N.tool.memory_search` and `N.memory.context`.
//! Tests that touch the index run once per backend (`sqlite::…`, `postgres::…`).

use std::{future::Future, panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt as _;
use nexus_bus::{Bus, BusError, MemoryOp, TraceContext};
use nexus_common::domain::ToolName;
use nexus_proto::{
    Message as _,
    v1::{
        ContextRequest, ContextResponse, ToolCall, ToolContext, ToolError, ToolErrorKind,
        ToolResult, ToolSpec, tool_result::Outcome,
    },
};
use nexus_testkit::TestEnv;
use serde_json::{Value, json};
use sqlx::{Connection as _, Executor as _, postgres::PgConnection};

use super::{TEMPLATE_MEMORY, session, spawn_memory_svc};

/// Runs `body` with the default SQLite database of its workspace.
async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = ()>,
{
    body(TestEnv::new()).await;
}

/// Runs `body` with `DATABASE_URL` on a fresh PostgreSQL schema, dropped afterwards.
async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut env = TestEnv::new();
    let url = nexus_testkit::postgres_url();
    let schema = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut admin = PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} must be running for tests: {e}"));
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    env.config.database.url = format!("{url}{separator}options=-csearch_path%3D{schema}");
    let outcome = AssertUnwindSafe(body(env)).catch_unwind().await;
    admin
        .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Each body becomes one test per backend.
macro_rules! on_both_backends {
    ($($body:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    super::on_sqlite(super::$body).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    super::on_postgres(super::$body).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_fact_written_by_hand_is_found_for_a_related_question_and_not_for_an_unrelated_one,
    an_edited_file_is_reindexed_on_the_next_request,
    one_users_memory_never_reaches_another_users_search_or_context,
    remember_files_a_fact_under_its_heading_and_it_is_searchable_at_once,
    concurrent_remember_calls_on_two_instances_leave_a_well_formed_memory_md_with_every_fact,
    a_large_memory_md_gives_the_excerpts_relevant_to_the_message_within_the_byte_budget,
);

/// Sends a call of `tool` as user `user_id` ("" for none) and returns its result.
async fn call_as(
    bus: &Bus,
    tool: &str,
    name_in_call: &str,
    args: &str,
    user_id: &str,
) -> ToolResult {
    let call = ToolCall {
        call_id: "call-7".into(),
        name: name_in_call.into(),
        arguments_json: args.into(),
        context: Some(ToolContext {
            session_id: "cli:c1".into(),
            user_id: user_id.into(),
            channel: "cli".into(),
            chat_id: "c1".into(),
            turn_id: "cli:1".into(),
            approved: false,
            timezone: String::new(),
        }),
    };
    bus.request(
        bus.subjects().tool(&ToolName::parse(tool).unwrap()),
        &call,
        &TraceContext::new_root(),
        None,
    )
    .await
    .unwrap()
}

async fn call(bus: &Bus, tool: &str, args: Value, user_id: &str) -> ToolResult {
    call_as(bus, tool, tool, &args.to_string(), user_id).await
}

fn output(result: &ToolResult) -> &str {
    match &result.outcome {
        Some(Outcome::Output(text)) => text,
        other => panic!("expected output, got {other:?}"),
    }
}

fn error(result: &ToolResult) -> &ToolError {
    match &result.outcome {
        Some(Outcome::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn search(bus: &Bus, query: &str, user_id: &str) -> String {
    let result = call(bus, "memory_search", json!({ "query": query }), user_id).await;
    output(&result).to_owned()
}

async fn remember(bus: &Bus, args: Value, user_id: &str) -> String {
    let result = call(bus, "remember", args, user_id).await;
    output(&result).to_owned()
}

async fn context_for(bus: &Bus, user_id: &str, query: &str) -> ContextResponse {
    let req = ContextRequest {
        session: session("c1"),
        user_id: user_id.into(),
        query: query.into(),
        history_turns: 0,
        channel_sender_id: String::new(),
        ..Default::default()
    };
    bus.request(
        bus.subjects().memory(MemoryOp::Context),
        &req,
        &TraceContext::new_root(),
        None,
    )
    .await
    .unwrap()
}

fn read(env: &TestEnv, name: &str) -> String {
    std::fs::read_to_string(env.workspace_path().join(name)).unwrap()
}

/// Rewrites a file with text of the same length and the same mtime, as an edit
/// within one tick of a coarse mtime clock would: only its content hash can
/// tell. Detected because the file was indexed right after its last write,
/// so the tests write files after the service started.
fn rewrite_keeping_size_and_mtime(env: &TestEnv, name: &str, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let path = env.workspace_path().join(name);
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from));
    std::fs::write(&path, text.replace(from, to)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(before)
        .unwrap();
}

async fn a_fact_written_by_hand_is_found_for_a_related_question_and_not_for_an_unrelated_one(
    env: TestEnv,
) {
    env.write(
        "MEMORY.md",
        "# Memory\n\n## Facts\n\n- Alice's dog is called Biscuit.\n- The team standup is at 9:30 every weekday.\n",
    );
    env.write(
        "memories/2025-03-01.md",
        "# 1 March 2025\n\nLunch with Carol: she is moving to Lisbon in June.\n",
    );
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;

    let related = search(&bus, "What is the name of Alice's dog?", "cli_alice").await;
    assert!(
        related.contains("MEMORY.md > Memory > Facts (line 5)\n- Alice's dog is called Biscuit."),
        "{related}"
    );
    assert!(!related.contains("standup"), "{related}");

    let journal = search(&bus, "Where is Carol moving?", "cli_alice").await;
    assert!(
        journal.contains("memories/2025-03-01.md > 1 March 2025 (line 3)\nLunch with Carol"),
        "{journal}"
    );

    let unrelated = search(&bus, "How do I renew my passport?", "cli_alice").await;
    assert!(!unrelated.contains("Biscuit"), "{unrelated}");
    assert!(
        unrelated.contains("Nothing in memory matches"),
        "{unrelated}"
    );
    svc.stop().await;
}

async fn an_edited_file_is_reindexed_on_the_next_request(env: TestEnv) {
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    env.write(
        "MEMORY.md",
        "## Facts\n\n- Alice's dog is called Biscuit.\n",
    );
    assert!(search(&bus, "Alice dog", "u1").await.contains("Biscuit"));

    rewrite_keeping_size_and_mtime(&env, "MEMORY.md", "Biscuit", "Pretzel");
    let after = search(&bus, "Alice dog", "u1").await;
    assert!(after.contains("Pretzel"), "{after}");
    assert!(!after.contains("Biscuit"), "{after}");

    // A new journal is found, and a deleted one is forgotten.
    env.write(
        "memories/2025-03-02.md",
        "# 2 March\n\nThe dentist appointment moved to Friday.\n",
    );
    assert!(search(&bus, "dentist", "u1").await.contains("Friday"));
    std::fs::remove_file(env.workspace_path().join("memories/2025-03-02.md")).unwrap();
    assert!(
        search(&bus, "dentist", "u1")
            .await
            .contains("Nothing in memory matches")
    );
    svc.stop().await;
}

async fn one_users_memory_never_reaches_another_users_search_or_context(env: TestEnv) {
    env.write(
        "USER_cli_bob.md",
        "# Bob\n\n## Facts\n\n- Bob's locker code is 4417.\n",
    );
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;

    let saved = remember(
        &bus,
        json!({"fact": "Alice's locker code is 9023.", "scope": "user"}),
        "cli_alice",
    )
    .await;
    assert!(saved.contains("USER_cli_alice.md"), "{saved}");
    assert!(read(&env, "USER_cli_alice.md").contains("\n- Alice's locker code is 9023.\n"));
    assert!(!read(&env, "MEMORY.md").contains("9023"));

    let alice = search(&bus, "locker code", "cli_alice").await;
    assert!(alice.contains("9023") && !alice.contains("4417"), "{alice}");
    let bob = search(&bus, "locker code", "cli_bob").await;
    assert!(bob.contains("4417") && !bob.contains("9023"), "{bob}");
    let nobody = search(&bus, "locker code", "").await;
    assert!(nobody.contains("Nothing in memory matches"), "{nobody}");
    let unsafe_id = search(&bus, "locker code", "../USER_cli_bob").await;
    assert!(!unsafe_id.contains("4417"), "{unsafe_id}");

    // The model cannot pick whose memory it writes: only the call's context says who speaks.
    let claimed = call(
        &bus,
        "remember",
        json!({"fact": "x", "scope": "user", "user_id": "cli_bob"}),
        "cli_alice",
    )
    .await;
    assert_eq!(error(&claimed).kind(), ToolErrorKind::InvalidArgs);
    let anonymous = call(&bus, "remember", json!({"fact": "x", "scope": "user"}), "").await;
    assert_eq!(error(&anonymous).kind(), ToolErrorKind::Denied);
    assert!(!read(&env, "USER_cli_bob.md").contains("- x"));

    let ctx = context_for(&bus, "cli_alice", "locker code").await;
    assert!(ctx.user_profile_md.contains("9023"));
    assert!(!format!("{ctx:?}").contains("4417"));
    let ctx = context_for(&bus, "cli_bob", "locker code").await;
    assert!(ctx.user_profile_md.contains("4417"));
    assert!(!format!("{ctx:?}").contains("9023"));
    svc.stop().await;
}

async fn remember_files_a_fact_under_its_heading_and_it_is_searchable_at_once(env: TestEnv) {
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;

    let saved = remember(
        &bus,
        json!({"fact": "The VPN server is\nvpn.example.com."}),
        "cli_alice",
    )
    .await;
    assert_eq!(
        saved,
        "Remembered in MEMORY.md under \"Facts\": The VPN server is vpn.example.com."
    );
    remember(
        &bus,
        json!({"fact": "Carol prefers tea.", "section": "## Preferences", "scope": "shared"}),
        "cli_alice",
    )
    .await;
    let again = remember(
        &bus,
        json!({"fact": "The VPN server is vpn.example.com."}),
        "cli_bob",
    )
    .await;
    assert!(again.starts_with("Already in MEMORY.md"), "{again}");
    assert_eq!(
        read(&env, "MEMORY.md"),
        format!(
            "{TEMPLATE_MEMORY}\n- The VPN server is vpn.example.com.\n\n## Preferences\n\n- Carol prefers tea.\n"
        )
    );

    let found = search(&bus, "vpn server", "cli_bob").await;
    assert!(found.contains("MEMORY.md > "), "{found}");
    assert!(
        found.contains(
            "MEMORY.md — long-term memory > Facts (line 8)\n- The VPN server is vpn.example.com."
        ),
        "{found}"
    );
    let ctx = context_for(&bus, "cli_bob", "hello").await;
    assert_eq!(
        ctx.memory_md,
        read(&env, "MEMORY.md"),
        "small files are given whole"
    );

    let result = call(
        &bus,
        "remember",
        json!({"fact": "Dave likes jazz."}),
        "cli_bob",
    )
    .await;
    assert_eq!(result.call_id, "call-7");
    assert_eq!(result.name, "remember");
    assert!(!result.truncated);
    svc.stop().await;
}

async fn concurrent_remember_calls_on_two_instances_leave_a_well_formed_memory_md_with_every_fact(
    env: TestEnv,
) {
    let bus = env.bus("test").await;
    let first = spawn_memory_svc(env.config.clone(), &bus).await;
    // A second instance on the same workspace and database, reachable on its own
    // namespace, so the test decides which instance gets which call.
    let other = TestEnv::new();
    let mut config = other.config.clone();
    config.workspace = env.workspace_path().to_owned();
    config.database.url = env.config.database.url.clone();
    let bus2 = other.bus("test").await;
    let second = spawn_memory_svc(config, &bus2).await;

    let facts: Vec<String> = (0..16)
        .map(|i| format!("Fact number {i} is true."))
        .collect();
    let calls = facts.iter().enumerate().map(|(i, fact)| {
        let bus = if i % 2 == 0 {
            bus.clone()
        } else {
            bus2.clone()
        };
        let fact = fact.clone();
        async move { remember(&bus, json!({ "fact": fact }), "cli_alice").await }
    });
    for saved in futures::future::join_all(calls).await {
        assert!(saved.starts_with("Remembered in MEMORY.md"), "{saved}");
    }

    let text = read(&env, "MEMORY.md");
    let (head, facts_section) = text.split_once("\n## Facts\n").expect("one Facts heading");
    assert_eq!(format!("{head}\n## Facts\n"), TEMPLATE_MEMORY);
    assert!(!facts_section.contains("## "), "{text}");
    let mut bullets: Vec<&str> = facts_section.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(bullets.len(), facts.len(), "{text}");
    assert!(facts_section.starts_with("\n- ") && facts_section.ends_with(".\n"));
    assert!(!facts_section.trim().contains("\n\n"), "one list: {text}");
    bullets.sort_unstable();
    let mut expected: Vec<String> = facts.iter().map(|f| format!("- {f}")).collect();
    expected.sort_unstable();
    assert_eq!(bullets, expected);

    let leftovers: Vec<_> = std::fs::read_dir(env.workspace_path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let found = search(&bus2, "fact number 11", "cli_alice").await;
    assert!(found.contains("- Fact number 11 is true."), "{found}");
    first.stop().await;
    second.stop().await;
}

async fn a_large_memory_md_gives_the_excerpts_relevant_to_the_message_within_the_byte_budget(
    mut env: TestEnv,
) {
    const BUDGET: usize = 1500;
    env.config.memory.max_memory_bytes = BUDGET;
    let mut text = String::from("# Memory\n\n");
    for i in 0..300 {
        if i == 150 {
            text.push_str("## Family\n\n- Alice's birthday is on 3 March; she likes lilies.\n\n");
        }
        text.push_str(&format!(
            "## Project {i:03}\n\n- Ticket {i} for the quarterly report of region {i} was filed on time.\n\n"
        ));
    }
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    env.write("MEMORY.md", &text);
    env.write(
        "USER_cli_bob.md",
        "## Facts\n\n- Bob's birthday is on 9 May.\n",
    );

    let fact_line = text
        .lines()
        .position(|l| l.starts_with("- Alice's birthday"))
        .unwrap()
        + 1;
    for user in ["cli_alice", "cli_bob"] {
        let ctx = context_for(&bus, user, "When is Alice's birthday?").await;
        let memory = &ctx.memory_md;
        assert!(memory.len() <= BUDGET, "{} bytes", memory.len());
        assert!(
            memory.starts_with(&format!("[MEMORY.md is {} bytes", text.len())),
            "{memory}"
        );
        assert!(
            memory.contains(&format!(
                "\n## Memory > Family (line {fact_line})\n- Alice's birthday is on 3 March; she likes lilies.\n"
            )),
            "{memory}"
        );
        assert!(
            !memory.contains("9 May"),
            "a user file never reaches memory_md"
        );
    }

    // Nothing relevant: the head of the file, as before, and not the fact.
    let other = context_for(&bus, "cli_alice", "Can you recommend a good novel?").await;
    assert!(!other.memory_md.contains("birthday"), "{}", other.memory_md);
    assert!(other.memory_md.starts_with("# Memory\n\n## Project 000"));
    assert!(other.memory_md.contains("[MEMORY.md was shortened here"));

    // An edit by hand shows in the very next context.
    rewrite_keeping_size_and_mtime(&env, "MEMORY.md", "3 March", "4 March");
    let ctx = context_for(&bus, "cli_alice", "Alice birthday").await;
    assert!(
        ctx.memory_md.contains("- Alice's birthday is on 4 March"),
        "{}",
        ctx.memory_md
    );
    svc.stop().await;
}

#[tokio::test]
async fn the_memory_tools_are_announced_and_bad_calls_are_tool_errors() {
    let env = TestEnv::new();
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;

    let specs = announced(&bus, 2).await;
    for name in ["remember", "memory_search"] {
        let spec = &specs[name];
        assert_eq!(spec.name, name);
        assert_eq!(
            spec.provider,
            format!("memory-svc/{}", env!("CARGO_PKG_VERSION"))
        );
        let schema: Value = serde_json::from_str(&spec.parameters_json_schema).unwrap();
        assert_eq!(schema["type"], "object");
        assert!(spec.timeout_ms > 0);
    }

    let raw = bus
        .client()
        .request(
            bus.subjects().tool(&ToolName::parse("remember").unwrap()),
            bytes::Bytes::from_static(b"\xff\xff\xff not protobuf"),
        )
        .await
        .unwrap();
    let result = ToolResult::decode(raw.payload).unwrap();
    assert_eq!(error(&result).kind(), ToolErrorKind::InvalidArgs);

    let cases = [
        (
            "remember",
            "memory_search",
            r#"{"fact": "x"}"#,
            "names tool",
        ),
        ("remember", "remember", "{not json", "not valid JSON"),
        ("remember", "remember", r#"{"fact": "  "}"#, "fact is empty"),
        (
            "remember",
            "remember",
            r#"{"section": "x"}"#,
            "missing field",
        ),
        (
            "memory_search",
            "memory_search",
            r#"{"query": "what is it?"}"#,
            "no words",
        ),
        (
            "memory_search",
            "memory_search",
            r#"{"query": 5}"#,
            "invalid",
        ),
    ];
    for (tool, name, args, says) in cases {
        let result = call_as(&bus, tool, name, args, "cli_alice").await;
        let e = error(&result);
        assert_eq!(e.kind(), ToolErrorKind::InvalidArgs, "{args}");
        assert!(!e.retryable);
        assert!(e.message.contains(says), "{args}: {}", e.message);
        assert_eq!(result.call_id, "call-7");
    }
    assert_eq!(
        read(&env, "MEMORY.md"),
        TEMPLATE_MEMORY,
        "nothing was written"
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_disabled_memory_tool_is_neither_served_nor_announced() {
    let mut env = TestEnv::new();
    let bus = env.bus("test").await;
    env.config.tools.disabled = vec!["remember".into()];
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    let specs = announced(&bus, 1).await;
    assert!(specs.contains_key("memory_search"));

    let err = bus
        .request::<_, ToolResult>(
            bus.subjects().tool(&ToolName::parse("remember").unwrap()),
            &ToolCall::default(),
            &TraceContext::new_root(),
            Some(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::NoResponders { .. }), "{err}");
    assert!(
        search(&bus, "facts worth keeping", "u1")
            .await
            .contains("MEMORY.md")
    );
    svc.stop().await;
}

/// The tools announced in `bus`'s namespace, once `want` of them are live.
async fn announced(bus: &Bus, want: usize) -> std::collections::BTreeMap<String, ToolSpec> {
    let directory = nexus_tools::ToolDirectory::start(bus, Default::default())
        .await
        .unwrap();
    nexus_testkit::eventually(
        "the memory tools to be announced",
        Duration::from_secs(20),
        || async {
            let specs = directory.specs();
            (specs.len() == want).then_some(specs)
        },
    )
    .await
}
