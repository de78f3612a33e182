//! The first run, black-box: the built `nexus` binary's `onboard`, `doctor` and
//! `health`, against fakes on loopback (OpenAI's model list, Telegram's getMe, a
//! service's /readyz) and the real NATS and PostgreSQL of the test machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Output, Stdio},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::Path as UrlPath,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use nexus_common::{Config, config::DmPolicy};
use nexus_testkit::{
    TestEnv, bin_path,
    fake_openai::{FakeOpenAi, Reply},
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

const GOOD_KEY: &str = "sk-test-good-0123456789";
const BAD_KEY: &str = "sk-test-wrong-9876543210";
const GOOD_BOT: &str = "123456:good-telegram-token";
const BAD_BOT: &str = "123456:revoked-telegram-token";

/// Runs `nexus` in `dir` with only `env` (plus PATH and HOME unless `env` sets
/// them), feeding `stdin` if given.
async fn nexus(dir: &Path, env: &[(&str, String)], args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(bin_path("nexus"));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(
            ["PATH", "HOME"]
                .iter()
                .filter(|k| !env.iter().any(|(e, _)| e == *k))
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
        )
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("nexus {args:?}: {e}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.unwrap();
        // Dropping the pipe ends the input, as Ctrl-D would.
    }
    match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("nexus {args:?}: {e}"),
        Err(_) => panic!("nexus {args:?} did not finish within 60s"),
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fake OpenAI that accepts only [`GOOD_KEY`].
async fn openai() -> FakeOpenAi {
    let fake = FakeOpenAi::start(Reply::Text("hello".into())).await;
    fake.require_key(GOOD_KEY);
    fake
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Telegram's `getMe` (`GET /bot<token>/getMe`): the bot for [`GOOD_BOT`], 401 otherwise.
async fn fake_telegram() -> String {
    async fn get_me(UrlPath(bot): UrlPath<String>) -> Response {
        if bot == format!("bot{GOOD_BOT}") {
            Json(json!({"ok": true, "result": {"id": 123456, "is_bot": true,
                "first_name": "Nexus", "username": "nexus_doctor_bot"}}))
            .into_response()
        } else {
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"})),
            )
                .into_response()
        }
    }
    serve(Router::new().route("/{bot}/getMe", get(get_me))).await
}

/// A port on loopback where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `KEY=value` lines of an env file.
fn env_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn health_exits_zero_on_a_2xx_and_one_with_the_reason_on_a_503_or_a_closed_port() {
    let base = serve(
        Router::new()
            .route("/readyz", get(|| async { "ready" }))
            .route(
                "/notready",
                get(|| async {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: NATS disconnected",
                    )
                }),
            ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();

    let ok = nexus(
        dir.path(),
        &[],
        &["health", &format!("{base}/readyz")],
        None,
    )
    .await;
    assert!(ok.status.success(), "{:?}", text(&ok));

    let down = nexus(
        dir.path(),
        &[],
        &["health", &format!("{base}/notready")],
        None,
    )
    .await;
    let (_, err) = text(&down);
    assert_eq!(down.status.code(), Some(1), "{err}");
    assert!(
        err.contains("503") && err.contains("not ready: NATS disconnected"),
        "{err}"
    );

    let url = format!("http://127.0.0.1:{}/readyz", closed_port());
    let closed = nexus(dir.path(), &[], &["health", &url], None).await;
    let (_, err) = text(&closed);
    assert_eq!(closed.status.code(), Some(1), "{err}");
    assert!(err.contains(&url), "{err}");
}

#[tokio::test]
async fn onboarding_with_a_good_key_writes_settings_and_secrets_apart() {
    let fake = openai().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OPENAI_API_KEY", GOOD_KEY.to_owned()),
        ("OPENAI_BASE_URL", fake.base_url()),
    ];
    let out = nexus(
        dir.path(),
        &env,
        &[
            "onboard",
            "--non-interactive",
            "--provider",
            "openai",
            "--model",
            "gpt-4.1-mini",
            "--telegram-token",
            GOOD_BOT,
            "--api",
        ],
        None,
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(fake.model_list_calls(), 1, "one cheap call checks the key");
    assert!(
        stdout.contains("nexus up") && stdout.contains("nexus chat -m \"hello\""),
        "the next step is printed: {stdout}"
    );

    let toml_path = dir.path().join("nexus.toml");
    let settings = read(&toml_path);
    for secret in [GOOD_KEY, GOOD_BOT, "nx_"] {
        assert!(
            !settings.contains(secret),
            "a secret in nexus.toml: {settings}"
        );
    }
    let env_path = dir.path().join(".env");
    let mode = std::fs::metadata(&env_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, ".env must be private");
    let secrets = env_lines(&read(&env_path));
    let value = |k: &str| secrets.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(value("OPENAI_API_KEY").as_deref(), Some(GOOD_KEY));
    assert_eq!(value("OPENAI_BASE_URL"), Some(fake.base_url()));
    assert_eq!(value("TELEGRAM_BOT_TOKEN").as_deref(), Some(GOOD_BOT));
    let api_keys: Vec<&(String, String)> = secrets
        .iter()
        .filter(|(k, _)| k.starts_with("NEXUS__API__KEYS__nx_"))
        .collect();
    assert_eq!(api_keys.len(), 1, "{secrets:?}");

    // The files load as every service loads them: nexus.toml, then the .env variables.
    let config = Config::from_sources(Some((&toml_path, &settings)), secrets.clone())
        .unwrap_or_else(|e| panic!("{e}\n{settings}"));
    assert_eq!(config.llm.model, "gpt-4.1-mini");
    assert_eq!(config.channel("telegram").dm_policy, DmPolicy::Pairing);
    let key = api_keys[0].0.trim_start_matches("NEXUS__API__KEYS__");
    assert_eq!(
        config.api.keys.get(key).map(String::as_str),
        Some("operator")
    );
    assert!(stdout.contains(key), "the API key is shown once: {stdout}");
}

#[tokio::test]
async fn onboarding_with_a_refused_key_or_an_unlisted_model_says_why_and_writes_nothing() {
    let fake = openai().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("OPENAI_BASE_URL", fake.base_url())];
    let args = |key: &'static str, model: &'static str| {
        [
            "onboard",
            "--non-interactive",
            "--provider",
            "openai",
            "--api-key",
            key,
            "--model",
            model,
        ]
    };

    let out = nexus(dir.path(), &env, &args(BAD_KEY, "gpt-4.1-mini"), None).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("refused the key") && stderr.contains("401"),
        "{stderr}"
    );
    assert!(
        stderr.contains("OPENAI_API_KEY") && stderr.contains("Nothing was written"),
        "{stderr}"
    );
    assert!(!stderr.contains(BAD_KEY) && !stdout.contains(BAD_KEY));

    let out = nexus(dir.path(), &env, &args(GOOD_KEY, "gpt-9-imaginary"), None).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("\"gpt-9-imaginary\" is not in the provider's list")
            && stderr.contains("gpt-4.1-mini"),
        "{stderr}"
    );

    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[tokio::test]
async fn onboarding_never_overwrites_a_config_without_force() {
    let fake = openai().await;
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("nexus.toml");
    std::fs::write(&toml_path, "# mine\n").unwrap();
    let env = [
        ("OPENAI_API_KEY", GOOD_KEY.to_owned()),
        ("OPENAI_BASE_URL", fake.base_url()),
    ];
    let args = ["onboard", "--non-interactive", "--provider", "openai"];

    let out = nexus(dir.path(), &env, &args, None).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("exists already") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(read(&toml_path), "# mine\n");
    assert!(!dir.path().join(".env").exists());

    let forced = [&args[..], &["--force"]].concat();
    let out = nexus(dir.path(), &env, &forced, None).await;
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(read(&toml_path).contains("model = \"gpt-4.1-mini\""));
    let mode = std::fs::metadata(dir.path().join(".env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn the_interactive_form_asks_each_question_on_stdin() {
    let fake = openai().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("OPENAI_BASE_URL", fake.base_url())];
    // provider, key, model, Telegram, Slack bot token, Slack secret, WhatsApp, API.
    let answers = format!(
        "openai-compatible\n\n{GOOD_KEY}\nfake-model\n\nxoxb-slack-token\nslack-secret\ny\nn\n"
    );
    let out = nexus(dir.path(), &env, &["onboard"], Some(&answers)).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Model provider") && stdout.contains("Slack signing secret"),
        "{stdout}"
    );

    let toml_path = dir.path().join("nexus.toml");
    let settings = read(&toml_path);
    let secrets = env_lines(&read(&dir.path().join(".env")));
    let config = Config::from_sources(Some((&toml_path, &settings)), secrets.clone())
        .unwrap_or_else(|e| panic!("{e}\n{settings}"));
    assert_eq!(
        config.llm.model, "openai::fake-model",
        "an OpenAI-compatible server's model"
    );
    assert_eq!(config.channel("slack").dm_policy, DmPolicy::Pairing);
    assert_eq!(config.channel("whatsapp").dm_policy, DmPolicy::Pairing);
    assert!(!config.channels.contains_key("telegram"));
    assert!(config.api.keys.is_empty());
    let names: Vec<&str> = secrets.iter().map(|(k, _)| k.as_str()).collect();
    for name in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "WHATSAPP_BRIDGE_URL",
        "WHATSAPP_BRIDGE_TOKEN",
    ] {
        assert!(names.contains(&name), "{name} missing from .env: {names:?}");
    }
    assert!(!settings.contains("xoxb-slack-token") && !settings.contains("slack-secret"));
}

#[tokio::test]
async fn doctor_passes_a_working_setup_with_an_ok_line_per_check() {
    let test = TestEnv::new();
    let fake = openai().await;
    let telegram = fake_telegram().await;
    let config = test.workspace_path().join("doctor.toml");
    std::fs::write(
        &config,
        "[llm]\nmodel = \"gpt-4.1-mini\"\n\n[channels.telegram]\ndm_policy = \"pairing\"\n",
    )
    .unwrap();
    let env = [
        ("NEXUS_CONFIG", config.display().to_string()),
        ("NATS_URL", test.nats_url.clone()),
        ("NEXUS_NAMESPACE", test.namespace.clone()),
        (
            "NEXUS_WORKSPACE",
            test.workspace_path().display().to_string(),
        ),
        ("DATABASE_URL", nexus_testkit::postgres_url()),
        ("OPENAI_API_KEY", GOOD_KEY.to_owned()),
        ("OPENAI_BASE_URL", fake.base_url()),
        ("TELEGRAM_BOT_TOKEN", GOOD_BOT.to_owned()),
        ("TELEGRAM_API_URL", telegram),
    ];
    let out = nexus(test.workspace_path(), &env, &["doctor"], None).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "ok    config: ",
        "ok    nats: connected to",
        "ok    jetstream: enabled",
        "ok    nats permissions: ",
        "ok    database: PostgreSQL",
        "ok    provider openai (gpt-4.1-mini): the key works",
        "ok    telegram: the bot token works: @nexus_doctor_bot",
    ] {
        assert!(stdout.contains(line), "no \"{line}\" in:\n{stdout}");
    }
    assert!(!stdout.lines().any(|l| l.starts_with("FAIL")), "{stdout}");
    assert!(stdout.contains("\n0 FAIL, "), "{stdout}");
    assert!(stdout.contains("exec sandbox: "), "{stdout}");
}

#[tokio::test]
async fn doctor_fails_a_broken_setup_and_names_each_fix_without_printing_secrets() {
    let test = TestEnv::new();
    let fake = openai().await;
    let telegram = fake_telegram().await;
    // No nats-server on PATH: an unreachable local NATS is a failure, not something
    // `nexus up` would start.
    let empty_path = tempfile::tempdir().unwrap();
    // Two typos that nothing would read: a channel's name and one of its keys.
    let config = test.workspace_path().join("typos.toml");
    std::fs::write(
        &config,
        "[channels.telgram]\nallow_from = [\"1\"]\n\n[channels.telegram]\ndm_polcy = \"pairing\"\n",
    )
    .unwrap();
    let env = [
        ("NEXUS_CONFIG", config.display().to_string()),
        ("PATH", empty_path.path().display().to_string()),
        ("NATS_URL", format!("nats://127.0.0.1:{}", closed_port())),
        ("NEXUS_NAMESPACE", test.namespace.clone()),
        (
            "NEXUS_WORKSPACE",
            test.workspace_path().display().to_string(),
        ),
        ("NEXUS__LLM__MODEL", "gpt-4.1-mini".to_owned()),
        ("OPENAI_API_KEY", BAD_KEY.to_owned()),
        ("OPENAI_BASE_URL", fake.base_url()),
        ("TELEGRAM_BOT_TOKEN", BAD_BOT.to_owned()),
        ("TELEGRAM_API_URL", telegram),
    ];
    let out = nexus(test.workspace_path(), &env, &["doctor"], None).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for (line, fix) in [
        (
            "FAIL  nats: no NATS at nats://127.0.0.1:",
            "start nats-server with JetStream",
        ),
        (
            "FAIL  provider openai (gpt-4.1-mini): openai refused the key",
            "set OPENAI_API_KEY to a valid key",
        ),
        (
            "FAIL  telegram: Telegram refused TELEGRAM_BOT_TOKEN (HTTP 401",
            "@BotFather",
        ),
        (
            "warn  channels: [channels.telgram] is ignored: Nexus has no channel \"telgram\"",
            "correct the name in nexus.toml",
        ),
        (
            "warn  channels: [channels.telegram] ignores unknown key dm_polcy",
            "correct the name in nexus.toml",
        ),
    ] {
        let at = stdout
            .find(line)
            .unwrap_or_else(|| panic!("no \"{line}\" in:\n{stdout}"));
        let next = stdout[at..].lines().nth(1).unwrap_or_default();
        assert!(
            next.trim_start().starts_with("fix: ") && next.contains(fix),
            "the fix under \"{line}\": {next}"
        );
    }
    for secret in [BAD_KEY, BAD_BOT] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed"
        );
    }

    let out = nexus(test.workspace_path(), &env, &["doctor", "--json"], None).await;
    assert_eq!(out.status.code(), Some(1));
    let findings: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&str> = findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "fail")
        .filter_map(|f| f["check"].as_str())
        .collect();
    assert_eq!(
        failed,
        ["nats", "provider openai (gpt-4.1-mini)", "telegram"]
    );
}

/// Anthropic's, Gemini's and Ollama's list calls, each refusing keys its own way:
/// Anthropic 401 (`x-api-key`), Gemini 400 `API_KEY_INVALID` (`?key=`), Ollama no key.
async fn fake_providers() -> String {
    use axum::{extract::Query, http::HeaderMap};
    async fn anthropic(headers: HeaderMap) -> Response {
        let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        if key != Some(GOOD_KEY) || headers.get("anthropic-version").is_none() {
            let err = json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}});
            return (StatusCode::UNAUTHORIZED, Json(err)).into_response();
        }
        Json(json!({"data": [{"type": "model", "id": "claude-sonnet-4-5", "display_name": "Claude Sonnet 4.5"}],
            "has_more": false, "first_id": "claude-sonnet-4-5", "last_id": "claude-sonnet-4-5"}))
        .into_response()
    }
    async fn gemini(Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
        if q.get("key").map(String::as_str) != Some(GOOD_KEY) {
            let err = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}});
            return (StatusCode::BAD_REQUEST, Json(err)).into_response();
        }
        Json(json!({"models": [{"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash"}]}))
            .into_response()
    }
    async fn ollama() -> Json<Value> {
        Json(
            json!({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 2019393189}]}),
        )
    }
    serve(
        Router::new()
            .route("/v1/models", get(anthropic))
            .route("/v1beta/models", get(gemini))
            .route("/api/tags", get(ollama)),
    )
    .await
}

#[tokio::test]
async fn anthropic_gemini_and_ollama_keys_are_checked_with_their_own_list_call() {
    let fake = fake_providers().await;
    for (provider, base, model, written) in [
        (
            "anthropic",
            format!("{fake}/v1"),
            "claude-sonnet-4-5",
            "claude-sonnet-4-5",
        ),
        (
            "gemini",
            format!("{fake}/v1beta"),
            "gemini-2.5-flash",
            "gemini-2.5-flash",
        ),
    ] {
        let key_var = format!("{}_API_KEY", provider.to_uppercase());
        let base_var = format!("{}_BASE_URL", provider.to_uppercase());
        let dir = tempfile::tempdir().unwrap();
        let args = |key: &'static str| {
            let mut a = vec!["onboard", "--non-interactive", "--provider", provider];
            a.extend([
                "--base-url",
                base.as_str(),
                "--model",
                model,
                "--api-key",
                key,
            ]);
            a
        };
        let out = nexus(dir.path(), &[], &args(BAD_KEY), None).await;
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{provider}");
        assert!(
            stderr.contains(&format!("{provider} refused the key")) && stderr.contains(&key_var),
            "{provider}: {stderr}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let out = nexus(dir.path(), &[], &args(GOOD_KEY), None).await;
        assert!(out.status.success(), "{provider}: {:?}", text(&out));
        let settings = read(&dir.path().join("nexus.toml"));
        assert!(
            settings.contains(&format!("model = \"{written}\"")),
            "{settings}"
        );
        let secrets = env_lines(&read(&dir.path().join(".env")));
        assert!(
            secrets.contains(&(key_var.clone(), GOOD_KEY.to_owned())),
            "{secrets:?}"
        );
        assert!(secrets.contains(&(base_var, base.clone())), "{secrets:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let out = nexus(
        dir.path(),
        &[],
        &[
            "onboard",
            "--non-interactive",
            "--provider",
            "ollama",
            "--base-url",
            &fake,
            "--model",
            "llama3.2",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{:?}", text(&out));
    let toml_path = dir.path().join("nexus.toml");
    let settings = read(&toml_path);
    let config = Config::from_sources(Some((&toml_path, &settings)), Vec::new()).unwrap();
    assert_eq!(
        config.llm.model, "ollama::llama3.2",
        "llama3.2 is listed as llama3.2:latest"
    );
    let secrets = env_lines(&read(&dir.path().join(".env")));
    assert_eq!(
        secrets,
        [("OLLAMA_HOST".to_owned(), fake.clone())],
        "Ollama takes no key"
    );
}

#[tokio::test]
async fn after_onboarding_nexus_reads_the_env_file_by_itself_and_the_shell_wins() {
    let test = TestEnv::new();
    let fake = openai().await;
    let dir = tempfile::tempdir().unwrap();
    let out = nexus(
        dir.path(),
        &[("OPENAI_BASE_URL", fake.base_url())],
        &[
            "onboard",
            "--non-interactive",
            "--provider",
            "openai",
            "--api-key",
            GOOD_KEY,
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{:?}", text(&out));

    let base = [
        ("NATS_URL", test.nats_url.clone()),
        ("NEXUS_NAMESPACE", test.namespace.clone()),
        (
            "NEXUS_WORKSPACE",
            test.workspace_path().display().to_string(),
        ),
    ];
    // No `set -a && . ./.env`: nexus loads the file beside nexus.toml itself.
    let out = nexus(dir.path(), &base, &["doctor"], None).await;
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok    .env: ./.env: all 2 variables are in the environment"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    provider openai (gpt-4.1-mini): the key works"),
        "{stdout}"
    );

    // A variable the shell already set wins over the file.
    let mut overridden: Vec<(&str, String)> = base.to_vec();
    overridden.push(("OPENAI_API_KEY", "sk-wrong-0000000000".into()));
    let out = nexus(dir.path(), &overridden, &["doctor"], None).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  provider openai"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_reports_what_the_nats_server_refuses_the_cli_user() {
    // A 2.10+ server whose user `doctor` may publish but only subscribe to its inbox.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "jetstream {{ store_dir: \"{}\" }}\n\
             authorization {{ users = [ {{ user: doctor, password: $DOCTOR_PASSWORD,\n\
               permissions: {{ publish: \">\", subscribe: {{ allow: [\"_INBOX.doctor.>\"] }} }} }} ] }}\n",
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let password = "pw-doctor-0123456789";
    let creds = [("NATS_USER", "doctor"), ("NATS_PASSWORD", password)];
    let probe = nexus_bus::NatsAccess::from_vars("nats://127.0.0.1:4222", |k| {
        creds
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap();
    let server = nexus_testkit::NatsServer::start_configured(nexus_testkit::Configured {
        bin: nexus_testkit::nats_server_2_10(),
        config,
        env: vec![("DOCTOR_PASSWORD".into(), password.into())],
        tls: false,
        probe,
    })
    .await;
    let namespace = "tdoctor";
    let env = [
        ("NATS_URL", server.url()),
        ("NATS_USER", "doctor".to_owned()),
        ("NATS_PASSWORD", password.to_owned()),
        ("NEXUS_NAMESPACE", namespace.to_owned()),
        ("NEXUS_WORKSPACE", dir.path().display().to_string()),
    ];
    let out = nexus(dir.path(), &env, &["doctor"], None).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok    nats: connected to") && stdout.contains("as user doctor"),
        "{stdout}"
    );
    assert!(stdout.contains("ok    nats version: "), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAIL  nats permissions: the server refused: "))
        .unwrap_or_else(|| panic!("no permissions failure in:\n{stdout}"));
    assert!(
        line.to_lowercase().contains("subscription")
            && line.contains(&format!("{namespace}.events.*")),
        "{line}"
    );
    assert!(
        stdout.contains("fix: give the CLI's NATS user (as user doctor)"),
        "{stdout}"
    );
    assert!(!stdout.contains(password), "the NATS password is printed");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_a_real_service_from_ready_to_gone() {
    let test = TestEnv::new();
    let port = closed_port();
    let mut env = test.process_env();
    env.push((
        "NEXUS__HEALTH__LISTEN__MEMORY_SVC".into(),
        format!("127.0.0.1:{port}"),
    ));
    let service = nexus_testkit::ServiceProcess::spawn("memory-svc", &[], &env);
    let url = format!("http://127.0.0.1:{port}/readyz");
    let dir = tempfile::tempdir().unwrap();
    nexus_testkit::eventually(
        "memory-svc's /readyz to pass",
        Duration::from_secs(60),
        || async {
            nexus(dir.path(), &[], &["health", &url], None)
                .await
                .status
                .success()
                .then_some(())
        },
    )
    .await;

    service.kill().await;
    let out = nexus(dir.path(), &[], &["health", &url], None).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
}
