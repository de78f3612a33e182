//! MCP servers mounted by tool-runner, with real servers run by the test:
//! `mcp-server-time` (PyPI) and a scripted server (`tests/mcp-servers/scripted_server.py`)
//! over stdio, `@modelcontextprotocol/server-everything` (npm, `tests/mcp-servers`)
//! over streamable HTTP behind a proxy that wants a bearer token. Their tools are
//! seen and called over real NATS, as agent-core sees and calls them.

use std::{collections::BTreeMap, net::TcpListener, time::Duration};

use nexus_common::config::{McpServerConfig, ToolsConfig};
use nexus_proto::v1::{ToolErrorKind, ToolSpec, tool_result::Outcome};
use nexus_testkit::{ServiceProcess, TestEnv, eventually};
use nexus_tools::ToolDirectory;
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{TestApp, spawn_app_with};

/// The test servers' folder (its node_modules are installed by `.ci/run`).
const SERVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp-servers");
/// Room for a Python or Node start and a few backoff steps on a busy machine.
const WAIT: Duration = Duration::from_secs(30);
/// Set in the environment of every stdio server a test starts, to find its processes.
const MARKER: &str = "NEXUS_TEST_MCP";

/// tool-runner with MCP servers, and a live view of what it offers.
struct World {
    app: TestApp,
    /// Marks the processes of this test's stdio servers.
    marker: String,
    tools: ToolDirectory,
    _stop: DropGuard,
}

impl World {
    /// tool-runner with the servers `servers` makes from the test's marker.
    async fn spawn(servers: impl FnOnce(&str) -> Vec<McpServerConfig>) -> Self {
        Self::spawn_with(servers, |_| {}).await
    }

    /// Like [`World::spawn`], with more `[tools]` settings.
    async fn spawn_with(
        servers: impl FnOnce(&str) -> Vec<McpServerConfig>,
        tools: impl FnOnce(&mut ToolsConfig),
    ) -> Self {
        let mut env = TestEnv::new();
        let marker = env.namespace.clone();
        env.config.tools.mcp = servers(&marker);
        tools(&mut env.config.tools);
        let app = spawn_app_with(env, tempfile::tempdir().unwrap()).await;
        let stop = CancellationToken::new();
        let tools = ToolDirectory::start(&app.bus, stop.clone()).await.unwrap();
        Self {
            app,
            marker,
            tools,
            _stop: stop.drop_guard(),
        }
    }

    /// The spec of `tool`, once it is offered.
    async fn offered(&self, tool: &str) -> ToolSpec {
        eventually(&format!("{tool} to be offered"), WAIT, || async {
            self.tools.specs().get(tool).cloned()
        })
        .await
    }

    async fn withdrawn(&self, tool: &str) {
        eventually(&format!("{tool} to be withdrawn"), WAIT, || async {
            (!self.tools.specs().contains_key(tool)).then_some(())
        })
        .await
    }

    /// The status line of `server` in tool-runner's announcement, once `ok` likes it
    /// (polled like `eventually`, but a timeout shows the last line seen).
    async fn status(&self, server: &str, ok: impl Fn(&str) -> bool) -> String {
        let key = format!("mcp {server}");
        let mut last = None;
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let line = self
                    .tools
                    .providers()
                    .into_iter()
                    .filter(|p| p.provider == "tool-runner")
                    .min_by_key(|p| p.age)
                    .and_then(|p| p.status.get(&key).cloned());
                if let Some(line) = line.as_deref()
                    && ok(line)
                {
                    return line.to_owned();
                }
                last = line;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("status of {server} never as expected; last: {last:?}"))
    }

    async fn output(&self, tool: &str, args: Value) -> String {
        self.app.output(tool, args).await
    }

    /// Pids of this test's stdio server processes.
    fn server_pids(&self) -> Vec<u32> {
        server_pids(&self.marker)
    }
}

/// Pids of the processes whose environment holds `MARKER=marker`.
fn server_pids(marker: &str) -> Vec<u32> {
    let wanted = format!("{MARKER}={marker}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == wanted.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// `mcp-server-time` from PyPI, as `time`.
fn time_server(marker: &str) -> McpServerConfig {
    let installed = std::process::Command::new("python3")
        .args(["-c", "import mcp_server_time"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "mcp-server-time is missing: python3 -m pip install mcp-server-time (.ci/run does)"
    );
    McpServerConfig {
        name: "time".into(),
        command: Some("python3".into()),
        args: ["-m", "mcp_server_time", "--local-timezone", "UTC"]
            .map(String::from)
            .into(),
        env: BTreeMap::from([(MARKER.into(), marker.into())]),
        ..Default::default()
    }
}

/// `scripted_server.py` under `name`.
fn scripted_server(name: &str, marker: &str) -> McpServerConfig {
    McpServerConfig {
        name: name.into(),
        command: Some("python3".into()),
        args: vec![format!("{SERVERS}/scripted_server.py")],
        env: BTreeMap::from([(MARKER.into(), marker.into())]),
        ..Default::default()
    }
}

/// A loopback port nobody listens on (free when this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_stdio_servers_tools_are_offered_with_its_schemas_and_give_its_real_answers() {
    let w = World::spawn(|marker| vec![time_server(marker)]).await;

    let spec = w.offered("time__convert_time").await;
    assert!(
        spec.provider.starts_with("tool-runner/"),
        "{}",
        spec.provider
    );
    assert_eq!(spec.description, "Convert time between timezones");
    assert!(!spec.requires_approval);
    assert!(spec.timeout_ms >= 60_000, "{}", spec.timeout_ms);
    let schema: Value = serde_json::from_str(&spec.parameters_json_schema).unwrap();
    assert_eq!(schema["type"], "object");
    assert_eq!(
        schema["required"],
        json!(["source_timezone", "time", "target_timezone"])
    );
    assert_eq!(schema["properties"]["time"]["type"], "string");
    w.offered("time__get_current_time").await;
    assert_eq!(
        w.status("time", |s| s.starts_with("up")).await,
        "up, 2 tools"
    );

    // Tokyo keeps no summer time: 14:30 UTC is 23:30 there on any day.
    let out = w
        .output(
            "time__convert_time",
            json!({"source_timezone": "UTC", "time": "14:30", "target_timezone": "Asia/Tokyo"}),
        )
        .await;
    assert!(out.contains(r#""time_difference": "+9.0h""#), "{out}");
    assert!(out.contains("T23:30:00+09:00"), "{out}");

    // The server's isError result reaches the model as a failure in its own words.
    let result = w
        .app
        .call(
            "time__convert_time",
            json!({"source_timezone": "Mars/Olympus", "time": "14:30", "target_timezone": "UTC"}),
        )
        .await;
    let Some(Outcome::Error(e)) = result.outcome else {
        panic!("a bad time zone was answered: {result:?}");
    };
    assert_eq!(e.kind(), ToolErrorKind::Upstream);
    assert!(!e.retryable);
    assert!(e.message.contains("Invalid timezone"), "{}", e.message);
    assert!(e.message.contains("Mars/Olympus"), "{}", e.message);
    w.app.stop().await;
}

#[tokio::test]
async fn tools_settings_by_name_apply_to_mcp_tools_too() {
    let w = World::spawn_with(
        |marker| vec![time_server(marker)],
        |tools| {
            tools.disabled = vec!["time__get_current_time".into()];
            tools.require_approval = vec!["time__convert_time".into()];
        },
    )
    .await;
    let spec = w.offered("time__convert_time").await;
    assert!(spec.requires_approval);
    assert_eq!(
        w.status("time", |s| s.starts_with("up")).await,
        "up, 1 tool, 1 disabled"
    );
    assert!(!w.tools.specs().contains_key("time__get_current_time"));
    let unapproved = w
        .app
        .try_call_raw(
            "time__convert_time",
            nexus_proto::v1::ToolCall {
                call_id: "c".into(),
                name: "time__convert_time".into(),
                arguments_json:
                    json!({"source_timezone": "UTC", "time": "14:30", "target_timezone": "UTC"})
                        .to_string(),
                context: None,
            },
        )
        .await
        .unwrap();
    let Some(Outcome::Error(e)) = unapproved.outcome else {
        panic!("ran without a person's yes: {unapproved:?}");
    };
    assert_eq!(e.kind(), ToolErrorKind::NeedsApproval);
    w.app.stop().await;
}

#[tokio::test]
async fn a_killed_stdio_server_loses_its_tools_and_gets_them_back_when_it_is_restarted() {
    let w = World::spawn(|marker| vec![time_server(marker)]).await;
    w.offered("time__convert_time").await;
    let pids = w.server_pids();
    assert!(!pids.is_empty(), "no process of the time server found");

    // SIGKILL, as a crash would (every process of it, should python3 be a wrapper).
    for pid in &pids {
        nexus_common::process::kill(*pid);
    }
    w.withdrawn("time__convert_time").await;
    w.withdrawn("time__get_current_time").await;

    w.offered("time__convert_time").await;
    let again = w.server_pids();
    assert!(
        !again.is_empty(),
        "no process of the restarted server found"
    );
    assert!(
        again.iter().all(|pid| !pids.contains(pid)),
        "the server was not started again: {pids:?} → {again:?}"
    );
    let out = w
        .output("time__get_current_time", json!({"timezone": "UTC"}))
        .await;
    assert!(out.contains(r#""timezone": "UTC""#), "{out}");
    assert_eq!(
        w.status("time", |s| s.starts_with("up")).await,
        "up, 2 tools"
    );
    w.app.stop().await;
}

#[tokio::test]
async fn a_hung_call_times_out_with_a_clear_failure_while_other_tools_and_servers_keep_answering() {
    let w = World::spawn(|marker| {
        vec![
            McpServerConfig {
                timeout_secs: Some(5),
                ..scripted_server("slow", marker)
            },
            time_server(marker),
        ]
    })
    .await;
    w.offered("slow__wait_forever").await;
    w.offered("time__get_current_time").await;
    w.app.write("notes.md", "still here");

    let hung = {
        let bus = w.app.bus.clone();
        tokio::spawn(async move {
            let subject = bus
                .subjects()
                .tool(&nexus_common::domain::ToolName::parse("slow__wait_forever").unwrap());
            bus.request::<_, nexus_proto::v1::ToolResult>(
                subject,
                &nexus_proto::v1::ToolCall {
                    call_id: "hung".into(),
                    name: "slow__wait_forever".into(),
                    arguments_json: "{}".into(),
                    context: None,
                },
                &nexus_bus::TraceContext::new_root(),
                Some(Duration::from_secs(20)),
            )
            .await
        })
    };
    // While it hangs: a built-in tool, another server, and the same server.
    assert_eq!(
        w.output("read_file", json!({"path": "notes.md"})).await,
        "still here"
    );
    let now = w
        .output("time__get_current_time", json!({"timezone": "UTC"}))
        .await;
    assert!(now.contains(r#""timezone": "UTC""#), "{now}");
    assert_eq!(
        w.output("slow__hello", json!({})).await,
        "hello from the scripted server"
    );
    assert!(
        !hung.is_finished(),
        "the hung call ended before the others were answered"
    );

    let result = hung.await.unwrap().unwrap();
    let Some(Outcome::Error(e)) = result.outcome else {
        panic!("a call that never returns was answered: {result:?}");
    };
    assert_eq!(e.kind(), ToolErrorKind::Timeout);
    assert!(
        e.message
            .contains("the MCP server 'slow' did not answer wait_forever within 5 s"),
        "{}",
        e.message
    );
    // The server stays mounted: a hung call is not a dead server.
    assert_eq!(
        w.output("slow__hello", json!({})).await,
        "hello from the scripted server"
    );
    w.app.stop().await;
}

#[tokio::test]
async fn a_server_that_changes_its_tools_is_listed_again_and_invalid_names_are_skipped() {
    let w = World::spawn(|marker| vec![scripted_server("script", marker)]).await;
    w.offered("script__grow").await;
    assert_eq!(
        w.status("script", |s| s.starts_with("up")).await,
        "up, 4 tools, 1 skipped (invalid names)"
    );
    assert!(
        !w.tools.specs().keys().any(|k| k.starts_with("script__bad")),
        "{:?}",
        w.tools.specs().keys()
    );
    assert!(!w.tools.specs().contains_key("script__extra"));

    assert_eq!(w.output("script__grow", json!({})).await, "grown");
    w.offered("script__extra").await;
    assert_eq!(w.output("script__extra", json!({})).await, "extra is here");
    w.status("script", |s| s == "up, 5 tools, 1 skipped (invalid names)")
        .await;
    w.app.stop().await;
}

#[tokio::test]
async fn a_stdio_server_gets_its_configured_environment_and_none_of_tool_runners_secrets() {
    // The interpreter itself: a pyenv shim would add variables of its own.
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let python = String::from_utf8(python.stdout).unwrap().trim().to_owned();
    let w = World::spawn(|marker| {
        let mut server = scripted_server("script", marker);
        server.command = Some(python);
        server.env.insert("GREETING".into(), "hi".into());
        vec![server]
    })
    .await;
    w.offered("script__env").await;
    let seen: Vec<String> =
        serde_json::from_str(&w.output("script__env", json!({})).await).unwrap();
    assert!(seen.iter().any(|n| n == MARKER), "{seen:?}");
    assert!(seen.iter().any(|n| n == "GREETING"), "{seen:?}");
    assert!(seen.iter().any(|n| n == "PATH"), "{seen:?}");
    // Whatever else this test process has (cargo's variables, say) stays here.
    let basics = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TERM",
        "TMPDIR",
        "TZ",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
    ];
    let private: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| !basics.contains(&k.as_str()))
        .collect();
    assert!(
        private.iter().any(|k| k.starts_with("CARGO")),
        "{private:?}"
    );
    let leaked: Vec<_> = seen.iter().filter(|n| private.contains(n)).collect();
    assert!(leaked.is_empty(), "leaked to the MCP server: {leaked:?}");
    w.app.stop().await;
}

#[tokio::test]
async fn servers_that_are_down_at_start_are_reported_down_and_every_other_tool_works() {
    let closed = free_port();
    let w = World::spawn(|marker| {
        vec![
            McpServerConfig {
                name: "ghost".into(),
                command: Some("/nonexistent/mcp-server".into()),
                ..Default::default()
            },
            McpServerConfig {
                name: "closed".into(),
                url: Some(format!("http://127.0.0.1:{closed}/mcp")),
                ..Default::default()
            },
            time_server(marker),
        ]
    })
    .await;
    let ghost = w.status("ghost", |s| s.starts_with("down")).await;
    assert!(
        ghost.contains("cannot start '/nonexistent/mcp-server'"),
        "{ghost}"
    );
    assert!(ghost.contains("retrying in"), "{ghost}");
    let closed = w.status("closed", |s| s.starts_with("down")).await;
    assert!(closed.contains("initialize failed"), "{closed}");

    w.offered("time__get_current_time").await;
    let now = w
        .output("time__get_current_time", json!({"timezone": "UTC"}))
        .await;
    assert!(now.contains(r#""timezone": "UTC""#), "{now}");
    w.app.write("a.md", "fine");
    assert_eq!(w.output("read_file", json!({"path": "a.md"})).await, "fine");
    let names: Vec<_> = w.tools.specs().into_keys().collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("ghost__") || n.starts_with("closed__")),
        "{names:?}"
    );
    w.app.stop().await;
}

/// server-everything over streamable HTTP behind `auth_proxy.mjs`.
struct HttpServer {
    port: u16,
    upstream: u16,
    token: String,
    process: ServiceProcess,
}

impl HttpServer {
    async fn start(port: u16, upstream: u16, token: &str) -> Self {
        assert!(
            std::path::Path::new(SERVERS)
                .join("node_modules/@modelcontextprotocol/server-everything")
                .exists(),
            "server-everything is missing: npm ci in {SERVERS} (.ci/run does)"
        );
        let process = ServiceProcess::spawn_program(
            "server-everything",
            "node".as_ref(),
            &[&format!("{SERVERS}/auth_proxy.mjs")],
            &[
                ("PORT".into(), port.to_string()),
                ("UPSTREAM_PORT".into(), upstream.to_string()),
                ("TOKEN".into(), token.into()),
            ],
        );
        eventually("the HTTP MCP server to listen", WAIT, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            port,
            upstream,
            token: token.into(),
            process,
        }
    }

    fn config(&self, name: &str, token: &str) -> McpServerConfig {
        McpServerConfig {
            name: name.into(),
            url: Some(format!("http://127.0.0.1:{}/mcp", self.port)),
            headers: BTreeMap::from([("Authorization".into(), format!("Bearer {token}"))]),
            ..Default::default()
        }
    }
}

#[tokio::test]
async fn a_streamable_http_server_gets_the_configured_header_and_answers_and_is_reconnected() {
    let token = format!("token-{}", free_port());
    let server = HttpServer::start(free_port(), free_port(), &token).await;
    let w = World::spawn(|_| {
        vec![
            server.config("everything", &token),
            server.config("locked", "wrong-token"),
        ]
    })
    .await;

    let spec = w.offered("everything__get-sum").await;
    assert_eq!(spec.description, "Returns the sum of two numbers");
    let schema: Value = serde_json::from_str(&spec.parameters_json_schema).unwrap();
    assert_eq!(schema["properties"]["a"]["type"], "number");
    assert_eq!(
        w.output("everything__get-sum", json!({"a": 2, "b": 3}))
            .await,
        "The sum of 2 and 3 is 5."
    );
    let image = w.output("everything__get-tiny-image", json!({})).await;
    assert!(image.contains("[image: image/png, "), "{image}");
    assert!(
        w.status("everything", |s| s.starts_with("up"))
            .await
            .starts_with("up, ")
    );
    // Without the right token the proxy answers 401 and nothing is offered.
    let locked = w.status("locked", |s| s.starts_with("down")).await;
    assert!(locked.contains("401"), "{locked}");
    assert!(
        !w.tools.specs().keys().any(|k| k.starts_with("locked__")),
        "{:?}",
        w.tools.specs().keys()
    );

    // The server goes away: its tools go; it comes back: so do they.
    let (port, upstream) = (server.port, server.upstream);
    let token = server.token.clone();
    server.process.kill().await;
    w.withdrawn("everything__get-sum").await;
    w.status("everything", |s| s.starts_with("down")).await;
    let _server = HttpServer::start(port, upstream, &token).await;
    w.offered("everything__get-sum").await;
    assert_eq!(
        w.output("everything__get-sum", json!({"a": 1, "b": 1}))
            .await,
        "The sum of 1 and 1 is 2."
    );
    w.app.stop().await;
}

#[tokio::test]
async fn stopping_tool_runner_stops_its_stdio_servers() {
    let w =
        World::spawn(|marker| vec![time_server(marker), scripted_server("script", marker)]).await;
    w.offered("time__convert_time").await;
    w.offered("script__hello").await;
    assert!(!w.server_pids().is_empty());
    let marker = w.marker.clone();
    w.app.stop().await;
    eventually("the MCP servers to exit", WAIT, || async {
        server_pids(&marker).is_empty().then_some(())
    })
    .await;
}
