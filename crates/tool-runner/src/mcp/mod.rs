//! MCP servers (`[[tools.mcp]]`) mounted as tools: one supervisor per server
//! connects (a child process over stdio, or streamable HTTP), offers the server's
//! tools as `<server>__<tool>` while it is up, withdraws them when it goes down,
//! and reconnects with a backoff of 1 s doubling to 60 s. Each server's health is
//! a status line of the provider (`mcp <name>`), which `nexus status` prints.
//!
//! It must never let one server block another, a built-in tool or shutdown: every
//! request to a server has a deadline, and every child process it starts is
//! killed when its supervisor stops.

mod tool;

use std::{
    collections::{BTreeMap, HashMap},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use nexus_common::{
    backoff::Backoff,
    config::{McpServerConfig, ToolsConfig},
};
use nexus_tools::{DynTool, ToolServer};
use rmcp::{
    ClientHandler, Peer, RoleClient, ServiceError, ServiceExt,
    model::{
        ClientCapabilities, ClientConfig, ClientRequest, Implementation, PingRequest,
        ProtocolVersion,
    },
    service::ClientInitializeError,
    service::{NotificationContext, PeerRequestOptions, RunningService},
    transport::{
        StreamableHttpClientTransport, TokioChildProcess,
        streamable_http_client::{StreamableHttpClientTransportConfig, StreamableHttpError},
    },
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::Notify,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::tool::McpTool;

/// Calls (and start-up) take this long at most unless `timeout_secs` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Waits before a server is started again: 1 s, doubling up to 60 s.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
/// A server that stayed up this long starts its next backoff from the beginning.
const STABLE: Duration = Duration::from_secs(30);
/// How often a connected server is pinged; one that does not answer in
/// [`PING_TIMEOUT`] is taken down (an HTTP server that went away shows no other sign).
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// What a stdio server inherits of tool-runner's environment (beside its own `env`):
/// what programs need to run and to reach the network, never the secrets tool-runner
/// holds (API keys, NATS credentials), as the official MCP SDKs do.
const INHERITED_ENV: &[&str] = &[
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
/// How long a stopping server may take to close (rmcp's own stdio shutdown waits
/// up to 3 s for an exit after EOF, then 3 s after SIGTERM, then kills).
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// The supervisors of every configured server. Dropping it does not stop them:
/// cancel the token given to [`start`] and [`Mcp::join`].
pub struct Mcp {
    tasks: TaskTracker,
}

/// Starts one supervisor per `[[tools.mcp]]` server; they run until `stop` is
/// cancelled. `[tools] disabled` and `require_approval` apply to their tools by
/// their Nexus names (`<server>__<tool>`).
pub fn start(config: &ToolsConfig, tools: ToolServer, stop: CancellationToken) -> Mcp {
    let servers = &config.mcp;
    let policy = Arc::new(Policy {
        disabled: config.disabled.clone(),
        require_approval: config.require_approval.clone(),
    });
    let tasks = TaskTracker::new();
    if !servers.is_empty() {
        // reqwest is built without a crypto provider of its own: rustls with ring,
        // as everywhere else in Nexus. An Err means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    for config in servers {
        let supervisor = Supervisor {
            name: config.name.clone(),
            status_key: format!("mcp {}", config.name),
            timeout: config
                .timeout_secs
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_TIMEOUT),
            config: config.clone(),
            policy: policy.clone(),
            tools: tools.clone(),
            stop: stop.clone(),
            stderr: tasks.clone(),
        };
        tasks.spawn(supervisor.run());
    }
    tasks.close();
    Mcp { tasks }
}

impl Mcp {
    /// Waits for the supervisors (after `stop`), which close their servers first.
    pub async fn join(self) {
        self.tasks.wait().await;
    }
}

/// What `[tools]` says about tools by name.
struct Policy {
    disabled: Vec<String>,
    require_approval: Vec<String>,
}

struct Supervisor {
    name: String,
    status_key: String,
    timeout: Duration,
    config: McpServerConfig,
    policy: Arc<Policy>,
    tools: ToolServer,
    stop: CancellationToken,
    /// Where the stderr readers of children run, so they are joined too.
    stderr: TaskTracker,
}

/// A connected server.
struct Connection {
    service: RunningService<RoleClient, Handler>,
    /// Set by the server's `notifications/tools/list_changed`.
    list_changed: Arc<Notify>,
}

/// What the server may ask of us: nothing beyond the defaults (no sampling,
/// roots or elicitation); we listen for tool list changes.
struct Handler {
    list_changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("nexus-tool-runner", env!("CARGO_PKG_VERSION")),
        )
        // We start with `initialize`; the newest version that has it.
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = RETRY;
        loop {
            self.tools
                .set_status(&self.status_key, "starting".to_owned());
            let started = Instant::now();
            let down = tokio::select! {
                connected = self.connect() => match connected {
                    Ok(connection) => self.serve(connection).await,
                    Err(why) => Some(why),
                },
                () = self.stop.cancelled() => None,
            };
            let Some(why) = down else { break };
            let why = without_queries(&why);
            if self.stop.is_cancelled() {
                break;
            }
            if started.elapsed() >= STABLE {
                backoff.reset();
            }
            let delay = backoff.fail();
            tracing::warn!(server = %self.name, why, retry_in_s = delay.as_secs(), "MCP server down");
            self.tools.set_status(
                &self.status_key,
                format!("down: {why}, retrying in {} s", delay.as_secs()),
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => break,
            }
        }
        tracing::debug!(server = %self.name, "MCP supervisor stopped");
    }

    /// Starts or reaches the server and runs the `initialize` handshake.
    async fn connect(&self) -> Result<Connection, String> {
        let list_changed = Arc::new(Notify::new());
        let handler = Handler {
            list_changed: list_changed.clone(),
        };
        let serving = async {
            if let Some(command) = &self.config.command {
                let transport = self.spawn(command)?;
                handler
                    .serve(transport)
                    .await
                    .map_err(|e| format!("initialize failed: {}", init_error(&e)))
            } else if let Some(url) = &self.config.url {
                let transport = self.http(url)?;
                handler
                    .serve(transport)
                    .await
                    .map_err(|e| format!("initialize failed: {}", init_error(&e)))
            } else {
                Err("neither command nor url is set".to_owned())
            }
        };
        // A timeout drops the transport, which kills a child it started.
        match tokio::time::timeout(self.timeout, serving).await {
            Ok(Ok(service)) => Ok(Connection {
                service,
                list_changed,
            }),
            Ok(Err(e)) => Err(short(&e)),
            Err(_) => Err(format!(
                "no answer to initialize within {} s",
                self.timeout.as_secs()
            )),
        }
    }

    /// The child process, in a process group of its own so that stopping it
    /// stops what it started too, with the environment it needs and no more
    /// ([`INHERITED_ENV`]); its stderr goes to our debug log.
    fn spawn(&self, command: &str) -> Result<TokioChildProcess, String> {
        let mut cmd = tokio::process::Command::new(command);
        let inherited = INHERITED_ENV
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (k, v)));
        cmd.args(&self.config.args)
            .env_clear()
            .envs(inherited)
            .envs(&self.config.env)
            .kill_on_drop(true);
        let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
        wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
        let (child, stderr) = TokioChildProcess::builder(wrapped)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start '{command}': {e}"))?;
        tracing::debug!(server = %self.name, pid = child.id(), "MCP server started");
        if let Some(stderr) = stderr {
            let (server, stop) = (self.name.clone(), self.stop.clone());
            self.stderr.spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                loop {
                    tokio::select! {
                        line = lines.next_line() => match line {
                            Ok(Some(line)) => tracing::debug!(server = %server, "stderr: {line}"),
                            _ => break,
                        },
                        () = stop.cancelled() => break,
                    }
                }
            });
        }
        Ok(child)
    }

    fn http(&self, url: &str) -> Result<StreamableHttpClientTransport<reqwest::Client>, String> {
        let mut headers = HashMap::new();
        for (name, value) in &self.config.headers {
            let name = reqwest::header::HeaderName::try_from(name.as_str())
                .map_err(|e| format!("header name '{name}': {e}"))?;
            let mut value = reqwest::header::HeaderValue::try_from(value.as_str())
                .map_err(|e| format!("value of header '{name}': {e}"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        // Redirects are not followed: they would carry the headers (tokens) elsewhere.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        let config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(headers);
        Ok(StreamableHttpClientTransport::with_client(client, config))
    }

    /// Offers the server's tools until it goes down (returns why) or `stop`
    /// (returns `None`); then withdraws them and closes the connection.
    async fn serve(&self, connection: Connection) -> Option<String> {
        let Connection {
            service,
            list_changed,
        } = connection;
        let peer = service.peer().clone();
        let cancel = service.cancellation_token();
        // Ends when the connection does: the child exited, or the transport failed.
        let ended = service.waiting();
        tokio::pin!(ended);
        let mut is_over = false;
        let mut offered = BTreeMap::new();
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let gone = if self.config.command.is_some() {
            "the server process exited"
        } else {
            "the connection closed"
        };
        // Listing and pinging wait for the server, so they give way to `stop` too.
        let mut step = self.unless_stopped(self.offer(&peer, &mut offered)).await;
        let why = loop {
            match step {
                None => break None,
                Some(Err(why)) => break Some(why),
                Some(Ok(())) => {}
            }
            step = tokio::select! {
                () = self.stop.cancelled() => None,
                () = list_changed.notified() => {
                    self.unless_stopped(self.offer(&peer, &mut offered)).await
                }
                _ = ping.tick() => self.unless_stopped(self.ping(&peer)).await,
                _ = &mut ended => {
                    is_over = true;
                    Some(Err(gone.to_owned()))
                }
            };
        };
        for name in offered.keys() {
            self.tools.remove(name);
        }
        if !is_over {
            cancel.cancel();
            if tokio::time::timeout(CLOSE_DEADLINE, &mut ended)
                .await
                .is_err()
            {
                tracing::warn!(server = %self.name, "MCP server did not close in time");
            }
        }
        why
    }

    /// `work`, unless `stop` comes first (then `None`).
    async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            () = self.stop.cancelled() => None,
        }
    }

    /// Lists the server's tools and brings the offered set in line with it.
    async fn offer(
        &self,
        peer: &Peer<RoleClient>,
        offered: &mut BTreeMap<String, nexus_tools::Spec>,
    ) -> Result<(), String> {
        let listed = match tokio::time::timeout(self.timeout, peer.list_all_tools()).await {
            Ok(Ok(tools)) => tools,
            Ok(Err(e)) => return Err(format!("tools/list failed: {}", short(&request_error(&e)))),
            Err(_) => {
                return Err(format!(
                    "no answer to tools/list within {} s",
                    self.timeout.as_secs()
                ));
            }
        };
        let mut now = BTreeMap::new();
        let (mut skipped, mut disabled, mut unserved) = (0, 0, 0);
        let policy = &self.policy;
        for listed in &listed {
            match McpTool::new(&self.name, listed, peer.clone(), self.timeout) {
                Ok(tool) => {
                    let name = tool.spec().name;
                    if policy.disabled.contains(&name) {
                        disabled += 1;
                        continue;
                    }
                    let approval = policy.require_approval.contains(&name);
                    now.insert(name, tool.requiring_approval(approval));
                }
                Err(why) => {
                    skipped += 1;
                    tracing::warn!(server = %self.name, tool = %listed.name, why, "MCP tool skipped: its name cannot be a Nexus tool name");
                }
            }
        }
        for name in offered.keys() {
            if !now.contains_key(name) {
                self.tools.remove(name);
            }
        }
        offered.retain(|name, _| now.contains_key(name));
        for (name, tool) in now {
            let spec = tool.spec();
            if offered.get(&name) == Some(&spec) {
                continue;
            }
            match self.tools.add(Arc::new(tool)).await {
                Ok(()) => {
                    offered.insert(name, spec);
                }
                Err(error) => {
                    unserved += 1;
                    tracing::warn!(server = %self.name, tool = %name, %error, "MCP tool not served");
                }
            }
        }
        let mut status = match offered.len() {
            1 => "up, 1 tool".to_owned(),
            n => format!("up, {n} tools"),
        };
        if disabled > 0 {
            status.push_str(&format!(", {disabled} disabled"));
        }
        if skipped > 0 {
            status.push_str(&format!(", {skipped} skipped (invalid names)"));
        }
        if unserved > 0 {
            status.push_str(&format!(", {unserved} not served (see the log)"));
        }
        tracing::info!(server = %self.name, tools = ?offered.keys().collect::<Vec<_>>(), skipped, "MCP server up");
        self.tools.set_status(&self.status_key, status);
        Ok(())
    }

    async fn ping(&self, peer: &Peer<RoleClient>) -> Result<(), String> {
        let sent = peer
            .send_request_with_option(
                ClientRequest::PingRequest(PingRequest::default()),
                PeerRequestOptions::with_timeout(PING_TIMEOUT),
            )
            .await;
        let answered = match sent {
            Ok(handle) => handle.await_response().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match answered {
            // An error answer is still an answer: the server is alive.
            Ok(()) | Err(ServiceError::McpError(_)) => Ok(()),
            Err(ServiceError::Timeout { .. }) => Err(format!(
                "no answer to ping within {} s",
                PING_TIMEOUT.as_secs()
            )),
            Err(e) => Err(format!("ping failed: {}", short(&request_error(&e)))),
        }
    }
}

/// `why` without the queries of the URLs it quotes (reqwest's errors do), which may
/// hold tokens: status lines are announced on NATS.
fn without_queries(why: &str) -> String {
    static QUERY: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"(https?://[^\s?#)]*)[?#][^\s)]*").ok());
    match &*QUERY {
        Some(query) => query.replace_all(why, "$1?…").into_owned(),
        None => why.to_owned(),
    }
}

/// Why `initialize` failed, without rmcp's transport type names.
fn init_error(e: &ClientInitializeError) -> String {
    match e {
        ClientInitializeError::TransportError { error, context } => {
            format!("{} (when trying to {context})", with_cause(&*error.error))
        }
        other => with_cause(other),
    }
}

/// Why a request failed, without rmcp's transport type names.
fn request_error(e: &ServiceError) -> String {
    match e {
        ServiceError::TransportSend(e) => with_cause(&*e.error),
        other => with_cause(other),
    }
}

/// An error and its root cause ("error sending request …: Connection refused").
fn with_cause(e: &(dyn std::error::Error + 'static)) -> String {
    // rmcp wraps reqwest's error without naming it as the source.
    if let Some(StreamableHttpError::Client(inner)) =
        e.downcast_ref::<StreamableHttpError<reqwest::Error>>()
    {
        return with_cause(inner);
    }
    let mut root = e;
    while let Some(source) = root.source() {
        root = source;
    }
    let (top, root) = (e.to_string(), root.to_string());
    if top.contains(&root) {
        top
    } else {
        format!("{top}: {root}")
    }
}

/// The first line of an error, at most 200 characters: it goes into a status line.
fn short(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default();
    let mut out: String = line.chars().take(200).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_quote_urls_without_their_queries() {
        assert_eq!(
            without_queries(
                "error sending request for url (https://h.example/mcp?key=s3cret&x=1): refused"
            ),
            "error sending request for url (https://h.example/mcp?…): refused"
        );
        assert_eq!(without_queries("no url here?"), "no url here?");
    }

    #[test]
    fn errors_are_cut_to_one_short_line() {
        assert_eq!(short("first\nsecond"), "first");
        let long = "é".repeat(300);
        let cut = short(&long);
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('…'));
    }
}
