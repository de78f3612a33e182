//! `nexus onboard`: the first run. Asks (or takes as flags) the model provider, its
//! key and model, and the channels; checks the key with one cheap call; writes
//! `nexus.toml` (settings) and `.env` (secrets, mode 0600).
//!
//! It must never write a secret into `nexus.toml`, never overwrite a file without
//! `--force`, and never write anything when the key check fails (unless
//! `--skip-check`). The provider check lives here and `nexus doctor` uses it too.

use std::{
    collections::BTreeMap,
    io::{BufRead, IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;

#[derive(Args)]
pub struct OnboardArgs {
    /// Take everything from the flags (and the provider's key variable); ask nothing.
    #[arg(long)]
    non_interactive: bool,
    /// The model provider.
    #[arg(long, value_enum)]
    provider: Option<Provider>,
    /// The model, as the provider names it (`gpt-4.1-mini`, `claude-sonnet-4-5`, `llama3.2`, …).
    #[arg(long)]
    model: Option<String>,
    /// The provider's API key; default: its variable (`OPENAI_API_KEY`, …), which is
    /// better: a flag shows in `ps` and the shell's history.
    #[arg(long)]
    api_key: Option<String>,
    /// The provider's endpoint (required for `openai-compatible`); default: its
    /// variable (`OPENAI_BASE_URL`, …, `OLLAMA_HOST`) or the provider's own.
    #[arg(long)]
    base_url: Option<String>,
    /// Telegram bot token (from @BotFather).
    #[arg(long)]
    telegram_token: Option<String>,
    /// Slack bot token (`xoxb-…`).
    #[arg(long)]
    slack_bot_token: Option<String>,
    /// Slack signing secret (Events API).
    #[arg(long)]
    slack_signing_secret: Option<String>,
    /// Use WhatsApp through `bridge/` (a bridge token is generated).
    #[arg(long)]
    whatsapp: bool,
    /// Generate a key for the HTTP/gRPC API (gateway-api).
    #[arg(long)]
    api: bool,
    /// Where to write `nexus.toml` and `.env`.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
    /// Write the files without checking the key with the provider.
    #[arg(long)]
    skip_check: bool,
}

/// A model provider, as `[llm] model` names reach it through genai.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    #[value(name = "openai")]
    OpenAi,
    Anthropic,
    Gemini,
    /// A local Ollama.
    Ollama,
    /// Any server speaking OpenAI's API (vLLM, LM Studio, llama.cpp, a gateway).
    #[value(name = "openai-compatible")]
    OpenAiCompatible,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Ollama => "ollama",
            Self::OpenAiCompatible => "openai-compatible",
        }
    }

    /// The variable holding the key (Ollama takes none).
    pub fn key_var(self) -> Option<&'static str> {
        match self {
            Self::OpenAi | Self::OpenAiCompatible => Some("OPENAI_API_KEY"),
            Self::Anthropic => Some("ANTHROPIC_API_KEY"),
            Self::Gemini => Some("GEMINI_API_KEY"),
            Self::Ollama => None,
        }
    }

    /// The variable holding the endpoint, as agent-core's `ProviderEnv` reads it.
    pub fn base_var(self) -> &'static str {
        match self {
            Self::OpenAi | Self::OpenAiCompatible => "OPENAI_BASE_URL",
            Self::Anthropic => "ANTHROPIC_BASE_URL",
            Self::Gemini => "GEMINI_BASE_URL",
            Self::Ollama => "OLLAMA_HOST",
        }
    }

    /// genai's default endpoint for the provider (none for an OpenAI-compatible server).
    fn default_base(self) -> Option<&'static str> {
        match self {
            Self::OpenAi => Some("https://api.openai.com/v1"),
            Self::Anthropic => Some("https://api.anthropic.com/v1"),
            Self::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            Self::Ollama => Some("http://localhost:11434"),
            Self::OpenAiCompatible => None,
        }
    }

    fn default_model(self) -> Option<&'static str> {
        match self {
            Self::OpenAi => Some("gpt-4.1-mini"),
            Self::Anthropic => Some("claude-sonnet-4-5"),
            Self::Gemini => Some("gemini-2.5-flash"),
            Self::Ollama => Some("llama3.2"),
            Self::OpenAiCompatible => None,
        }
    }

    /// The provider serving an `[llm] model` name: a `provider::` prefix, else the
    /// name prefixes genai goes by (agent-core's `adapter_for`; other providers are
    /// not checked here). `openai::` also means an OpenAI-compatible server.
    pub fn of_model(model: &str) -> Option<Self> {
        if let Some((ns, _)) = model.split_once("::") {
            return match ns.to_ascii_lowercase().as_str() {
                "openai" => Some(Self::OpenAi),
                "anthropic" => Some(Self::Anthropic),
                "gemini" => Some(Self::Gemini),
                "ollama" => Some(Self::Ollama),
                _ => None,
            };
        }
        let openai = ["o1", "o3", "o4", "chatgpt", "codex"]
            .iter()
            .any(|p| model.starts_with(p))
            || (model.starts_with("gpt") && !model.starts_with("gpt-oss"));
        if openai {
            Some(Self::OpenAi)
        } else if model.starts_with("gemini") {
            Some(Self::Gemini)
        } else if model.starts_with("claude") {
            Some(Self::Anthropic)
        } else {
            None
        }
    }

    /// The `[llm] model` value that makes genai pick this provider for `model`.
    fn config_model(self, model: &str) -> String {
        if model.contains("::") {
            return model.to_owned();
        }
        let served = match self {
            Self::OpenAiCompatible | Self::Ollama => false,
            p => Self::of_model(model) == Some(p),
        };
        let prefix = match self {
            Self::OpenAi | Self::OpenAiCompatible => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Ollama => "ollama",
        };
        if served {
            model.to_owned()
        } else {
            format!("{prefix}::{model}")
        }
    }
}

/// The model name without its `provider::` prefix, as the provider lists it.
pub fn bare_model(model: &str) -> &str {
    model.split_once("::").map_or(model, |(_, m)| m)
}

/// What the provider said to one list-models call.
#[derive(Debug)]
pub enum KeyCheck {
    /// The key works and the model is listed.
    Ok { models: usize },
    /// 401/403: the key is wrong, revoked, or lacks access.
    Refused(String),
    /// The key works but the model is not offered; a few that are.
    ModelMissing { model: String, some: Vec<String> },
    /// No answer (connection refused, DNS, timeout).
    Unreachable(String),
    /// Any other answer.
    Unexpected(String),
}

impl KeyCheck {
    /// One sentence for the operator, and the fix.
    pub fn explain(&self, provider: Provider, base: &str) -> (String, Option<String>) {
        let key_var = provider.key_var().unwrap_or("the key");
        match self {
            Self::Ok { models } => (
                format!("the key works at {base} ({models} models listed, the model among them)"),
                None,
            ),
            Self::Refused(why) => (
                format!("{} refused the key at {base}: {why}", provider.name()),
                Some(format!(
                    "set {key_var} to a valid key (check it in the provider's console), or point {} at the right server",
                    provider.base_var()
                )),
            ),
            Self::ModelMissing { model, some } => (
                format!(
                    "the key works, but model \"{model}\" is not in the provider's list (some offered: {})",
                    some.join(", ")
                ),
                Some(
                    "choose a listed model with [llm] model in nexus.toml (or NEXUS__LLM__MODEL)"
                        .into(),
                ),
            ),
            Self::Unreachable(why) => (
                format!("no answer from {base}: {why}"),
                Some(format!(
                    "check the network, or set {} to where the provider is",
                    provider.base_var()
                )),
            ),
            Self::Unexpected(why) => (
                format!("unexpected answer from {base}: {why}"),
                Some(format!(
                    "check that {} points at a {} API",
                    provider.base_var(),
                    provider.name()
                )),
            ),
        }
    }
}

/// An HTTP client for checks: short timeouts, rustls with ring.
///
/// reqwest (rather than a hand-written HTTP/1.1 GET) because the providers and
/// channels checked here are HTTPS; the workspace builds it already.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a crypto provider of its own (rustls-no-provider).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("nexus/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// The endpoint a provider is reached at: `explicit`, else its variable, else its default.
pub fn provider_base(
    provider: Provider,
    explicit: Option<&str>,
    var: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    explicit
        .map(str::to_owned)
        .or_else(|| var(provider.base_var()))
        .or_else(|| provider.default_base().map(str::to_owned))
        .map(|b| b.trim().trim_end_matches('/').to_owned())
}

/// Checks `key` and `model` with one list-models call (see [`list_models`]).
pub async fn check_provider(
    client: &reqwest::Client,
    provider: Provider,
    base: &str,
    key: Option<&str>,
    model: &str,
) -> KeyCheck {
    match list_models(client, provider, base, key).await {
        Ok(listed) => model_listed(&listed, model),
        Err(failed) => failed,
    }
}

/// Whether `model` is among `listed`: [`KeyCheck::Ok`] or [`KeyCheck::ModelMissing`].
pub fn model_listed(listed: &[String], model: &str) -> KeyCheck {
    let wanted = bare_model(model);
    // Ollama lists `llama3.2:latest` for `llama3.2`.
    let found = listed
        .iter()
        .any(|m| m == wanted || m.strip_suffix(":latest") == Some(wanted));
    if found {
        KeyCheck::Ok {
            models: listed.len(),
        }
    } else {
        KeyCheck::ModelMissing {
            model: wanted.to_owned(),
            some: listed.iter().take(8).cloned().collect(),
        }
    }
}

/// The models `key` may use, from one cheap call: OpenAI(-compatible) `GET
/// {base}/models` (Bearer), Anthropic `GET {base}/models` (x-api-key), Gemini `GET
/// {base}/models?key=`, Ollama `GET {host}/api/tags`. `Err` is never `Ok`/`ModelMissing`.
pub async fn list_models(
    client: &reqwest::Client,
    provider: Provider,
    base: &str,
    key: Option<&str>,
) -> Result<Vec<String>, KeyCheck> {
    let request = match provider {
        Provider::OpenAi | Provider::OpenAiCompatible => {
            let r = client.get(format!("{base}/models"));
            match key {
                Some(k) => r.bearer_auth(k),
                None => r,
            }
        }
        Provider::Anthropic => client
            .get(format!("{base}/models?limit=1000"))
            .header("x-api-key", key.unwrap_or_default())
            .header("anthropic-version", "2023-06-01"),
        Provider::Gemini => client.get(format!(
            "{base}/models?pageSize=1000&key={}",
            percent_encode(key.unwrap_or_default())
        )),
        Provider::Ollama => client.get(format!("{base}/api/tags")),
    };
    // without_url: Gemini's key is in the query string.
    let response = request
        .send()
        .await
        .map_err(|e| KeyCheck::Unreachable(error_chain(&e.without_url())))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = provider_message(&body);
    // Gemini answers a bad key with 400 API_KEY_INVALID rather than 401.
    let gemini_bad_key = provider == Provider::Gemini
        && status.as_u16() == 400
        && (body.contains("API_KEY_INVALID") || body.contains("API key not valid"));
    if matches!(status.as_u16(), 401 | 403) || gemini_bad_key {
        return Err(KeyCheck::Refused(format!("HTTP {status}: {message}")));
    }
    if !status.is_success() {
        return Err(KeyCheck::Unexpected(format!("HTTP {status}: {message}")));
    }
    let json = serde_json::from_str::<Value>(&body)
        .map_err(|_| KeyCheck::Unexpected(format!("HTTP {status} with a body that is not JSON")))?;
    let names = |list: &Value, field: &str| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m[field].as_str())
            .map(|n| n.trim_start_matches("models/").to_owned())
            .collect()
    };
    Ok(match provider {
        Provider::Gemini | Provider::Ollama => names(&json["models"], "name"),
        _ => names(&json["data"], "id"),
    })
}

/// A query-string value: unreserved characters as they are, the rest as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The error message of a provider's JSON error body, else the body's start.
fn provider_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .or(v["error"].as_str())
            .or(v["message"].as_str())
            .map(str::to_owned)
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_owned());
    text.chars().take(300).collect()
}

/// An error with its sources, which say what actually failed (refused, DNS, TLS).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Everything onboarding decided, before it is written.
#[derive(Debug)]
struct Plan {
    provider: Provider,
    model: String,
    key: Option<String>,
    base: Option<String>,
    telegram: Option<String>,
    slack: Option<(String, String)>,
    whatsapp: bool,
    api: bool,
}

pub async fn run(args: OnboardArgs) -> anyhow::Result<ExitCode> {
    let toml_path = args.dir.join("nexus.toml");
    let env_path = args.dir.join(".env");
    if !args.force {
        for path in [&toml_path, &env_path] {
            if path.exists() {
                bail!(
                    "{} exists already; nothing was written. Run with --force to replace it",
                    path.display()
                );
            }
        }
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let plan = if args.non_interactive {
        from_flags(&args, &var)?
    } else {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        ask(&args, &var, &mut input)?
    };
    let provider = plan.provider;

    let base = provider_base(provider, plan.base.as_deref(), &var);
    if args.skip_check {
        println!("Not checking the key (--skip-check).");
    } else {
        let Some(base) = base.as_deref() else {
            bail!("{} needs --base-url", provider.name());
        };
        println!("Checking the key with {} at {base} …", provider.name());
        let client = http_client(Duration::from_secs(15))?;
        let check = check_provider(&client, provider, base, plan.key.as_deref(), &plan.model).await;
        let (what, fix) = check.explain(provider, base);
        if !matches!(check, KeyCheck::Ok { .. }) {
            let fix = fix.map(|f| format!("\nFix: {f}.")).unwrap_or_default();
            bail!(
                "{what}.{fix}\nNothing was written (--skip-check writes the files without this check)."
            );
        }
        println!("ok: {what}");
    }

    let (settings, secrets) = render(&plan, provider, base.as_deref());
    // The file must load exactly as the services will load it.
    nexus_common::Config::from_sources(Some((&toml_path, &settings)), Vec::new())
        .context("the nexus.toml onboarding wrote would not load (a bug)")?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    write_file(&toml_path, &settings, 0o644, args.force)?;
    write_file(&env_path, &secrets, 0o600, args.force)?;

    println!(
        "Wrote {} (settings) and {} (secrets, mode 0600).",
        toml_path.display(),
        env_path.display()
    );
    if plan.api
        && let Some(line) = secrets.lines().find(|l| l.starts_with(API_KEY_PREFIX))
        && let Some((name, user)) = line.split_once('=')
    {
        let key = name.trim_start_matches(API_KEY_PREFIX);
        println!("API key for user \"{user}\": {key} (send it as `Authorization: Bearer …`).");
    }
    let dir = args.dir.display();
    println!(
        "Next (nexus reads .env beside nexus.toml by itself):\n  \
         cd {dir} && nexus doctor && nexus up\n\
         then, in another terminal in the same directory: nexus chat -m \"hello\""
    );
    if plan.telegram.is_some() || plan.slack.is_some() || plan.whatsapp {
        println!(
            "Strangers who write to the bot get a pairing code; approve it with `nexus pair approve <code>`."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The variable prefix of an API key in `.env` (the config keeps the key's case).
const API_KEY_PREFIX: &str = "NEXUS__API__KEYS__";

fn from_flags(args: &OnboardArgs, var: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Plan> {
    let Some(provider) = args.provider else {
        bail!(
            "--non-interactive needs --provider (openai, anthropic, gemini, ollama, openai-compatible)"
        );
    };
    let model = args
        .model
        .clone()
        .or_else(|| provider.default_model().map(str::to_owned));
    let Some(model) = model else {
        bail!("--provider {} needs --model", provider.name());
    };
    if provider == Provider::OpenAiCompatible
        && args.base_url.is_none()
        && var("OPENAI_BASE_URL").is_none()
    {
        bail!("--provider openai-compatible needs --base-url (or OPENAI_BASE_URL)");
    }
    let key = args
        .api_key
        .clone()
        .or_else(|| provider.key_var().and_then(var));
    if key.is_none()
        && matches!(
            provider,
            Provider::OpenAi | Provider::Anthropic | Provider::Gemini
        )
    {
        bail!(
            "--provider {} needs --api-key or {}",
            provider.name(),
            provider.key_var().unwrap_or_default()
        );
    }
    let slack = match (&args.slack_bot_token, &args.slack_signing_secret) {
        (Some(t), Some(s)) => Some((t.clone(), s.clone())),
        (None, None) => None,
        _ => bail!("Slack needs both --slack-bot-token and --slack-signing-secret"),
    };
    Ok(Plan {
        provider,
        model,
        key,
        base: args.base_url.clone(),
        telegram: args.telegram_token.clone(),
        slack,
        whatsapp: args.whatsapp,
        api: args.api,
    })
}

/// The interactive form: one question a line; an empty answer takes the default.
fn ask(
    args: &OnboardArgs,
    var: &dyn Fn(&str) -> Option<String>,
    input: &mut dyn BufRead,
) -> anyhow::Result<Plan> {
    let mut ask_line =
        |question: &str, default: Option<&str>, secret: bool| -> anyhow::Result<Option<String>> {
            match default {
                Some(d) if !d.is_empty() => print!("{question} [{d}]: "),
                _ => print!("{question}: "),
            }
            std::io::stdout().flush()?;
            // Keys and tokens are not echoed on a terminal (over a pipe there is no echo).
            let hide = secret && std::io::stdin().is_terminal() && stty("-echo");
            let mut line = String::new();
            let read = input.read_line(&mut line);
            if hide {
                stty("echo");
                println!();
            }
            if read? == 0 {
                bail!("the input ended before onboarding was done");
            }
            let answer = line.trim();
            Ok(if answer.is_empty() {
                default.map(str::to_owned)
            } else {
                Some(answer.to_owned())
            })
        };
    println!("Nexus first run: answer each question; Enter takes the value in brackets.");
    let provider = loop {
        let default = args.provider.unwrap_or(Provider::OpenAi).name();
        let answer = ask_line(
            "Model provider (openai, anthropic, gemini, ollama, openai-compatible)",
            Some(default),
            false,
        )?
        .unwrap_or_default();
        match Provider::from_str(&answer, true) {
            Ok(p) => break p,
            Err(_) => println!("  \"{answer}\" is not one of them."),
        }
    };
    let base = match provider {
        Provider::OpenAiCompatible => loop {
            let default = args.base_url.clone().or_else(|| var("OPENAI_BASE_URL"));
            match ask_line(
                "Base URL of the server (e.g. http://127.0.0.1:8000/v1)",
                default.as_deref(),
                false,
            )? {
                Some(b) => break Some(b),
                None => println!("  An OpenAI-compatible server needs its URL."),
            }
        },
        Provider::Ollama => {
            let default = provider_base(provider, args.base_url.as_deref(), var);
            ask_line("Ollama host", default.as_deref(), false)?
        }
        _ => args.base_url.clone(),
    };
    let key = match provider.key_var() {
        None => None,
        Some(key_var) => {
            let from_env = args.api_key.clone().or_else(|| var(key_var));
            let question = match (&from_env, provider) {
                (Some(_), _) => format!("API key (Enter keeps the one in {key_var} / --api-key)"),
                (None, Provider::OpenAiCompatible) => {
                    "API key (Enter if the server needs none)".to_owned()
                }
                (None, _) => "API key".to_owned(),
            };
            // The default is not shown: it is a secret.
            let answer = ask_line(&question, None, true)?;
            answer.or(from_env)
        }
    };
    let model = loop {
        let default = args
            .model
            .clone()
            .or_else(|| provider.default_model().map(str::to_owned));
        match ask_line("Model", default.as_deref(), false)? {
            Some(m) => break m,
            None => println!("  Name the model the server offers."),
        }
    };
    let telegram = ask_line("Telegram bot token (Enter to skip)", None, true)?;
    let slack = match ask_line("Slack bot token xoxb-… (Enter to skip)", None, true)? {
        None => None,
        Some(token) => loop {
            match ask_line("Slack signing secret", None, true)? {
                Some(secret) => break Some((token, secret)),
                None => println!(
                    "  The Events API needs the signing secret (Basic Information of the Slack app)."
                ),
            }
        },
    };
    let yes = |a: Option<String>| {
        a.is_some_and(|a| a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes"))
    };
    let whatsapp = yes(ask_line(
        "Use WhatsApp through bridge/? (y/N)",
        None,
        false,
    )?);
    let api = yes(ask_line(
        "Generate a key for the HTTP/gRPC API? (y/N)",
        None,
        false,
    )?);
    Ok(Plan {
        provider,
        model,
        key,
        base,
        telegram,
        slack,
        whatsapp,
        api,
    })
}

/// Runs `stty <arg>` on the terminal; false where that is not possible.
fn stty(arg: &str) -> bool {
    std::process::Command::new("stty")
        .arg(arg)
        .stdin(std::process::Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success())
}

/// The two files: settings for `nexus.toml`, secrets (and endpoints) for `.env`.
fn render(plan: &Plan, provider: Provider, base: Option<&str>) -> (String, String) {
    let mut toml = String::from(
        "# Written by `nexus onboard`. Secrets are in .env, never here.\n\
         # Every setting, with its default: the nexus.toml of the Nexus repository.\n\n",
    );
    toml.push_str(&format!(
        "[llm]\nmodel = {}\n",
        toml_escape(&provider.config_model(&plan.model))
    ));
    let mut channels = Vec::new();
    if plan.telegram.is_some() {
        channels.push("telegram");
    }
    if plan.slack.is_some() {
        channels.push("slack");
    }
    if plan.whatsapp {
        channels.push("whatsapp");
    }
    for channel in channels {
        toml.push_str(&format!(
            "\n# Who may talk: sender ids, or \"*\" for everyone. Others get a pairing code\n\
             # that `nexus pair approve <code>` lets in.\n\
             [channels.{channel}]\nallow_from = []\ndm_policy = \"pairing\"\n"
        ));
    }

    let mut env: BTreeMap<&str, String> = BTreeMap::new();
    if let (Some(var), Some(key)) = (provider.key_var(), &plan.key) {
        env.insert(var, key.clone());
    }
    // An endpoint other than genai's default must reach every service too.
    if let Some(base) = base
        && (provider.default_base() != Some(base) || plan.base.is_some())
    {
        env.insert(provider.base_var(), base.to_owned());
    }
    if let Some(token) = &plan.telegram {
        env.insert("TELEGRAM_BOT_TOKEN", token.clone());
    }
    if let Some((token, secret)) = &plan.slack {
        env.insert("SLACK_BOT_TOKEN", token.clone());
        env.insert("SLACK_SIGNING_SECRET", secret.clone());
    }
    if plan.whatsapp {
        env.insert("WHATSAPP_BRIDGE_URL", "ws://127.0.0.1:3001".to_owned());
        // The bridge reads the same variable: one .env serves both.
        env.insert("WHATSAPP_BRIDGE_TOKEN", random_secret("wa"));
    }
    let mut text = String::from(
        "# Written by `nexus onboard`: secrets. Keep this file private (mode 0600).\n\
         # nexus reads it by itself; other programs: set -a && . ./.env && set +a\n",
    );
    for (k, v) in &env {
        text.push_str(&format!("{k}={}\n", env_value(v)));
    }
    if plan.api {
        // Letters, digits and '_' only, so the line is a valid shell variable name.
        text.push_str(&format!(
            "{API_KEY_PREFIX}{}=operator\n",
            random_secret("nx")
        ));
    }
    (toml, text)
}

/// `prefix_` and 64 random hex digits (two v4 UUIDs: 244 random bits).
fn random_secret(prefix: &str) -> String {
    format!(
        "{prefix}_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A TOML basic string.
fn toml_escape(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value as both `sh` (`. ./.env`) and docker compose read it: bare when it is
/// plain, else single-quoted.
fn env_value(v: &str) -> String {
    let plain = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+=,%".contains(&b));
    if plain && !v.is_empty() {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// Writes `text` to `path` with `mode`, through a temporary file in the same
/// directory, so a reader never sees half a file and the mode holds from the start.
fn write_file(path: &Path, text: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if !force && path.exists() {
        bail!(
            "{} exists already; run with --force to replace it",
            path.display()
        );
    }
    let tmp = path.with_file_name(format!(
        ".{}.onboard-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_named_so_that_genai_picks_the_chosen_provider() {
        assert_eq!(
            Provider::OpenAi.config_model("gpt-4.1-mini"),
            "gpt-4.1-mini"
        );
        assert_eq!(
            Provider::OpenAi.config_model("my-finetune"),
            "openai::my-finetune"
        );
        assert_eq!(
            Provider::Anthropic.config_model("claude-sonnet-4-5"),
            "claude-sonnet-4-5"
        );
        assert_eq!(
            Provider::Ollama.config_model("llama3.2"),
            "ollama::llama3.2"
        );
        assert_eq!(
            Provider::OpenAiCompatible.config_model("gpt-4o"),
            "openai::gpt-4o"
        );
        assert_eq!(Provider::of_model("ollama::llama3"), Some(Provider::Ollama));
        assert_eq!(
            Provider::of_model("gemini-2.5-flash"),
            Some(Provider::Gemini)
        );
        assert_eq!(Provider::of_model("gpt-oss-20b"), None);
    }

    #[test]
    fn env_values_that_a_shell_would_split_are_quoted() {
        assert_eq!(env_value("sk-abc_123"), "sk-abc_123");
        assert_eq!(env_value("a b"), "'a b'");
        assert_eq!(env_value("it's"), "'it'\\''s'");
    }
}
