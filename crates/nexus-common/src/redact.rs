//! Redaction: what is taken out of every log line (console and `redacted.log`)
//! and every span attribute before it leaves the process.
//!
//! Two kinds of secret go: shapes that are secret wherever they appear (API keys,
//! tokens, private keys, JWTs, passwords in URLs, phone numbers, e-mail addresses),
//! and the literal values this deployment is configured with ([`install_secrets`]),
//! which have no recognisable shape (a Slack signing secret, a bridge token).
//! Ordinary ids, hashes, timestamps and version numbers stay intact: the shapes
//! below need a prefix or a separator that those never have.

use std::{borrow::Cow, sync::OnceLock};

use regex::Regex;

use crate::Config;

/// Values shorter than this are not treated as secrets: redacting `abc` everywhere
/// would wreck the log and protect nothing.
const MIN_SECRET_LEN: usize = 6;

/// Environment variables that hold secrets, besides any `*_KEY` (API keys), `*_TOKEN`,
/// `*_SECRET` and `*_PASSWORD`.
const SECRET_VARS: &[&str] = &["DATABASE_URL", "OTEL_EXPORTER_OTLP_HEADERS"];
const SECRET_SUFFIXES: &[&str] = &["_KEY", "_TOKEN", "_SECRET", "_PASSWORD"];

fn patterns() -> &'static [(Regex, &'static str)] {
    static PATTERNS: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        [
            // PEM private keys, whole blocks (also when a log line carries one).
            (
                r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|\z)",
                "[REDACTED-PRIVATE-KEY]",
            ),
            // user:password@ in URLs (databases, brokers, proxies).
            (
                r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*):[^\s@/]+@",
                "${1}:[REDACTED]@",
            ),
            // Authorization headers: Bearer and Basic credentials.
            (
                r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9+/._~\-]{8,}=*",
                "${1}${2}[REDACTED]",
            ),
            // JWTs: header.payload.signature, base64url, header starts with {"
            (
                r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+",
                "[REDACTED-JWT]",
            ),
            // OpenAI (sk-, sk-proj-) and Anthropic (sk-ant-) keys.
            (r"\bsk-[A-Za-z0-9_\-]{8,}", "sk-[REDACTED]"),
            // Slack tokens.
            (r"\bxox[abposre]-[A-Za-z0-9\-]{8,}", "xox-[REDACTED]"),
            (r"\bxapp-[A-Za-z0-9\-]{8,}", "xapp-[REDACTED]"),
            // Google API keys.
            (r"\bAIza[0-9A-Za-z_\-]{20,}", "AIza[REDACTED]"),
            // GitHub tokens (classic and fine-grained).
            (r"\bgh[pousr]_[A-Za-z0-9]{20,}", "gh_[REDACTED]"),
            (r"\bgithub_pat_[A-Za-z0-9_]{20,}", "github_pat_[REDACTED]"),
            // AWS access key ids, and secret keys where they are named.
            (r"\b(AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b", "[REDACTED-AWS-KEY-ID]"),
            (
                r"(?i)(aws_secret_access_key|secret_access_key|aws_secret)(\s*[=:]\s*)[A-Za-z0-9/+]{40}",
                "${1}${2}[REDACTED]",
            ),
            // Telegram bot tokens (also inside /bot<token>/ URLs).
            (r"[0-9]{6,12}:[A-Za-z0-9_\-]{30,}", "[REDACTED-BOT-TOKEN]"),
            // key=value pairs whose key says secret.
            (
                r#"(?i)\b([a-z_]*(password|passwd|secret|api_key|apikey|access_token|auth_token)["']?\s*[=:]\s*["']?)[^\s"',;&]{4,}"#,
                "${1}[REDACTED]",
            ),
            // E-mail addresses (and WhatsApp JIDs, which are phone numbers).
            (
                r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b",
                "[REDACTED-EMAIL]",
            ),
            // Phone numbers in international form: +, then 8 to 15 digits with
            // optional spaces, dashes, dots or parentheses.
            (
                r"\+[1-9](?:[ \-.()]{0,2}[0-9]){7,14}\b",
                "+[REDACTED-PHONE]",
            ),
        ]
        .into_iter()
        .filter_map(|(re, rep)| Regex::new(re).ok().map(|r| (r, rep)))
        .collect()
    })
}

/// Redacts the shapes of [`patterns`] and a deployment's own secret values.
#[derive(Default)]
pub struct Redactor {
    /// The secret values as one alternation, longest first so that a secret
    /// containing another is taken whole.
    secrets: Option<Regex>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_SECRET_LEN)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        let alternation = values
            .iter()
            .map(|v| regex::escape(v))
            .collect::<Vec<_>>()
            .join("|");
        Self {
            secrets: (!values.is_empty())
                .then(|| Regex::new(&alternation).ok())
                .flatten(),
        }
    }

    /// `text` without secrets, phone numbers and e-mail addresses.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        if let Some(secrets) = &self.secrets
            && secrets.is_match(&out)
        {
            out = Cow::Owned(secrets.replace_all(&out, "[REDACTED]").into_owned());
        }
        for (re, rep) in patterns() {
            if re.is_match(&out) {
                out = Cow::Owned(re.replace_all(&out, *rep).into_owned());
            }
        }
        out
    }
}

static INSTALLED: OnceLock<Redactor> = OnceLock::new();

/// Makes `values` disappear from everything [`redact`] sees from now on. Only the
/// first call counts: a process has one configuration.
pub fn install_secrets(values: impl IntoIterator<Item = String>) {
    let _ = INSTALLED.set(Redactor::new(values));
}

/// The secret values of this deployment: the secret variables of `env` and the
/// secrets written in the configuration (API keys, MCP servers' environment and
/// headers, passwords in the database and NATS URLs).
pub fn configured_secrets(
    config: &Config,
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<String> {
    let mut out: Vec<String> = env
        .into_iter()
        .filter(|(k, _)| {
            SECRET_VARS.contains(&k.as_str()) || SECRET_SUFFIXES.iter().any(|s| k.ends_with(s))
        })
        .flat_map(|(k, v)| {
            // A URL is not secret; its password is.
            if k == "DATABASE_URL" {
                url_password(&v).into_iter().collect::<Vec<_>>()
            } else {
                vec![v]
            }
        })
        .collect();
    out.extend(config.api.keys.keys().cloned());
    out.extend(config.api.admin_keys.iter().cloned());
    for server in &config.tools.mcp {
        out.extend(server.env.values().cloned());
        out.extend(server.headers.values().cloned());
    }
    out.extend(url_password(&config.database.url));
    out.extend(url_password(&config.nats.url));
    out
}

/// The password of `scheme://user:password@host…`, if any.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split(['/', '?', '#']).next()?.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

/// Strips secrets (the shapes, and the values given to [`install_secrets`]), phone
/// numbers and e-mail addresses from a piece of text.
pub fn redact(text: &str) -> Cow<'_, str> {
    static SHAPES_ONLY: Redactor = Redactor { secrets: None };
    INSTALLED.get().unwrap_or(&SHAPES_ONLY).redact(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Real-looking secrets, each in the kind of line a library or we might log.
    /// Every marked part must disappear.
    const SECRET_LINES: &[(&str, &str)] = &[
        (
            "openai key=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv",
            "Ab3dEf6hIj9kLm2nOp5qRs8tUv",
        ),
        (
            "key sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf",
            "api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf",
        ),
        (
            "GET https://generativelanguage.googleapis.com/v1beta?key=AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv",
            "SyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv",
        ),
        (
            "slack bot xoxb-2048-4096-AbCdEfGhIjKlMnOpQrSt",
            "2048-4096-AbCdEfGhIjKlMnOpQrSt",
        ),
        (
            "slack user xoxp-1111-2222-3333-abcdef0123456789",
            "1111-2222-3333-abcdef0123456789",
        ),
        (
            "socket mode xapp-1-A0123-4567-abcdef9876543210",
            "1-A0123-4567-abcdef9876543210",
        ),
        (
            "POST https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage",
            "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
        ),
        (
            "git remote token ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "16C7e42F292c6912E7710c838347Ae178B4a",
        ),
        (
            "fine-grained github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123",
            "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123",
        ),
        ("aws id AKIAIOSFODNN7EXAMPLE used", "IOSFODNN7EXAMPLE"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        (
            "Authorization: Bearer eyJhbGciOi.abc_def-ghi",
            "eyJhbGciOi.abc_def-ghi",
        ),
        (
            "authorization: Basic dXNlcjpwYXNzd29yZA==",
            "dXNlcjpwYXNzd29yZA==",
        ),
        (
            "id_token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "eyJzdWIiOiIxMjM0NTY3ODkwIn0",
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1c7+9z5Pad7OejecsQ0bu3aumX\n-----END RSA PRIVATE KEY-----",
            "MIIEpAIBAAKCAQEA1c7",
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU (cut)",
            "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU",
        ),
        (
            "connecting to postgres://nexus:S3cr3t-pw@db.internal:5432/nexus",
            "S3cr3t-pw",
        ),
        (
            "nats url tls://svc:hunter2hunter@nats-0:4222",
            "hunter2hunter",
        ),
        ("config password=\"correct horse\" user=bob", "correct"),
        ("api_key: 9f8e7d6c5b4a", "9f8e7d6c5b4a"),
        ("sender +49 151 2345 6789 wrote", "2345 6789"),
        ("sender +1 (415) 555-0132 wrote", "555-0132"),
        (
            "whatsapp 4915123456789@s.whatsapp.net joined",
            "4915123456789",
        ),
        ("mail from jane.doe@example.co.uk", "jane.doe"),
    ];

    /// Lines that carry nothing secret and must come out unchanged.
    const ORDINARY_LINES: &[&str] = &[
        "turn finished session=telegram:12345 turn_id=01JBX4Q5W7Z8Y9A0B1C2D3E4F5 ms=12",
        "message id 550e8400-e29b-41d4-a716-446655440000 stored",
        "commit 9d49b80c4e0f3b2a1d9c8e7f6a5b4c3d2e1f0a9b built",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "2026-12-02T12:29:47.123456Z  INFO agent-core: started version=0.1.0",
        "nats-server v2.10.22 at nats://127.0.0.1:4222, timestamp 1764678587123",
        "chat_id=-1001234567890 offset=123456789 update_id=987654321",
        "price 0.15 + 0.60 per 1M tokens, usage 1234+5678",
        "listening on 0.0.0.0:8080 and [::1]:50051",
        "GET https://example.com/docs?page=2 status=200 bytes=10240",
        "tool read_file path=notes/2026-12-02.md bytes=42",
        "the token budget of alice is 10000 per day",
        "model openai/gpt-4o-mini tokens in=12 out=34",
    ];

    #[test]
    fn every_secret_of_the_corpus_disappears() {
        for (line, secret) in SECRET_LINES {
            let out = redact(line);
            assert!(!out.contains(secret), "{secret:?} leaked: {out}");
            assert!(out.contains("REDACTED"), "no marker: {out}");
        }
    }

    #[test]
    fn ordinary_lines_stay_intact() {
        for line in ORDINARY_LINES {
            assert_eq!(redact(line), *line);
        }
    }

    #[test]
    fn configured_secrets_come_from_the_environment_and_the_configuration() {
        let mut config = Config::default();
        config
            .api
            .keys
            .insert("nx-live-key-0001".into(), "alice".into());
        config.database.url = "postgres://u:db-pass-77@h/db".into();
        let env = [
            ("SLACK_SIGNING_SECRET", "8f14e45fceea167a5a36dedd4bea2543"),
            ("WHATSAPP_BRIDGE_TOKEN", "bridge-token-xyz"),
            ("HOME", "/root"),
            ("RUST_LOG", "info"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let secrets = configured_secrets(&config, env);
        for s in [
            "8f14e45fceea167a5a36dedd4bea2543",
            "bridge-token-xyz",
            "nx-live-key-0001",
            "db-pass-77",
        ] {
            assert!(secrets.iter().any(|v| v == s), "{s} missing in {secrets:?}");
        }
        assert!(!secrets.iter().any(|v| v == "/root" || v == "info"));
        let r = Redactor::new(secrets);
        let line = "slack said 8f14e45fceea167a5a36dedd4bea2543 and bridge-token-xyz, key nx-live-key-0001";
        assert_eq!(
            r.redact(line),
            "slack said [REDACTED] and [REDACTED], key [REDACTED]"
        );
        for line in ORDINARY_LINES {
            assert_eq!(r.redact(line), *line);
        }
        assert_eq!(url_password("nats://127.0.0.1:4222"), None);
        assert_eq!(url_password("nats://a:b@c/d@e").as_deref(), Some("b"));
    }
}
