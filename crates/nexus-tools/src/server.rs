//! The provider side: serves tools on `N.tool.<name>` as endpoints of the
//! provider's NATS service (its queue group, so replicas share the calls), and
//! announces them on `N.tools.announce` — at start, every `announce_every`, when
//! asked on `N.tools.discover`, after a reconnect, and whenever the set changes.
//! On shutdown it withdraws them first, then answers what was delivered.
//!
//! It must never leave a request without a result (a bad payload gets an
//! INVALID_ARGS result), never run a tool without its timeout, never return more
//! than the output cap, and never leak a task past `run`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::anyhow;
use async_nats::service::{EndpointBuilder, Request, Service, endpoint::Endpoint};
use futures::StreamExt;
use nexus_bus::{Bus, TraceContext};
use nexus_common::domain::ToolName;
use nexus_proto::v1::{self, ToolAnnouncement, ToolCall, ToolResult, tool_result::Outcome};
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument as _, field};

use crate::{
    failure::{ToolErrorKind, ToolFailure},
    tool::{Caller, DynTool, Spec},
    wire::{self, Encoding},
};

/// How often a provider announces its tools; they are forgotten 3 periods after
/// the last announcement (a provider that was killed or cut off).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// Room kept under the output cap for the truncation note.
const TRUNCATION_NOTE_ROOM: usize = 160;
/// Added to the longest tool timeout to bound the wait at shutdown.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// How a provider serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest output returned, in bytes; longer output is cut and flagged.
    pub max_output_bytes: usize,
    /// Calls running at once in this process; more wait (backpressure on intake).
    pub max_concurrent_calls: usize,
    pub announce_every: Duration,
    /// Tools whose every call needs a person's yes, whatever their own spec says
    /// (`[tools] require_approval`).
    pub require_approval: Vec<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_output_bytes: 32 * 1024,
            max_concurrent_calls: 64,
            announce_every: ANNOUNCE_EVERY,
            require_approval: Vec::new(),
        }
    }
}

/// One provider process's tools. Cheap to clone; tools may be added and removed
/// while it runs (an MCP server that comes and goes).
#[derive(Clone)]
pub struct ToolServer {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    /// Taken out by [`ToolServer::stop_service`].
    service: Mutex<Option<Service>>,
    provider: String,
    version: String,
    instance: String,
    options: ServeOptions,
    tools: Mutex<BTreeMap<String, Served>>,
    status: Mutex<HashMap<String, String>>,
    permits: Arc<Semaphore>,
    /// Calls in flight.
    calls: TaskTracker,
    /// Endpoint loops.
    loops: TaskTracker,
    /// Announce now (the set changed).
    changed: tokio::sync::Notify,
    stop: CancellationToken,
}

struct Served {
    spec: v1::ToolSpec,
    timeout: Duration,
    stop: CancellationToken,
}

impl ToolServer {
    /// A server for `provider`: `service` is its registration with the NATS service
    /// API (the tools' endpoints are added to it; a provider with endpoints of its
    /// own adds them through [`ToolServer::endpoint_builder`]). `version` goes into the specs.
    pub fn new(
        bus: Bus,
        service: Service,
        provider: &str,
        version: &str,
        options: ServeOptions,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(options.max_concurrent_calls.max(1)));
        Self {
            inner: Arc::new(Inner {
                bus,
                service: Mutex::new(Some(service)),
                provider: provider.to_owned(),
                version: version.to_owned(),
                instance: uuid::Uuid::new_v4().simple().to_string(),
                options,
                tools: Mutex::default(),
                status: Mutex::default(),
                permits,
                calls: TaskTracker::new(),
                loops: TaskTracker::new(),
                changed: tokio::sync::Notify::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Serves `tool` on `N.tool.<name>` and announces it. A tool of the same name
    /// already served here is replaced.
    pub async fn add(&self, tool: Arc<dyn DynTool>) -> anyhow::Result<()> {
        let mut spec = tool.spec();
        if self.inner.options.require_approval.contains(&spec.name) {
            spec.requires_approval = true;
        }
        let name =
            ToolName::parse(&spec.name).map_err(|e| anyhow!("tool name {:?}: {e}", spec.name))?;
        self.remove_quietly(&spec.name);
        let builder = self
            .endpoint_builder()
            .ok_or_else(|| anyhow!("the service of {} is stopped", self.inner.provider))?;
        let endpoint = builder
            .name(&spec.name)
            .add(self.inner.bus.subjects().tool(&name))
            .await
            .map_err(|e| anyhow!("cannot serve {}: {e}", spec.name))?;
        let stop = self.inner.stop.child_token();
        let proto = v1::ToolSpec {
            name: spec.name.clone(),
            description: spec.description.clone(),
            parameters_json_schema: spec.parameters.to_string(),
            requires_approval: spec.requires_approval,
            timeout_ms: spec.timeout.as_millis() as u64,
            provider: format!("{}/{}", self.inner.provider, self.inner.version),
            encoding: String::new(),
        };
        if let Ok(mut tools) = self.inner.tools.lock() {
            tools.insert(
                spec.name.clone(),
                Served {
                    spec: proto,
                    timeout: spec.timeout,
                    stop: stop.clone(),
                },
            );
        }
        self.inner.loops.spawn(endpoint_loop(
            endpoint,
            Arc::new(spec),
            tool,
            self.inner.clone(),
            stop,
        ));
        self.inner.changed.notify_one();
        Ok(())
    }

    /// An endpoint of the provider's service, for endpoints other than tools;
    /// `None` once the service is stopped.
    pub fn endpoint_builder(&self) -> Option<EndpointBuilder> {
        self.inner
            .service
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.endpoint_builder()))
    }

    /// Unregisters the service (after [`ToolServer::run`] returned and the
    /// provider's own endpoints drained).
    pub async fn stop_service(&self) {
        let service = self.inner.service.lock().ok().and_then(|mut s| s.take());
        if let Some(service) = service
            && let Err(error) = service.stop().await
        {
            tracing::debug!(%error, "service stop");
        }
    }

    /// Stops serving `name` and announces the smaller set.
    pub fn remove(&self, name: &str) {
        if self.remove_quietly(name) {
            self.inner.changed.notify_one();
        }
    }

    fn remove_quietly(&self, name: &str) -> bool {
        let served = self
            .inner
            .tools
            .lock()
            .ok()
            .and_then(|mut t| t.remove(name));
        match served {
            Some(s) => {
                s.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// Names served now.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .tools
            .lock()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Sets one line of what this provider reports in `nexus status`.
    pub fn set_status(&self, key: &str, value: String) {
        if let Ok(mut s) = self.inner.status.lock() {
            s.insert(key.to_owned(), value);
        }
        self.inner.changed.notify_one();
    }

    /// Removes a status line.
    pub fn clear_status(&self, key: &str) {
        if let Ok(mut s) = self.inner.status.lock() {
            s.remove(key);
        }
        self.inner.changed.notify_one();
    }

    /// Announces until `shutdown`, then withdraws the tools, stops the endpoints
    /// and waits (bounded by the longest tool timeout) for calls in flight.
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let inner = &self.inner;
        let s = inner.bus.subjects();
        let mut discover = inner.bus.subscribe(s.tools_discover()).await?;
        let mut tick = tokio::time::interval(inner.options.announce_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let link = inner.bus.link().clone();
        loop {
            let since = link.state();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = inner.stop.cancelled() => break,
                _ = tick.tick() => {}
                m = discover.next() => if m.is_none() { break },
                () = inner.changed.notified() => {}
                () = link.changed_from(since) => {
                    link.reconnected().await;
                }
            }
            self.announce(false).await;
        }
        // Withdrawn first, so no caller picks this instance while it drains.
        self.announce(true).await;
        let _ = discover.unsubscribe().await;
        inner.stop.cancel();
        let longest = inner
            .tools
            .lock()
            .map(|t| t.values().map(|s| s.timeout).max())
            .ok()
            .flatten()
            .unwrap_or_default();
        inner.loops.close();
        inner.calls.close();
        let drained = tokio::time::timeout(longest + SHUTDOWN_MARGIN, async {
            inner.loops.wait().await;
            inner.calls.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("tool calls still running at the shutdown deadline; abandoning them");
        }
        Ok(())
    }

    /// The announcement of this instance as it stands.
    pub fn announcement(&self, withdrawn: bool) -> ToolAnnouncement {
        let inner = &self.inner;
        ToolAnnouncement {
            protocol: wire::PROTOCOL,
            provider: inner.provider.clone(),
            instance: inner.instance.clone(),
            version: inner.version.clone(),
            specs: if withdrawn {
                Vec::new()
            } else {
                inner
                    .tools
                    .lock()
                    .map(|t| t.values().map(|s| s.spec.clone()).collect())
                    .unwrap_or_default()
            },
            ttl_ms: (inner.options.announce_every * 3).as_millis() as u64,
            withdrawn,
            status: inner.status.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }

    async fn announce(&self, withdrawn: bool) {
        let subject = self.inner.bus.subjects().tools_announce();
        let payload = wire::encode_announcement(&self.announcement(withdrawn));
        let bus = &self.inner.bus;
        let sent = async {
            bus.publish_live(subject, payload).await?;
            if withdrawn {
                bus.flush().await?;
            }
            anyhow::Ok(())
        };
        match sent.await {
            Err(error) => {
                tracing::debug!(%error, "tool announcement not sent; the next one follows")
            }
            Ok(()) if withdrawn => tracing::info!("tools withdrawn"),
            Ok(()) => {}
        }
    }
}

/// Reads one endpoint until stopped, then answers what was already delivered.
async fn endpoint_loop(
    mut endpoint: Endpoint,
    spec: Arc<Spec>,
    tool: Arc<dyn DynTool>,
    inner: Arc<Inner>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            request = endpoint.next() => match request {
                Some(request) => dispatch(request, &spec, &tool, &inner).await,
                None => return,
            },
        }
    }
    // Unsubscribing keeps what is buffered readable, so no delivered request goes unanswered.
    if let Err(error) = endpoint.stop().await {
        tracing::debug!(%error, tool = spec.name, "endpoint stop");
        return;
    }
    while let Some(request) = endpoint.next().await {
        dispatch(request, &spec, &tool, &inner).await;
    }
}

/// Runs one request on its own task, once a permit is free.
async fn dispatch(request: Request, spec: &Arc<Spec>, tool: &Arc<dyn DynTool>, inner: &Arc<Inner>) {
    // Waiting here stops reading the endpoint: backpressure instead of an unbounded queue.
    let Ok(permit) = inner.permits.clone().acquire_owned().await else {
        return;
    };
    let (spec, tool, max) = (spec.clone(), tool.clone(), inner.options.max_output_bytes);
    inner.calls.spawn(async move {
        handle(request, &spec, &*tool, max).await;
        drop(permit);
    });
}

async fn handle(request: Request, spec: &Spec, tool: &dyn DynTool, max_output_bytes: usize) {
    let trace = TraceContext::from_headers(request.message.headers.as_ref());
    let encoding = Encoding::of_headers(request.message.headers.as_ref());
    let span = tracing::info_span!(
        "tool_call",
        otel.name = field::Empty,
        otel.kind = field::Empty,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = spec.name,
        tool = spec.name,
        trace_id = trace.trace_id(),
        call_id = field::Empty,
        session_id = field::Empty,
    );
    nexus_common::telemetry::name_span(&span, "server", || format!("execute_tool {}", spec.name));
    let span = trace.span(span);
    async {
        let result = match wire::decode_call(&request.message.payload, encoding) {
            Ok(call) => {
                let span = tracing::Span::current();
                span.record("call_id", call.call_id.as_str());
                if let Some(c) = &call.context {
                    span.record("session_id", c.session_id.as_str());
                }
                execute(tool, spec, call, max_output_bytes).await
            }
            Err(message) => {
                tracing::warn!(message, "request is not a tool call");
                failed(String::new(), spec, ToolFailure::invalid_args(message))
            }
        };
        match &result.outcome {
            Some(Outcome::Error(e)) => {
                nexus_common::telemetry::metrics()
                    .tool_call(&spec.name, Some(e.kind().as_str_name()));
                tracing::info!(
                    error_kind = ?e.kind(),
                    duration_ms = result.duration_ms,
                    "tool call failed"
                )
            }
            _ => {
                nexus_common::telemetry::metrics().tool_call(&spec.name, None);
                tracing::info!(
                    truncated = result.truncated,
                    duration_ms = result.duration_ms,
                    "tool call finished"
                )
            }
        }
        let reply = wire::encode_result(&result, encoding);
        if let Err(error) = request
            .respond_with_headers(Ok(reply), encoding.headers())
            .await
        {
            tracing::warn!(%error, "reply not sent");
        }
    }
    .instrument(span)
    .await;
}

fn failed(call_id: String, spec: &Spec, failure: ToolFailure) -> ToolResult {
    ToolResult {
        call_id,
        name: spec.name.clone(),
        outcome: Some(Outcome::Error(failure.into())),
        truncated: false,
        duration_ms: 0,
    }
}

/// Runs one decoded call: approval checked, arguments parsed, tool run under its
/// timeout, output capped. Never fails: every failure becomes part of the result.
pub async fn execute(
    tool: &dyn DynTool,
    spec: &Spec,
    call: ToolCall,
    max_output_bytes: usize,
) -> ToolResult {
    let started = Instant::now();
    let caller = call
        .context
        .as_ref()
        .map(|c| Caller {
            session_id: c.session_id.clone(),
            user_id: c.user_id.clone(),
            channel: c.channel.clone(),
            chat_id: c.chat_id.clone(),
            turn_id: c.turn_id.clone(),
            approved: c.approved,
            timezone: c.timezone.clone(),
        })
        .unwrap_or_default();
    let outcome = async {
        if !call.name.is_empty() && call.name != spec.name {
            return Err(ToolFailure::invalid_args(format!(
                "the call names tool '{}' but was sent to '{}'",
                call.name, spec.name
            )));
        }
        if spec.requires_approval && !caller.approved {
            // agent-core asks the person first; refusing here too means no other
            // caller can skip that step.
            return Err(ToolFailure::new(
                ToolErrorKind::NeedsApproval,
                format!(
                    "{} needs the user's explicit yes in the chat before it runs.",
                    spec.name
                ),
            ));
        }
        let args = parse_arguments(&call.arguments_json)?;
        match tokio::time::timeout(spec.timeout, tool.call_json(&caller, args)).await {
            Ok(result) => result,
            Err(_) => Err(ToolFailure::timeout(format!(
                "{} did not finish within {} ms",
                spec.name,
                spec.timeout.as_millis()
            ))),
        }
    }
    .await;
    let (outcome, truncated) = match outcome {
        Ok(text) => {
            let (text, truncated) = cap_output(text, max_output_bytes);
            (Outcome::Output(text), truncated)
        }
        Err(failure) => (Outcome::Error(failure.into()), false),
    };
    ToolResult {
        call_id: call.call_id,
        name: spec.name.clone(),
        outcome: Some(outcome),
        truncated,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

/// The model's arguments: a JSON object (empty text counts as `{}`).
fn parse_arguments(json: &str) -> Result<serde_json::Value, ToolFailure> {
    if json.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| ToolFailure::invalid_args(format!("arguments are not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ToolFailure::invalid_args(
            "arguments must be a JSON object, e.g. {\"path\": \"notes.md\"}",
        ));
    }
    Ok(value)
}

/// Cuts output to `max` bytes (on a character boundary) and says so.
pub fn cap_output(text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut cut = max.saturating_sub(TRUNCATION_NOTE_ROOM);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = text[..cut].to_owned();
    out.push_str(&format!(
        "\n[output truncated: showing {cut} of {} bytes; ask for less, e.g. a line range or a narrower search]",
        text.len()
    ));
    (out, true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use async_trait::async_trait;
    use serde_json::json;

    use super::*;

    struct Slow;

    #[async_trait]
    impl DynTool for Slow {
        fn spec(&self) -> Spec {
            Spec {
                name: "slow".into(),
                description: "sleeps".into(),
                parameters: json!({"type": "object", "properties": {}}),
                requires_approval: false,
                timeout: Duration::from_millis(50),
            }
        }
        async fn call_json(
            &self,
            _: &Caller,
            args: serde_json::Value,
        ) -> Result<String, ToolFailure> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(args.to_string())
        }
    }

    struct Echo {
        approval: bool,
    }

    #[async_trait]
    impl DynTool for Echo {
        fn spec(&self) -> Spec {
            Spec {
                timeout: Duration::from_secs(1),
                name: "echo".into(),
                requires_approval: self.approval,
                ..Slow.spec()
            }
        }
        async fn call_json(
            &self,
            _: &Caller,
            args: serde_json::Value,
        ) -> Result<String, ToolFailure> {
            Ok(args["text"].as_str().unwrap_or_default().to_owned())
        }
    }

    const ECHO: Echo = Echo { approval: false };

    fn call(name: &str, args: &str) -> ToolCall {
        ToolCall {
            call_id: "c1".into(),
            name: name.into(),
            arguments_json: args.into(),
            context: None,
        }
    }

    fn error_of(r: &ToolResult) -> &v1::ToolError {
        match &r.outcome {
            Some(Outcome::Error(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_call_that_runs_too_long_gets_a_retryable_timeout() {
        let r = execute(&Slow, &Slow.spec(), call("slow", "{}"), 1000).await;
        let e = error_of(&r);
        assert_eq!(e.kind(), v1::ToolErrorKind::Timeout);
        assert!(e.retryable);
        assert_eq!(r.call_id, "c1");
    }

    #[tokio::test]
    async fn output_over_the_cap_is_cut_flagged_and_explained() {
        let long = "é".repeat(1000);
        let args = json!({"text": long}).to_string();
        let r = execute(&ECHO, &ECHO.spec(), call("echo", &args), 500).await;
        assert!(r.truncated);
        let Some(Outcome::Output(out)) = &r.outcome else {
            panic!("{r:?}")
        };
        assert!(out.len() <= 500, "{}", out.len());
        assert!(out.contains("[output truncated: showing"), "{out}");
        let r = execute(&ECHO, &ECHO.spec(), call("echo", r#"{"text":"hi"}"#), 500).await;
        assert!(!r.truncated);
        assert_eq!(r.outcome, Some(Outcome::Output("hi".into())));
    }

    #[tokio::test]
    async fn bad_json_non_objects_and_wrong_names_are_invalid_args() {
        for (name, args, says) in [
            ("echo", "{not json", "not valid JSON"),
            ("echo", "[1, 2]", "JSON object"),
            ("other", "{}", "names tool 'other'"),
        ] {
            let r = execute(&ECHO, &ECHO.spec(), call(name, args), 500).await;
            let e = error_of(&r);
            assert_eq!(e.kind(), v1::ToolErrorKind::InvalidArgs);
            assert!(e.message.contains(says), "{}", e.message);
        }
        // Empty arguments and an empty name are accepted.
        let r = execute(&ECHO, &ECHO.spec(), call("", ""), 500).await;
        assert_eq!(r.outcome, Some(Outcome::Output(String::new())));
    }

    #[tokio::test]
    async fn a_tool_that_needs_approval_refuses_a_call_without_it() {
        let tool = Echo { approval: true };
        let r = execute(&tool, &tool.spec(), call("echo", r#"{"text":"hi"}"#), 500).await;
        assert_eq!(error_of(&r).kind(), v1::ToolErrorKind::NeedsApproval);
        let mut approved = call("echo", r#"{"text":"hi"}"#);
        approved.context = Some(v1::ToolContext {
            approved: true,
            ..Default::default()
        });
        let r = execute(&tool, &tool.spec(), approved, 500).await;
        assert_eq!(r.outcome, Some(Outcome::Output("hi".into())));
    }
}
