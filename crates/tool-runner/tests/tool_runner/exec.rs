//! `exec` through real NATS with the real tool-runner and the `nexus-sandbox`
//! helper: commands that try to escape are contained and reported to the model as a
//! failure or a harmless result, and tool-runner answers the next call after each.

use std::{io::ErrorKind, net::TcpListener, path::Path, time::Duration};

use nexus_bus::{Bus, TraceContext};
use nexus_common::config::ExecToolsConfig;
use nexus_common::domain::{Namespace, ToolName};
use nexus_proto::v1::{
    ToolCall, ToolContext, ToolErrorKind, ToolResult, ToolSpec, tool_result::Outcome,
};
use nexus_testkit::{ServiceProcess, TestEnv, bin_path, eventually, nats_url};
use nexus_tools::ToolDirectory;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{SECRET, TestApp, spawn_app_with};

/// tool-runner with `exec` on small limits; `configure` changes them.
async fn spawn_exec_app(configure: impl FnOnce(&mut ExecToolsConfig)) -> TestApp {
    let mut env = TestEnv::new();
    let exec = &mut env.config.tools.exec;
    exec.helper = bin_path("nexus-sandbox").display().to_string();
    exec.timeout_secs = 8;
    exec.memory_mb = 256;
    exec.max_processes = 64;
    exec.max_file_mb = 1;
    configure(exec);
    let app = spawn_app_with(env, tempfile::tempdir().unwrap()).await;
    assert_offered(&app).await;
    app
}

async fn assert_offered(app: &TestApp) {
    app.announced_spec("exec").await;
}

impl TestApp {
    /// Runs `command`; the text the model gets back.
    async fn exec(&self, command: &str) -> String {
        self.output("exec", json!({ "command": command })).await
    }

    /// The spec of `name`, once announced.
    async fn announced_spec(&self, name: &str) -> ToolSpec {
        let directory = ToolDirectory::start(&self.bus, CancellationToken::new())
            .await
            .unwrap();
        eventually(
            "the spec to be announced",
            Duration::from_secs(20),
            || async { directory.specs().get(name).cloned() },
        )
        .await
    }

    /// tool-runner still answers, and runs commands.
    async fn still_answers(&self) {
        let out = self.exec("echo still here").await;
        assert!(out.contains("still here"), "{out}");
    }
}

/// Host processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_python_script_written_with_write_file_runs_with_exec_and_prints_its_result() {
    let app = spawn_exec_app(|_| {}).await;
    app.output(
        "write_file",
        json!({"path": "calc.py", "content": "import sys\nprint(sum(range(101)))\nprint('warn', file=sys.stderr)\n"}),
    )
    .await;
    let out = app.exec("python3 calc.py").await;
    assert!(out.starts_with("exit status 0 after "), "{out}");
    assert!(out.contains("--- stdout ---\n5050\n"), "{out}");
    assert!(out.contains("--- stderr ---\nwarn\n"), "{out}");
    // What the command writes stays in the workspace.
    app.exec("python3 calc.py > result.txt").await;
    assert_eq!(app.read("result.txt"), "5050\n");
    app.stop().await;
}

#[tokio::test]
async fn the_exit_status_and_stderr_of_a_failing_command_are_reported() {
    let app = spawn_exec_app(|_| {}).await;
    let out = app.exec("echo partial; echo 'it broke' >&2; exit 3").await;
    assert!(out.starts_with("exit status 3 after "), "{out}");
    assert!(out.contains("--- stdout ---\npartial\n"), "{out}");
    assert!(out.contains("--- stderr ---\nit broke\n"), "{out}");
    let out = app.exec("true").await;
    assert!(out.ends_with("(no output)\n"), "{out}");
    let m = app
        .failure("exec", json!({"command": "  "}), ToolErrorKind::InvalidArgs)
        .await;
    assert!(m.contains("empty"), "{m}");
    app.stop().await;
}

#[tokio::test]
async fn output_over_the_cap_is_cut_with_a_note_keeping_its_start_and_end() {
    let app = spawn_exec_app(|_| {}).await;
    let out = app.exec("seq 1 200000").await;
    assert!(out.contains("--- stdout ---\n1\n2\n3\n"), "{}", &out[..200]);
    assert!(out.contains("[… output cut: "), "no note");
    assert!(out.ends_with("199999\n200000\n"), "the end is kept");
    assert!(out.len() <= 32 * 1024, "{} bytes", out.len());
    app.stop().await;
}

#[tokio::test]
async fn etc_shadow_the_home_directory_and_paths_outside_cannot_be_read() {
    let app = spawn_exec_app(|_| {}).await;
    // A secret in the home directory of the user running tool-runner (this test).
    let home = std::env::var("HOME").unwrap();
    let home_secret = Path::new(&home).join(format!(".nexus-exec-{}", app.env.namespace));
    std::fs::write(&home_secret, SECRET).unwrap();
    let outside = app.secret();
    let out = app
        .exec(&format!(
            "cat /etc/shadow; cat {home}/{name}; cat ~/{name}; ls /root /home; \
             cat {outside}; cat ../../../../../{outside}; cat /proc/1/root/etc/shadow; \
             ls /proc/self/root/; ls ../../..",
            name = home_secret.file_name().unwrap().to_str().unwrap(),
            outside = outside.display(),
        ))
        .await;
    std::fs::remove_file(&home_secret).unwrap();
    assert!(!out.contains(SECRET), "{out}");
    assert!(
        out.contains("/etc/shadow: No such file or directory"),
        "{out}"
    );
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    if let Some(first) = host_shadow.lines().next() {
        assert!(!out.contains(first), "{out}");
    }
    // The root the command sees is the sandbox's own.
    assert!(out.contains("workspace"), "{out}");
    assert!(!out.contains("home\n"), "{out}");
    app.assert_secret_untouched();
    app.still_answers().await;
    app.stop().await;
}

#[tokio::test]
async fn tool_runners_environment_home_and_memory_are_out_of_reach() {
    // The binary alone, with a provider key in its environment and a home of its own.
    let env = TestEnv::new();
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token.txt"), SECRET).unwrap();
    let key = "sk-exec-test-4f1d-never-show";
    let mut vars = env.process_env();
    vars.extend([
        ("OPENAI_API_KEY".to_owned(), key.to_owned()),
        ("HOME".to_owned(), home.path().display().to_string()),
    ]);
    let runner = ServiceProcess::spawn("tool-runner", &[], &vars);
    let pid = runner.id().unwrap();
    let client = async_nats::connect(nats_url()).await.unwrap();
    let bus = Bus::from_client(
        client,
        Namespace::parse(&env.namespace).unwrap(),
        "test",
        Duration::from_secs(10),
    );
    let directory = ToolDirectory::start(&bus, CancellationToken::new())
        .await
        .unwrap();
    eventually("exec to be offered", Duration::from_secs(20), || async {
        directory.specs().get("exec").cloned()
    })
    .await;
    let call = ToolCall {
        call_id: "call-1".into(),
        name: "exec".into(),
        arguments_json: json!({
            "command": format!(
                "env; cat /proc/*/environ; cat /proc/{pid}/environ; cat /proc/$PPID/environ; \
                 cat /proc/self/root/proc/1/environ; cat ~/token.txt; cat {home}/token.txt; \
                 head -c 64 /proc/{pid}/mem; ls /proc; echo done",
                home = home.path().display(),
            )
        })
        .to_string(),
        context: Some(ToolContext::default()),
    };
    let subject = bus.subjects().tool(&ToolName::parse("exec").unwrap());
    let result: ToolResult = bus
        .request(subject, &call, &TraceContext::new_root(), None)
        .await
        .unwrap();
    let Some(Outcome::Output(out)) = result.outcome else {
        panic!("{result:?}")
    };
    assert!(out.contains("done"), "{out}");
    assert!(!out.contains(key), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    assert!(!out.contains("NATS_URL"), "{out}");
    assert!(out.contains("HOME=/tmp"), "{out}");
    assert!(out.contains("PATH=/usr/local/bin"), "{out}");
    runner.terminate(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn writes_outside_the_workspace_and_into_nexus_fail_and_leave_nothing() {
    let app = spawn_exec_app(|_| {}).await;
    app.write(".nexus/nexus.db", "the database 7c2e");
    let outside = app.outside.path().display().to_string();
    let out = app
        .exec(&format!(
            "echo x > {outside}/new.txt; echo x > {outside}/secret.txt; touch /usr/x /etc/x /x; \
             echo x > ../escaped; echo x > .nexus/x; cat .nexus/nexus.db; rm -rf .nexus; \
             mv .nexus gone; ls -a .nexus; echo x > /tmp/private && cat /tmp/private"
        ))
        .await;
    assert!(!out.contains("the database 7c2e"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let ws = app.env.workspace_path();
    assert_eq!(
        std::fs::read_to_string(ws.join(".nexus/nexus.db")).unwrap(),
        "the database 7c2e"
    );
    assert!(!ws.join(".nexus/x").exists());
    assert!(!ws.join("gone").exists());
    assert!(!ws.parent().unwrap().join("escaped").exists());
    assert!(!Path::new("/x").exists() && !Path::new("/usr/x").exists());
    app.assert_secret_untouched();
    app.still_answers().await;
    app.stop().await;
}

#[tokio::test]
async fn a_symlink_planted_in_the_workspace_that_points_out_leads_nowhere() {
    let app = spawn_exec_app(|_| {}).await;
    let ws = app.env.workspace_path();
    std::os::unix::fs::symlink(app.secret(), ws.join("link-file")).unwrap();
    std::os::unix::fs::symlink(app.outside.path(), ws.join("link-dir")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", ws.join("shadow")).unwrap();
    let out = app
        .exec("cat link-file; ls link-dir; cat link-dir/secret.txt; echo x > link-dir/new; cat shadow")
        .await;
    assert!(!out.contains(SECRET), "{out}");
    // Links the command plants lead nowhere for the file tools either.
    app.exec("ln -s / root-link; ln -s /etc/passwd passwd-link")
        .await;
    for path in ["root-link/etc/passwd", "passwd-link"] {
        app.failure("read_file", json!({ "path": path }), ToolErrorKind::Denied)
            .await;
    }
    app.assert_secret_untouched();
    app.still_answers().await;
    app.stop().await;
}

#[tokio::test]
async fn a_tcp_connection_to_a_listener_on_loopback_never_arrives() {
    let app = spawn_exec_app(|_| {}).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = app
        .exec(&format!(
            "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)\""
        ))
        .await;
    assert!(!out.starts_with("exit status 0 "), "{out}");
    assert!(out.contains("ConnectionRefusedError"), "{out}");
    // The command has ended, so any connection it made would be queued by now.
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the listener saw a connection: {other:?}"),
    }
    app.still_answers().await;
    app.stop().await;
}

#[tokio::test]
async fn a_fork_bomb_hits_the_process_limit_and_nothing_of_it_survives() {
    let app = spawn_exec_app(|_| {}).await;
    let marker = format!("bomb-{}", app.env.namespace);
    // The pause is forked before the bomb: a fork by the shell itself while the bomb
    // holds every process slot fails, and dash then exits (status 2, seen in CI)
    // before it could say "contained". `wait` and `echo` are built in.
    let out = app
        .exec(&format!(
            ": {marker}; sleep 1 & pause=$!; bomb() {{ bomb | bomb & }}; bomb; wait $pause; echo contained"
        ))
        .await;
    assert!(out.contains("Cannot fork"), "{out}");
    assert!(out.contains("contained"), "{out}");
    assert_eq!(processes_with(&marker), Vec::<String>::new());
    app.still_answers().await;
    app.stop().await;
}

#[tokio::test]
async fn a_memory_hog_is_stopped_by_the_memory_limit() {
    let app = spawn_exec_app(|_| {}).await;
    let out = app
        .exec("python3 -c \"x = bytearray(2 * 1024 ** 3); print('allocated')\"")
        .await;
    assert!(out.starts_with("exit status 1 "), "{out}");
    assert!(out.contains("MemoryError"), "{out}");
    assert!(!out.contains("allocated"), "{out}");
    app.still_answers().await;
    app.stop().await;
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_all_its_children() {
    let app = spawn_exec_app(|_| {}).await;
    let m = app
        .failure(
            "exec",
            json!({
                "command": "echo started; sleep 3517 & (sleep 3518 &) ; sh -c 'sleep 3519'",
                "timeout_secs": 2
            }),
            ToolErrorKind::Timeout,
        )
        .await;
    assert!(m.contains("ran past its 2 s timeout"), "{m}");
    assert!(m.contains("started"), "the output until then is kept: {m}");
    for sleeper in ["sleep 3517", "sleep 3518", "sleep 3519"] {
        assert_eq!(processes_with(sleeper), Vec::<String>::new(), "{sleeper}");
    }
    // A timeout asked beyond the setting is held to it.
    let spec = app.announced_spec("exec").await;
    assert_eq!(spec.timeout_ms, (8 + 15) * 1000);
    app.still_answers().await;
    app.stop().await;
}

#[tokio::test]
async fn a_command_writing_past_the_file_size_limit_is_stopped_at_the_limit() {
    let app = spawn_exec_app(|_| {}).await;
    let out = app
        .exec("head -c 5000000 /dev/zero > big.bin; echo status=$?")
        .await;
    assert!(out.contains("File size limit exceeded"), "{out}");
    assert!(out.contains("status=153"), "{out}");
    let len = std::fs::metadata(app.env.workspace_path().join("big.bin"))
        .unwrap()
        .len();
    assert_eq!(len, 1024 * 1024);
    app.still_answers().await;
    app.stop().await;
}

#[tokio::test]
async fn killing_or_tracing_tool_runner_or_the_sandbox_itself_fails() {
    let app = spawn_exec_app(|_| {}).await;
    let pid = std::process::id();
    let out = app
        .exec(&format!(
            "kill -9 {pid}; echo kill=$?; kill -9 -1; kill -9 1; \
             python3 -c \"import ctypes; print('ptrace', ctypes.CDLL(None).ptrace(16, 1, 0, 0))\"; \
             unshare -r true; echo unshare=$?; echo done"
        ))
        .await;
    assert!(out.contains("ptrace -1"), "{out}");
    assert!(out.contains("unshare=1"), "{out}");
    assert!(out.contains("done"), "{out}");
    // This test process (tool-runner) is alive, and answers.
    app.still_answers().await;
    app.stop().await;
}

#[tokio::test]
async fn exec_listed_in_require_approval_waits_for_a_persons_yes() {
    let mut env = TestEnv::new();
    env.config.tools.exec.helper = bin_path("nexus-sandbox").display().to_string();
    env.config.tools.require_approval = vec!["exec".into()];
    let app = spawn_app_with(env, tempfile::tempdir().unwrap()).await;
    assert_offered(&app).await;
    assert!(app.announced_spec("exec").await.requires_approval);
    let unapproved = ToolCall {
        call_id: "call-1".into(),
        name: "exec".into(),
        arguments_json: json!({"command": "touch ran"}).to_string(),
        context: Some(ToolContext {
            approved: false,
            ..Default::default()
        }),
    };
    let r = app.try_call_raw("exec", unapproved).await.unwrap();
    match r.outcome {
        Some(Outcome::Error(e)) => assert_eq!(e.kind(), ToolErrorKind::NeedsApproval),
        other => panic!("{other:?}"),
    }
    assert!(!app.env.workspace_path().join("ran").exists());
    // try_call sends the yes.
    app.exec("touch ran").await;
    assert!(app.env.workspace_path().join("ran").exists());
    app.stop().await;
}

#[tokio::test]
async fn where_the_sandbox_cannot_be_set_up_exec_is_not_offered_and_the_status_says_why() {
    for (helper, says) in [
        ("/nonexistent/nexus-sandbox", "is missing"),
        ("/bin/false", "cannot be set up on this host"),
    ] {
        let mut env = TestEnv::new();
        env.config.tools.exec.helper = helper.into();
        let app = spawn_app_with(env, tempfile::tempdir().unwrap()).await;
        let directory = ToolDirectory::start(&app.bus, CancellationToken::new())
            .await
            .unwrap();
        let status = eventually("the exec status", Duration::from_secs(20), || async {
            directory
                .providers()
                .into_iter()
                .find_map(|p| p.status.get("exec").cloned())
        })
        .await;
        assert!(status.starts_with("not offered ("), "{status}");
        assert!(status.contains(says), "{status}");
        assert!(!directory.specs().contains_key("exec"));
        let r = app.try_call("exec", json!({"command": "true"})).await;
        assert!(r.is_err(), "nobody serves exec: {r:?}");
        app.stop().await;
    }
}

/// Replicas that start together on a fresh workspace probe the sandbox at the same
/// moment; each must see it work (one used to lose the race to create `.nexus`
/// and start without `exec`).
#[test]
fn replicas_probing_a_fresh_workspace_together_all_get_exec() {
    let settings = ExecToolsConfig {
        helper: bin_path("nexus-sandbox").display().to_string(),
        ..Default::default()
    };
    // The window is narrow: many rounds make a lost race show (about one in
    // fifteen rounds with the old helper on this machine).
    for _round in 0..40 {
        let ws = tempfile::tempdir().unwrap();
        let start = std::sync::Barrier::new(4);
        let results: Vec<Result<String, String>> = std::thread::scope(|s| {
            let probes: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        tool_runner::exec::Exec::probe(&settings, ws.path()).map(|(_, r)| r)
                    })
                })
                .collect();
            probes.into_iter().map(|p| p.join().unwrap()).collect()
        });
        for r in results {
            assert!(r.is_ok(), "{r:?}");
        }
        assert!(ws.path().join(".nexus").is_dir());
    }
}
