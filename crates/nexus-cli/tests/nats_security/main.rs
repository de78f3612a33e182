//! NATS security on a real nats-server (2.10+) of the test's own, started with
//! the shipped `deploy/nats/nats.conf` and `authorization.conf` plus TLS from a
//! throwaway CA: every service logs in as its own user over `tls://`, the whole
//! stack answers, and the server refuses what a user may not do.
//!
//! The permissions are written for the namespace `nexus`, so each test runs it on
//! a server of its own, where that namespace is free.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, time::Duration};

use nexus_bus::{Bus, NatsAccess, async_nats};
use nexus_common::domain::Namespace;
use nexus_testkit::{
    Configured, NatsServer, ServiceProcess, eventually,
    fake_openai::{FakeOpenAi, Reply},
    nats_server_2_10,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Every user of `deploy/nats/authorization.conf`, with the variable its password comes from.
const USERS: &[&str] = &[
    "admin",
    "agent-core",
    "tool-runner",
    "memory-svc",
    "scheduler",
    "gateway-telegram",
    "gateway-slack",
    "gateway-whatsapp",
    "gateway-api",
    "console",
];

fn password_var(user: &str) -> String {
    format!(
        "NEXUS_NATS_{}_PASSWORD",
        user.to_uppercase().replace('-', "_")
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A nats-server with the deployment's users and permissions, serving TLS with a
/// certificate from a CA made for this test.
struct SecureNats {
    dir: tempfile::TempDir,
    /// Clients present `client.pem` (NATS_CERT, NATS_KEY), which the server requires.
    mutual: bool,
    passwords: Vec<(String, String)>,
    server: Option<NatsServer>,
}

impl SecureNats {
    async fn start() -> Self {
        Self::start_with(false).await
    }

    /// With `mutual`, the server also asks every client for a certificate of the CA
    /// (`verify: true`); `client.pem`/`client-key.pem` hold one.
    async fn start_with(mutual: bool) -> Self {
        nexus_testkit::init_logging();
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nexus test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap()
                .signed_by(&server_key, &ca)
                .unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client_cert = rcgen::CertificateParams::new(vec!["agent-core".into()])
            .unwrap()
            .signed_by(&client_key, &ca)
            .unwrap();
        std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("client-key.pem"),
            client_key.serialize_pem(),
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("server-key.pem"),
            server_key.serialize_pem(),
        )
        .unwrap();

        // The shipped files as they are, with TLS added where nats.conf says to.
        let conf = std::fs::read_to_string(repo().join("deploy/nats/nats.conf")).unwrap();
        let store = dir.path().join("jetstream");
        assert!(
            conf.contains("store_dir: /data"),
            "nats.conf keeps JetStream in /data"
        );
        let mut conf = conf.replace(
            "store_dir: /data",
            &format!("store_dir: \"{}\"", store.display()),
        );
        conf.push_str(&format!(
            "\ntls {{\n  cert_file: \"{0}/server.pem\"\n  key_file: \"{0}/server-key.pem\"\n  ca_file: \"{0}/ca.pem\"\n  verify: {1}\n}}\n",
            dir.path().display(),
            mutual
        ));
        // The server's own account of what it refused (read by `violations`).
        conf.push_str(&format!(
            "log_file: \"{}\"\n",
            dir.path().join("nats.log").display()
        ));
        std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
        std::fs::copy(
            repo().join("deploy/nats/authorization.conf"),
            dir.path().join("authorization.conf"),
        )
        .unwrap();

        let passwords: Vec<(String, String)> = USERS
            .iter()
            .map(|u| (password_var(u), uuid::Uuid::new_v4().simple().to_string()))
            .collect();
        let mut secure = Self {
            dir,
            mutual,
            passwords,
            server: None,
        };
        let probe = secure.access("admin");
        secure.server = Some(
            NatsServer::start_configured(Configured {
                bin: nats_server_2_10(),
                config: secure.dir.path().join("nats.conf"),
                env: secure.passwords.clone(),
                tls: true,
                probe,
            })
            .await,
        );
        secure
    }

    /// The permission violations the server logged so far.
    fn violations(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("nats.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Violation"))
            .map(str::to_owned)
            .collect()
    }

    fn url(&self) -> String {
        match &self.server {
            Some(server) => server.url(),
            // Before the server runs, only the scheme matters (to the probe's settings).
            None => "tls://127.0.0.1:4222".into(),
        }
    }

    /// What a process logging in as `user` gets in its environment.
    fn env(&self, user: &str) -> Vec<(String, String)> {
        let password = self
            .passwords
            .iter()
            .find(|(k, _)| *k == password_var(user))
            .map(|(_, v)| v.clone())
            .unwrap();
        let mut env = vec![
            ("NATS_URL".into(), self.url()),
            ("NATS_USER".into(), user.into()),
            ("NATS_PASSWORD".into(), password),
            (
                "NATS_CA".into(),
                self.dir.path().join("ca.pem").display().to_string(),
            ),
        ];
        if self.mutual {
            for (var, file) in [("NATS_CERT", "client.pem"), ("NATS_KEY", "client-key.pem")] {
                env.push((var.into(), self.dir.path().join(file).display().to_string()));
            }
        }
        env
    }

    fn access(&self, user: &str) -> NatsAccess {
        self.access_without(user, &[])
    }

    /// A client logged in as `user`, and the server errors it is told about.
    async fn client(
        &self,
        user: &str,
    ) -> (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = self
            .access(user)
            .options()
            .unwrap()
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"));
        (client, rx)
    }

    /// `user`'s connection settings as a service reads them, with `unset` missing.
    fn access_without(&self, user: &str, unset: &[&str]) -> NatsAccess {
        let env = self.env(user);
        NatsAccess::from_vars(&env[0].1, |name| {
            (!unset.contains(&name))
                .then(|| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
                .flatten()
        })
        .unwrap()
    }

    /// The admin's view of the namespace `nexus`.
    async fn admin_bus(&self) -> Bus {
        let (client, _) = self.client("admin").await;
        Bus::from_client(
            client,
            Namespace::parse("nexus").unwrap(),
            "test-admin",
            Duration::from_secs(10),
        )
    }
}

/// The next permissions violation the server reports to this client.
async fn violation(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, async {
        while let Some(e) = errors.recv().await {
            if e.to_lowercase().contains("permissions violation") {
                return e;
            }
        }
        panic!("the connection closed before a permissions violation was reported")
    })
    .await
    .expect("the server reported no permissions violation")
}

/// Publishes on `subject` as `client` and waits for the server to refuse it.
async fn publish_refused(
    client: &async_nats::Client,
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    subject: &str,
) {
    client
        .publish(subject.to_owned(), "{}".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let refused = violation(errors).await;
    assert!(refused.contains(subject), "{subject}: {refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_refuses_tool_calls_from_a_gateway_and_replies_from_tool_runner() {
    let nats = SecureNats::start().await;

    let (gateway, mut gateway_errors) = nats.client("gateway-telegram").await;
    publish_refused(&gateway, &mut gateway_errors, "nexus.tool.read_file").await;

    let (tools, mut tools_errors) = nats.client("tool-runner").await;
    publish_refused(&tools, &mut tools_errors, "nexus.outbound.telegram").await;

    // Nor read another channel's replies: gateway-api's feeds are scoped to its own
    // subject, and the other gateways' consumers are not its to pull.
    let (api, mut api_errors) = nats.client("gateway-api").await;
    for subject in [
        "$JS.API.CONSUMER.CREATE.nexus_OUTBOUND",
        "$JS.API.CONSUMER.CREATE.nexus_OUTBOUND.spy.nexus.outbound.telegram",
        "$JS.API.CONSUMER.MSG.NEXT.nexus_OUTBOUND.nexus_gateway-telegram",
    ] {
        publish_refused(&api, &mut api_errors, subject).await;
    }

    // Replies are private: a gateway cannot listen on agent-core's reply inboxes.
    let _snoop = gateway.subscribe("_INBOX.agent-core.>").await.unwrap();
    gateway.flush().await.unwrap();
    let refused = violation(&mut gateway_errors).await;
    assert!(
        refused.contains("Subscription") && refused.contains("_INBOX.agent-core.>"),
        "{refused}"
    );

    // What a gateway's job needs goes through: once agent-core's user (the one that
    // manages streams) created them, the gateway stores a message of its channel.
    let admin = nats.admin_bus().await;
    admin.ensure_streams().await.unwrap();
    let js = async_nats::jetstream::new(gateway.clone());
    let ack = js
        .publish("nexus.inbound.telegram.7", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "nexus_INBOUND");
    // The server logged each refusal with the user (what operators look for).
    eventually("the server to log the refused tool call", WAIT, || async {
        nats.violations()
            .iter()
            .any(|l| l.contains("user:gateway-telegram") && l.contains("nexus.tool.read_file"))
            .then_some(())
    })
    .await;
    // …but not one of another channel.
    publish_refused(&gateway, &mut gateway_errors, "nexus.inbound.slack.7").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_or_an_untrusted_server_certificate_is_refused() {
    let nats = SecureNats::start().await;
    let mut env = nats.env("agent-core");
    env[2].1 = "not-the-password".into();
    let access = NatsAccess::from_vars(&env[0].1, |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
    .unwrap();
    let err = access
        .options()
        .unwrap()
        .connect(nats.url())
        .await
        .expect_err("a wrong password must be refused");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );

    // The CLI says which credentials were refused, and does not go looking for a
    // server to start (`nexus up`) when one answers but refuses them.
    let workspace = tempfile::tempdir().unwrap();
    let mut cli_env = env.clone();
    let config = workspace.path().join("nexus.toml");
    std::fs::write(&config, "").unwrap();
    cli_env.extend([
        (
            "NEXUS_WORKSPACE".to_owned(),
            workspace.path().display().to_string(),
        ),
        ("NEXUS_CONFIG".to_owned(), config.display().to_string()),
    ]);
    for args in [&["status"][..], &["up"][..]] {
        let out = nexus_testkit::nexus(&cli_env, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nexus {args:?} succeeded");
        assert!(
            stderr.contains("refused the connection as user agent-core over TLS")
                && stderr.contains("NATS_USER/NATS_PASSWORD"),
            "nexus {args:?}: {stderr}"
        );
        assert!(!stderr.contains("not-the-password"), "{stderr}");
    }

    // Without NATS_CA the server's certificate (from the test's CA) is not trusted.
    let access = nats.access_without("agent-core", &["NATS_CA"]);
    let err = access
        .options()
        .unwrap()
        .connect(nats.url())
        .await
        .expect_err("a server certificate of an unknown CA must be refused");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

/// Waits until each of `names` answers on the service API; a process that exits
/// meanwhile (refused by NATS, say) fails the test at once, with its name.
async fn wait_registered(admin: &Bus, processes: &mut [ServiceProcess], names: &[&str]) {
    let mut started: Vec<&mut ServiceProcess> = processes.iter_mut().collect();
    nexus_testkit::wait_registered(admin, &mut started, names, WAIT).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_stack_answers_over_tls_with_a_user_per_service() {
    let nats = SecureNats::start().await;
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(
        workspace.path().join("notes.txt"),
        "The launch code word is PELICAN-42.\n",
    )
    .unwrap();
    let key = "key-alice-0123456789";
    let config = workspace.path().join(".test-nexus.toml");
    std::fs::write(&config, format!("[api.keys]\n\"{key}\" = \"alice\"\n")).unwrap();
    let fake = FakeOpenAi::start(Reply::Text("unexpected".into())).await;
    fake.push([
        Reply::ToolCalls(vec![("read_file".into(), json!({"path": "notes.txt"}))]),
        Reply::EchoLastTool("notes.txt says: ".into()),
    ]);
    let http = free_port();
    let common: Vec<(String, String)> = [
        ("NEXUS_NAMESPACE", "nexus".to_owned()),
        ("NEXUS_WORKSPACE", workspace.path().display().to_string()),
        ("NEXUS_CONFIG", config.display().to_string()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ),
        ("NEXUS__MEMORY__JOURNAL", "false".into()),
        ("OPENAI_API_KEY", "sk-test-key-000000".into()),
        ("OPENAI_BASE_URL", fake.base_url()),
        ("NEXUS__LLM__MODEL", "gpt-4.1-mini".into()),
        ("NEXUS__LLM__STREAM", "false".into()),
        ("NEXUS__API__LISTEN", format!("127.0.0.1:{http}")),
        (
            "NEXUS__API__GRPC_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let spawn = |name: &str| {
        let mut env = common.clone();
        env.extend(nats.env(name));
        ServiceProcess::spawn(name, &[], &env)
    };
    let admin = nats.admin_bus().await;
    // agent-core creates the streams; the others only look them up.
    let mut processes = vec![spawn("agent-core")];
    wait_registered(&admin, &mut processes, &["agent-core"]).await;
    processes.push(spawn("memory-svc"));
    processes.push(spawn("tool-runner"));
    processes.push(spawn("scheduler"));
    processes.push(spawn("gateway-api"));
    wait_registered(
        &admin,
        &mut processes,
        &[
            "agent-core",
            "memory-svc",
            "tool-runner",
            "scheduler",
            "gateway-api",
        ],
    )
    .await;

    let client = reqwest::Client::new();
    let reply: serde_json::Value = eventually("an answer from the API", WAIT, || async {
        let r = client
            .post(format!("http://127.0.0.1:{http}/v1/messages"))
            .bearer_auth(key)
            .json(&json!({"text": "What does notes.txt say?", "session": "s1"}))
            .send()
            .await
            .ok()?;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        r.json().await.ok()
    })
    .await;
    let text = reply.to_string();
    assert!(text.contains("PELICAN-42"), "reply was: {text}");
    assert_eq!(
        fake.requests().len(),
        2,
        "one call to choose the tool, one to answer"
    );

    // memory-svc's and the scheduler's tools, called by agent-core under their users.
    fake.push([
        Reply::ToolCalls(vec![
            (
                "remember".into(),
                json!({"fact": "The launch code word is PELICAN-42."}),
            ),
            (
                "cron".into(),
                json!({"action": "add", "message": "check the launch", "every_seconds": 3600}),
            ),
        ]),
        Reply::Text("noted".into()),
    ]);
    let r = client
        .post(format!("http://127.0.0.1:{http}/v1/messages"))
        .bearer_auth(key)
        .json(&json!({"text": "Remember it, and check daily.", "session": "s1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let memory = std::fs::read_to_string(workspace.path().join("MEMORY.md")).unwrap_or_default();
    assert!(memory.contains("PELICAN-42"), "MEMORY.md: {memory}");

    // A sub-agent: the task goes through N_TASKS and its state through the tasks bucket,
    // both agent-core's; its model call is the fake's fallback.
    fake.set_fallback(Reply::Text("sub-agent finished".into()));
    fake.push([
        Reply::ToolCalls(vec![(
            "spawn".into(),
            json!({"task": "Summarise notes.txt", "label": "summary"}),
        )]),
        Reply::Text("started a sub-agent".into()),
    ]);
    let before = fake.requests().len();
    let r = client
        .post(format!("http://127.0.0.1:{http}/v1/messages"))
        .bearer_auth(key)
        .json(&json!({"text": "Summarise it in the background.", "session": "s1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    eventually("the sub-agent's model call", WAIT, || async {
        (fake.requests().len() >= before + 3).then_some(())
    })
    .await;

    // The other gateways start under their own users too (their upstreams are
    // unreachable here: what counts is that NATS lets them set up).
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gateways = [
        (
            "gateway-telegram",
            vec![
                ("TELEGRAM_BOT_TOKEN", "123456:test-token-0000".to_owned()),
                ("TELEGRAM_API_URL", dead.clone()),
            ],
        ),
        (
            "gateway-slack",
            vec![
                ("SLACK_BOT_TOKEN", "xoxb-test-000000".to_owned()),
                ("SLACK_SIGNING_SECRET", "test-signing-secret".to_owned()),
                ("SLACK_API_URL", dead.clone()),
                (
                    "NEXUS__CHANNELS__SLACK__LISTEN",
                    format!("127.0.0.1:{}", free_port()),
                ),
            ],
        ),
        (
            "gateway-whatsapp",
            vec![
                ("WHATSAPP_BRIDGE_URL", dead.replace("http", "ws")),
                ("WHATSAPP_BRIDGE_TOKEN", "test-bridge-token".to_owned()),
            ],
        ),
    ];
    for (name, extra) in gateways {
        let mut env = common.clone();
        env.extend(nats.env(name));
        env.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        processes.push(ServiceProcess::spawn(name, &[], &env));
    }
    wait_registered(
        &admin,
        &mut processes,
        &["gateway-telegram", "gateway-slack", "gateway-whatsapp"],
    )
    .await;

    // Nothing any service did was refused: every subject its job needs is allowed.
    let refused = nats.violations();
    assert!(
        refused.is_empty(),
        "refused by the server:\n{}",
        refused.join("\n")
    );

    // The CLI's admin commands log in as admin.
    let mut env = common.clone();
    env.extend(nats.env("admin"));
    let out = nexus_testkit::nexus(&env, &["cron", "list", "--json"]).await;
    let jobs = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && jobs.contains("check the launch"),
        "nexus cron list: {jobs}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = nexus_testkit::nexus(&env, &["status"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("tool-runner"),
        "nexus status as admin: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bus in the namespace `nexus` logged in as `user`.
async fn bus_as(nats: &SecureNats, user: &str) -> Bus {
    let (client, _) = nats.client(user).await;
    Bus::from_client(
        client,
        Namespace::parse("nexus").unwrap(),
        user,
        Duration::from_secs(10),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_user_reaches_the_media_buckets_and_consumers_its_job_needs() {
    use nexus_bus::Outcome;
    use nexus_common::domain::ChannelName;
    use nexus_proto::v1::{ChatRef, OutboundMessage, media_ref};

    let nats = SecureNats::start().await;
    let agent = bus_as(&nats, "agent-core").await;
    agent.ensure_streams().await.unwrap();

    // A gateway stores an upstream file as media; tool-runner stages a workspace file;
    // agent-core reads both; the gateway reads what tool-runner staged (to send it).
    let gateway = bus_as(&nats, "gateway-telegram").await;
    let upload = gateway
        .put_media(
            "telegram-1",
            media_ref::Kind::Image,
            "image/png",
            "a.png",
            "",
            b"png",
        )
        .await
        .unwrap();
    let tools = bus_as(&nats, "tool-runner").await;
    let staged = tools
        .put_media(
            "staged-1",
            media_ref::Kind::Document,
            "text/plain",
            "r.txt",
            "",
            b"report",
        )
        .await
        .unwrap();
    assert_eq!(agent.get_media(&upload, 1024).await.unwrap(), b"png");
    assert_eq!(gateway.get_media(&staged, 1024).await.unwrap(), b"report");

    // The gateway's own KV buckets.
    let channel = ChannelName::parse("telegram").unwrap();
    let delivered = gateway
        .ensure_kv_bucket(
            &gateway.subjects().delivered_bucket(&channel),
            1,
            None,
            "test",
        )
        .await
        .unwrap();
    delivered.put("reply-1", "1".into()).await.unwrap();
    assert!(delivered.get("reply-1").await.unwrap().is_some());

    // A reply from agent-core reaches the gateway through its own durable consumer.
    let s = gateway.subjects().clone();
    let consumer = gateway
        .durable_consumer(
            &s.outbound_stream(),
            &s.gateway_consumer(&channel),
            s.outbound(&channel),
            Duration::from_secs(30),
            5,
            1,
        )
        .await
        .unwrap();
    let reply = OutboundMessage {
        id: "reply:telegram:1".into(),
        channel: "telegram".into(),
        chat: Some(ChatRef {
            chat_id: "42".into(),
            ..Default::default()
        }),
        text: "hello".into(),
        ..Default::default()
    };
    agent
        .publish_outbound(&reply, &nexus_bus::TraceContext::new_root())
        .await
        .unwrap();
    let shutdown = nexus_common::shutdown::CancellationToken::new();
    let mut puller = nexus_bus::Puller::new(&gateway, &consumer).await.unwrap();
    let msg = tokio::time::timeout(WAIT, puller.next(&shutdown))
        .await
        .expect("the reply reached the gateway")
        .unwrap();
    let got: OutboundMessage = nexus_bus::decode(&msg.payload).unwrap();
    assert_eq!(got.text, "hello");
    nexus_bus::settle(&gateway, &msg, Outcome::Ack, 5).await;
    let info = consumer.clone().info().await.unwrap().clone();
    assert_eq!(info.num_ack_pending, 0, "the ack went through");
    let refused = nats.violations();
    assert!(
        refused.is_empty(),
        "refused by the server:\n{}",
        refused.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mutual_tls_a_client_needs_nats_cert_and_nats_key() {
    let nats = SecureNats::start_with(true).await;
    let without_cert = nats.access_without("agent-core", &["NATS_CERT", "NATS_KEY"]);
    let err = without_cert
        .options()
        .unwrap()
        .connect(nats.url())
        .await
        .expect_err("a client without a certificate must be refused");
    assert!(
        matches!(
            err.kind(),
            async_nats::ConnectErrorKind::Io | async_nats::ConnectErrorKind::Tls
        ),
        "{err}"
    );

    let client = nats
        .access("agent-core")
        .options()
        .unwrap()
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("with a client certificate: {e}"));
    client.flush().await.unwrap();
}

/// A form body of `fields` (what a browser posts).
fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let enc = |s: &str| {
                s.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect::<String>()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_console_does_its_work_as_the_console_user_which_gateway_api_cannot() {
    use nexus_bus::{TraceContext, scheduler_op};
    use nexus_common::domain::ChannelName;
    use nexus_gateway::pairing::{Pairing, Stranger};
    use nexus_proto::v1::{AddJobRequest, AddJobResponse, Job, JobOrigin, job::When};

    let nats = SecureNats::start().await;
    let workspace = tempfile::tempdir().unwrap();
    let config = workspace.path().join(".test-nexus.toml");
    std::fs::write(&config, "").unwrap();
    let fake = FakeOpenAi::start(Reply::Text("unused".into())).await;
    let admin_key = "admin-key-0123456789abcdef";
    let http = free_port();
    let common: Vec<(String, String)> = [
        ("NEXUS_NAMESPACE", "nexus".to_owned()),
        ("NEXUS_WORKSPACE", workspace.path().display().to_string()),
        ("NEXUS_CONFIG", config.display().to_string()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ),
        ("NEXUS__MEMORY__JOURNAL", "false".into()),
        ("OPENAI_API_KEY", "sk-test-key-000000".into()),
        ("OPENAI_BASE_URL", fake.base_url()),
        ("NEXUS__LLM__MODEL", "gpt-4.1-mini".into()),
        ("NEXUS__API__LISTEN", format!("127.0.0.1:{http}")),
        (
            "NEXUS__API__GRPC_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        ("NEXUS__API__ADMIN_KEYS", admin_key.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let spawn = |name: &str, extra: Vec<(String, String)>| {
        let mut env = common.clone();
        env.extend(nats.env(name));
        env.extend(extra);
        ServiceProcess::spawn(name, &[], &env)
    };
    let admin = nats.admin_bus().await;
    let mut processes = vec![spawn("agent-core", vec![])];
    wait_registered(&admin, &mut processes, &["agent-core"]).await;
    processes.push(spawn("memory-svc", vec![]));
    processes.push(spawn("scheduler", vec![]));
    // gateway-api as its own user, its console as the console user.
    let console_password = nats
        .env("console")
        .into_iter()
        .find(|(k, _)| k == "NATS_PASSWORD")
        .unwrap()
        .1;
    processes.push(spawn(
        "gateway-api",
        vec![
            ("CONSOLE_NATS_USER".into(), "console".into()),
            ("CONSOLE_NATS_PASSWORD".into(), console_password),
        ],
    ));
    wait_registered(
        &admin,
        &mut processes,
        &["agent-core", "memory-svc", "scheduler", "gateway-api"],
    )
    .await;

    // What the console acts on: a stranger's pairing code and a job.
    let telegram = ChannelName::parse("telegram").unwrap();
    let gateway = bus_as(&nats, "gateway-telegram").await;
    let pairing = Pairing::open(&gateway).await.unwrap();
    for sender in ["99", "98"] {
        pairing
            .request(
                &telegram,
                Stranger {
                    sender_id: sender,
                    display_name: "Eve",
                    chat_id: sender,
                    thread_id: "",
                },
                3600,
                10,
                nexus_common::now_ms(),
            )
            .await
            .unwrap();
    }
    let codes = pairing.pending(nexus_common::now_ms()).await.unwrap();
    assert_eq!(codes.len(), 2);
    let added: AddJobResponse = admin
        .request(
            admin.subjects().scheduler(scheduler_op::ADD),
            &AddJobRequest {
                job: Some(Job {
                    when: Some(When::EverySeconds(3600)),
                    owner_user_id: "alice".into(),
                    message: "stretch".into(),
                    origin: Some(JobOrigin {
                        channel: "api".into(),
                        chat_id: "alice:default".into(),
                        thread_id: String::new(),
                    }),
                    ..Default::default()
                }),
            },
            &TraceContext::new_root(),
            Some(WAIT),
        )
        .await
        .unwrap();
    let job = added.job.unwrap().id;

    // The console: log in, read every page, approve a code, pause the job.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{http}{path}");
    let login = client
        .post(url("/admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("key", admin_key)]))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let get = |path: &'static str| {
        let (client, cookie) = (client.clone(), cookie.clone());
        let url = url(path);
        async move {
            let r = client
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "GET {path}");
            r.text().await.unwrap()
        }
    };
    let post = |path: &'static str, fields: Vec<(&'static str, String)>| {
        let (client, cookie) = (client.clone(), cookie.clone());
        let url = url(path);
        async move {
            let body: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = client
                .post(url)
                .header("cookie", cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&body))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert_eq!(status, 200, "POST {path}: {text}");
            text
        }
    };
    let services = get("/admin/services").await;
    assert!(services.contains("id=\"service-scheduler\""), "{services}");
    assert!(!services.contains("role=\"alert\""), "{services}");
    for path in ["/admin/usage", "/admin/deadletters"] {
        get(path).await;
    }
    let page = get("/admin/pairings").await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let approved = &codes[0];
    let done = post(
        "/admin/pairings/approve",
        vec![("code", approved.code.clone()), ("csrf", csrf.clone())],
    )
    .await;
    assert!(
        done.contains(&format!("approved {}", approved.code)),
        "{done}"
    );
    assert!(
        pairing
            .approval(&telegram, &approved.sender_id)
            .await
            .unwrap()
            .is_some(),
        "the console's approval was not stored"
    );
    let get_jobs = get("/admin/jobs").await;
    assert!(
        get_jobs.contains(&format!("id=\"pause-{job}\"")),
        "{get_jobs}"
    );
    let paused = post(
        "/admin/jobs/pause",
        vec![("id", job.clone()), ("csrf", csrf.clone())],
    )
    .await;
    assert!(
        paused.contains(&format!("id=\"job-state-{job}\">paused")),
        "{paused}"
    );

    for path in ["/admin/channels", "/admin/tasks"] {
        get(path).await;
    }
    // A sub-agent task in agent-core's bucket, which the console cancels.
    let tasks = admin
        .ensure_kv_bucket(
            &admin.subjects().tasks_bucket(),
            1,
            Some(Duration::from_secs(7 * 24 * 3600)),
            "sub-agent tasks: state, origin and result",
        )
        .await
        .unwrap();
    let task = json!({
        "id": "t0123456789", "label": "report", "task": "write it", "depth": 1,
        "origin": {"channel": "api", "chat_id": "alice:s", "thread_id": "",
                   "sender_id": "alice", "user_id": "alice", "session_id": "api:alice:s"},
        "state": "running", "created_ms": 1, "started_ms": 1, "attempts": 1
    });
    tasks
        .put(
            nexus_bus::kv_key("t0123456789"),
            serde_json::to_vec(&task).unwrap().into(),
        )
        .await
        .unwrap();
    let cancelled = post(
        "/admin/tasks/cancel",
        vec![("id", "t0123456789".into()), ("csrf", csrf.clone())],
    )
    .await;
    assert!(
        cancelled.contains("cancelled task t0123456789"),
        "{cancelled}"
    );
    // Asking gateway-whatsapp to pair reaches the (absent) gateway's subject.
    let login = client
        .post(url("/admin/channels/whatsapp/login"))
        .header("cookie", cookie.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &csrf)]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(login.contains("gateway-whatsapp is not running"), "{login}");
    // The live view subscribes to every turn's events and progress.
    let live = client
        .get(url("/admin/live/events?text=1"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    drop(live);

    // Nothing the console did was refused.
    let refused: Vec<String> = nats
        .violations()
        .into_iter()
        .filter(|l| l.contains("user:console") || l.contains("user:gateway-api"))
        .collect();
    assert!(
        refused.is_empty(),
        "refused by the server:\n{}",
        refused.join("\n")
    );

    // The public API's user cannot do the console's work: approve a pairing, ask for
    // the usage ledger, pause a job.
    let api = bus_as(&nats, "gateway-api").await;
    let as_api = Pairing::open(&api).await.unwrap();
    let other = &codes[1];
    as_api
        .approve(&other.code, None, "gateway-api", nexus_common::now_ms())
        .await
        .expect_err("gateway-api approved a pairing");
    assert!(
        pairing
            .approval(&telegram, &other.sender_id)
            .await
            .unwrap()
            .is_none(),
        "gateway-api let a stranger in"
    );
    eventually("the server to log the refused approval", WAIT, || async {
        nats.violations()
            .iter()
            .any(|l| l.contains("user:gateway-api") && l.contains("$KV.nexus_paired"))
            .then_some(())
    })
    .await;
    let (api_client, mut api_errors) = nats.client("gateway-api").await;
    for subject in ["nexus.memory.usage", "nexus.scheduler.pause"] {
        publish_refused(&api_client, &mut api_errors, subject).await;
    }
}
