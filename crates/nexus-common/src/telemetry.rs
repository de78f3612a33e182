//! Telemetry is set up here and only here.
//!
//! Logs go to stderr, key/value by default or JSON with `NEXUS_LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default `info`), and are appended to `redacted.log`
//! (`[log] redacted_file`). Every line passes through [`redact`] before it is
//! written anywhere, so API keys, bot tokens, the deployment's own secrets and
//! phone numbers never reach a log even when a library prints them.

use std::{
    io::{self, Write},
    sync::Arc,
};

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

pub use crate::redact::redact;
use crate::{Config, logfile::SharedLog};

/// What keeps telemetry running; hold it until `main` returns, so that what is
/// still buffered is written out on the way down.
#[must_use = "telemetry stops being flushed when this is dropped"]
pub struct Telemetry {
    _private: (),
}

/// Installs the global subscriber for a service: console and `redacted.log`, with
/// `config`'s secrets redacted. Safe to call more than once (the first one counts).
pub fn init(service: &'static str, config: &Config) -> Telemetry {
    init_with_default(service, "info", Some(config))
}

/// Like [`init`], with `level` as the default when `RUST_LOG` is unset; without a
/// configuration, logs go to the console only (a CLI command).
pub fn init_with_default(service: &'static str, level: &str, config: Option<&Config>) -> Telemetry {
    let mut file = None;
    if let Some(config) = config {
        crate::redact::install_secrets(crate::redact::configured_secrets(config, std::env::vars()));
        if let Some(path) = config.redacted_log_path() {
            let max = config.log.max_mb.saturating_mul(1024 * 1024);
            match SharedLog::open(&path, max, config.log.keep) {
                Ok(log) => {
                    file = Some(Arc::new(FileSink {
                        log,
                        service,
                        json: log_json(),
                    }))
                }
                // Not fatal: the console still has every line.
                Err(e) => eprintln!("{service}: cannot open {}: {e}", path.display()),
            }
        }
    }
    let filter = filter(level, std::env::var("RUST_LOG").ok().as_deref());
    let json = log_json();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Redacting { file })
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
    Telemetry { _private: () }
}

/// `NEXUS_LOG_FORMAT=json`: one JSON object per line.
fn log_json() -> bool {
    std::env::var("NEXUS_LOG_FORMAT").is_ok_and(|v| v == "json")
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

/// Writes each formatted event, redacted, to stderr and to `redacted.log`.
struct Redacting {
    file: Option<Arc<FileSink>>,
}

/// `redacted.log`, which several services share: each line there names its service.
struct FileSink {
    log: SharedLog,
    service: &'static str,
    json: bool,
}

impl FileSink {
    fn append(&self, line: &str) {
        let tagged = tag(self.service, self.json, line);
        let _ = self.log.append(tagged.as_bytes());
    }
}

/// `event` with `service` in it: a `service` field first in a JSON object, else a
/// `service: ` prefix on each of its lines (an error's message may span several).
fn tag(service: &str, json: bool, event: &str) -> String {
    match event.strip_prefix('{') {
        Some(rest) if json => format!("{{\"service\":\"{service}\",{rest}"),
        _ => event
            .split_inclusive('\n')
            .map(|line| format!("{service}: {line}"))
            .collect(),
    }
}

/// Buffers one event, redacts, writes it whole (one write per destination).
struct LineWriter {
    buf: Vec<u8>,
    file: Option<Arc<FileSink>>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let line = redact(&text);
        let _ = io::stderr().lock().write_all(line.as_bytes());
        if let Some(file) = &self.file {
            file.append(&line);
        }
    }
}

impl<'a> MakeWriter<'a> for Redacting {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            buf: Vec::with_capacity(256),
            file: self.file.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::filter;

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
    fn lines_in_the_shared_file_name_their_service() {
        assert_eq!(
            super::tag("agent-core", false, "2026-12-02T10:00:00Z  INFO started\n"),
            "agent-core: 2026-12-02T10:00:00Z  INFO started\n"
        );
        assert_eq!(
            super::tag("tool-runner", false, "WARN failed: cause:\nbody\n"),
            "tool-runner: WARN failed: cause:\ntool-runner: body\n"
        );
        let json = super::tag("memory-svc", true, "{\"level\":\"INFO\"}\n");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(v["service"], "memory-svc");
        assert_eq!(v["level"], "INFO");
    }

    #[test]
    fn a_rust_log_that_names_genai_sees_everything_it_asked_for() {
        let out = printed(Some("info,genai=debug"), || {
            tracing::warn!(target: "genai::adapter::adapters::openai::streamer", "EMPTY CHOICE CONTENT");
        });
        assert!(out.contains("EMPTY CHOICE CONTENT"), "{out}");
    }
}
