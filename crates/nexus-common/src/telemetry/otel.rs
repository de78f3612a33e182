//! OpenTelemetry export: the tracer and meter providers, built from the standard
//! `OTEL_*` variables only, and the bridge between our `traceparent` ids and the
//! spans OpenTelemetry records.
//!
//! Without `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal endpoint) nothing is
//! built: no layer is installed and the bridge answers `None` after one atomic load.
//! Every string sent over OTLP passes through [`redact`] first.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    Context, KeyValue, Value,
    trace::{SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::SdkMeterProvider,
    trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanProcessor},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::redact::redact;

/// Set once spans are recorded for OpenTelemetry: the bridge is a no-op until then.
static TRACING: AtomicBool = AtomicBool::new(false);

/// How long shutdown waits for the last batch to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `signal`'s export is configured (`traces` or `metrics`): the generic or
/// the signal's own endpoint is set, and neither the SDK nor the signal is off.
pub(crate) fn export_configured(signal: &str, env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    let exporter = format!("OTEL_{}_EXPORTER", signal.to_ascii_uppercase());
    if env(&exporter).is_some_and(|v| v.trim().eq_ignore_ascii_case("none")) {
        return false;
    }
    set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || set(&format!(
            "OTEL_EXPORTER_OTLP_{}_ENDPOINT",
            signal.to_ascii_uppercase()
        ))
}

/// The resource of every span and metric: `service.name` is the binary's name
/// unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names it; the SDK's
/// detectors read both.
pub(crate) fn resource(service: &'static str) -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(service).build()
    }
}

/// Says once, at start, when a protocol we do not build in is asked for.
pub(crate) fn warn_unsupported_protocol(service: &str) {
    for var in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ] {
        if let Ok(p) = std::env::var(var)
            && !p.trim().is_empty()
            && p.trim() != "http/protobuf"
        {
            eprintln!(
                "{service}: {var}={p} is not supported; exporting with http/protobuf (use the collector's port 4318)"
            );
        }
    }
}

/// The tracer provider exporting spans over OTLP HTTP/protobuf in batches.
pub(crate) fn tracer_provider(
    service: &'static str,
    resource: Resource,
) -> Option<SdkTracerProvider> {
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{service}: spans will not be exported: {e}");
            return None;
        }
    };
    let batch = BatchSpanProcessor::builder(exporter).build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(Redacting(batch))
        .build();
    TRACING.store(true, Ordering::Relaxed);
    Some(provider)
}

/// The OTLP metric exporter, read every `OTEL_METRIC_EXPORT_INTERVAL` (60 s by default).
pub(crate) fn metric_exporter(service: &'static str) -> Option<opentelemetry_otlp::MetricExporter> {
    match opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!("{service}: metrics will not be exported: {e}");
            None
        }
    }
}

/// Flushes and stops the providers: what is still batched goes out now.
pub(crate) fn shutdown(tracer: Option<SdkTracerProvider>, meter: Option<SdkMeterProvider>) {
    if let Some(t) = tracer {
        TRACING.store(false, Ordering::Relaxed);
        if let Err(e) = t.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            eprintln!("flushing spans: {e}");
        }
    }
    if let Some(m) = meter
        && let Err(e) = m.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
    {
        eprintln!("flushing metrics: {e}");
    }
}

/// The W3C trace and span ids (lowercase hex) of the current span, when spans are
/// exported; `None` otherwise, so callers keep the ids they carry.
pub fn current_span_ids() -> Option<(String, String)> {
    if !TRACING.load(Ordering::Relaxed) {
        return None;
    }
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Names `span` and gives its kind (`server`, `client`, `producer`, `consumer`) for
/// OpenTelemetry through its `otel.name` and `otel.kind` fields, declared `Empty`,
/// only while spans are exported: log lines do not carry them, and `name` is not
/// even formatted otherwise. Call it before the span is first entered.
pub fn name_span(span: &tracing::Span, kind: &'static str, name: impl FnOnce() -> String) {
    if TRACING.load(Ordering::Relaxed) {
        span.record("otel.name", name().as_str());
        span.record("otel.kind", kind);
    }
}

/// Makes `span` the child of the remote span `span_id` of trace `trace_id` (from a
/// received `traceparent`). Call it before the span is first entered. A no-op
/// when spans are not exported or the ids are not valid hex.
pub fn set_remote_parent(span: &tracing::Span, trace_id: &str, span_id: &str) {
    if !TRACING.load(Ordering::Relaxed) {
        return;
    }
    let (Ok(trace), Ok(parent)) = (TraceId::from_hex(trace_id), SpanId::from_hex(span_id)) else {
        return;
    };
    let remote = SpanContext::new(
        trace,
        parent,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    if !remote.is_valid() {
        return;
    }
    let _ = span.set_parent(Context::new().with_remote_span_context(remote));
}

/// Redacts every string a span carries (attributes, event names and fields, the
/// error status) before it is handed to the exporter.
#[derive(Debug)]
pub(crate) struct Redacting<P>(pub(crate) P);

impl<P: SpanProcessor> SpanProcessor for Redacting<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        redact_span(&mut span);
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

pub(crate) fn redact_span(span: &mut SpanData) {
    if let std::borrow::Cow::Owned(clean) = redact(&span.name) {
        span.name = clean.into();
    }
    redact_values(&mut span.attributes);
    for event in span.events.events.iter_mut() {
        if let std::borrow::Cow::Owned(clean) = redact(&event.name) {
            event.name = clean.into();
        }
        redact_values(&mut event.attributes);
    }
    if let Status::Error { description } = &mut span.status
        && let std::borrow::Cow::Owned(clean) = redact(description)
    {
        *description = clean.into();
    }
}

fn redact_values(values: &mut [KeyValue]) {
    for kv in values {
        if let Value::String(s) = &kv.value
            && let std::borrow::Cow::Owned(clean) = redact(s.as_str())
        {
            kv.value = Value::String(clean.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, collections::HashMap, time::SystemTime};

    use opentelemetry::{InstrumentationScope, trace::SpanKind};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn export_is_on_only_with_an_endpoint_and_not_switched_off() {
        assert!(!export_configured("traces", env(&[])));
        assert!(!export_configured(
            "traces",
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])
        ));
        let generic = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert!(export_configured("traces", env(&generic)));
        assert!(export_configured("metrics", env(&generic)));
        let traces_only = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c/v1/traces")];
        assert!(export_configured("traces", env(&traces_only)));
        assert!(!export_configured("metrics", env(&traces_only)));
        let no_metrics = [generic[0], ("OTEL_METRICS_EXPORTER", "none")];
        assert!(export_configured("traces", env(&no_metrics)));
        assert!(!export_configured("metrics", env(&no_metrics)));
        let disabled = [generic[0], ("OTEL_SDK_DISABLED", "true")];
        assert!(!export_configured("traces", env(&disabled)));
    }

    #[test]
    fn secrets_in_attributes_events_and_status_are_redacted_before_export() {
        let key = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        let mut events = SpanEvents::default();
        events.events.push(opentelemetry::trace::Event::new(
            format!("calling with {key}"),
            SystemTime::now(),
            vec![KeyValue::new("error", format!("401 for key {key}"))],
            0,
        ));
        let mut span = SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Owned(format!("execute_tool {key}")),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: vec![
                KeyValue::new("arguments", format!("{{\"token\":\"{key}\"}}")),
                KeyValue::new("tool", "read_file"),
                KeyValue::new("gen_ai.usage.input_tokens", 42),
            ],
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: Status::error(format!("upstream said no to {key}")),
            instrumentation_scope: InstrumentationScope::builder("t").build(),
        };
        redact_span(&mut span);
        let text = format!("{span:?}");
        assert!(!text.contains(key), "{text}");
        assert!(text.contains("read_file"), "{text}");
        assert!(
            span.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "gen_ai.usage.input_tokens"
                    && kv.value == Value::I64(42))
        );
    }

    #[test]
    fn the_bridge_is_silent_while_spans_are_not_exported() {
        assert_eq!(current_span_ids(), None);
        // No layer: setting a parent must not panic or change anything.
        let span = tracing::info_span!("x");
        set_remote_parent(&span, &"a".repeat(32), &"b".repeat(16));
    }
}
