//! `nexus whatsapp login` and `status` end to end: the built `nexus` and
//! `gateway-whatsapp` binaries as processes over real NATS, with a fake bridge
//! (`fake_bridge.rs`, a real WebSocket server speaking bridge/PROTOCOL.md) on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_bridge;

use std::{
    process::{ExitStatus, Stdio},
    time::Duration,
};

use async_nats::jetstream;
use fake_bridge::{FakeBridge, connected};
use futures::StreamExt;
use nexus_bus::Bus;
use nexus_proto::v1::{Event, event};
use nexus_testkit::{ServiceProcess, TestEnv, bin_path, eventually};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

const TOKEN: &str = "whatsapp-cli-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);
/// A pairing code shaped like WhatsApp's (`2@…,…,…,…`).
const QR: &str = "2@Xk3JxG5pQ0Qm4nT3Z8yHq1u8dWZ0bY0xk6mFzq9R1s5pV3cJ0aLr2m3e4,mK8sQ1h0Fv3gYb2lX6cD9eR4tU7wZ0aB3cE6fH9iJ2k=,rN5oP8qS1tV4wY7z=,1";

fn logged_out() -> Value {
    json!({"type": "status", "state": "logged_out", "reason": "logged out from the phone (401); send login to pair again"})
}

/// What the real bridge sends after `login`: a fresh connection, then a code to scan.
fn pairing(qr: &str) -> Vec<Value> {
    vec![
        json!({"type": "status", "state": "connecting"}),
        json!({"type": "qr", "data": qr}),
    ]
}

/// gateway-whatsapp as a process, pointed at `bridge_url`.
fn spawn_gateway(test: &TestEnv, bridge_url: &str) -> ServiceProcess {
    let mut env = test.process_env();
    env.push(("WHATSAPP_BRIDGE_URL".into(), bridge_url.to_owned()));
    env.push(("WHATSAPP_BRIDGE_TOKEN".into(), TOKEN.to_owned()));
    env.push((
        "NEXUS__CHANNELS__WHATSAPP__RECONNECT_MAX_MS".into(),
        "500".into(),
    ));
    ServiceProcess::spawn("gateway-whatsapp", &[], &env)
}

/// Statuses of gateway-whatsapp's service events stored so far, oldest first.
async fn notices(bus: &Bus) -> Vec<String> {
    let s = bus.subjects();
    let stream = bus.jetstream().get_stream(s.events_stream()).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: s.event(nexus_bus::event_kind::SERVICE),
            ..Default::default()
        })
        .await
        .unwrap();
    if consumer.cached_info().num_pending == 0 {
        return Vec::new();
    }
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        if let Some(event::Kind::Service(n)) = Event::decode(m.payload.clone()).unwrap().kind
            && n.service == "gateway-whatsapp"
        {
            out.push(n.status);
        }
        if m.info().map(|i| i.pending).unwrap_or(0) == 0 {
            break;
        }
    }
    out
}

async fn wait_notice(bus: &Bus, status: &str) {
    eventually(
        &format!("gateway-whatsapp's {status:?} event"),
        WAIT,
        || async { notices(bus).await.iter().any(|n| n == status).then_some(()) },
    )
    .await;
}

/// A running `nexus whatsapp …`, its stdout read line by line as it prints.
struct Cli {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stdout: Vec<String>,
}

impl Cli {
    fn spawn(test: &TestEnv, args: &[&str]) -> Self {
        let mut child = Command::new(bin_path("nexus"))
            .arg("whatsapp")
            .args(args)
            .env_clear()
            .envs(
                ["PATH", "HOME"]
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .envs(test.process_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            stdout: Vec::new(),
        }
    }

    /// Waits until a printed line contains `text`.
    async fn wait_line(&mut self, text: &str) {
        tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                let found = line.contains(text);
                self.stdout.push(line);
                if found {
                    return;
                }
            }
            panic!(
                "nexus exited without printing {text:?}:\n{}",
                self.stdout.join("\n")
            );
        })
        .await
        .unwrap_or_else(|_| panic!("nexus did not print {text:?}:\n{}", self.stdout.join("\n")));
    }

    /// Waits for the exit; returns the status, all of stdout and stderr.
    async fn finish(mut self) -> (ExitStatus, String, String) {
        let mut stderr = String::new();
        let mut err = self.child.stderr.take().unwrap();
        let (status, _) = tokio::time::timeout(WAIT, async {
            tokio::join!(self.child.wait(), err.read_to_string(&mut stderr))
        })
        .await
        .expect("nexus exits");
        while let Some(line) = self.lines.recv().await {
            self.stdout.push(line);
        }
        (status.unwrap(), self.stdout.join("\n"), stderr)
    }
}

/// The lines of the QR code in `stdout`: lines of half blocks only.
fn qr_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| {
            l.chars().count() >= 21
                && l.chars()
                    .all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}'))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn login_draws_the_qr_code_and_reports_the_number_once_the_phone_has_paired() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-cli-test").await;
    let bridge = FakeBridge::start(TOKEN, vec![logged_out()], pairing(QR)).await;
    let gateway = spawn_gateway(&test, &bridge.url());
    wait_notice(&bus, "logged_out").await;

    let mut cli = Cli::spawn(&test, &["login"]);
    cli.wait_line("Scan it with WhatsApp").await;
    assert_eq!(
        bridge.commands(),
        [json!({"type": "login"})],
        "the login reached the bridge, once"
    );
    // The phone scanned the code.
    bridge.event(connected());
    let (status, stdout, stderr) = cli.finish().await;
    assert!(status.success(), "{status:?}\n{stdout}\n{stderr}");
    assert!(stdout.contains("Paired as +491700000001"), "{stdout}");
    let qr = qr_lines(&stdout);
    assert!(qr.len() >= 15, "no QR code drawn:\n{stdout}");
    let width = qr[0].chars().count();
    assert!(
        qr.iter().all(|l| l.chars().count() == width),
        "ragged QR code:\n{stdout}"
    );

    let (status, stdout, stderr) = Cli::spawn(&test, &["status"]).finish().await;
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("gateway-whatsapp: 1 live")
            && stdout.contains("WhatsApp: connected as +491700000001"),
        "{stdout}"
    );
    assert!(gateway.terminate(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qr_code_published_just_before_the_command_started_is_drawn_and_a_new_one_replaces_it() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-cli-test").await;
    // The bridge is already pairing (as after its first start) and has shown a code.
    let bridge = FakeBridge::start(TOKEN, pairing(QR), vec![]).await;
    let gateway = spawn_gateway(&test, &bridge.url());
    wait_notice(&bus, "qr").await;

    let mut cli = Cli::spawn(&test, &["login"]);
    cli.wait_line("Scan it with WhatsApp").await;
    bridge.event(json!({"type": "qr", "data": "2@the-next-code,abc=,def=,1"}));
    cli.wait_line("Scan it with WhatsApp").await;
    bridge.event(connected());
    let (status, stdout, stderr) = cli.finish().await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("Paired as +491700000001"), "{stdout}");
    assert!(
        bridge.commands().is_empty(),
        "a pairing in progress is not restarted: {:?}",
        bridge.commands()
    );
    assert!(gateway.terminate(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn login_fails_with_the_reason_when_the_code_expires_unscanned() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-cli-test").await;
    let bridge = FakeBridge::start(TOKEN, vec![logged_out()], pairing(QR)).await;
    let gateway = spawn_gateway(&test, &bridge.url());
    wait_notice(&bus, "logged_out").await;

    let mut cli = Cli::spawn(&test, &["login"]);
    cli.wait_line("Scan it with WhatsApp").await;
    bridge.event(json!({"type": "status", "state": "logged_out",
                        "reason": "pairing expired: the QR code was not scanned in time; send login to try again"}));
    let (status, stdout, stderr) = cli.finish().await;
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("pairing failed") && stderr.contains("pairing expired"),
        "{stderr}"
    );
    assert!(gateway.terminate(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn login_gives_up_after_its_timeout_when_nobody_scans() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-cli-test").await;
    let bridge = FakeBridge::start(TOKEN, vec![logged_out()], pairing(QR)).await;
    let gateway = spawn_gateway(&test, &bridge.url());
    wait_notice(&bus, "logged_out").await;

    let (status, stdout, stderr) = Cli::spawn(&test, &["login", "--timeout", "2"])
        .finish()
        .await;
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        !qr_lines(&stdout).is_empty(),
        "the code was drawn: {stdout}"
    );
    assert!(stderr.contains("did not pair within 2s"), "{stderr}");
    assert!(gateway.terminate(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn login_says_so_when_the_gateway_cannot_reach_the_bridge_or_is_not_running() {
    let test = TestEnv::new();
    let (status, _, stderr) = Cli::spawn(&test, &["login"]).finish().await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("gateway-whatsapp is not running"),
        "{stderr}"
    );

    let bus = test.bus("whatsapp-cli-test").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = spawn_gateway(&test, &format!("ws://127.0.0.1:{port}"));
    eventually("gateway-whatsapp to register", WAIT, || async {
        bus.discover_services(Duration::from_millis(200))
            .await
            .ok()?
            .iter()
            .any(|s| s.name == "gateway-whatsapp")
            .then_some(())
    })
    .await;
    let (status, _, stderr) = Cli::spawn(&test, &["login"]).finish().await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("not connected to the WhatsApp bridge")
            && stderr.contains("WHATSAPP_BRIDGE_URL"),
        "{stderr}"
    );
    assert!(gateway.terminate(WAIT).await.success());
}
