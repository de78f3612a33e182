//! End to end: the real bridge (`node bridge/dist/src/main.js` with
//! BRIDGE_FAKE_SOCKET=1, so only the Baileys socket is faked), the built
//! gateway-whatsapp binary, agent-core, memory-svc and tool-runner over real NATS,
//! and a fake OpenAI. The fake WhatsApp is driven over the bridge's test-only
//! `/_fake` WebSocket.
//!
//! The test builds bridge/ (`npm run build`) once per run; it needs `npm ci` to have
//! been run in bridge/ (`just test` does).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
};

use futures::{SinkExt, StreamExt};
use nexus_testkit::{
    ServiceProcess, Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use super::{LID, PHONE, PNG_B64, TOKEN, WAIT, inbound, service_notices};

fn bridge_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bridge")
}

/// Compiles bridge/ once per test run, so the test never runs a stale dist/.
fn build_bridge() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = bridge_dir();
        assert!(
            dir.join("node_modules").exists(),
            "bridge/node_modules is missing: run `cd bridge && npm ci` first (just test does)"
        );
        let out = std::process::Command::new("npm")
            .args(["run", "build"])
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("running npm (Node.js 20+ is needed): {e}"));
        assert!(
            out.status.success(),
            "npm run build failed in bridge/:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The Node.js bridge as a child process.
struct NodeBridge {
    child: Child,
    port: u16,
}

impl NodeBridge {
    async fn start(auth_dir: &Path) -> Self {
        build_bridge();
        let mut child = Command::new("node")
            .arg(bridge_dir().join("dist/src/main.js"))
            .env_clear()
            .envs(
                ["PATH", "HOME"]
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .env("WHATSAPP_BRIDGE_TOKEN", TOKEN)
            .env("BRIDGE_HOST", "127.0.0.1")
            .env("BRIDGE_PORT", "0")
            .env("BRIDGE_AUTH_DIR", auth_dir)
            .env("BRIDGE_FAKE_SOCKET", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting node (Node.js 20+ is needed): {e}"));
        let show = std::env::var_os("TEST_LOG").is_some();
        let stdout = child.stdout.take().unwrap();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if show {
                    eprintln!("[whatsapp-bridge] {line}");
                }
            }
        });
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if show {
                    eprintln!("[whatsapp-bridge] {line}");
                }
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["msg"] == "listening" {
                    return v["port"].as_u64().unwrap() as u16;
                }
            }
            panic!("the bridge exited before listening");
        })
        .await
        .expect("the bridge listens");
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if show {
                    eprintln!("[whatsapp-bridge] {line}");
                }
            }
        });
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        nexus_common::process::terminate(self.child.id().unwrap());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the bridge exits on SIGTERM")
            .unwrap()
    }
}

/// The bridge's test-only control socket (`/_fake`).
struct Control(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Control {
    async fn connect(port: u16) -> Self {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/_fake"))
            .await
            .unwrap();
        ws.send(Message::text(
            json!({"type": "auth", "token": TOKEN, "protocol_version": 1}).to_string(),
        ))
        .await
        .unwrap();
        let mut c = Self(ws);
        c.answer().await;
        c
    }

    async fn answer(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.0.next())
                .await
                .expect("the control socket answers")
                .expect("the control socket is open")
                .unwrap();
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "fake.ok", "control failed: {v}");
                return v;
            }
        }
    }

    async fn call(&mut self, msg: Value) -> Value {
        self.0.send(Message::text(msg.to_string())).await.unwrap();
        self.answer().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whatsapp_text_gets_the_agents_reply_and_an_image_reaches_the_agent() {
    let test = TestEnv::new();
    let llm = FakeOpenAi::start(Reply::Text("Hello from the agent".into())).await;
    let base = llm.base_url();
    let stack = Stack::start(
        &test,
        &[
            ("OPENAI_API_KEY", "sk-test-00000000"),
            ("OPENAI_BASE_URL", &base),
            ("NEXUS__LLM__MODEL", "gpt-4.1-mini"),
            ("NEXUS__LLM__STREAM", "false"),
        ],
    )
    .await;
    let bus = test.bus("whatsapp-e2e").await;
    let auth_dir = tempfile::tempdir().unwrap();
    let node = NodeBridge::start(auth_dir.path()).await;

    let mut env = stack.env().to_vec();
    for (k, v) in [
        ("WHATSAPP_BRIDGE_URL", node.url()),
        ("WHATSAPP_BRIDGE_TOKEN", TOKEN.to_owned()),
        (
            "NEXUS__CHANNELS__WHATSAPP__ALLOW_FROM",
            "+491511234567".to_owned(),
        ),
    ] {
        env.push((k.to_owned(), v));
    }
    let gateway = ServiceProcess::spawn("gateway-whatsapp", &[], &env);

    // Pairing: the QR reaches the event stream; "scanning" it logs the bridge in.
    let qr = eventually("the QR code as a service event", WAIT, || async {
        service_notices(&bus)
            .await
            .into_iter()
            .find(|n| n.status == "qr")
    })
    .await;
    assert!(qr.detail.starts_with("FAKE-QR-"), "{qr:?}");
    let mut control = Control::connect(node.port).await;
    control
        .call(
            json!({"type": "fake.pair", "phone_jid": "491700000001@s.whatsapp.net",
                     "lid_jid": "170000000000001@lid", "name": "Nexus"}),
        )
        .await;
    eventually("the connected event", WAIT, || async {
        service_notices(&bus)
            .await
            .iter()
            .any(|n| n.status == "connected" && n.detail == "+491700000001")
            .then_some(())
    })
    .await;

    // A text in, addressed by LID (the phone number comes from the LID mapping).
    control
        .call(json!({
            "type": "fake.inbound",
            "message": {"key": {"remoteJid": LID, "id": "E2E-TEXT", "fromMe": false},
                        "message": {"conversation": "Hi agent"}, "pushName": "Alice",
                        "messageTimestamp": 1_760_000_000},
            "lid_to_phone": {LID: PHONE}
        }))
        .await;
    let sent = eventually("the agent's reply on WhatsApp", WAIT, || async {
        let s = control_sent(node.port).await;
        (!s["sends"].as_array().unwrap().is_empty()).then_some(s)
    })
    .await;
    assert_eq!(
        sent["sends"][0],
        json!({"jid": PHONE, "content": {"text": "Hello from the agent"}, "quoted_id": "E2E-TEXT"})
    );
    let reads = sent["reads"].as_array().unwrap();
    assert!(
        reads.iter().any(|k| k["id"] == "E2E-TEXT"),
        "marked read after the gateway stored it: {reads:?}"
    );
    let asked = llm.requests()[0].to_string();
    assert!(asked.contains("Hi agent"), "{asked}");

    // An image in: the agent's inbound message carries it from the object store.
    control
        .call(json!({
            "type": "fake.inbound",
            "message": {"key": {"remoteJid": PHONE, "id": "E2E-IMG", "fromMe": false},
                        "message": {"imageMessage": {"mimetype": "image/png", "caption": "what is in this picture?"}},
                        "pushName": "Alice", "messageTimestamp": 1_760_000_100},
            "media_base64": PNG_B64
        }))
        .await;
    let image = eventually("the image in N_INBOUND", WAIT, || async {
        inbound(&bus)
            .await
            .into_iter()
            .find(|m| m.id == "whatsapp:E2E-IMG")
    })
    .await;
    assert_eq!(image.text, "what is in this picture?");
    assert_eq!(image.media.len(), 1);
    assert_eq!(image.media[0].mime_type, "image/png");
    use base64::Engine as _;
    assert_eq!(
        bus.get_media(&image.media[0], 1 << 20).await.unwrap(),
        base64::engine::general_purpose::STANDARD
            .decode(PNG_B64)
            .unwrap()
    );
    eventually("the agent's turn on the image", WAIT, || async {
        (llm.requests().len() >= 2).then_some(())
    })
    .await;
    eventually("the reply to the image", WAIT, || async {
        (control_sent(node.port).await["sends"]
            .as_array()
            .unwrap()
            .len()
            >= 2)
            .then_some(())
    })
    .await;

    let status = gateway.terminate(WAIT).await;
    assert!(
        status.success(),
        "gateway-whatsapp exit on SIGTERM: {status:?}"
    );
    let status = node.terminate().await;
    assert!(status.success(), "the bridge exit on SIGTERM: {status:?}");
}

/// What the fake WhatsApp recorded so far (a fresh control connection per look).
async fn control_sent(port: u16) -> Value {
    Control::connect(port)
        .await
        .call(json!({"type": "fake.sent"}))
        .await
}
