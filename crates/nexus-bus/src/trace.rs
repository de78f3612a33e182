//! W3C trace context carried in the `traceparent` header, so one trace runs
//! from a gateway through agent-core and tool-runner to the reply.

use async_nats::HeaderMap;

/// A trace id and the id of the span that sent the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: String,
    span_id: String,
}

impl TraceContext {
    /// Starts a new trace (at the edge: a gateway or the CLI).
    pub fn new_root() -> Self {
        Self {
            trace_id: uuid::Uuid::new_v4().simple().to_string(),
            span_id: new_span_id(),
        }
    }

    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, _flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if version != "00" || !hex(trace, 32) || !hex(span, 16) || trace.bytes().all(|b| b == b'0')
        {
            return None;
        }
        Some(Self {
            trace_id: trace.to_ascii_lowercase(),
            span_id: span.to_ascii_lowercase(),
        })
    }

    /// The context of a received message, or a new root when it carried none.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Self {
        headers
            .and_then(|h| h.get(crate::TRACEPARENT))
            .and_then(|v| Self::parse(v.as_str()))
            .unwrap_or_else(Self::new_root)
    }

    /// Same trace, new span: what a service sends on behalf of a message it received.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: new_span_id(),
        }
    }

    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The `traceparent` a message sent from here carries: the current span's ids
    /// when spans are exported over OpenTelemetry (so the receiver's span is its
    /// child), this context's otherwise.
    pub fn header_from_here(&self) -> String {
        match nexus_common::telemetry::current_span_ids() {
            Some((trace_id, span_id)) => format!("00-{trace_id}-{span_id}-01"),
            None => self.header(),
        }
    }

    /// Makes `span` a child of the span that sent this context; call it before the
    /// span is first entered. A no-op when spans are not exported.
    pub fn adopt(&self, span: &tracing::Span) {
        nexus_common::telemetry::set_remote_parent(span, &self.trace_id, &self.span_id);
    }

    /// A span for handling a received message, child of its sender's span.
    pub fn span(&self, span: tracing::Span) -> tracing::Span {
        self.adopt(&span);
        span
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

fn new_span_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_children_keep_the_trace() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::parse(&root.header()).unwrap();
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.header(), root.header());
        assert!(TraceContext::parse("00-xyz-abc-01").is_none());
        assert!(
            TraceContext::parse(&format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16))).is_none()
        );
    }
}
