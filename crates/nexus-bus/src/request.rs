//! The one request helper: timeout, `traceparent`, typed replies and typed errors.

use std::time::Duration;

use async_nats::{HeaderMap, service};
use bytes::Bytes;
use nexus_common::backoff::Backoff;
use prost::Message;

use crate::{Bus, BusError, TRACEPARENT, TraceContext};

impl Bus {
    /// Typed request/reply with timeout, trace propagation and typed errors.
    ///
    /// While NATS is unreachable the request waits for the connection (within the
    /// timeout) rather than being buffered blind; if the connection drops before the
    /// answer, it fails at once with [`BusError::Disconnected`] instead of waiting out
    /// the timeout. It is sent once: use [`Bus::request_idempotent`] to have it
    /// sent again after a reconnect.
    #[tracing::instrument(skip_all, fields(subject = %subject))]
    pub async fn request<Req: Message, Resp: Message + Default>(
        &self,
        subject: String,
        req: &Req,
        trace: &TraceContext,
        timeout: Option<Duration>,
    ) -> Result<Resp, BusError> {
        let payload = req.encode_to_vec().into();
        decode(
            &self
                .request_bytes(subject, payload, HeaderMap::new(), trace, timeout)
                .await?,
        )
    }

    /// [`Bus::request`] for a payload encoded by the caller (with `headers` saying
    /// how, e.g. JSON for a tool provider that speaks it); the answer comes back raw.
    #[tracing::instrument(skip_all, fields(subject = %subject))]
    pub async fn request_bytes(
        &self,
        subject: String,
        payload: Bytes,
        headers: HeaderMap,
        trace: &TraceContext,
        timeout: Option<Duration>,
    ) -> Result<Bytes, BusError> {
        let timeout = timeout.unwrap_or(self.request_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        self.request_once(subject, payload, Some(headers), trace, deadline, timeout)
            .await
    }

    /// Like [`Bus::request`], for requests that may be served twice (reads, and
    /// writes keyed by an id): sent again, until the timeout, when the connection
    /// dropped before the answer or nobody served the subject yet (a service that is
    /// restarting, or resubscribing after NATS came back).
    #[tracing::instrument(skip_all, fields(subject = %subject))]
    pub async fn request_idempotent<Req: Message, Resp: Message + Default>(
        &self,
        subject: String,
        req: &Req,
        trace: &TraceContext,
        timeout: Option<Duration>,
    ) -> Result<Resp, BusError> {
        let timeout = timeout.unwrap_or(self.request_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let payload: Bytes = req.encode_to_vec().into();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            match self
                .request_once(
                    subject.clone(),
                    payload.clone(),
                    None,
                    trace,
                    deadline,
                    timeout,
                )
                .await
            {
                Err(e @ (BusError::Disconnected { .. } | BusError::NoResponders { .. }))
                    if tokio::time::Instant::now() + backoff.peek() < deadline =>
                {
                    tracing::debug!(error = %e, "request not served; sending it again");
                    tokio::time::sleep(backoff.fail()).await;
                }
                other => return decode(&other?),
            }
        }
    }

    async fn request_once(
        &self,
        subject: String,
        payload: Bytes,
        headers: Option<HeaderMap>,
        trace: &TraceContext,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        let timed_out = || BusError::Timeout {
            subject: subject.clone(),
            timeout,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !self.link.connected(left).await {
            return Err(timed_out());
        }
        let since = self.link.state();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        let mut headers = headers.unwrap_or_default();
        headers.insert(TRACEPARENT, trace.header_from_here().as_str());
        let request = async_nats::Request::new()
            .payload(payload)
            .headers(headers)
            .timeout(Some(left));
        let answer = tokio::select! {
            answer = self.client.send_request(subject.clone(), request) => answer,
            _ = self.link.changed_from(since) => {
                return Err(BusError::Disconnected { subject });
            }
        };
        let reply = answer.map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => BusError::NoResponders {
                service: service_of(&subject),
                subject: subject.clone(),
            },
            async_nats::RequestErrorKind::TimedOut => timed_out(),
            _ => BusError::nats(e),
        })?;
        if let Some(h) = &reply.headers
            && let Some(err) = h.get(service::NATS_SERVICE_ERROR)
        {
            let code = h
                .get(service::NATS_SERVICE_ERROR_CODE)
                .and_then(|c| c.as_str().parse().ok())
                .unwrap_or(500);
            return Err(BusError::Remote {
                subject,
                code,
                message: err.to_string(),
            });
        }
        Ok(reply.payload)
    }
}

/// Decodes a protobuf payload; the error says what it expected.
pub fn decode<T: Message + Default>(payload: &[u8]) -> Result<T, BusError> {
    T::decode(payload).map_err(|e| BusError::Decode {
        what: std::any::type_name::<T>(),
        message: e.to_string(),
    })
}

/// Best guess at which service serves a subject, for error messages.
fn service_of(subject: &str) -> String {
    match subject.split('.').nth(1) {
        Some("tool") => "tool-runner".into(),
        Some("memory") => "memory-svc".into(),
        Some("scheduler") => "scheduler".into(),
        Some(other) => other.into(),
        None => subject.into(),
    }
}
