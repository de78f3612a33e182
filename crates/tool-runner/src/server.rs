//! The NATS side of tool-runner: publishes the tool specs in the KV bucket,
//! registers the service, serves one endpoint per tool, and shuts down
//! gracefully (stop intake, answer what was delivered, wait for calls in
//! flight within a deadline).
//!
//! It must never leave a request without a `ToolResult` (a bad payload gets an
//! INVALID_ARGS result, not silence or a crash), never run a tool without its
//! timeout, and never leak a spawned task past `run`.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, anyhow};
use async_nats::service::{Request, endpoint::Endpoint};
use bytes::Bytes;
use futures::StreamExt;
use nexus_bus::{Bus, TraceContext};
use nexus_common::{Config, domain::ToolName};
use nexus_proto::{
    Message,
    v1::{self, ToolCall, ToolResult, tool_result::Outcome},
};
use tokio::{
    sync::Semaphore,
    task::JoinSet,
    time::{Instant, timeout},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, field};

use crate::{
    error::{ToolErrorKind, ToolFailure},
    sandbox::Workspace,
    tools::{Caller, Registry, Spec, Tool, ToolCtx},
};

/// Name of the service in the NATS service API, and its prefix in specs.
pub const SERVICE: &str = "tool-runner";
const DESCRIPTION: &str = "Executes the agent's tools inside the workspace sandbox";
/// Calls running at once in one process; more wait, which holds back intake.
const MAX_CONCURRENT_CALLS: usize = 64;
/// Added to the longest tool timeout to bound the wait at shutdown.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);
/// Room kept under the output cap for the truncation note.
const TRUNCATION_NOTE_ROOM: usize = 160;

/// What every request handler shares.
struct Shared {
    workspace: Arc<Workspace>,
    max_output_bytes: usize,
    permits: Arc<Semaphore>,
    calls: TaskTracker,
}

/// Serves the tools until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let workspace = Workspace::open(&config.workspace).with_context(|| {
        format!(
            "cannot open the workspace {} (NEXUS_WORKSPACE)",
            config.workspace.display()
        )
    })?;
    let registry = Registry::from_config(&config.tools);
    let start = async {
        let bus = Bus::connect(&config, SERVICE).await?;
        publish_specs(&bus, &registry).await?;
        let service = bus
            .register_service(SERVICE, DESCRIPTION)
            .await
            .context("registering with the NATS service API")?;
        anyhow::Ok((bus, service))
    };
    // A signal while NATS is slow to answer stops the start, not only the serving.
    let (bus, service) = tokio::select! {
        started = start => started?,
        () = shutdown.cancelled() => {
            tracing::info!("shutdown requested before tool-runner was serving");
            return Ok(());
        }
    };

    let shared = Arc::new(Shared {
        workspace: Arc::new(workspace),
        max_output_bytes: config.tools.max_output_bytes,
        permits: Arc::new(Semaphore::new(MAX_CONCURRENT_CALLS)),
        calls: TaskTracker::new(),
    });
    // Our own token, so a failing endpoint can stop the others too.
    let stop = shutdown.child_token();
    let mut endpoints = JoinSet::new();
    for (spec, tool) in registry.iter() {
        let name = ToolName::parse(spec.name)?;
        let endpoint = service
            .endpoint_builder()
            .name(spec.name)
            .add(bus.subjects().tool(&name))
            .await
            .map_err(|e| anyhow!("cannot serve {}: {e}", spec.name))?;
        endpoints.spawn(serve(
            endpoint,
            Arc::new(spec.clone()),
            tool.clone(),
            shared.clone(),
            stop.clone(),
        ));
    }
    let names: Vec<&str> = registry.iter().map(|(s, _)| s.name).collect();
    tracing::info!(
        tools = ?names,
        disabled = ?registry.disabled(),
        workspace = %shared.workspace.root().display(),
        "tool-runner serving"
    );

    let result = tokio::select! {
        () = stop.cancelled() => Ok(()),
        Some(_) = endpoints.join_next() => {
            Err(anyhow!("a tool endpoint closed unexpectedly; was the NATS connection lost?"))
        }
    };
    stop.cancel();

    // Every call is bounded by its tool's timeout, so this deadline is only hit by a bug.
    let longest = registry.iter().map(|(s, _)| s.timeout).max();
    let deadline = longest.unwrap_or_default() + SHUTDOWN_MARGIN;
    let drained = timeout(deadline, async {
        while endpoints.join_next().await.is_some() {}
        shared.calls.close();
        shared.calls.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?deadline,
            "calls still running at the shutdown deadline; abandoning them"
        );
        endpoints.abort_all();
    }
    if let Err(error) = service.stop().await {
        tracing::debug!(%error, "service stop");
    }
    bus.drain().await;
    tracing::info!("tool-runner stopped");
    result
}

/// Puts every served tool's spec in the KV bucket (one key per tool), and
/// removes the specs of tools switched off here, so nobody advertises them.
async fn publish_specs(bus: &Bus, registry: &Registry) -> anyhow::Result<()> {
    let bucket = bus.subjects().tools_bucket();
    let store = bus
        .ensure_kv_bucket(
            &bucket,
            1,
            None,
            "Tool specs published by tool-runner, one key per tool",
        )
        .await?;
    let provider = format!("{SERVICE}/{}", env!("CARGO_PKG_VERSION"));
    for (spec, _) in registry.iter() {
        let proto = v1::ToolSpec {
            name: spec.name.to_owned(),
            description: spec.description.to_owned(),
            parameters_json_schema: spec.parameters.to_string(),
            requires_approval: spec.requires_approval,
            timeout_ms: spec.timeout.as_millis() as u64,
            encoding: String::new(),
            provider: provider.clone(),
        };
        store
            .put(spec.name, Bytes::from(proto.encode_to_vec()))
            .await
            .map_err(|e| anyhow!("cannot publish the spec of {} in {bucket}: {e}", spec.name))?;
    }
    for name in registry.disabled() {
        if let Ok(Some(_)) = store.get(*name).await
            && let Err(error) = store.delete(*name).await
        {
            tracing::warn!(%error, tool = name, "spec of a disabled tool not removed");
        }
    }
    Ok(())
}

/// Reads one endpoint until stopped, then answers what was already delivered.
async fn serve(
    mut endpoint: Endpoint,
    spec: Arc<Spec>,
    tool: Arc<dyn Tool>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            request = endpoint.next() => match request {
                Some(request) => dispatch(request, &spec, &tool, &shared).await,
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
        dispatch(request, &spec, &tool, &shared).await;
    }
}

/// Runs one request on its own task, once a permit is free.
async fn dispatch(request: Request, spec: &Arc<Spec>, tool: &Arc<dyn Tool>, shared: &Arc<Shared>) {
    // Waiting here stops reading the endpoint: backpressure instead of an unbounded queue.
    let Ok(permit) = shared.permits.clone().acquire_owned().await else {
        return;
    };
    let (spec, tool, shared2) = (spec.clone(), tool.clone(), shared.clone());
    shared.calls.spawn(async move {
        handle(request, &spec, &*tool, &shared2).await;
        drop(permit);
    });
}

async fn handle(request: Request, spec: &Spec, tool: &dyn Tool, shared: &Shared) {
    let trace = TraceContext::from_headers(request.message.headers.as_ref());
    let span = tracing::info_span!(
        "tool_call",
        tool = spec.name,
        trace_id = trace.trace_id(),
        call_id = field::Empty,
        session_id = field::Empty,
    );
    async {
        let result = match ToolCall::decode(request.message.payload.clone()) {
            Ok(call) => {
                let caller = call
                    .context
                    .as_ref()
                    .map(|c| Caller {
                        session_id: c.session_id.clone(),
                        user_id: c.user_id.clone(),
                        turn_id: c.turn_id.clone(),
                    })
                    .unwrap_or_default();
                let span = tracing::Span::current();
                span.record("call_id", call.call_id.as_str());
                span.record("session_id", caller.session_id.as_str());
                let ctx = ToolCtx {
                    workspace: shared.workspace.clone(),
                    caller,
                };
                let approved = call.context.as_ref().is_some_and(|c| c.approved);
                if spec.requires_approval && !approved {
                    // agent-core asks the person first; refusing here too means no
                    // other caller can skip that step.
                    let failure = ToolFailure::new(
                        ToolErrorKind::NeedsApproval,
                        format!(
                            "{} needs the user's explicit yes in the chat before it runs.",
                            spec.name
                        ),
                    );
                    ToolResult {
                        call_id: call.call_id.clone(),
                        name: spec.name.to_owned(),
                        outcome: Some(Outcome::Error(failure.into())),
                        truncated: false,
                        duration_ms: 0,
                    }
                } else {
                    execute(tool, spec, &ctx, call, shared.max_output_bytes).await
                }
            }
            Err(error) => {
                tracing::warn!(%error, "request is not a ToolCall");
                let failure = ToolFailure::invalid_args(format!(
                    "the request is not a valid ToolCall protobuf message: {error}"
                ));
                ToolResult {
                    call_id: String::new(),
                    name: spec.name.to_owned(),
                    outcome: Some(Outcome::Error(failure.into())),
                    truncated: false,
                    duration_ms: 0,
                }
            }
        };
        match &result.outcome {
            Some(Outcome::Error(e)) => tracing::info!(
                error_kind = ?e.kind(),
                duration_ms = result.duration_ms,
                "tool call failed"
            ),
            _ => tracing::info!(
                truncated = result.truncated,
                duration_ms = result.duration_ms,
                "tool call finished"
            ),
        }
        if let Err(error) = request
            .respond(Ok(Bytes::from(result.encode_to_vec())))
            .await
        {
            tracing::warn!(%error, "reply not sent");
        }
    }
    .instrument(span)
    .await;
}

/// Runs one decoded call: arguments parsed, tool run under its timeout,
/// output capped. Never fails: every failure becomes part of the result.
async fn execute(
    tool: &dyn Tool,
    spec: &Spec,
    ctx: &ToolCtx,
    call: ToolCall,
    max_output_bytes: usize,
) -> ToolResult {
    let started = Instant::now();
    let outcome = async {
        if !call.name.is_empty() && call.name != spec.name {
            return Err(ToolFailure::invalid_args(format!(
                "the call names tool '{}' but was sent to '{}'",
                call.name, spec.name
            )));
        }
        let args = parse_arguments(&call.arguments_json)?;
        match timeout(spec.timeout, tool.call(ctx, args)).await {
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
        name: spec.name.to_owned(),
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
fn cap_output(text: String, max: usize) -> (String, bool) {
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
    use crate::tools::testing::world;

    struct Slow;

    #[async_trait]
    impl Tool for Slow {
        fn spec(&self) -> Spec {
            Spec {
                name: "slow",
                description: "sleeps",
                parameters: json!({"type": "object", "properties": {}}),
                requires_approval: false,
                timeout: Duration::from_millis(50),
            }
        }
        async fn call(&self, _: &ToolCtx, args: serde_json::Value) -> Result<String, ToolFailure> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(args.to_string())
        }
    }

    struct Echo;

    #[async_trait]
    impl Tool for Echo {
        fn spec(&self) -> Spec {
            Spec {
                timeout: Duration::from_secs(1),
                name: "echo",
                ..Slow.spec()
            }
        }
        async fn call(&self, _: &ToolCtx, args: serde_json::Value) -> Result<String, ToolFailure> {
            Ok(args["text"].as_str().unwrap_or_default().to_owned())
        }
    }

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
        let (_w, ctx) = world();
        let r = execute(&Slow, &Slow.spec(), &ctx, call("slow", "{}"), 1000).await;
        let e = error_of(&r);
        assert_eq!(e.kind(), v1::ToolErrorKind::Timeout);
        assert!(e.retryable);
        assert_eq!(r.call_id, "c1");
    }

    #[tokio::test]
    async fn output_over_the_cap_is_cut_flagged_and_explained() {
        let (_w, ctx) = world();
        let long = "é".repeat(1000);
        let args = json!({"text": long}).to_string();
        let r = execute(&Echo, &Echo.spec(), &ctx, call("echo", &args), 500).await;
        assert!(r.truncated);
        let Some(Outcome::Output(out)) = &r.outcome else {
            panic!("{r:?}")
        };
        assert!(out.len() <= 500, "{}", out.len());
        assert!(out.contains("[output truncated: showing"), "{out}");
        let r = execute(
            &Echo,
            &Echo.spec(),
            &ctx,
            call("echo", r#"{"text":"hi"}"#),
            500,
        )
        .await;
        assert!(!r.truncated);
        assert_eq!(r.outcome, Some(Outcome::Output("hi".into())));
    }

    #[tokio::test]
    async fn bad_json_non_objects_and_wrong_names_are_invalid_args() {
        let (_w, ctx) = world();
        for (name, args, says) in [
            ("echo", "{not json", "not valid JSON"),
            ("echo", "[1, 2]", "JSON object"),
            ("other", "{}", "names tool 'other'"),
        ] {
            let r = execute(&Echo, &Echo.spec(), &ctx, call(name, args), 500).await;
            let e = error_of(&r);
            assert_eq!(e.kind(), v1::ToolErrorKind::InvalidArgs);
            assert!(e.message.contains(says), "{}", e.message);
        }
        // Empty arguments and an empty name are accepted.
        let r = execute(&Echo, &Echo.spec(), &ctx, call("", ""), 500).await;
        assert_eq!(r.outcome, Some(Outcome::Output(String::new())));
    }
}
