//! Telemetry is set up here and only here.
//!
//! Logs go to stderr, key/value by default or JSON with `NEXUS_LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default `info`), and are appended to `redacted.log`
//! (`[log] redacted_file`). Every line passes through [`redact`] before it is
//! written anywhere, so API keys, bot tokens, the deployment's own secrets and
//! phone numbers never reach a log even when a library prints them.
//!
//! Traces and metrics go over OTLP (HTTP/protobuf) when the standard `OTEL_*`
//! variables say where (see `otel.rs`); `[metrics.listen]` adds a Prometheus text
//! endpoint per service. The [`Telemetry`] guard flushes both on the way down.

mod metrics;
mod otel;

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use opentelemetry_sdk::{
    metrics::{PeriodicReader, SdkMeterProvider},
    trace::SdkTracerProvider,
};
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, fmt::MakeWriter, layer::SubscriberExt,
    util::SubscriberInitExt,
};

pub use self::{
    metrics::{Metrics, enabled as metrics_enabled, metrics, set_queue_depth},
    otel::{current_span_ids, name_span, set_remote_parent},
};
pub use crate::redact::redact;
use crate::{Config, logfile::SharedLog};

/// Set once a meter provider records somewhere (OTLP or Prometheus).
static METRICS_ON: AtomicBool = AtomicBool::new(false);

/// What keeps telemetry running; hold it until `main` returns, so that what is
/// still buffered is written out on the way down: dropping it flushes the spans and
/// metrics not exported yet and stops the metrics endpoint.
#[must_use = "telemetry stops being flushed when this is dropped"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    endpoint: Option<tokio::task::JoinHandle<()>>,
}

impl Telemetry {
    fn none() -> Self {
        Self {
            tracer: None,
            meter: None,
            endpoint: None,
        }
    }

    /// Flushes what is batched and stops exporting (what dropping the guard does).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.abort();
        }
        let (tracer, meter) = (self.tracer.take(), self.meter.take());
        if tracer.is_none() && meter.is_none() {
            return;
        }
        METRICS_ON.store(false, Ordering::Relaxed);
        // The SDK's exporters block on their own threads; keep a runtime worker free.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| otel::shutdown(tracer, meter));
            }
            _ => otel::shutdown(tracer, meter),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
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
    let console = tracing_subscriber::fmt::layer()
        .with_writer(Redacting { file })
        .with_target(false)
        .with_ansi(false);
    let console = if json {
        console
            .json()
            .flatten_event(true)
            .with_filter(filter)
            .boxed()
    } else {
        console.with_filter(filter).boxed()
    };

    // Only services (a configuration) export; a CLI command never does.
    let mut telemetry = match config {
        Some(config) => exporting(service, config),
        None => Telemetry::none(),
    };
    let spans = telemetry.tracer.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(span_filter())
    });
    let result = tracing_subscriber::registry()
        .with(console)
        .with(spans)
        .try_init();
    match result {
        Ok(()) => tracing::debug!(service, "telemetry initialised"),
        // Someone else's subscriber runs (a second call): it gets no spans of ours.
        Err(_) => drop(telemetry.tracer.take()),
    }
    telemetry
}

/// The providers the environment and `config` ask for, with the meter provider
/// installed globally (so [`metrics()`] records into it).
fn exporting(service: &'static str, config: &Config) -> Telemetry {
    let env = |k: &str| std::env::var(k).ok();
    let traces = otel::export_configured("traces", env);
    let otlp_metrics = otel::export_configured("metrics", env);
    let listen = config.metrics.listen_of(service);
    if traces || otlp_metrics {
        otel::warn_unsupported_protocol(service);
    }
    if !traces && !otlp_metrics && listen.is_none() {
        return Telemetry::none();
    }
    let resource = otel::resource(service);
    let mut telemetry = Telemetry::none();
    if traces {
        telemetry.tracer = otel::tracer_provider(service, resource.clone());
    }
    let mut meter = SdkMeterProvider::builder().with_resource(resource);
    let mut readers = 0;
    if otlp_metrics && let Some(exporter) = otel::metric_exporter(service) {
        meter = meter.with_reader(PeriodicReader::builder(exporter).build());
        readers += 1;
    }
    if let Some(addr) = listen {
        match prometheus_endpoint(service, addr) {
            Ok((reader, endpoint)) => {
                meter = meter.with_reader(reader);
                telemetry.endpoint = Some(endpoint);
                readers += 1;
            }
            Err(e) => eprintln!("{service}: no metrics endpoint on {addr}: {e}"),
        }
    }
    if readers > 0 {
        let provider = meter.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        METRICS_ON.store(true, Ordering::Relaxed);
        telemetry.meter = Some(provider);
    }
    telemetry
}

/// Binds `addr` now (so a taken port is reported at start) and serves the
/// Prometheus text of a pull reader there.
fn prometheus_endpoint(
    service: &str,
    addr: &str,
) -> Result<
    (
        opentelemetry_prometheus::PrometheusExporter,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let registry = prometheus::Registry::new();
    let reader = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let endpoint = runtime.spawn(async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => metrics::serve(listener, registry).await,
            Err(error) => tracing::warn!(%error, "metrics endpoint not served"),
        }
    });
    eprintln!("{service}: serving Prometheus metrics on http://{bound}/metrics");
    Ok((reader, endpoint))
}

/// Which spans go to OpenTelemetry: ours and our dependencies' at INFO, without
/// the chatty clients (their spans would drown a turn's trace).
fn span_filter() -> Targets {
    Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("sqlx", tracing::Level::WARN)
        .with_target("async_nats", tracing::Level::WARN)
        .with_target("genai", tracing::Level::WARN)
        .with_target("rmcp", tracing::Level::WARN)
        .with_target("hyper", tracing::Level::WARN)
        .with_target("reqwest", tracing::Level::WARN)
        .with_target("h2", tracing::Level::WARN)
        .with_target("opentelemetry", tracing::Level::WARN)
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

    #[test]
    fn each_service_finds_its_own_metrics_address_in_one_configuration() {
        let file = "[metrics.listen]\ntool-runner = \"127.0.0.1:9465\"\n";
        let env = [(
            "NEXUS__METRICS__LISTEN__AGENT_CORE".to_owned(),
            "127.0.0.1:9464".to_owned(),
        )];
        let config =
            crate::Config::from_sources(Some((std::path::Path::new("nexus.toml"), file)), env)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.metrics.listen_of("agent-core"),
            Some("127.0.0.1:9464")
        );
        assert_eq!(
            config.metrics.listen_of("tool-runner"),
            Some("127.0.0.1:9465")
        );
        assert_eq!(config.metrics.listen_of("memory-svc"), None);
    }
}
