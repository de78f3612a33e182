//! Configuration: `nexus.toml` (or `NEXUS_CONFIG`), then environment overrides.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `NEXUS__SECTION__KEY`
//! variables, then the named variables of the design (`NATS_URL`, `NEXUS_NAMESPACE`,
//! `NEXUS_WORKSPACE`, `DATABASE_URL`). Provider keys (`OPENAI_API_KEY`, …) are not
//! part of this struct: the LLM layer reads them directly so they never get printed
//! with the configuration.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer, Serialize};

/// Everything a Nexus service can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Prefix of every subject, stream, consumer and bucket (`NEXUS_NAMESPACE`).
    pub namespace: String,
    /// The agent's files and Markdown memory (`NEXUS_WORKSPACE`).
    pub workspace: PathBuf,
    pub nats: NatsConfig,
    /// `[metrics]`: the optional Prometheus text endpoint of each service.
    pub metrics: MetricsConfig,
    /// `[health]`: the optional liveness and readiness endpoint of each service.
    pub health: HealthConfig,
    pub database: DatabaseConfig,
    pub llm: LlmConfig,
    pub agent: AgentConfig,
    pub memory: MemoryConfig,
    pub tools: ToolsConfig,
    pub scheduler: SchedulerConfig,
    pub subagents: SubagentsConfig,
    /// Per-channel settings, keyed by channel name (`cli`, `telegram`, `slack`, …).
    pub channels: BTreeMap<String, ChannelConfig>,
    pub api: ApiConfig,
    /// `[limits]`: budgets and message rates; 0 means unlimited.
    pub limits: crate::limits::LimitsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// `NATS_URL`.
    pub url: String,
    /// Seconds a request/reply call waits before giving up.
    pub request_timeout_secs: u64,
    /// Copies of every stream and KV bucket the services create: 1 on a single
    /// server, 3 on a production cluster (`NEXUS__NATS__REPLICAS`). Applied to
    /// existing streams too, so raising it after a move to a cluster just works.
    pub replicas: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`. Empty means SQLite at `<workspace>/.nexus/nexus.db`.
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Model name as genai understands it (`gpt-4.1-mini`, `claude-…`, `gemini-…`,
    /// `ollama::llama3`, or `openai::<any>` for an OpenAI-compatible server).
    pub model: String,
    /// Upper bound on model calls in one turn.
    pub max_tool_iterations: u32,
    /// Seconds one model call may take.
    pub request_timeout_secs: u64,
    /// Retries after a 429, a 5xx or a timeout, before the turn fails.
    pub max_retries: u32,
    /// First backoff delay; it doubles on each retry (capped at 30 s).
    pub retry_base_ms: u64,
    /// Cap on output tokens per call; 0 leaves it to the provider.
    pub max_output_tokens: u32,
    /// Stream tokens from the provider (SSE) instead of one response.
    pub stream: bool,
    /// Models tried in order when the current one keeps failing (429, 5xx, timeouts).
    #[serde(deserialize_with = "list")]
    pub fallbacks: Vec<String>,
    /// Seconds a model that failed is skipped before it is tried again.
    pub cooldown_secs: u64,
    /// Tokens of the model's context window; history is trimmed to fit it.
    pub context_tokens: u32,
    /// Tokens kept free for the answer.
    pub answer_reserve_tokens: u32,
    /// Named chains of models, first choice first (e.g. `coding`, `cheap`). A route
    /// named `default` replaces `model` + `fallbacks` for ordinary turns.
    pub routes: BTreeMap<String, ModelList>,
    /// Route per channel (`telegram = "cheap"`).
    pub channel_routes: BTreeMap<String, String>,
    /// Route per user id; wins over the channel's.
    pub user_routes: BTreeMap<String, String>,
    /// Price per model, for `nexus usage`: USD per million tokens.
    pub prices: BTreeMap<String, Price>,
}

/// What a model costs, in USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

/// A list of model names; accepts a TOML list or a comma-separated string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelList(#[serde(deserialize_with = "list")] pub Vec<String>);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Turns one agent-core replica runs at once (different sessions). A replica takes
    /// a message before it has a free slot, so below the number of inbound partitions
    /// (128) a busy replica may hold messages another could have started.
    pub concurrency: usize,
    /// Deliveries of one inbound message before it is dead-lettered.
    pub max_deliver: i64,
    /// Seconds JetStream waits for an ack before redelivering; kept alive by
    /// progress acks while a turn runs.
    pub ack_wait_secs: u64,
    /// Seconds a turn in flight may take to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// User ids (as `nexus users list` shows them, e.g. `telegram_42` or a linked
    /// `ada`) that may use admin chat commands (`/pair`).
    #[serde(deserialize_with = "list")]
    pub admins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Turns of recent history given to the model.
    pub history_turns: u32,
    /// IANA timezone for the prompt's clock and the journals.
    pub timezone: String,
    /// MEMORY.md larger than this (bytes) is given as excerpts, not whole.
    pub max_memory_bytes: usize,
    /// Summarize conversations into `memories/YYYY-MM-DD.md` and lasting facts
    /// into MEMORY.md / `USER_<id>.md`.
    pub journal: bool,
    /// The `[llm.routes]` entry (or a model name) that writes the journal; a
    /// missing route named "cheap" means the default route.
    pub journal_route: String,
    /// Unsummarized turns of one session that start a summary at once.
    pub journal_batch_turns: u32,
    /// A conversation quiet this long has its remaining turns summarized.
    pub journal_idle_secs: u64,
    /// How often each agent-core replica looks for conversations to summarize.
    pub journal_sweep_secs: u64,
}

/// `[scheduler]`: the limits of jobs made with the `cron` tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Shortest `every_seconds`, or gap between two fires of a cron expression, a job may have.
    pub min_interval_secs: u64,
    /// Jobs one user may have waiting to fire.
    pub max_jobs_per_user: u32,
    /// A due time seen this much later (the scheduler was down) counts as missed, and
    /// the job's missed-fire policy applies: fire once late, or skip.
    pub misfire_grace_secs: u64,
}

/// `[metrics]`: Prometheus scraping, for operators without an OTLP collector.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `GET /metrics` address per service, keyed by its name (`agent-core =
    /// "127.0.0.1:9464"`, or `NEXUS__METRICS__LISTEN__AGENT_CORE`); absent: none.
    pub listen: BTreeMap<String, String>,
}

impl MetricsConfig {
    /// The address `service` serves metrics on (`agent-core` or `agent_core`).
    pub fn listen_of(&self, service: &str) -> Option<&str> {
        listen_of(&self.listen, service)
    }
}

/// `[health]`: probes for supervisors (compose health checks, Kubernetes probes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// `GET /healthz` (alive) and `GET /readyz` (registered and connected to NATS)
    /// address per service, keyed like `[metrics.listen]`
    /// (`NEXUS__HEALTH__LISTEN__AGENT_CORE=0.0.0.0:9090`); absent: none.
    pub listen: BTreeMap<String, String>,
}

impl HealthConfig {
    /// The address `service` serves its probes on.
    pub fn listen_of(&self, service: &str) -> Option<&str> {
        listen_of(&self.listen, service)
    }
}

/// The address of `service` in a per-service map (`agent-core` or `agent_core`).
fn listen_of<'a>(map: &'a BTreeMap<String, String>, service: &str) -> Option<&'a str> {
    let key = |s: &str| s.replace('-', "_").to_ascii_lowercase();
    map.iter()
        .find(|(name, addr)| key(name) == key(service) && !addr.trim().is_empty())
        .map(|(_, addr)| addr.trim())
}

/// `[log]`: the `redacted.log` every service appends to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Absent: `<workspace>/.nexus/logs/redacted.log`; empty: no file (console only).
    pub redacted_file: Option<String>,
    /// The file is rotated when it reaches this size.
    pub max_mb: u64,
    /// Rotated files kept (`redacted.log.1` is the newest).
    pub keep: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            redacted_file: None,
            max_mb: 10,
            keep: 5,
        }
    }
}

impl Config {
    /// Where `redacted.log` is, unless it is turned off.
    pub fn redacted_log_path(&self) -> Option<PathBuf> {
        match self.log.redacted_file.as_deref() {
            None => Some(self.workspace.join(".nexus/logs/redacted.log")),
            Some("") => None,
            Some(path) => Some(PathBuf::from(path)),
        }
    }
}

/// `[subagents]`: tasks started with the `spawn` tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubagentsConfig {
    /// Model calls one sub-agent may make.
    pub max_iterations: u32,
    /// Wall-clock limit of one task, in seconds; a task over it ends as timed out.
    pub timeout_secs: u64,
    /// How deep tasks may nest: 1 means a chat may spawn, a sub-agent may not.
    pub max_depth: u32,
    /// Tasks one user may have queued or running at once.
    pub max_running_per_user: u32,
    /// Tasks the whole deployment may have queued or running at once.
    pub max_running_total: u32,
    /// Whether sub-agents get the `message` tool (to write to other chats).
    pub allow_message: bool,
}

impl Default for SubagentsConfig {
    fn default() -> Self {
        Self {
            max_iterations: 30,
            timeout_secs: 1800,
            max_depth: 1,
            max_running_per_user: 3,
            max_running_total: 20,
            allow_message: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolsConfig {
    /// Bytes of tool output the model sees at most.
    pub max_output_bytes: usize,
    /// Matches grep_search returns at most.
    pub grep_max_results: usize,
    /// Files larger than this are not read whole.
    pub max_file_bytes: u64,
    /// Tools that are switched off by name.
    #[serde(deserialize_with = "list")]
    pub disabled: Vec<String>,
    /// Tools whose every call waits for a person's yes in the chat (e.g. `exec`).
    #[serde(deserialize_with = "list")]
    pub require_approval: Vec<String>,
    /// `web_search` and `fetch_url`.
    pub web: WebToolsConfig,
    /// `exec`: commands in the sandbox.
    pub exec: ExecToolsConfig,
    /// MCP servers whose tools tool-runner offers as `<server>__<tool>`.
    pub mcp: Vec<McpServerConfig>,
}

/// `[tools.web]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebToolsConfig {
    /// Hosts, as written in a URL (a name or an IP literal), that `fetch_url` may
    /// reach although they resolve to private, loopback or link-local addresses.
    #[serde(deserialize_with = "list")]
    pub allow_hosts: Vec<String>,
    /// Seconds one fetch or search may take.
    pub timeout_secs: u64,
    /// Bytes of a page read at most.
    pub max_page_bytes: usize,
    /// Redirects followed at most.
    pub max_redirects: usize,
}

impl Default for WebToolsConfig {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            timeout_secs: 20,
            max_page_bytes: 5 * 1024 * 1024,
            max_redirects: 5,
        }
    }
}

/// `[tools.exec]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecToolsConfig {
    /// Offer `exec` where its sandbox can be set up (it never runs without one).
    pub enabled: bool,
    /// Give commands the host's network (off: a network namespace of their own).
    pub network: bool,
    /// Seconds a command may run, and the default when the call gives none.
    pub timeout_secs: u64,
    /// Memory of each process of a command, in MiB (address space).
    pub memory_mb: u64,
    /// `sandbox` (namespaces, landlock, seccomp, rlimits) or `docker`.
    pub backend: ExecBackend,
    /// Processes a command may have at once.
    pub max_processes: u64,
    /// Largest file a command may write, in MiB.
    pub max_file_mb: u64,
    /// The `nexus-sandbox` helper; empty means the one beside the tool-runner binary.
    pub helper: String,
    /// Host user and group a command runs as when tool-runner runs as root.
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    /// Image of the throwaway container (`backend = "docker"`).
    pub docker_image: String,
    /// The docker CLI.
    pub docker_bin: String,
}

/// Where `exec` runs commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecBackend {
    #[default]
    Sandbox,
    Docker,
}

impl Default for ExecToolsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            network: false,
            timeout_secs: 60,
            memory_mb: 1024,
            backend: ExecBackend::Sandbox,
            max_processes: 128,
            max_file_mb: 256,
            helper: String::new(),
            sandbox_uid: 65534,
            sandbox_gid: 65534,
            docker_image: "python:3.13-slim".to_owned(),
            docker_bin: "docker".to_owned(),
        }
    }
}

/// One `[[tools.mcp]]` server: `command` (+ `args`, `env`) over stdio, or `url`
/// (+ `headers`) over streamable HTTP.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpServerConfig {
    /// Prefix of its tools' names (`<name>__<tool>`).
    pub name: String,
    pub command: Option<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub url: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// Seconds one call may take (default 60).
    pub timeout_secs: Option<u64>,
}

impl std::fmt::Debug for McpServerConfig {
    /// Env values and headers often hold tokens: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServerConfig")
            .field("name", &self.name)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// Settings of one channel. Gateways read the keys they know.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelConfig {
    /// Who may talk to the agent: sender ids, `"*"` for everyone, empty for nobody.
    #[serde(deserialize_with = "list")]
    pub allow_from: Vec<String>,
    /// What a sender outside `allow_from` (and not approved) gets.
    pub dm_policy: DmPolicy,
    /// Seconds a pairing code stays valid (at most a day).
    #[serde(deserialize_with = "whole_number")]
    pub pairing_code_ttl_secs: u64,
    /// Pairing codes waiting for an admin at most, per channel; further strangers get none.
    #[serde(deserialize_with = "whole_number")]
    pub pairing_max_pending: u64,
    /// Listener address, for channels that receive webhooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Channel-specific keys not modelled here yet.
    #[serde(flatten)]
    pub extra: BTreeMap<String, toml::Value>,
}

/// `[channels.<name>] dm_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmPolicy {
    /// Only `allow_from` (and senders approved earlier); others are told their id once.
    #[default]
    Allowlist,
    /// Others get a one-time code to give an admin (`nexus pair approve <code>`);
    /// their messages never reach the agent.
    Pairing,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            allow_from: Vec::new(),
            dm_policy: DmPolicy::default(),
            pairing_code_ttl_secs: 3600,
            pairing_max_pending: 50,
            listen: None,
            extra: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: String,
    pub grpc_listen: String,
    /// API key → user id. Never logged.
    #[serde(skip_serializing)]
    pub keys: BTreeMap<String, String>,
    /// Keys that open the admin console at `/admin` (`NEXUS__API__ADMIN_KEYS`,
    /// comma-separated). Empty: the console is off. Never logged or serialized.
    #[serde(skip_serializing, deserialize_with = "list")]
    pub admin_keys: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        let mut channels = BTreeMap::new();
        // The CLI speaks to NATS directly; whoever can reach NATS is trusted,
        // so the local channel is open while every network channel starts closed.
        channels.insert(
            "cli".to_owned(),
            ChannelConfig {
                allow_from: vec!["*".to_owned()],
                ..Default::default()
            },
        );
        Self {
            namespace: "nexus".to_owned(),
            workspace: PathBuf::from("./workspace"),
            nats: NatsConfig::default(),
            metrics: MetricsConfig::default(),
            health: HealthConfig::default(),
            database: DatabaseConfig::default(),
            llm: LlmConfig::default(),
            agent: AgentConfig::default(),
            memory: MemoryConfig::default(),
            tools: ToolsConfig::default(),
            scheduler: SchedulerConfig::default(),
            subagents: SubagentsConfig::default(),
            channels,
            api: ApiConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            request_timeout_secs: 30,
            replicas: 1,
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            model: "gpt-4.1-mini".to_owned(),
            max_tool_iterations: 8,
            request_timeout_secs: 120,
            max_retries: 3,
            retry_base_ms: 500,
            max_output_tokens: 0,
            stream: true,
            fallbacks: Vec::new(),
            cooldown_secs: 60,
            context_tokens: 128_000,
            answer_reserve_tokens: 4_096,
            routes: BTreeMap::new(),
            channel_routes: BTreeMap::new(),
            user_routes: BTreeMap::new(),
            prices: BTreeMap::new(),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            concurrency: 128,
            max_deliver: 5,
            ack_wait_secs: 5,
            shutdown_grace_secs: 20,
            admins: Vec::new(),
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            history_turns: 20,
            timezone: "UTC".to_owned(),
            max_memory_bytes: 16 * 1024,
            journal: true,
            journal_route: "cheap".to_owned(),
            journal_batch_turns: 10,
            journal_idle_secs: 15 * 60,
            journal_sweep_secs: 60,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            min_interval_secs: 60,
            max_jobs_per_user: 50,
            misfire_grace_secs: 60,
        }
    }
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            max_output_bytes: 32 * 1024,
            grep_max_results: 200,
            max_file_bytes: 10 * 1024 * 1024,
            disabled: Vec::new(),
            require_approval: Vec::new(),
            web: WebToolsConfig::default(),
            exec: ExecToolsConfig::default(),
            mcp: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("grpc_listen", &self.grpc_listen)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field(
                "admin_keys",
                &format_args!("<{} redacted>", self.admin_keys.len()),
            )
            .finish()
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".to_owned(),
            grpc_listen: "0.0.0.0:50051".to_owned(),
            keys: BTreeMap::new(),
            admin_keys: Vec::new(),
        }
    }
}

/// Why configuration could not be loaded. Each message names the file or variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads from `NEXUS_CONFIG` (or `./nexus.toml` when present) and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        let explicit = std::env::var_os("NEXUS_CONFIG").map(PathBuf::from);
        let path = explicit
            .clone()
            .unwrap_or_else(|| PathBuf::from("nexus.toml"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Some((path, text)),
            // Only the default location may be missing; a named file must exist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => None,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let file = text.as_ref().map(|(p, t)| (p.as_path(), t.as_str()));
        Self::from_sources(file, std::env::vars())
    }

    /// Builds a config from a TOML document and environment pairs (tests pass their own).
    pub fn from_sources(
        file: Option<(&Path, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut value = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some((path, text)) = file {
            let parsed: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            merge(&mut value, parsed);
        }

        let mut named = Vec::new();
        for (key, val) in env {
            if let Some(rest) = key.strip_prefix("NEXUS__") {
                let mut path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
                // Keys of user-data tables (API keys, user ids) keep their case.
                if path.len() == 3
                    && CASE_KEPT_TABLES.contains(&[path[0].as_str(), path[1].as_str()])
                    && let Some(original) = rest.split("__").nth(2)
                {
                    path[2] = original.to_owned();
                }
                if path.iter().any(String::is_empty) {
                    return Err(ConfigError::Invalid(format!(
                        "malformed override variable {key}"
                    )));
                }
                set_path(&mut value, &path, &val);
            } else {
                let target: &[&str] = match key.as_str() {
                    "NATS_URL" => &["nats", "url"],
                    "NEXUS_NAMESPACE" => &["namespace"],
                    "NEXUS_WORKSPACE" => &["workspace"],
                    "DATABASE_URL" => &["database", "url"],
                    _ => continue,
                };
                named.push((target, val));
            }
        }
        // The design's named variables win over generic overrides.
        for (target, val) in named {
            let path: Vec<String> = target.iter().map(|s| (*s).to_owned()).collect();
            set_path(&mut value, &path, &val);
        }

        let config: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        crate::domain::Namespace::parse(&self.namespace)
            .map_err(|e| ConfigError::Invalid(format!("namespace: {e}")))?;
        // JetStream keeps at most five copies; an even count loses quorum as easily as one fewer.
        if !(1..=5).contains(&self.nats.replicas) {
            return Err(ConfigError::Invalid(format!(
                "[nats] replicas = {}: must be 1 to 5 (1 on one server, 3 on a cluster)",
                self.nats.replicas
            )));
        }
        // The console's key guards every admin action; the message never shows it.
        for (i, key) in self.api.admin_keys.iter().enumerate() {
            if key.chars().count() < 16 || key.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::Invalid(format!(
                    "[api] admin_keys: key number {} is shorter than 16 characters or holds whitespace",
                    i + 1
                )));
            }
        }
        if self.llm.model.trim().is_empty() {
            return Err(ConfigError::Invalid("[llm] model must not be empty".into()));
        }
        if self.llm.context_tokens <= self.llm.answer_reserve_tokens {
            return Err(ConfigError::Invalid(
                "[llm] context_tokens must be larger than answer_reserve_tokens".into(),
            ));
        }
        for (what, map) in [
            ("channel_routes", &self.llm.channel_routes),
            ("user_routes", &self.llm.user_routes),
        ] {
            for (key, route) in map {
                if !self.llm.routes.contains_key(route) {
                    return Err(ConfigError::Invalid(format!(
                        "[llm.{what}] {key} = \"{route}\" names no route in [llm.routes]"
                    )));
                }
            }
        }
        if self.memory.journal_batch_turns == 0 {
            return Err(ConfigError::Invalid(
                "[memory] journal_batch_turns must be at least 1".into(),
            ));
        }
        if let Err(e) = jiff::tz::TimeZone::get(&self.memory.timezone) {
            return Err(ConfigError::Invalid(format!(
                "[memory] timezone \"{}\" is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\"): {e}",
                self.memory.timezone
            )));
        }
        for (i, server) in self.tools.mcp.iter().enumerate() {
            let name = &server.name;
            let valid = !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !name.contains("__");
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "[[tools.mcp]] #{}: name \"{name}\" must be 1-32 letters, digits, '-' or '_' (no \"__\")",
                    i + 1
                )));
            }
            if server.command.is_some() == server.url.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "[[tools.mcp]] {name}: give exactly one of command (stdio) or url (streamable HTTP)"
                )));
            }
            if self.tools.mcp[..i].iter().any(|s| &s.name == name) {
                return Err(ConfigError::Invalid(format!(
                    "[[tools.mcp]] {name}: two servers share this name"
                )));
            }
        }
        let exec = &self.tools.exec;
        if exec.timeout_secs == 0 || exec.memory_mb < 16 || exec.max_processes == 0 {
            return Err(ConfigError::Invalid(
                "[tools.exec] timeout_secs and max_processes must be at least 1, memory_mb at least 16"
                    .into(),
            ));
        }
        if self.scheduler.min_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "[scheduler] min_interval_secs must be at least 1".into(),
            ));
        }
        if self.agent.concurrency == 0 {
            return Err(ConfigError::Invalid(
                "[agent] concurrency must be at least 1".into(),
            ));
        }
        for (name, c) in &self.channels {
            if !(1..=86_400).contains(&c.pairing_code_ttl_secs) || c.pairing_max_pending == 0 {
                return Err(ConfigError::Invalid(format!(
                    "[channels.{name}] pairing_code_ttl_secs must be 1 to 86400 and pairing_max_pending at least 1"
                )));
            }
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        if self.agent.max_deliver < 1 {
            return Err(ConfigError::Invalid(
                "[agent] max_deliver must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The database URL in use: `DATABASE_URL` as given, else SQLite under the workspace.
    pub fn database_url(&self) -> String {
        if self.database.url.trim().is_empty() {
            let path = self.workspace.join(".nexus").join("nexus.db");
            format!("sqlite://{}?mode=rwc", path.display())
        } else {
            self.database.url.clone()
        }
    }

    /// Settings of a channel; a channel that is not configured allows nobody.
    pub fn channel(&self, name: &str) -> ChannelConfig {
        self.channels.get(name).cloned().unwrap_or_default()
    }
}

/// Tables whose keys are data, not setting names: `NEXUS__API__KEYS__AbC=alice` keeps `AbC`.
const CASE_KEPT_TABLES: &[[&str; 2]] =
    &[["api", "keys"], ["llm", "user_routes"], ["llm", "prices"]];

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Sets `path` to `raw`, typed after the value it replaces (lists split on commas).
fn set_path(root: &mut toml::Value, path: &[String], raw: &str) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = root;
    for key in parents {
        let toml::Value::Table(table) = node else {
            return;
        };
        node = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    let toml::Value::Table(table) = node else {
        return;
    };
    let typed = match table.get(last) {
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        Some(toml::Value::Integer(_)) => raw
            .trim()
            .parse()
            .map(toml::Value::Integer)
            .unwrap_or_else(|_| toml::Value::String(raw.to_owned())),
        Some(toml::Value::Float(_)) => raw
            .trim()
            .parse()
            .map(toml::Value::Float)
            .unwrap_or_else(|_| toml::Value::String(raw.to_owned())),
        Some(toml::Value::Boolean(_)) => raw
            .trim()
            .parse()
            .map(toml::Value::Boolean)
            .unwrap_or_else(|_| toml::Value::String(raw.to_owned())),
        // Unknown keys stay strings; list fields accept "a,b" (see `list`).
        _ => toml::Value::String(raw.to_owned()),
    };
    table.insert(last.clone(), typed);
}

/// Accepts a number, or its digits as a string (overrides of keys without a default arrive so).
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(u64),
        Text(String),
    }
    match NumberOrText::deserialize(d)? {
        NumberOrText::Number(n) => Ok(n),
        NumberOrText::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a whole number"))),
    }
}

/// Accepts a list, or a comma-separated string (as environment overrides give).
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::from_sources(None, env(&[])).unwrap();
        assert_eq!(c.namespace, "nexus");
        assert_eq!(c.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(c.api.listen, "0.0.0.0:8080");
        assert_eq!(c.api.grpc_listen, "0.0.0.0:50051");
        assert!(c.database_url().starts_with("sqlite://"));
        assert_eq!(c.scheduler.min_interval_secs, 60);
        assert_eq!(c.scheduler.max_jobs_per_user, 50);
        assert!(
            c.channel("telegram").allow_from.is_empty(),
            "unknown channels allow nobody"
        );
    }

    #[test]
    fn file_then_generic_then_named_variables_win_in_that_order() {
        let toml = r#"
            namespace = "fromfile"
            [llm]
            model = "claude-sonnet-4-5"
            max_retries = 1
            [channels.telegram]
            allow_from = ["42"]
        "#;
        let c = Config::from_sources(
            Some((Path::new("nexus.toml"), toml)),
            env(&[
                ("NEXUS__LLM__MODEL", "gemini-3-flash"),
                ("NEXUS__LLM__MAX_RETRIES", "7"),
                ("NEXUS__LLM__STREAM", "false"),
                ("NEXUS__CHANNELS__TELEGRAM__ALLOW_FROM", "1, 2,3"),
                ("NEXUS__CHANNELS__SLACK__ALLOW_FROM", "U1,U2"),
                ("NEXUS__NAMESPACE", "generic"),
                ("NEXUS_NAMESPACE", "named"),
                ("DATABASE_URL", "postgres://localhost/test"),
            ]),
        )
        .unwrap();
        assert_eq!(c.namespace, "named");
        assert_eq!(c.llm.model, "gemini-3-flash");
        assert_eq!(c.llm.max_retries, 7);
        assert!(!c.llm.stream);
        assert_eq!(c.channel("telegram").allow_from, vec!["1", "2", "3"]);
        assert_eq!(c.channel("slack").allow_from, vec!["U1", "U2"]);
        assert_eq!(c.database_url(), "postgres://localhost/test");
    }

    #[test]
    fn replicas_and_health_addresses_come_from_the_environment() {
        let c = Config::from_sources(
            None,
            env(&[
                ("NEXUS__NATS__REPLICAS", "3"),
                ("NEXUS__HEALTH__LISTEN__AGENT_CORE", "0.0.0.0:9090"),
            ]),
        )
        .unwrap();
        assert_eq!(c.nats.replicas, 3);
        assert_eq!(c.health.listen_of("agent-core"), Some("0.0.0.0:9090"));
        assert_eq!(c.health.listen_of("tool-runner"), None);
        assert_eq!(Config::default().nats.replicas, 1);
        for bad in ["0", "6"] {
            let e = Config::from_sources(None, env(&[("NEXUS__NATS__REPLICAS", bad)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("[nats] replicas"), "{e}");
        }
    }

    #[test]
    fn a_bad_file_or_value_is_a_clear_error() {
        let err =
            Config::from_sources(Some((Path::new("x.toml"), "[llm\n")), env(&[])).unwrap_err();
        assert!(err.to_string().contains("x.toml"), "{err}");

        let err =
            Config::from_sources(None, env(&[("NEXUS__LLM__MAX_RETRIES", "many")])).unwrap_err();
        assert!(err.to_string().contains("invalid"), "{err}");

        let err = Config::from_sources(None, env(&[("NEXUS_NAMESPACE", "a.b")])).unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");

        let err = Config::from_sources(None, env(&[("NEXUS__MEMORY__TIMEZONE", "Mars/Olympus")]))
            .unwrap_err();
        assert!(err.to_string().contains("Mars/Olympus"), "{err}");
        let ok = Config::from_sources(None, env(&[("NEXUS__MEMORY__TIMEZONE", "Europe/Berlin")]))
            .unwrap();
        assert_eq!(ok.memory.timezone, "Europe/Berlin");
        let err = Config::from_sources(None, env(&[("NEXUS__MEMORY__JOURNAL_BATCH_TURNS", "0")]))
            .unwrap_err();
        assert!(err.to_string().contains("journal_batch_turns"), "{err}");

        let err = Config::from_sources(
            Some((Path::new("x.toml"), "[llm]\nmodle = \"typo\"\n")),
            env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("modle"), "{err}");
    }

    #[test]
    fn routes_come_from_the_file_or_the_environment_and_must_exist() {
        let toml = r#"
            [llm.routes]
            coding = ["claude-sonnet-4-5", "gpt-5.2"]
            [llm.channel_routes]
            telegram = "coding"
        "#;
        let c = Config::from_sources(
            Some((Path::new("n.toml"), toml)),
            env(&[("NEXUS__LLM__ROUTES__CHEAP", "gemini-3-flash, gpt-4.1-mini")]),
        )
        .unwrap();
        assert_eq!(
            c.llm.routes["coding"].0,
            vec!["claude-sonnet-4-5", "gpt-5.2"]
        );
        assert_eq!(
            c.llm.routes["cheap"].0,
            vec!["gemini-3-flash", "gpt-4.1-mini"]
        );
        let err = Config::from_sources(None, env(&[("NEXUS__LLM__USER_ROUTES__U1", "nope")]))
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn api_keys_and_user_ids_set_in_the_environment_keep_their_case() {
        let c = Config::from_sources(
            None,
            env(&[
                ("NEXUS__API__KEYS__sk-AbC123", "alice"),
                ("NEXUS__LLM__ROUTES__CODING", "m"),
                ("NEXUS__LLM__USER_ROUTES__Slack_U7", "coding"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.api.keys.get("sk-AbC123").map(String::as_str),
            Some("alice")
        );
        assert_eq!(
            c.llm.user_routes.get("Slack_U7").map(String::as_str),
            Some("coding")
        );
        assert!(
            c.llm.routes.contains_key("coding"),
            "route names are lowercased like settings"
        );
    }

    #[test]
    fn exec_settings_come_from_the_file_or_the_environment() {
        let c = Config::from_sources(None, env(&[])).unwrap();
        assert!(c.tools.exec.enabled && !c.tools.exec.network);
        assert_eq!(c.tools.exec.backend, ExecBackend::Sandbox);
        assert!(c.tools.require_approval.is_empty());
        let toml = "[tools]\nrequire_approval = [\"exec\"]\n[tools.exec]\nbackend = \"docker\"\nmemory_mb = 512\n";
        let c = Config::from_sources(
            Some((Path::new("n.toml"), toml)),
            env(&[
                ("NEXUS__TOOLS__EXEC__NETWORK", "true"),
                ("NEXUS__TOOLS__EXEC__TIMEOUT_SECS", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(c.tools.require_approval, ["exec"]);
        let exec = &c.tools.exec;
        assert_eq!(exec.backend, ExecBackend::Docker);
        assert_eq!((exec.memory_mb, exec.timeout_secs), (512, 5));
        assert!(exec.network);
        let err =
            Config::from_sources(None, env(&[("NEXUS__TOOLS__EXEC__BACKEND", "vm")])).unwrap_err();
        assert!(err.to_string().contains("vm"), "{err}");
        let err = Config::from_sources(None, env(&[("NEXUS__TOOLS__EXEC__TIMEOUT_SECS", "0")]))
            .unwrap_err();
        assert!(err.to_string().contains("[tools.exec]"), "{err}");
    }

    #[test]
    fn admin_keys_come_from_the_file_or_the_environment_and_are_never_shown() {
        let toml = "[api]\nadmin_keys = [\"adm-File-0123456789\"]\n";
        let c = Config::from_sources(Some((Path::new("n.toml"), toml)), env(&[])).unwrap();
        assert_eq!(c.api.admin_keys, ["adm-File-0123456789"]);
        let c = Config::from_sources(
            None,
            env(&[(
                "NEXUS__API__ADMIN_KEYS",
                "adm-Env-0123456789a, adm-Env-0123456789b",
            )]),
        )
        .unwrap();
        assert_eq!(
            c.api.admin_keys,
            ["adm-Env-0123456789a", "adm-Env-0123456789b"]
        );
        assert!(!toml::to_string(&c).unwrap().contains("adm-Env"));
        assert!(!format!("{c:?}").contains("adm-Env"));
        let err =
            Config::from_sources(None, env(&[("NEXUS__API__ADMIN_KEYS", "tiny-key")])).unwrap_err();
        assert!(err.to_string().contains("admin_keys"), "{err}");
        assert!(!err.to_string().contains("tiny-key"), "{err}");
    }

    #[test]
    fn api_keys_are_never_serialized() {
        let toml = "[api.keys]\nsecret-key = \"alice\"\n";
        let c = Config::from_sources(Some((Path::new("n.toml"), toml)), env(&[])).unwrap();
        assert_eq!(
            c.api.keys.get("secret-key").map(String::as_str),
            Some("alice")
        );
        let out = toml::to_string(&c).unwrap();
        assert!(!out.contains("secret-key"));
    }

    #[test]
    fn pairing_and_admins_are_read_from_the_file_and_the_environment() {
        let c = Config::from_sources(None, env(&[])).unwrap();
        let telegram = c.channel("telegram");
        assert_eq!(telegram.dm_policy, DmPolicy::Allowlist);
        assert_eq!(
            (telegram.pairing_code_ttl_secs, telegram.pairing_max_pending),
            (3600, 50)
        );
        assert!(c.agent.admins.is_empty());

        let toml = "[channels.slack]\ndm_policy = \"pairing\"\npairing_max_pending = 5\n";
        let c = Config::from_sources(
            Some((Path::new("n.toml"), toml)),
            env(&[
                ("NEXUS__CHANNELS__TELEGRAM__DM_POLICY", "pairing"),
                ("NEXUS__CHANNELS__TELEGRAM__PAIRING_CODE_TTL_SECS", "5"),
                ("NEXUS__AGENT__ADMINS", "telegram_42, ada"),
            ]),
        )
        .unwrap();
        let telegram = c.channel("telegram");
        assert_eq!(telegram.dm_policy, DmPolicy::Pairing);
        assert_eq!(telegram.pairing_code_ttl_secs, 5);
        assert_eq!(c.channel("slack").pairing_max_pending, 5);
        assert_eq!(c.agent.admins, ["telegram_42", "ada"]);

        let err = Config::from_sources(
            None,
            env(&[("NEXUS__CHANNELS__TELEGRAM__DM_POLICY", "open")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("open"), "{err}");
        let err = Config::from_sources(
            None,
            env(&[("NEXUS__CHANNELS__TELEGRAM__PAIRING_CODE_TTL_SECS", "0")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("pairing_code_ttl_secs"), "{err}");
    }
}
