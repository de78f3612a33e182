//! Test harness shared by every suite: a fresh namespace and workspace per test,
//! the built binaries started as real processes, and fakes of external services
//! (LLM providers, web sites) served on loopback in their own wire format.
//!
//! Our own infrastructure is never faked: tests use the NATS at `NATS_URL`
//! (default `nats://127.0.0.1:4222`) and the PostgreSQL at `TEST_POSTGRES_URL`.

pub mod fake_openai;
pub mod fake_site;
pub mod fuzz;
pub mod nats;
pub mod otlp;
pub mod plugins;
pub mod process;
pub mod proxy;
pub mod stack;

use std::{path::Path, time::Duration};

use nexus_bus::Bus;
use nexus_common::{Config, domain::Namespace};

pub use nats::{Configured, NatsCluster, NatsServer, nats_server_2_10};
pub use process::{ServiceProcess, bin_path};
pub use proxy::TcpProxy;
pub use stack::{Stack, nexus, wait_registered};

/// NATS URL used by tests.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// PostgreSQL URL used by tests (trust auth on the local server).
pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Prints logs only when `TEST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("RUST_LOG")
                    .unwrap_or_else(|_| "debug,async_nats=info,sqlx=info,hyper=info".into()),
            ))
            .with_test_writer()
            .try_init();
    }
}

/// One test's private world: namespace, workspace, config.
pub struct TestEnv {
    pub namespace: String,
    /// The NATS this test's processes and probes use.
    pub nats_url: String,
    pub workspace: tempfile::TempDir,
    pub config: Config,
}

impl TestEnv {
    /// A fresh namespace (`t<random>`) and an empty workspace directory.
    pub fn new() -> Self {
        Self::with_nats(nats_url())
    }

    /// Like [`TestEnv::new`], on the NATS at `url` (a [`NatsServer`] of the test's own).
    pub fn with_nats(url: String) -> Self {
        init_logging();
        sweep_abandoned_namespaces();
        let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let workspace = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let env = vec![
            ("NATS_URL".to_owned(), url.clone()),
            ("NEXUS_NAMESPACE".to_owned(), namespace.clone()),
            (
                "NEXUS_WORKSPACE".to_owned(),
                workspace.path().display().to_string(),
            ),
        ];
        let mut config = Config::from_sources(None, env).unwrap_or_else(|e| panic!("config: {e}"));
        config.nats.request_timeout_secs = 10;
        Self {
            namespace,
            nats_url: url,
            workspace,
            config,
        }
    }

    pub fn workspace_path(&self) -> &Path {
        self.workspace.path()
    }

    /// Writes a file into the workspace, creating directories.
    pub fn write(&self, rel: &str, contents: &str) {
        let path = self.workspace.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// A bus connection in this namespace, with streams created.
    pub async fn bus(&self, service: &str) -> Bus {
        let ns = Namespace::parse(&self.namespace).unwrap_or_else(|e| panic!("{e}"));
        let servers =
            nexus_bus::NatsAccess::servers(&self.nats_url).unwrap_or_else(|e| panic!("{e}"));
        let client = async_nats::connect(servers)
            .await
            .unwrap_or_else(|e| panic!("NATS at {} must be running for tests: {e}", self.nats_url));
        let bus = Bus::from_client(client, ns, service, Duration::from_secs(10))
            .with_replicas(self.config.nats.replicas);
        bus.ensure_streams()
            .await
            .unwrap_or_else(|e| panic!("streams: {e}"));
        bus
    }

    /// Environment for a service process of this test (namespace, workspace, NATS).
    pub fn process_env(&self) -> Vec<(String, String)> {
        vec![
            ("NATS_URL".into(), self.nats_url.clone()),
            ("NEXUS_NAMESPACE".into(), self.namespace.clone()),
            (
                "NEXUS_WORKSPACE".into(),
                self.workspace.path().display().to_string(),
            ),
            (
                "NEXUS_CONFIG".into(),
                self.config_path().display().to_string(),
            ),
            (
                "RUST_LOG".into(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
            // The journal writer calls the model beside the turns; tests that count
            // model calls would see it. Journal tests switch it back on.
            ("NEXUS__MEMORY__JOURNAL".into(), "false".into()),
        ]
    }

    /// Path of this test's `nexus.toml` (created empty so a stray one in the cwd is never read).
    pub fn config_path(&self) -> std::path::PathBuf {
        let path = self.workspace.path().join(".test-nexus.toml");
        if !path.exists() {
            let _ = std::fs::write(&path, "");
        }
        path
    }
}

/// Once per test process, on the shared server: makes sure the anchor stream exists,
/// and deletes streams of test namespaces (`t` + 12 hex digits) created over an hour
/// ago (what killed test runs left behind).
fn sweep_abandoned_namespaces() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let _ = std::thread::spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(client) = async_nats::connect(nats_url()).await else {
                    return;
                };
                let js = async_nats::jetstream::new(client.clone());
                // A stream that is never deleted. nats-server 2.9 removes the account's
                // store directory when its last file stream goes, and a stream created
                // at that moment fails ("could not create storage directory", 10077):
                // with tests creating and deleting namespaces side by side, the account
                // must never run out of streams.
                let _ = js
                    .get_or_create_stream(async_nats::jetstream::stream::Config {
                        name: "nexus_testkit_anchor".into(),
                        subjects: vec!["nexus-testkit.anchor".into()],
                        max_messages: 1,
                        ..Default::default()
                    })
                    .await;
                let cutoff = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
                let mut streams = js.streams();
                let mut doomed = Vec::new();
                while let Some(Ok(info)) = futures::StreamExt::next(&mut streams).await {
                    let name = &info.config.name;
                    let bare = nexus_bus::subjects::stream_namespace_part(name);
                    let test_ns = bare.len() > 14
                        && bare.starts_with('t')
                        && bare.as_bytes()[13] == b'_'
                        && bare[1..13].bytes().all(|b| b.is_ascii_hexdigit());
                    if test_ns && info.created < cutoff {
                        doomed.push(name.clone());
                    }
                }
                for name in doomed {
                    let _ = js.delete_stream(&name).await;
                }
                let _ = client.drain().await;
            });
        })
        .join();
    });
}

impl Drop for TestEnv {
    /// Deletes the namespace's streams, buckets and object stores, so test runs do not
    /// pile up JetStream state on the shared server.
    fn drop(&mut self) {
        let Ok(ns) = Namespace::parse(&self.namespace) else {
            return;
        };
        let subjects = nexus_bus::Subjects::new(ns);
        let url = self.nats_url.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = async_nats::connect(url).await else {
                    return;
                };
                let js = async_nats::jetstream::new(client.clone());
                let mut names = js.stream_names();
                let mut doomed = Vec::new();
                while let Some(Ok(name)) = futures::StreamExt::next(&mut names).await {
                    if subjects.owns_stream(&name) {
                        doomed.push(name);
                    }
                }
                for name in doomed {
                    let _ = js.delete_stream(&name).await;
                }
                let _ = client.drain().await;
            });
        });
        let _ = cleanup.join();
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Every message currently in `stream` on subjects matching `filter`, decoded, in
/// stream order (what a test reads back of what services stored).
pub async fn stream_messages<T: prost::Message + Default>(
    bus: &Bus,
    stream: &str,
    filter: String,
) -> Vec<T> {
    let mut stream = bus.stream(stream).await.unwrap_or_else(|e| panic!("{e}"));
    let stored = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
    if stored == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("reading the stream: {e}"));
    let mut messages = consumer
        .messages()
        .await
        .unwrap_or_else(|e| panic!("reading the stream: {e}"));
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(
        Duration::from_secs(2),
        futures::StreamExt::next(&mut messages),
    )
    .await
    {
        out.push(T::decode(m.payload.clone()).unwrap_or_else(|e| panic!("undecodable: {e}")));
        if m.info().map(|i| i.pending).unwrap_or(0) == 0 {
            break;
        }
    }
    out
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
/// Timeouts here bound a wait; they never assert on speed.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
