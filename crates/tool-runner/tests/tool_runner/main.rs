//! Black-box tests of tool-runner: `run` in-process, driven over real NATS
//! through `ToolCall`/`ToolResult` alone, each test in its own namespace and
//! workspace, with a secret file outside the workspace that must stay unread
//! and unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod exec;
mod liveness;
mod mcp;
mod web;

use std::{path::PathBuf, time::Duration};

use nexus_bus::{Bus, BusError, TraceContext};
use nexus_common::domain::{Namespace, ToolName};
use nexus_proto::{
    Message,
    v1::{ToolCall, ToolContext, ToolErrorKind, ToolResult, ToolSpec, tool_result::Outcome},
};
use nexus_testkit::{TestEnv, eventually, nats_url};
use nexus_tools::ToolDirectory;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "outside secret 5b1e: never show me";
/// Without `BRAVE_API_KEY` (web_search is then not offered).
const ALL_TOOLS: [&str; 7] = [
    "delete_file",
    "edit_file",
    "fetch_url",
    "grep_search",
    "list_dir",
    "read_file",
    "write_file",
];

struct TestApp {
    env: TestEnv,
    bus: Bus,
    outside: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// tool-runner in a fresh namespace and workspace, with a secret beside it.
async fn spawn_app() -> TestApp {
    spawn_app_with(TestEnv::new(), tempfile::tempdir().unwrap()).await
}

async fn spawn_app_with(env: TestEnv, outside: tempfile::TempDir) -> TestApp {
    std::fs::write(outside.path().join("secret.txt"), SECRET).unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(tool_runner::run(env.config.clone(), shutdown.clone()));
    let client = async_nats::connect(nats_url()).await.unwrap();
    let bus = Bus::from_client(
        client,
        Namespace::parse(&env.namespace).unwrap(),
        "test",
        Duration::from_secs(10),
    );
    let app = TestApp {
        env,
        bus,
        outside,
        shutdown,
        handle,
    };
    let mut app = app;
    // Polls until the endpoints answer; a failed start is reported with its error.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if app.handle.is_finished() {
            let result = (&mut app.handle).await;
            panic!("tool-runner stopped during start: {result:?}");
        }
        match app.try_call("read_file", json!({"path": "none"})).await {
            Err(BusError::NoResponders { .. } | BusError::Timeout { .. }) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => break,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tool-runner did not answer within 20s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app
}

impl TestApp {
    async fn try_call(&self, tool: &str, args: Value) -> Result<ToolResult, BusError> {
        self.try_call_raw(
            tool,
            ToolCall {
                call_id: "call-1".into(),
                name: tool.into(),
                arguments_json: args.to_string(),
                context: Some(ToolContext {
                    session_id: "cli:test".into(),
                    user_id: "tester".into(),
                    channel: "cli".into(),
                    chat_id: "test".into(),
                    turn_id: "turn-1".into(),
                    // As agent-core sends it after a person said yes; the gate has its own test.
                    approved: true,
                    timezone: String::new(),
                }),
            },
        )
        .await
    }

    async fn try_call_raw(&self, tool: &str, call: ToolCall) -> Result<ToolResult, BusError> {
        let subject = self.bus.subjects().tool(&ToolName::parse(tool).unwrap());
        self.bus
            .request::<ToolCall, ToolResult>(
                subject,
                &call,
                &TraceContext::new_root(),
                Some(Duration::from_secs(10)),
            )
            .await
    }

    async fn call(&self, tool: &str, args: Value) -> ToolResult {
        let result = self.try_call(tool, args).await.unwrap();
        assert_eq!(result.name, tool);
        assert_eq!(result.call_id, "call-1");
        result
    }

    async fn output(&self, tool: &str, args: Value) -> String {
        let result = self.call(tool, args.clone()).await;
        match result.outcome {
            Some(Outcome::Output(out)) => out,
            other => panic!("{tool} {args}: expected output, got {other:?}"),
        }
    }

    /// Calls a tool that must fail with `kind`; returns the message.
    async fn failure(&self, tool: &str, args: Value, kind: ToolErrorKind) -> String {
        let result = self.call(tool, args.clone()).await;
        match result.outcome {
            Some(Outcome::Error(e)) if e.kind() == kind => e.message,
            other => panic!("{tool} {args}: expected {kind:?}, got {other:?}"),
        }
    }

    fn write(&self, rel: &str, text: &str) {
        self.env.write(rel, text);
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.env.workspace_path().join(rel)).unwrap()
    }

    fn secret(&self) -> PathBuf {
        self.outside.path().join("secret.txt")
    }

    fn assert_secret_untouched(&self) {
        assert_eq!(std::fs::read_to_string(self.secret()).unwrap(), SECRET);
        let entries = std::fs::read_dir(self.outside.path()).unwrap().count();
        assert_eq!(entries, 1, "something was created outside the workspace");
    }

    /// Cancels and checks that `run` returned Ok.
    async fn stop(self) -> (TestEnv, tempfile::TempDir) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("run did not return after shutdown")
            .unwrap();
        assert!(result.is_ok(), "run failed: {result:?}");
        (self.env, self.outside)
    }

    /// The tools the namespace's providers announce, once `want` of them are live.
    async fn announced(&self, want: usize) -> std::collections::BTreeMap<String, ToolSpec> {
        let directory = ToolDirectory::start(&self.bus, CancellationToken::new())
            .await
            .unwrap();
        eventually(
            "the tools to be announced",
            Duration::from_secs(20),
            || async {
                let specs = directory.specs();
                (specs.len() == want).then_some(specs)
            },
        )
        .await
    }
}

#[tokio::test]
async fn reading_a_file_returns_its_content() {
    let app = spawn_app().await;
    app.write("notes/today.md", "# Today\n- ship tool-runner\n");
    let out = app
        .output("read_file", json!({"path": "notes/today.md"}))
        .await;
    assert_eq!(out, "# Today\n- ship tool-runner\n");
    app.stop().await;
}

#[tokio::test]
async fn a_written_file_can_be_read_back() {
    let app = spawn_app().await;
    let out = app
        .output(
            "write_file",
            json!({"path": "drafts/plan.md", "content": "step 1\nstep 2\n"}),
        )
        .await;
    assert!(out.contains("created 'drafts/plan.md'"), "{out}");
    let out = app
        .output("read_file", json!({"path": "drafts/plan.md"}))
        .await;
    assert_eq!(out, "step 1\nstep 2\n");
    assert_eq!(app.read("drafts/plan.md"), "step 1\nstep 2\n");
    app.stop().await;
}

#[tokio::test]
async fn an_edit_with_exactly_one_match_changes_the_file_and_others_are_refused() {
    let app = spawn_app().await;
    app.write("config.md", "mode = fast\nlevel = 1\nlevel = 1\n");
    app.output(
        "edit_file",
        json!({"path": "config.md", "old_text": "mode = fast", "new_text": "mode = safe"}),
    )
    .await;
    assert_eq!(app.read("config.md"), "mode = safe\nlevel = 1\nlevel = 1\n");
    let m = app
        .failure(
            "edit_file",
            json!({"path": "config.md", "old_text": "level = 1", "new_text": "level = 2"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
    assert!(m.contains("2 times"), "{m}");
    assert_eq!(app.read("config.md"), "mode = safe\nlevel = 1\nlevel = 1\n");
    app.stop().await;
}

#[tokio::test]
async fn every_escape_is_denied_and_the_outside_secret_stays_unread_and_unchanged() {
    let app = spawn_app().await;
    let ws = app.env.workspace_path();
    std::os::unix::fs::symlink(app.secret(), ws.join("link-file")).unwrap();
    std::os::unix::fs::symlink(app.outside.path(), ws.join("link-dir")).unwrap();
    std::fs::hard_link(app.secret(), ws.join("hard")).unwrap();
    let outside_name = app
        .outside
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();

    let file_escapes = [
        app.secret().display().to_string(),
        format!("../{outside_name}/secret.txt"),
        "~/secret.txt".to_owned(),
        "link-file".to_owned(),
        "link-dir/secret.txt".to_owned(),
        "hard".to_owned(),
        ".nexus/nexus.db".to_owned(),
    ];
    let mut outputs = Vec::new();
    for path in &file_escapes {
        for (tool, args) in [
            ("read_file", json!({"path": path})),
            (
                "read_file",
                json!({"path": path, "offset_line": 1, "limit_lines": 5}),
            ),
            ("write_file", json!({"path": path, "content": "pwned"})),
            (
                "edit_file",
                json!({"path": path, "old_text": "secret", "new_text": "pwned"}),
            ),
            ("delete_file", json!({"path": path})),
            ("grep_search", json!({"pattern": "secret", "path": path})),
        ] {
            outputs.push(app.failure(tool, args, ToolErrorKind::Denied).await);
        }
    }
    let dir_escapes = [
        app.outside.path().display().to_string(),
        format!("../{outside_name}"),
        "~".to_owned(),
        "link-dir".to_owned(),
        ".nexus".to_owned(),
    ];
    for path in &dir_escapes {
        outputs.push(
            app.failure("list_dir", json!({"path": path}), ToolErrorKind::Denied)
                .await,
        );
        outputs.push(
            app.failure(
                "grep_search",
                json!({"pattern": ".", "path": path}),
                ToolErrorKind::Denied,
            )
            .await,
        );
        let new_file = format!("{path}/new.txt");
        outputs.push(
            app.failure(
                "write_file",
                json!({"path": new_file, "content": "x"}),
                ToolErrorKind::Denied,
            )
            .await,
        );
    }
    // Searching and listing the whole workspace never follow the links out.
    outputs.push(
        app.output("grep_search", json!({"pattern": "secret|never"}))
            .await,
    );
    outputs.push(app.output("list_dir", json!({"recursive": true})).await);

    let outside = app.outside.path().display().to_string();
    for out in &outputs {
        assert!(!out.contains(SECRET), "secret leaked: {out}");
        assert!(!out.contains(&outside), "outside path leaked: {out}");
    }
    assert!(outputs.iter().any(|m| m.contains("via a symlink")));
    assert!(outputs.iter().any(|m| m.contains("hard links")));
    app.assert_secret_untouched();
    app.stop().await;
}

#[tokio::test]
async fn a_garbage_payload_gets_an_invalid_args_result() {
    let app = spawn_app().await;
    let subject = app
        .bus
        .subjects()
        .tool(&ToolName::parse("read_file").unwrap());
    let reply = app
        .bus
        .client()
        .request(subject, bytes_of(&[0xff, 0xff, 0xff]))
        .await
        .unwrap();
    let result = ToolResult::decode(reply.payload).unwrap();
    assert_eq!(result.name, "read_file");
    match result.outcome {
        Some(Outcome::Error(e)) => {
            assert_eq!(e.kind(), ToolErrorKind::InvalidArgs);
            assert!(e.message.contains("not a valid ToolCall"), "{}", e.message);
        }
        other => panic!("expected INVALID_ARGS, got {other:?}"),
    }
    // Bad JSON arguments are answered the same way, and the service lives on.
    let bad = ToolCall {
        call_id: "c".into(),
        name: "read_file".into(),
        arguments_json: "{oops".into(),
        context: None,
    };
    let result = app.try_call_raw("read_file", bad).await.unwrap();
    assert!(
        matches!(result.outcome, Some(Outcome::Error(e)) if e.kind() == ToolErrorKind::InvalidArgs)
    );
    app.write("still.md", "alive");
    assert_eq!(
        app.output("read_file", json!({"path": "still.md"})).await,
        "alive"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_tool_is_announced_with_its_spec() {
    let app = spawn_app().await;
    let specs = app.announced(ALL_TOOLS.len()).await;
    assert_eq!(specs.keys().collect::<Vec<_>>(), ALL_TOOLS);
    for name in ALL_TOOLS {
        let spec = &specs[name];
        assert_eq!(spec.name, name);
        assert!(
            spec.provider.starts_with("tool-runner/"),
            "{}",
            spec.provider
        );
        assert!(spec.timeout_ms > 0);
        assert!(!spec.description.is_empty());
        let schema: Value = serde_json::from_str(&spec.parameters_json_schema).unwrap();
        assert_eq!(schema["type"], "object");
        assert_eq!(spec.requires_approval, name == "delete_file");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_disabled_tool_is_neither_served_nor_announced() {
    let mut env = TestEnv::new();
    env.config.tools.disabled = vec!["delete_file".into()];
    let app = spawn_app_with(env, tempfile::tempdir().unwrap()).await;
    app.write("keep.md", "keep");

    let specs = app.announced(ALL_TOOLS.len() - 1).await;
    assert!(!specs.contains_key("delete_file"));
    assert!(specs.contains_key("read_file"));
    let err = app
        .try_call("delete_file", json!({"path": "keep.md"}))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::NoResponders { .. }), "{err}");
    assert_eq!(app.read("keep.md"), "keep");
    app.stop().await;
}

#[tokio::test]
async fn shutdown_returns_ok_and_the_tools_stop_answering() {
    let app = spawn_app().await;
    app.output("list_dir", json!({})).await;
    let client = async_nats::connect(nats_url()).await.unwrap();
    let bus = Bus::from_client(
        client,
        Namespace::parse(&app.env.namespace).unwrap(),
        "test",
        Duration::from_secs(5),
    );
    app.stop().await;
    let err = bus
        .request::<ToolCall, ToolResult>(
            bus.subjects().tool(&ToolName::parse("list_dir").unwrap()),
            &ToolCall::default(),
            &TraceContext::new_root(),
            Some(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::NoResponders { .. }), "{err}");
}

fn bytes_of(b: &'static [u8]) -> bytes::Bytes {
    bytes::Bytes::from_static(b)
}

#[tokio::test]
async fn a_delete_without_a_persons_yes_is_refused_and_the_file_stays() {
    let app = spawn_app().await;
    app.env.write("keep.txt", "precious");
    let result = app
        .try_call_raw(
            "delete_file",
            ToolCall {
                call_id: "call-x".into(),
                name: "delete_file".into(),
                arguments_json: json!({"path": "keep.txt"}).to_string(),
                context: Some(ToolContext {
                    session_id: "cli:test".into(),
                    approved: false,
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
    let Some(Outcome::Error(e)) = result.outcome else {
        panic!("an unapproved delete ran: {result:?}");
    };
    assert_eq!(e.kind(), ToolErrorKind::NeedsApproval);
    assert!(app.env.workspace_path().join("keep.txt").exists());
    app.stop().await;
}
