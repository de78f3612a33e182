//! A nats-server of the test's own, for tests that kill and restart NATS: the
//! shared server at `NATS_URL` must never be touched that way.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

/// `nats-server` with JetStream on a free loopback port and a store of its own.
pub struct NatsServer {
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    pid: Arc<AtomicU32>,
}

impl NatsServer {
    /// Starts `nats-server` from PATH (`NATS_SERVER_BIN` overrides) and waits until
    /// JetStream answers.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = Self {
            port,
            store,
            child: None,
            pid: Arc::default(),
        };
        server.launch().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A function that SIGKILLs the server from any thread, synchronously — to
    /// crash NATS at an exact point, such as inside a fake's request handler.
    pub fn killer(&self) -> impl Fn() + Send + Sync + 'static {
        let pid = self.pid.clone();
        move || {
            let pid = pid.swap(0, Ordering::SeqCst);
            if pid != 0 {
                nexus_common::process::kill(pid);
            }
        }
    }

    /// SIGKILLs the server and waits until it is gone.
    pub fn kill(&mut self) {
        self.pid.store(0, Ordering::SeqCst);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store (after a kill).
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    async fn launch(&mut self) {
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let show = std::env::var_os("TEST_LOG").is_some();
        let child = Command::new(&bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(if show {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(if show {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.pid.store(child.id(), Ordering::SeqCst);
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.answers().await {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nats-server exited with {status} (port {} taken?)",
                    self.port
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server on port {} did not become ready",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True once JetStream answers its API (it recovers streams first after a restart).
    async fn answers(&self) -> bool {
        let Ok(client) = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(1))
            .connect(self.url())
            .await
        else {
            return false;
        };
        let info = tokio::time::timeout(
            Duration::from_secs(2),
            client.request("$JS.API.INFO", "".into()),
        )
        .await;
        matches!(info, Ok(Ok(m)) if m.payload.windows(6).any(|w| w == b"\"type\""))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
