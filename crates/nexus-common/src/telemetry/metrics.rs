//! The instruments every service records into, and the Prometheus text endpoint.
//!
//! Instruments come from the global meter provider that [`super::init`] installs
//! when OTLP metrics or a `[metrics.listen]` address is configured; otherwise they
//! are OpenTelemetry's no-ops. They are built on first use, so nothing may record
//! before `init` (a test calling a service's `run` directly records into no-ops).

use std::{
    collections::BTreeMap,
    sync::{LazyLock, Mutex, PoisonError},
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram},
};

/// Seconds-long durations: turns and model calls take from milliseconds to minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Every instrument of Nexus. Names follow OpenTelemetry's conventions; in
/// Prometheus they read `nexus_turns_total`, `nexus_turn_duration_seconds`, ….
pub struct Metrics {
    /// `nexus.turns` {outcome}: turns settled by agent-core.
    pub turns: Counter<u64>,
    /// `nexus.turn.duration` (s) {outcome}.
    pub turn_duration: Histogram<f64>,
    /// `nexus.llm.duration` (s) {gen_ai.request.model, gen_ai.system}: one model call, retries included.
    pub llm_duration: Histogram<f64>,
    /// `nexus.llm.tokens` {gen_ai.request.model, gen_ai.token.type = input|output}.
    pub llm_tokens: Counter<u64>,
    /// `nexus.tool.calls` {tool}: calls served.
    pub tool_calls: Counter<u64>,
    /// `nexus.tool.failures` {tool, error.type}: calls that failed.
    pub tool_failures: Counter<u64>,
    /// `nexus.dead_letters` {stream}: messages set aside on `N.deadletter`.
    pub dead_letters: Counter<u64>,
}

/// The instruments (built on first use from the global meter provider).
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
        let meter = opentelemetry::global::meter("nexus");
        meter
            .u64_observable_gauge("nexus.queue.depth")
            .with_description(
                "Messages waiting in a stream for a consumer (pending plus unacknowledged)",
            )
            .with_callback(|observer| {
                let depths = QUEUE_DEPTHS.lock().unwrap_or_else(PoisonError::into_inner);
                for ((stream, consumer), depth) in depths.iter() {
                    observer.observe(
                        *depth,
                        &[
                            KeyValue::new("stream", stream.clone()),
                            KeyValue::new("consumer", consumer.clone()),
                        ],
                    );
                }
            })
            .build();
        Metrics {
            turns: meter
                .u64_counter("nexus.turns")
                .with_description("Turns settled by agent-core")
                .build(),
            turn_duration: meter
                .f64_histogram("nexus.turn.duration")
                .with_unit("s")
                .with_description("Time from taking an inbound message to settling it")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            llm_duration: meter
                .f64_histogram("nexus.llm.duration")
                .with_unit("s")
                .with_description("One model call, retries and fallbacks included")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            llm_tokens: meter
                .u64_counter("nexus.llm.tokens")
                .with_description("Tokens the provider reported, by model and type")
                .build(),
            tool_calls: meter
                .u64_counter("nexus.tool.calls")
                .with_description("Tool calls served")
                .build(),
            tool_failures: meter
                .u64_counter("nexus.tool.failures")
                .with_description("Tool calls that failed, by kind")
                .build(),
            dead_letters: meter
                .u64_counter("nexus.dead_letters")
                .with_description("Messages set aside on N.deadletter")
                .build(),
        }
    });
    &METRICS
}

impl Metrics {
    /// A turn settled as `outcome` (`ack`, `retry`, `poison`) after `seconds`.
    pub fn turn(&self, outcome: &'static str, seconds: f64) {
        let attrs = [KeyValue::new("outcome", outcome)];
        self.turns.add(1, &attrs);
        self.turn_duration.record(seconds, &attrs);
    }

    /// One model call of `model` (by `system`, the provider): its time and tokens.
    pub fn llm_call(&self, model: &str, system: &str, seconds: f64, input: u64, output: u64) {
        let model = KeyValue::new("gen_ai.request.model", model.to_owned());
        self.llm_duration.record(
            seconds,
            &[
                model.clone(),
                KeyValue::new("gen_ai.system", system.to_owned()),
            ],
        );
        for (kind, n) in [("input", input), ("output", output)] {
            self.llm_tokens.add(
                n,
                &[model.clone(), KeyValue::new("gen_ai.token.type", kind)],
            );
        }
    }

    /// A tool call served; `failure` is its error kind when it failed.
    pub fn tool_call(&self, tool: &str, failure: Option<&str>) {
        let tool = KeyValue::new("tool", tool.to_owned());
        self.tool_calls.add(1, std::slice::from_ref(&tool));
        if let Some(kind) = failure {
            self.tool_failures
                .add(1, &[tool, KeyValue::new("error.type", kind.to_owned())]);
        }
    }

    /// A message of `stream` set aside on `N.deadletter`.
    pub fn dead_letter(&self, stream: &str) {
        self.dead_letters
            .add(1, &[KeyValue::new("stream", stream.to_owned())]);
    }
}

/// Last sampled depth per (stream, consumer), read by the `nexus.queue.depth` gauge.
static QUEUE_DEPTHS: LazyLock<Mutex<BTreeMap<(String, String), u64>>> =
    LazyLock::new(Mutex::default);

/// Records how many messages wait for `consumer` of `stream` (sampled by the service).
pub fn set_queue_depth(stream: &str, consumer: &str, depth: u64) {
    // Registers the gauge (first use) so the value is observed.
    let _ = metrics();
    QUEUE_DEPTHS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((stream.to_owned(), consumer.to_owned()), depth);
}

/// Whether metrics go anywhere (OTLP or a Prometheus listener): services skip
/// sampling queue depths otherwise.
pub fn enabled() -> bool {
    super::METRICS_ON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Serves `GET /metrics` in Prometheus text format from `registry` on `listener`
/// until the task is aborted.
pub(crate) async fn serve(listener: tokio::net::TcpListener, registry: prometheus::Registry) {
    use axum::{Router, http::header, routing::get};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let text = prometheus::TextEncoder::new()
                    .encode_to_string(&registry.gather())
                    .unwrap_or_else(|e| format!("# encoding failed: {e}\n"));
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    if let Err(error) = axum::serve(listener, app).await {
        tracing::warn!(%error, "metrics endpoint stopped");
    }
}
