//! Telemetry is set up here and only here.
//!
//! Logs go to stderr, key/value by default or JSON with `NEXUS_LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default `info`). Every line passes through [`redact`],
//! so API keys, bot tokens and phone numbers never reach a log even when a
//! library prints them.

use std::{
    io::{self, Write},
    sync::OnceLock,
};

use regex::Regex;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// Installs the global subscriber for a service. Safe to call more than once.
pub fn init(service: &'static str) {
    init_with_default(service, "info");
}

/// Like [`init`], with `level` as the default when `RUST_LOG` is unset.
pub fn init_with_default(service: &'static str, level: &str) {
    let filter = filter(level, std::env::var("RUST_LOG").ok().as_deref());
    let json = std::env::var("NEXUS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_target(false)
        .with_ansi(false);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}

/// genai's OpenAI streamer warns `EMPTY CHOICE CONTENT` for every delta without text,
/// and every OpenAI stream opens with one (the role), so each streamed turn warned.
/// That is its only WARN; its errors still show.
const GENAI_EMPTY_CHOICE: &str = "genai::adapter::adapters::openai::streamer=error";

/// `rust_log` (or the defaults at `level`), with genai's empty-choice warning quieted
/// unless `rust_log` asks about genai itself.
fn filter(level: &str, rust_log: Option<&str>) -> EnvFilter {
    let defaults = || {
        EnvFilter::new(format!(
            "{level},sqlx=warn,async_nats=warn,genai=warn,rmcp=warn"
        ))
    };
    let filter = rust_log
        .and_then(|r| EnvFilter::try_new(r).ok())
        .unwrap_or_else(defaults);
    match GENAI_EMPTY_CHOICE.parse() {
        Ok(quiet) if !rust_log.is_some_and(|r| r.contains("genai")) => filter.add_directive(quiet),
        _ => filter,
    }
}

fn patterns() -> &'static [(Regex, &'static str)] {
    static PATTERNS: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        [
            // OpenAI / Anthropic style keys.
            (r"\bsk-[A-Za-z0-9_\-]{8,}", "sk-[REDACTED]"),
            // Slack tokens.
            (r"\bxox[abposr]-[A-Za-z0-9\-]{8,}", "xox-[REDACTED]"),
            (r"\bxapp-[A-Za-z0-9\-]{8,}", "xapp-[REDACTED]"),
            // Google API keys.
            (r"\bAIza[0-9A-Za-z_\-]{20,}", "AIza[REDACTED]"),
            // Telegram bot tokens (also inside /bot<token>/ URLs).
            (r"\b[0-9]{6,12}:[A-Za-z0-9_\-]{30,}", "[REDACTED-BOT-TOKEN]"),
            // Bearer credentials in headers.
            (r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}", "${1}[REDACTED]"),
            // Phone numbers in international form.
            (r"\+[1-9][0-9 \-]{7,16}[0-9]", "+[REDACTED-PHONE]"),
        ]
        .into_iter()
        .filter_map(|(re, rep)| Regex::new(re).ok().map(|r| (r, rep)))
        .collect()
    })
}

/// Strips secrets and phone numbers from a piece of text.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out = std::borrow::Cow::Borrowed(text);
    for (re, rep) in patterns() {
        if re.is_match(&out) {
            out = std::borrow::Cow::Owned(re.replace_all(&out, *rep).into_owned());
        }
    }
    out
}

/// A stderr writer that redacts each formatted event before writing it.
struct RedactingStderr;

/// Buffers one event, redacts, writes it whole.
struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let _ = io::stderr().lock().write_all(redact(&text).as_bytes());
    }
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::with_capacity(256))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{filter, redact};

    /// What a subscriber with `filter("info", rust_log)` prints while `emit` runs.
    fn printed(rust_log: Option<&str>, emit: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter("info", rust_log))
            .with_writer(move || Captured(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn genais_empty_choice_warning_is_quiet_but_its_errors_and_other_warnings_show() {
        for rust_log in [None, Some("info")] {
            let out = printed(rust_log, || {
                tracing::warn!(target: "genai::adapter::adapters::openai::streamer", "EMPTY CHOICE CONTENT");
                tracing::error!(target: "genai::adapter::adapters::openai::streamer", "stream broke");
                tracing::warn!(target: "genai::adapter::adapters::anthropic::streamer", "other warning");
                tracing::warn!("our own warning");
            });
            assert!(!out.contains("EMPTY CHOICE CONTENT"), "{rust_log:?}: {out}");
            for shown in ["stream broke", "other warning", "our own warning"] {
                assert!(
                    out.contains(shown),
                    "{rust_log:?}: {shown} missing in {out}"
                );
            }
        }
    }

    #[test]
    fn a_rust_log_that_names_genai_sees_everything_it_asked_for() {
        let out = printed(Some("info,genai=debug"), || {
            tracing::warn!(target: "genai::adapter::adapters::openai::streamer", "EMPTY CHOICE CONTENT");
        });
        assert!(out.contains("EMPTY CHOICE CONTENT"), "{out}");
    }

    #[test]
    fn secrets_and_phone_numbers_are_redacted() {
        let line = "key=sk-proj-abcdefghijklmnop token=123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw \
                    slack=xoxb-1234-5678-abcdefgh phone=+49 151 2345 6789 auth=Bearer abc.def.ghijkl";
        let out = redact(line);
        for secret in [
            "abcdefghijklmnop",
            "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
            "xoxb-1234",
            "2345 6789",
            "abc.def.ghijkl",
        ] {
            assert!(!out.contains(secret), "{secret} leaked in {out}");
        }
        assert_eq!(redact("nothing to hide"), "nothing to hide");
    }
}
