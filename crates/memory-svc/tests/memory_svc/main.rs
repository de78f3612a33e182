//! Black-box tests of memory-svc: `run` in-process on a fresh namespace and
//! workspace, driven only through its NATS subjects and the workspace files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod identity;
mod journal;
mod retrieval;
mod usage;

use std::{panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt as _;
use nexus_bus::{Bus, BusError, MemoryOp, TraceContext, async_nats};
use nexus_common::{Config, shutdown::CancellationToken};
use nexus_proto::v1::{
    AnsweredRequest, AnsweredResponse, AppendTurnRequest, AppendTurnResponse, ContextRequest,
    ContextResponse, HistoryEntry, HistoryRequest, HistoryResponse, OutboundMessage, Role,
    SessionCommandRequest, SessionCommandResponse, SessionRef, session_command_request::Command,
};
use nexus_testkit::{TestEnv, eventually};
use sqlx::{Connection as _, Executor as _, postgres::PgConnection};
use tokio::task::JoinHandle;

const TEMPLATE_AGENTS: &str = include_str!("../../../../workspace/AGENTS.md");
const TEMPLATE_SOUL: &str = include_str!("../../../../workspace/SOUL.md");
const TEMPLATE_USER: &str = include_str!("../../../../workspace/USER.md");
const TEMPLATE_MEMORY: &str = include_str!("../../../../workspace/MEMORY.md");

/// memory-svc running in this process.
struct MemorySvc {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts `memory_svc::run` with `config` and waits until it answers on NATS.
async fn spawn_memory_svc(config: Config, bus: &Bus) -> MemorySvc {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(memory_svc::run(config, shutdown.clone()));
    eventually("memory-svc to answer", Duration::from_secs(20), || {
        let stopped = task.is_finished();
        async move {
            assert!(!stopped, "memory-svc stopped while starting");
            history(bus, "ready-check", 1).await.ok()
        }
    })
    .await;
    MemorySvc { shutdown, task }
}

impl MemorySvc {
    /// Cancels the token and expects a clean return.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("memory-svc did not stop within 20s of shutdown")
            .expect("memory-svc task panicked")
            .expect("memory-svc returned an error");
    }
}

fn session(chat: &str) -> Option<SessionRef> {
    Some(SessionRef {
        channel: "cli".into(),
        chat_id: chat.into(),
        thread_id: String::new(),
    })
}

async fn context(bus: &Bus, chat: &str, user_id: &str) -> ContextResponse {
    let req = ContextRequest {
        session: session(chat),
        user_id: user_id.into(),
        query: "anything".into(),
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

/// Appends a question and its answer as turn `turn_id`.
async fn append(bus: &Bus, chat: &str, turn_id: &str) -> bool {
    let entry = |role: Role, text: String| HistoryEntry {
        role: role as i32,
        text,
        at_ms: 1,
        ..Default::default()
    };
    let entries = vec![
        entry(Role::User, format!("question {turn_id}")),
        entry(Role::Assistant, format!("answer {turn_id}")),
    ];
    append_entries(bus, chat, turn_id, entries).await
}

async fn append_entries(bus: &Bus, chat: &str, turn_id: &str, entries: Vec<HistoryEntry>) -> bool {
    let req = AppendTurnRequest {
        session: session(chat),
        user_id: "cli_alice".into(),
        turn_id: turn_id.into(),
        entries,
        reply: Some(reply(turn_id)),
    };
    let resp: AppendTurnResponse = bus
        .request(
            bus.subjects().memory(MemoryOp::Append),
            &req,
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap();
    resp.stored
}

fn reply(turn_id: &str) -> OutboundMessage {
    OutboundMessage {
        id: format!("reply:{turn_id}"),
        in_reply_to: turn_id.into(),
        channel: "cli".into(),
        text: format!("answer {turn_id}"),
        ..Default::default()
    }
}

async fn answered(bus: &Bus, turn_id: &str) -> AnsweredResponse {
    bus.request(
        bus.subjects().memory(MemoryOp::Answered),
        &AnsweredRequest {
            turn_id: turn_id.into(),
        },
        &TraceContext::new_root(),
        None,
    )
    .await
    .unwrap()
}

async fn session_command(
    bus: &Bus,
    session: Option<SessionRef>,
    command: Option<Command>,
) -> Result<SessionCommandResponse, BusError> {
    bus.request(
        bus.subjects().memory(MemoryOp::Session),
        &SessionCommandRequest { session, command },
        &TraceContext::new_root(),
        None,
    )
    .await
}

async fn history(bus: &Bus, chat: &str, limit: u32) -> Result<Vec<String>, BusError> {
    let resp: HistoryResponse = bus
        .request(
            bus.subjects().memory(MemoryOp::History),
            &HistoryRequest {
                session: session(chat),
                limit,
            },
            &TraceContext::new_root(),
            Some(Duration::from_secs(2)),
        )
        .await?;
    Ok(resp.entries.into_iter().map(|e| e.text).collect())
}

#[tokio::test]
async fn a_fresh_workspace_gets_the_templates_without_losing_a_file_someone_wrote() {
    let env = TestEnv::new();
    env.write("SOUL.md", "# My own soul\n");
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;

    let read = |name: &str| std::fs::read_to_string(env.workspace_path().join(name)).unwrap();
    assert_eq!(read("AGENTS.md"), TEMPLATE_AGENTS);
    assert_eq!(read("USER.md"), TEMPLATE_USER);
    assert_eq!(read("MEMORY.md"), TEMPLATE_MEMORY);
    assert_eq!(read("SOUL.md"), "# My own soul\n");
    assert_ne!(TEMPLATE_SOUL, "# My own soul\n");

    let ctx = context(&bus, "c1", "cli_alice").await;
    assert_eq!(ctx.agents_md, TEMPLATE_AGENTS);
    assert_eq!(ctx.soul_md, "# My own soul\n");
    // First contact: the user's own profile, made from USER.md.
    assert_eq!(ctx.user_id, "cli_alice");
    assert!(
        ctx.user_profile_md
            .starts_with("# USER_cli_alice.md — profile of cli_alice\n"),
        "{}",
        ctx.user_profile_md
    );
    assert_eq!(ctx.user_profile_md, read("USER_cli_alice.md"));
    assert_eq!(ctx.memory_md, TEMPLATE_MEMORY);
    assert_eq!(ctx.session_id, "cli:c1");
    assert_eq!(ctx.timezone, "UTC");
    assert!(ctx.history.is_empty());
    svc.stop().await;
}

#[tokio::test]
async fn a_users_own_profile_wins_over_the_default_one() {
    let env = TestEnv::new();
    env.write("USER_telegram_42.md", "# Bob\nLikes short answers.\n");
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;

    let own = context(&bus, "c1", "telegram_42").await;
    assert_eq!(own.user_profile_md, "# Bob\nLikes short answers.\n");

    let other = context(&bus, "c1", "telegram_43").await;
    assert!(
        other
            .user_profile_md
            .starts_with("# USER_telegram_43.md — profile of telegram_43\n"),
        "{}",
        other.user_profile_md
    );

    // An id that is not file-safe never names a file.
    env.write("USER_.md", "must not be read");
    for unsafe_id in ["../USER_telegram_42", "", "a/b"] {
        let ctx = context(&bus, "c1", unsafe_id).await;
        assert_eq!(ctx.user_profile_md, TEMPLATE_USER, "user id {unsafe_id:?}");
    }
    svc.stop().await;
}

#[tokio::test]
async fn an_edit_to_memory_md_shows_in_the_next_context_and_a_large_one_with_nothing_relevant_is_shortened()
 {
    let mut env = TestEnv::new();
    env.config.memory.max_memory_bytes = 200;
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;

    assert_eq!(context(&bus, "c1", "u").await.memory_md, TEMPLATE_MEMORY);

    env.write("MEMORY.md", "# Memory\n\n- Alice's birthday is 3 March.\n");
    assert_eq!(
        context(&bus, "c1", "u").await.memory_md,
        "# Memory\n\n- Alice's birthday is 3 March.\n"
    );

    let facts: String = (0..40)
        .map(|i| format!("- fact number {i:02}\n\n"))
        .collect();
    env.write("MEMORY.md", &facts);
    let memory_md = context(&bus, "c1", "u").await.memory_md;
    let (kept, note) = memory_md
        .split_once("\n\n[MEMORY.md was shortened here: ")
        .unwrap_or_else(|| panic!("no shortening note in {memory_md:?}"));
    assert!(kept.len() <= 200, "{} bytes kept", kept.len());
    assert!(
        kept.ends_with("- fact number 10"),
        "cut inside a paragraph: {kept:?}"
    );
    assert!(facts.starts_with(kept));
    let remaining = facts.len() - kept.len();
    assert_eq!(note, format!("{remaining} more bytes not shown]\n"));
    svc.stop().await;
}

#[tokio::test]
async fn history_and_answered_turns_survive_a_restart() {
    let env = TestEnv::new();
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    for id in ["cli:1", "cli:2", "cli:3"] {
        assert!(append(&bus, "c1", id).await);
    }
    assert!(append(&bus, "other", "cli:4").await);
    svc.stop().await;

    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    assert_eq!(
        history(&bus, "c1", 2).await.unwrap(),
        [
            "question cli:2",
            "answer cli:2",
            "question cli:3",
            "answer cli:3"
        ]
    );
    let ctx = context(&bus, "c1", "cli_alice").await;
    assert_eq!(ctx.history.len(), 6, "default window holds all three turns");
    assert_eq!(ctx.history[0].turn_id, "cli:1");
    assert_eq!(ctx.history[0].role, Role::User as i32);

    let done = answered(&bus, "cli:2").await;
    assert!(done.answered);
    assert_eq!(done.reply, Some(reply("cli:2")));
    let not_yet = answered(&bus, "cli:99").await;
    assert!(!not_yet.answered);
    assert_eq!(not_yet.reply, None);

    // A context request that names its turn says the same, in the same round trip.
    let ask = |turn_id: &str| ContextRequest {
        session: session("c1"),
        user_id: "cli_alice".into(),
        query: "anything".into(),
        turn_id: turn_id.into(),
        ..Default::default()
    };
    let subject = bus.subjects().memory(MemoryOp::Context);
    let redelivered: ContextResponse = bus
        .request(
            subject.clone(),
            &ask("cli:2"),
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        redelivered.answered,
        Some(AnsweredResponse {
            answered: true,
            reply: Some(reply("cli:2")),
        })
    );
    assert!(
        redelivered.history.is_empty(),
        "no context for an answered turn"
    );
    let fresh: ContextResponse = bus
        .request(subject, &ask("cli:99"), &TraceContext::new_root(), None)
        .await
        .unwrap();
    assert_eq!(fresh.answered, Some(AnsweredResponse::default()));
    assert_eq!(fresh.history.len(), 6);
    assert_eq!(
        context(&bus, "c1", "cli_alice").await.answered,
        None,
        "not checked when no turn is named"
    );

    assert!(
        !append(&bus, "c1", "cli:2").await,
        "a redelivered turn is stored once"
    );
    assert_eq!(history(&bus, "c1", 10).await.unwrap().len(), 6);
    assert!(env.workspace_path().join(".nexus/nexus.db").exists());
    svc.stop().await;
}

#[tokio::test]
async fn a_garbage_payload_or_bad_session_is_a_400_and_the_service_keeps_answering() {
    let env = TestEnv::new();
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;

    for op in [
        MemoryOp::Context,
        MemoryOp::Append,
        MemoryOp::Answered,
        MemoryOp::History,
        MemoryOp::Session,
        MemoryOp::Consolidate,
    ] {
        let raw = bus
            .client()
            .request(
                bus.subjects().memory(op),
                bytes::Bytes::from_static(b"\xff\xff\xff\xff not protobuf"),
            )
            .await
            .unwrap();
        let headers = raw.headers.expect("an error reply carries headers");
        assert_eq!(
            headers
                .get(async_nats::service::NATS_SERVICE_ERROR_CODE)
                .map(|v| v.as_str()),
            Some("400"),
            "{op:?}"
        );
    }

    // A message of the wrong type: field 1 is a number, where a session is expected.
    let wrong_type = HistoryEntry {
        role: Role::User as i32,
        ..Default::default()
    };
    let err = bus
        .request::<_, ContextResponse>(
            bus.subjects().memory(MemoryOp::Context),
            &wrong_type,
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BusError::Remote { code: 400, message, .. } if message.contains("decode")),
        "{err}"
    );

    let bad_session = HistoryRequest {
        session: Some(SessionRef {
            channel: "no.dots".into(),
            chat_id: "c1".into(),
            thread_id: String::new(),
        }),
        limit: 1,
    };
    let err = bus
        .request::<_, HistoryResponse>(
            bus.subjects().memory(MemoryOp::History),
            &bad_session,
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BusError::Remote { code: 400, message, .. } if message.contains("channel")),
        "{err}"
    );

    let no_chat = AppendTurnRequest {
        session: session(""),
        turn_id: "cli:1".into(),
        ..Default::default()
    };
    let err = bus
        .request::<_, AppendTurnResponse>(
            bus.subjects().memory(MemoryOp::Append),
            &no_chat,
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BusError::Remote { code: 400, message, .. } if message.contains("chat id")),
        "{err}"
    );

    assert!(append(&bus, "c1", "cli:1").await);
    assert_eq!(history(&bus, "c1", 1).await.unwrap().len(), 2);
    svc.stop().await;
}

#[tokio::test]
async fn new_empties_the_next_context_while_the_archived_turns_stay_answered() {
    let env = TestEnv::new();
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    for id in ["cli:1", "cli:2"] {
        assert!(append(&bus, "c1", id).await);
    }
    assert!(append(&bus, "c2", "cli:3").await);
    assert_eq!(context(&bus, "c1", "cli_alice").await.history.len(), 4);

    let reset = session_command(&bus, session("c1"), Some(Command::Reset(true)))
        .await
        .unwrap();
    assert_eq!(reset.archived_turns, 2);
    assert_eq!(reset.model_override, "");
    assert!(context(&bus, "c1", "cli_alice").await.history.is_empty());
    assert!(history(&bus, "c1", 10).await.unwrap().is_empty());
    assert_eq!(context(&bus, "c2", "cli_alice").await.history.len(), 2);

    // Idempotency survives /new: a redelivered old message is still answered.
    let done = answered(&bus, "cli:1").await;
    assert!(done.answered);
    assert_eq!(done.reply, Some(reply("cli:1")));
    assert!(!append(&bus, "c1", "cli:2").await);

    assert!(append(&bus, "c1", "cli:4").await);
    let ctx = context(&bus, "c1", "cli_alice").await;
    let texts: Vec<&str> = ctx.history.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts, ["question cli:4", "answer cli:4"]);

    let again = session_command(&bus, session("c1"), Some(Command::Reset(true)))
        .await
        .unwrap();
    assert_eq!(again.archived_turns, 1);
    let nothing_new = session_command(&bus, session("c1"), Some(Command::Reset(true)))
        .await
        .unwrap();
    assert_eq!(nothing_new.archived_turns, 0);
    svc.stop().await;
}

#[tokio::test]
async fn model_sets_the_override_that_context_returns_until_it_is_cleared() {
    let env = TestEnv::new();
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    assert_eq!(context(&bus, "c1", "u").await.model_override, "");

    let set = session_command(
        &bus,
        session("c1"),
        Some(Command::SetModel("  anthropic/claude-sonnet-4 ".into())),
    )
    .await
    .unwrap();
    assert_eq!(set.model_override, "anthropic/claude-sonnet-4");
    assert_eq!(set.archived_turns, 0);
    assert_eq!(
        context(&bus, "c1", "u").await.model_override,
        "anthropic/claude-sonnet-4"
    );
    assert_eq!(context(&bus, "c2", "u").await.model_override, "");

    // /new keeps the model, and so does a restart.
    let reset = session_command(&bus, session("c1"), Some(Command::Reset(true)))
        .await
        .unwrap();
    assert_eq!(reset.model_override, "anthropic/claude-sonnet-4");
    svc.stop().await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    assert_eq!(
        context(&bus, "c1", "u").await.model_override,
        "anthropic/claude-sonnet-4"
    );

    let cleared = session_command(&bus, session("c1"), Some(Command::SetModel(String::new())))
        .await
        .unwrap();
    assert_eq!(cleared.model_override, "");
    assert_eq!(context(&bus, "c1", "u").await.model_override, "");
    svc.stop().await;
}

#[tokio::test]
async fn a_bad_session_command_is_a_400_and_changes_nothing() {
    let env = TestEnv::new();
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    assert!(append(&bus, "c1", "cli:1").await);
    session_command(&bus, session("c1"), Some(Command::SetModel("m1".into())))
        .await
        .unwrap();

    let bad_channel = Some(SessionRef {
        channel: "no.dots".into(),
        chat_id: "c1".into(),
        thread_id: String::new(),
    });
    let cases = [
        ("no command", session("c1"), None, "command is missing"),
        (
            "reset false",
            session("c1"),
            Some(Command::Reset(false)),
            "reset",
        ),
        (
            "no session",
            None,
            Some(Command::Reset(true)),
            "session is missing",
        ),
        (
            "bad channel",
            bad_channel,
            Some(Command::Reset(true)),
            "channel",
        ),
        (
            "no chat",
            session(""),
            Some(Command::Reset(true)),
            "chat id",
        ),
        (
            "control character",
            session("c1"),
            Some(Command::SetModel("gpt\n4o".into())),
            "control",
        ),
        (
            "too long",
            session("c1"),
            Some(Command::SetModel("m".repeat(201))),
            "200",
        ),
    ];
    for (case, session, command, expected) in cases {
        let err = session_command(&bus, session, command).await.unwrap_err();
        assert!(
            matches!(&err, BusError::Remote { code: 400, message, .. } if message.contains(expected)),
            "{case}: {err}"
        );
    }

    let ctx = context(&bus, "c1", "u").await;
    assert_eq!(ctx.model_override, "m1");
    assert_eq!(ctx.history.len(), 2);
    svc.stop().await;
}

#[tokio::test]
async fn an_append_without_entries_stores_the_reply_that_answered_returns() {
    let env = TestEnv::new();
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    assert!(append(&bus, "c1", "cli:1").await);

    // A chat command such as /help: no history, only the reply that went out.
    assert!(append_entries(&bus, "c1", "cli:help", Vec::new()).await);
    let done = answered(&bus, "cli:help").await;
    assert!(done.answered);
    assert_eq!(done.reply, Some(reply("cli:help")));
    assert!(
        !append_entries(&bus, "c1", "cli:help", Vec::new()).await,
        "a redelivered command is stored once"
    );
    assert_eq!(
        history(&bus, "c1", 10).await.unwrap(),
        ["question cli:1", "answer cli:1"]
    );
    svc.stop().await;
}

#[tokio::test]
async fn postgres_keeps_the_history_when_database_url_points_at_it() {
    let mut env = TestEnv::new();
    let url = nexus_testkit::postgres_url();
    let schema = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut admin = PgConnection::connect(&url).await.unwrap();
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    env.config.database.url = format!("{url}{separator}options=-csearch_path%3D{schema}");

    let outcome = AssertUnwindSafe(async {
        let bus = env.bus("test").await;
        let svc = spawn_memory_svc(env.config.clone(), &bus).await;
        assert!(append(&bus, "c1", "cli:1").await);
        assert!(!append(&bus, "c1", "cli:1").await);
        svc.stop().await;

        let svc = spawn_memory_svc(env.config.clone(), &bus).await;
        assert_eq!(
            history(&bus, "c1", 5).await.unwrap(),
            ["question cli:1", "answer cli:1"]
        );
        assert!(answered(&bus, "cli:1").await.answered);
        svc.stop().await;

        // The rows are in the test's schema, and nothing went to SQLite.
        let (turns,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {schema}.turns"))
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(turns, 1);
        assert!(!env.workspace_path().join(".nexus").exists());
    })
    .catch_unwind()
    .await;

    admin
        .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn an_unsupported_database_url_is_a_clear_error_at_start() {
    let mut env = TestEnv::new();
    env.config.database.url = "mysql://root:hunter2@localhost/nexus".into();
    let err = memory_svc::run(env.config.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("is not supported"), "{message}");
    assert!(!message.contains("hunter2"), "password leaked: {message}");
}
