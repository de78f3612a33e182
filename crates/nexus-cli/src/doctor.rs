//! `nexus doctor`: checks what a deployment needs, as this shell's environment and
//! config give it, and prints each finding as `ok`, `warn` or `FAIL` with the fix:
//! the config, `.env`, NATS (reachable, credentials, JetStream, version,
//! permissions), the database, each configured provider and channel, the exec sandbox.
//!
//! It only reads: no stream, file or database is created, nothing is published
//! that a service would act on. It never prints a secret. Exit 1 on any FAIL.

use std::{
    collections::BTreeMap, path::PathBuf, process::ExitCode, str::FromStr as _, time::Duration,
};

use clap::Args;
use nexus_bus::{Bus, NatsAccess};
use nexus_common::{Config, channel_settings, config::DmPolicy, domain::Namespace};
use serde::Serialize;

use crate::onboard::{
    KeyCheck, Provider, error_chain, http_client, list_models, model_listed, provider_base,
};

#[derive(Args)]
pub struct DoctorArgs {
    /// Print the findings as one JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Finding {
    check: String,
    level: Level,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, level: Level, check: &str, message: impl Into<String>, fix: Option<String>) {
        self.0.push(Finding {
            check: check.to_owned(),
            level,
            message: message.into(),
            fix,
        });
    }
    fn ok(&mut self, check: &str, message: impl Into<String>) {
        self.add(Level::Ok, check, message, None);
    }
    fn warn(&mut self, check: &str, message: impl Into<String>, fix: impl Into<String>) {
        self.add(Level::Warn, check, message, Some(fix.into()));
    }
    fn fail(&mut self, check: &str, message: impl Into<String>, fix: impl Into<String>) {
        self.add(Level::Fail, check, message, Some(fix.into()));
    }
}

/// How long one network check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut r = Report::default();
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let config_path = var("NEXUS_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nexus.toml"));
    let config = match Config::load() {
        Ok(c) => {
            if config_path.is_file() {
                r.ok("config", format!("{} loads", config_path.display()));
            } else {
                r.ok(
                    "config",
                    "no nexus.toml here: defaults and the environment".to_owned(),
                );
            }
            Some(c)
        }
        Err(e) => {
            r.fail(
                "config",
                e.to_string(),
                "correct the file or variable it names (`nexus onboard` writes a working nexus.toml)",
            );
            None
        }
    };
    dotenv(&mut r);
    if let Some(config) = &config {
        let client = http_client(CHECK_TIMEOUT)?;
        let bus = nats(&mut r, config).await;
        database(&mut r, config).await;
        providers(&mut r, config, &client, &var).await;
        channels(&mut r, config, &client, bus.as_ref(), &var).await;
        sandbox(&mut r, config).await;
    }

    let count = |l: Level| r.0.iter().filter(|f| f.level == l).count();
    let failed = count(Level::Fail);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r.0)?);
    } else {
        for f in &r.0 {
            let tag = match f.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("{tag}  {}: {}", f.check, f.message);
            if let Some(fix) = &f.fix {
                println!("      fix: {fix}");
            }
        }
        println!(
            "\n{failed} FAIL, {} warn, {} ok",
            count(Level::Warn),
            count(Level::Ok)
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `.env` beside the config: `nexus` loads it before any command (`dotenv.rs`), so
/// every variable should be in this process's environment by now.
fn dotenv(r: &mut Report) {
    let path = crate::dotenv::path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let vars = crate::dotenv::parse(&text);
    let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|k| std::env::var_os(k).is_none())
        .collect();
    if missing.is_empty() {
        r.ok(
            ".env",
            format!(
                "{}: all {} variables are in the environment",
                path.display(),
                names.len()
            ),
        );
    } else {
        r.warn(
            ".env",
            format!(
                "{} sets {} that did not reach this process",
                path.display(),
                missing.join(", ")
            ),
            format!(
                "run nexus from a shell without NEXUS_DOTENV set, or load it: set -a && . {} && set +a",
                path.display()
            ),
        );
    }
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.permissions().mode() & 0o077 != 0
    {
        r.warn(
            ".env",
            format!("{} holds secrets but others may read it", path.display()),
            format!("chmod 600 {}", path.display()),
        );
    }
}

/// Connects as every Nexus process would; returns a bus for later checks.
async fn nats(r: &mut Report, config: &Config) -> Option<Bus> {
    let url = &config.nats.url;
    let access = match NatsAccess::from_env(url) {
        Ok(a) => a,
        Err(e) => {
            r.fail("nats", e.to_string(), "correct the variable it names");
            return None;
        }
    };
    let Ok(options) = access.options() else {
        r.fail(
            "nats",
            "the NATS credentials cannot be used",
            "check NATS_CREDS",
        );
        return None;
    };
    let (violations_tx, mut violations) = tokio::sync::mpsc::unbounded_channel();
    let connect = options
        .name(format!("{}:nexus-doctor", config.namespace))
        .connection_timeout(Duration::from_secs(3))
        .event_callback(move |event| {
            let tx = violations_tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url.as_str());
    let client = match tokio::time::timeout(CHECK_TIMEOUT, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e))
            if matches!(
                e.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication
            ) =>
        {
            r.fail(
                "nats",
                format!("{url} refused the connection {}: {e}", access.describe()),
                "check NATS_CREDS, NATS_USER/NATS_PASSWORD or NATS_TOKEN (deploy/nats: the CLI logs in as admin)",
            );
            return None;
        }
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            if is_local(url) && on_path("nats-server") && !url.starts_with("tls://") {
                r.warn(
                    "nats",
                    format!("no NATS at {url} ({why}); `nexus up` starts nats-server from PATH there"),
                    "nothing, if you start the stack with `nexus up`; otherwise start nats-server -js",
                );
            } else {
                r.fail(
                    "nats",
                    format!("no NATS at {url} ({why})"),
                    "start nats-server with JetStream (nats-server -js), or set NATS_URL to a running server",
                );
            }
            return None;
        }
    };
    let info = client.server_info();
    r.ok(
        "nats",
        format!(
            "connected to {url} {}: nats-server {}",
            access.describe(),
            info.version
        ),
    );
    match version(&info.version) {
        Some(v) if v < (2, 10) => r.warn(
            "nats version",
            format!("nats-server {} is older than 2.10", info.version),
            "use 2.10 or later in production: deploy/nats/authorization.conf scopes each service's \
             consumers by their filter subject, which only 2.10+ puts in the consumer-create API \
             subject, so on 2.9 those permissions refuse the services; 2.9 does for development \
             without users",
        ),
        Some(_) => r.ok("nats version", format!("{} (2.10 or later)", info.version)),
        None => r.warn(
            "nats version",
            format!("cannot read the server version \"{}\"", info.version),
            "use nats-server 2.10 or later",
        ),
    }

    let Ok(ns) = Namespace::parse(&config.namespace) else {
        return None;
    };
    let bus = Bus::from_client(client.clone(), ns, "nexus-doctor", CHECK_TIMEOUT);
    // The raw `$JS.API.INFO`: async-nats' typed answer does not decode 2.9's.
    let info = tokio::time::timeout(CHECK_TIMEOUT, client.request("$JS.API.INFO", "".into())).await;
    let answer = info.map(|r| {
        r.map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap_or_default())
    });
    let js_fix = "start nats-server with -js (or `jetstream {}` in its config); every stream of Nexus lives there";
    match answer {
        Ok(Ok(v)) if v["error"].is_null() && v["type"].is_string() => r.ok(
            "jetstream",
            format!(
                "enabled ({} streams in this account)",
                v["streams"].as_u64().unwrap_or(0)
            ),
        ),
        Ok(Ok(v)) => r.fail(
            "jetstream",
            format!(
                "JetStream refused: {}",
                v["error"]["description"]
                    .as_str()
                    .unwrap_or("an unexpected answer")
            ),
            js_fix,
        ),
        Ok(Err(e)) => r.fail(
            "jetstream",
            format!("JetStream does not answer: {e}"),
            js_fix,
        ),
        Err(_) => r.fail("jetstream", "JetStream did not answer within 5 s", js_fix),
    }

    // What the CLI itself does: watch events (`tail`), ping services (`status`),
    // read stream state (`status`). The server reports a refusal asynchronously.
    let s = bus.subjects();
    let events = s.event("*");
    let watch = client.subscribe(events.clone()).await;
    let live = bus.discover_services(Duration::from_millis(500)).await;
    let stream = tokio::time::timeout(CHECK_TIMEOUT, bus.stream(&s.inbound_stream())).await;
    let _ = client.flush().await;
    drop(watch);
    let mut refused = Vec::new();
    // The server's -ERR comes before the flush's PONG; the callback may still be on its way.
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(300), violations.recv()).await
    {
        if e.to_lowercase().contains("permissions violation") {
            refused.push(e);
        }
    }
    if refused.is_empty() {
        r.ok(
            "nats permissions",
            format!("may watch {events}, ping services and read stream state"),
        );
    } else {
        r.fail(
            "nats permissions",
            format!("the server refused: {}", refused.join("; ")),
            format!(
                "give the CLI's NATS user ({}) the admin permissions of deploy/nats/authorization.conf",
                access.describe()
            ),
        );
    }
    match live {
        Ok(found) if found.is_empty() => r.warn(
            "services",
            format!("none running in namespace \"{}\"", config.namespace),
            "start them with `nexus up` (or your deployment)",
        ),
        Ok(found) => {
            let mut names: Vec<&str> = found.iter().map(|i| i.name.as_str()).collect();
            names.dedup();
            r.ok(
                "services",
                format!("{} live: {}", found.len(), names.join(", ")),
            );
        }
        Err(e) => r.warn(
            "services",
            format!("cannot list them: {e}"),
            "see the NATS findings",
        ),
    }
    // The stream may not exist yet; only a refusal of the request mattered.
    drop(stream);
    Some(bus)
}

/// `major.minor` of a server version such as `2.10.18`.
fn version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn is_local(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.rsplit('@').next().unwrap_or(rest);
    ["127.0.0.1", "localhost", "0.0.0.0", "[::1]"]
        .iter()
        .any(|h| host.starts_with(h))
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

/// The database as memory-svc and the scheduler open it; a missing SQLite file is
/// fine (they create it), and doctor never creates it.
async fn database(r: &mut Report, config: &Config) {
    use sqlx::Connection as _;
    let url = config.database_url();
    if url.starts_with("sqlite:") {
        let options = match sqlx::sqlite::SqliteConnectOptions::from_str(&url) {
            Ok(o) => o,
            Err(e) => {
                r.fail(
                    "database",
                    format!("DATABASE_URL is not a SQLite URL: {e}"),
                    "use sqlite://<file> or postgres://…",
                );
                return;
            }
        };
        let file = options.get_filename().to_owned();
        if !file.exists() {
            let dir = file.ancestors().skip(1).find(|a| a.exists());
            match dir {
                Some(d) if d.is_dir() => r.ok(
                    "database",
                    format!("SQLite at {}: created at the first start", file.display()),
                ),
                _ => r.fail(
                    "database",
                    format!("SQLite at {}: no directory to create it in", file.display()),
                    "set NEXUS_WORKSPACE (or DATABASE_URL) to a writable place",
                ),
            }
            return;
        }
        let opened = tokio::time::timeout(
            CHECK_TIMEOUT,
            sqlx::sqlite::SqliteConnection::connect_with(&options.read_only(true)),
        )
        .await;
        match opened {
            Ok(Ok(mut c)) => {
                let ping = c.ping().await;
                let _ = c.close().await;
                match ping {
                    Ok(()) => r.ok("database", format!("SQLite at {} opens", file.display())),
                    Err(e) => r.fail(
                        "database",
                        format!("SQLite at {}: {e}", file.display()),
                        "check the file and its permissions",
                    ),
                }
            }
            Ok(Err(e)) => r.fail(
                "database",
                format!("SQLite at {} does not open: {e}", file.display()),
                "check the file and its directory's permissions",
            ),
            Err(_) => r.fail(
                "database",
                format!("SQLite at {} is locked", file.display()),
                "see which process holds it",
            ),
        }
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = match sqlx::postgres::PgConnectOptions::from_str(&url) {
            Ok(o) => o,
            Err(e) => {
                r.fail(
                    "database",
                    format!("DATABASE_URL is not a valid PostgreSQL URL: {e}"),
                    "postgres://user:password@host:5432/database",
                );
                return;
            }
        };
        // Host, port, user and database only: the URL may hold a password.
        let whom = format!(
            "PostgreSQL {}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        match tokio::time::timeout(CHECK_TIMEOUT, sqlx::postgres::PgConnection::connect_with(&options)).await {
            Ok(Ok(c)) => {
                let _ = c.close().await;
                r.ok("database", format!("{whom} accepts the connection"));
            }
            Ok(Err(e)) => r.fail(
                "database",
                format!("{whom}: {}", nexus_common::redact::redact(&e.to_string())),
                "check DATABASE_URL (host, port, user, password, database) and that PostgreSQL runs",
            ),
            Err(_) => r.fail("database", format!("{whom} did not answer within 5 s"), "check the host and port in DATABASE_URL"),
        }
    } else {
        r.fail(
            "database",
            "DATABASE_URL is neither sqlite: nor postgres://",
            "use sqlite://<file> or postgres://… (postgresql://…)",
        );
    }
}

/// Every model the config may call, by the provider that serves it.
async fn providers(
    r: &mut Report,
    config: &Config,
    client: &reqwest::Client,
    var: &dyn Fn(&str) -> Option<String>,
) {
    let mut models = vec![config.llm.model.clone()];
    models.extend(config.llm.fallbacks.iter().cloned());
    models.extend(config.llm.routes.values().flat_map(|l| l.0.iter().cloned()));
    let mut by_provider: BTreeMap<&str, (Provider, Vec<String>)> = BTreeMap::new();
    for model in models {
        match Provider::of_model(&model) {
            Some(p) => {
                let entry = &mut by_provider.entry(p.name()).or_insert((p, Vec::new())).1;
                if !entry.contains(&model) {
                    entry.push(model);
                }
            }
            None => r.warn(
                "provider",
                format!("model \"{model}\": its provider is not one doctor checks"),
                "nothing, if agent-core answers with it; `nexus chat -m hello` tries it",
            ),
        }
    }
    for (name, (provider, models)) in by_provider {
        let check = format!("provider {name}");
        let key = provider.key_var().and_then(var);
        let base_set = var(provider.base_var()).is_some();
        // As agent-core decides (ProviderEnv::check): a key or an endpoint.
        if provider != Provider::Ollama && key.is_none() && !base_set {
            r.fail(
                &check,
                format!("no {} for {}", provider.key_var().unwrap_or_default(), models.join(", ")),
                format!(
                    "set {} (`nexus onboard` writes it to .env), or {} for an OpenAI-compatible server",
                    provider.key_var().unwrap_or_default(),
                    provider.base_var()
                ),
            );
            continue;
        }
        let Some(base) = provider_base(provider, None, var) else {
            continue;
        };
        let listed = list_models(client, provider, &base, key.as_deref()).await;
        for model in &models {
            let result = match &listed {
                Ok(list) => model_listed(list, model),
                Err(e) => clone_check(e),
            };
            let (what, fix) = result.explain(provider, &base);
            let check = format!("{check} ({model})");
            match (&result, fix) {
                (KeyCheck::Ok { .. }, _) => r.ok(&check, what),
                // A server without a model list may still serve the model.
                (KeyCheck::Unexpected(_), Some(fix)) if base_set => r.warn(&check, what, fix),
                (_, fix) => r.fail(&check, what, fix.unwrap_or_default()),
            }
        }
    }
}

fn clone_check(c: &KeyCheck) -> KeyCheck {
    match c {
        KeyCheck::Ok { models } => KeyCheck::Ok { models: *models },
        KeyCheck::Refused(s) => KeyCheck::Refused(s.clone()),
        KeyCheck::ModelMissing { model, some } => KeyCheck::ModelMissing {
            model: model.clone(),
            some: some.clone(),
        },
        KeyCheck::Unreachable(s) => KeyCheck::Unreachable(s.clone()),
        KeyCheck::Unexpected(s) => KeyCheck::Unexpected(s.clone()),
    }
}

/// Each channel whose credentials are set, with the same call its gateway makes first.
async fn channels(
    r: &mut Report,
    config: &Config,
    client: &reqwest::Client,
    bus: Option<&Bus>,
    var: &dyn Fn(&str) -> Option<String>,
) {
    for report in channel_settings::unknown_channels_and_keys(&config.channels) {
        r.warn(
            "channels",
            report,
            "correct the name in nexus.toml: nothing reads it as written",
        );
    }
    let mut configured = Vec::new();
    if let Some(token) = var("TELEGRAM_BOT_TOKEN") {
        configured.push("telegram");
        telegram(r, client, &token, var).await;
    }
    if let Some(token) = var("SLACK_BOT_TOKEN") {
        configured.push("slack");
        slack(r, client, &token, var).await;
    }
    if var("WHATSAPP_BRIDGE_URL").is_some() || var("WHATSAPP_BRIDGE_TOKEN").is_some() {
        configured.push("whatsapp");
        whatsapp(r, client, bus, var).await;
    }
    if !config.api.keys.is_empty() {
        configured.push("api");
        r.ok(
            "api",
            format!(
                "{} key(s) in [api.keys]: gateway-api starts",
                config.api.keys.len()
            ),
        );
    }
    for name in &configured {
        let c = config.channel(name);
        if *name != "api" && c.allow_from.is_empty() && c.dm_policy == DmPolicy::Allowlist {
            r.warn(
                name,
                "nobody may talk to the agent here: allow_from is empty and dm_policy is allowlist",
                format!(
                    "add sender ids to [channels.{name}] allow_from, or set dm_policy = \"pairing\" and approve codes with `nexus pair approve`"
                ),
            );
        }
    }
    if configured.is_empty() {
        r.ok(
            "channels",
            "only the CLI (`nexus chat`); no channel credentials are set",
        );
    }
}

async fn telegram(
    r: &mut Report,
    client: &reqwest::Client,
    token: &str,
    var: &dyn Fn(&str) -> Option<String>,
) {
    let api = var("TELEGRAM_API_URL").unwrap_or_else(|| "https://api.telegram.org".to_owned());
    let api = api.trim().trim_end_matches('/');
    // without_url: the token is part of the path.
    let answer = client.get(format!("{api}/bot{token}/getMe")).send().await;
    let response = match answer {
        Ok(a) => a,
        Err(e) => {
            r.fail(
                "telegram",
                format!("no answer from {api}: {}", error_chain(&e.without_url())),
                "check the network, or TELEGRAM_API_URL",
            );
            return;
        }
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() && body["ok"] == true {
        let name = body["result"]["username"].as_str().unwrap_or("?");
        r.ok("telegram", format!("the bot token works: @{name}"));
    } else if matches!(status.as_u16(), 401 | 404) {
        let why = body["description"].as_str().unwrap_or("Unauthorized");
        r.fail(
            "telegram",
            format!("Telegram refused TELEGRAM_BOT_TOKEN (HTTP {status}: {why})"),
            "copy the bot's token from @BotFather (/mybots → API Token) into TELEGRAM_BOT_TOKEN",
        );
    } else {
        r.fail(
            "telegram",
            format!("unexpected answer from {api}: HTTP {status}"),
            "check TELEGRAM_API_URL",
        );
    }
}

async fn slack(
    r: &mut Report,
    client: &reqwest::Client,
    token: &str,
    var: &dyn Fn(&str) -> Option<String>,
) {
    if var("SLACK_SIGNING_SECRET").is_none() && var("SLACK_APP_TOKEN").is_none() {
        r.fail(
            "slack",
            "SLACK_BOT_TOKEN is set but neither SLACK_SIGNING_SECRET (Events API) nor SLACK_APP_TOKEN (Socket Mode): gateway-slack does not start",
            "set SLACK_SIGNING_SECRET (the app's Basic Information) or SLACK_APP_TOKEN (xapp-…)",
        );
    }
    let api = var("SLACK_API_URL").unwrap_or_else(|| "https://slack.com/api".to_owned());
    let api = api.trim().trim_end_matches('/');
    let answer = client
        .post(format!("{api}/auth.test"))
        .bearer_auth(token)
        .send()
        .await;
    let response = match answer {
        Ok(a) => a,
        Err(e) => {
            r.fail(
                "slack",
                format!("no answer from {api}: {}", error_chain(&e)),
                "check the network, or SLACK_API_URL",
            );
            return;
        }
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if body["ok"] == true {
        r.ok(
            "slack",
            format!(
                "the bot token works: {} in {}",
                body["user"].as_str().unwrap_or("?"),
                body["team"].as_str().unwrap_or("?")
            ),
        );
    } else {
        let why = body["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}"));
        r.fail(
            "slack",
            format!("Slack refused SLACK_BOT_TOKEN (auth.test: {why})"),
            "copy the Bot User OAuth Token (xoxb-…) from the app's OAuth & Permissions page into SLACK_BOT_TOKEN",
        );
    }
}

/// The bridge answers plain HTTP with 426 (WebSocket only): reachable without
/// authenticating, which would replace the gateway's connection.
async fn whatsapp(
    r: &mut Report,
    client: &reqwest::Client,
    bus: Option<&Bus>,
    var: &dyn Fn(&str) -> Option<String>,
) {
    let (Some(url), Some(_)) = (var("WHATSAPP_BRIDGE_URL"), var("WHATSAPP_BRIDGE_TOKEN")) else {
        r.fail(
            "whatsapp",
            "gateway-whatsapp needs both WHATSAPP_BRIDGE_URL and WHATSAPP_BRIDGE_TOKEN; `nexus up` skips it",
            "set both (the bridge reads WHATSAPP_BRIDGE_TOKEN too)",
        );
        return;
    };
    let http = url
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1);
    match client.get(&http).send().await {
        Ok(_) => r.ok("whatsapp", format!("the bridge answers at {url}")),
        Err(e) => {
            r.fail(
                "whatsapp",
                format!("no bridge at {url}: {}", error_chain(&e)),
                "start bridge/ (cd bridge && npm start) with the same WHATSAPP_BRIDGE_TOKEN, or correct WHATSAPP_BRIDGE_URL",
            );
            return;
        }
    }
    let Some(bus) = bus else {
        return;
    };
    let mut last = None;
    let scanned = crate::whatsapp::scan_service_events(
        bus,
        async_nats::jetstream::consumer::DeliverPolicy::All,
        Some("gateway-whatsapp"),
        |_, n| last = Some(n),
    )
    .await;
    match (scanned, last) {
        (Ok(()), Some(n)) if n.status == "connected" => {
            r.ok("whatsapp pairing", format!("paired: {}", n.detail))
        }
        (_, Some(n)) => r.warn(
            "whatsapp pairing",
            format!("last status {}: {}", n.status, n.detail),
            "`nexus whatsapp login` pairs the phone (WhatsApp → Linked devices)",
        ),
        (_, None) => r.warn(
            "whatsapp pairing",
            "gateway-whatsapp has reported no status yet",
            "start it (`nexus up`), then pair with `nexus whatsapp login`",
        ),
    }
}

/// tool-runner's own start-up probe: `exec` is offered only where it passes.
async fn sandbox(r: &mut Report, config: &Config) {
    let settings = config.tools.exec.clone();
    if !settings.enabled {
        r.ok(
            "exec sandbox",
            "exec is switched off ([tools.exec] enabled = false)",
        );
        return;
    }
    // The probe mounts the workspace; before the first start there may be none.
    let workspace = if config.workspace.is_dir() {
        std::fs::canonicalize(&config.workspace).unwrap_or_else(|_| config.workspace.clone())
    } else {
        std::env::temp_dir().join(format!("nexus-doctor-{}", std::process::id()))
    };
    let scratch = !config.workspace.is_dir();
    if scratch && std::fs::create_dir_all(&workspace).is_err() {
        r.warn(
            "exec sandbox",
            "cannot make a directory to probe in",
            "run `nexus doctor` again after `nexus up` created the workspace",
        );
        return;
    }
    let probe_dir = workspace.clone();
    let probe =
        tokio::task::spawn_blocking(move || tool_runner::exec::Exec::probe(&settings, &probe_dir))
            .await;
    if scratch {
        let _ = std::fs::remove_dir_all(&workspace);
    }
    match probe {
        Ok(Ok((_, report))) => r.ok("exec sandbox", report),
        Ok(Err(why)) => r.warn(
            "exec sandbox",
            format!("the exec tool will not be offered: {why}"),
            "see the message; the other tools work without it",
        ),
        Err(e) => r.warn(
            "exec sandbox",
            format!("the probe failed: {e}"),
            "run it again",
        ),
    }
}
