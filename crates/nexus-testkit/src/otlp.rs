//! An OTLP/HTTP receiver on loopback, as a collector would run it: `POST
//! /v1/traces` and `/v1/metrics` with protobuf bodies, decoded and kept for the
//! test to read. Point a service at it with `OTEL_EXPORTER_OTLP_ENDPOINT`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, PoisonError},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
};
pub use opentelemetry_proto::tonic::{
    common::v1::{KeyValue, any_value::Value as AnyValue},
    trace::v1::Span,
};
use prost::Message as _;

/// What the receiver got.
#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

/// A received span with the `service.name` of the resource it came with.
#[derive(Debug, Clone)]
pub struct Exported {
    pub service: String,
    pub span: Span,
}

impl Exported {
    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&AnyValue> {
        attr(&self.span.attributes, key)
    }

    /// The attribute as text (a string's value, any other value debug-printed).
    pub fn text(&self, key: &str) -> String {
        text(self.attr(key))
    }

    /// The attribute as an integer, when it is one.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key) {
            Some(AnyValue::IntValue(n)) => Some(*n),
            _ => None,
        }
    }
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// The receiver; clones share what it received.
#[derive(Clone, Default)]
pub struct OtlpCollector {
    received: Arc<Mutex<Received>>,
}

impl OtlpCollector {
    /// Starts on `127.0.0.1:0`; returns the receiver and its endpoint URL
    /// (`http://127.0.0.1:<port>`, the value for `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub async fn start() -> (Self, String) {
        let collector = Self::default();
        let app = Router::new()
            .route(
                "/v1/traces",
                post(|State(c): State<Self>, body: Bytes| async move {
                    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                        return Err(StatusCode::BAD_REQUEST);
                    };
                    c.lock().traces.push(req);
                    Ok(ExportTraceServiceResponse::default().encode_to_vec())
                }),
            )
            .route(
                "/v1/metrics",
                post(|State(c): State<Self>, body: Bytes| async move {
                    let Ok(req) = ExportMetricsServiceRequest::decode(body) else {
                        return Err(StatusCode::BAD_REQUEST);
                    };
                    c.lock().metrics.push(req);
                    Ok(ExportMetricsServiceResponse::default().encode_to_vec())
                }),
            )
            .with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind the OTLP receiver: {e}"));
        let url = match listener.local_addr() {
            Ok(addr) => format!("http://{addr}"),
            Err(e) => panic!("OTLP receiver address: {e}"),
        };
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, url)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Exported> {
        let received = self.lock();
        let mut out = Vec::new();
        for rs in received.traces.iter().flat_map(|r| &r.resource_spans) {
            let service = text(
                rs.resource
                    .as_ref()
                    .and_then(|r| attr(&r.attributes, "service.name")),
            );
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                out.push(Exported {
                    service: service.clone(),
                    span: span.clone(),
                });
            }
        }
        out
    }

    /// Names of the metrics each service (`service.name`) sent.
    pub fn metric_names(&self) -> BTreeMap<String, BTreeSet<String>> {
        let received = self.lock();
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for rm in received.metrics.iter().flat_map(|r| &r.resource_metrics) {
            let service = text(
                rm.resource
                    .as_ref()
                    .and_then(|r| attr(&r.attributes, "service.name")),
            );
            for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
                out.entry(service.clone())
                    .or_default()
                    .insert(m.name.clone());
            }
        }
        out
    }
}

/// The spans of the trace of `root`, and checks that they hang together: every
/// span but `root` has its parent among them. Panics naming an orphan.
pub fn connected_trace<'a>(spans: &'a [Exported], root: &Exported) -> Vec<&'a Exported> {
    assert!(
        root.span.parent_span_id.is_empty(),
        "{} has a parent",
        root.span.name
    );
    let trace: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.span.trace_id == root.span.trace_id)
        .collect();
    let ids: BTreeSet<&[u8]> = trace.iter().map(|s| s.span.span_id.as_slice()).collect();
    for s in &trace {
        if s.span.span_id != root.span.span_id {
            assert!(
                ids.contains(s.span.parent_span_id.as_slice()),
                "orphan span {} of {} in the trace of {}",
                s.span.name,
                s.service,
                root.span.name
            );
        }
    }
    trace
}

/// The parent of `span` among `trace`.
pub fn parent_of<'a>(trace: &[&'a Exported], span: &Exported) -> Option<&'a Exported> {
    trace
        .iter()
        .find(|p| p.span.span_id == span.span.parent_span_id)
        .copied()
}
