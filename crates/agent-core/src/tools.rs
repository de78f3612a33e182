//! The tools agent-core can offer the model: discovered from the `N_tools` KV
//! bucket that tool-runner fills, and called over `N.tool.<name>`.
//!
//! agent-core never executes a tool itself; failures come back as data.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use nexus_bus::{Bus, BusError, TraceContext};
use nexus_common::domain::ToolName;
use nexus_proto::v1::{ToolCall, ToolError, ToolErrorKind, ToolResult, ToolSpec, tool_result};
use prost::Message;
use tokio::sync::Mutex;

use crate::llm::LlmTool;

/// How long a discovered list of tools is reused before the bucket is read again.
const REFRESH: Duration = Duration::from_secs(5);

/// Tool specs by name.
pub type Specs = Arc<BTreeMap<String, ToolSpec>>;

/// Cached tool specs.
#[derive(Clone)]
pub struct ToolDirectory {
    bus: Bus,
    cache: Arc<Mutex<Option<(Instant, Specs)>>>,
}

impl ToolDirectory {
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// The tools available now. An unreadable bucket means no tools, not a failed turn.
    pub async fn specs(&self) -> Specs {
        let mut cache = self.cache.lock().await;
        if let Some((at, specs)) = cache.as_ref()
            && at.elapsed() < REFRESH
        {
            return specs.clone();
        }
        let specs = Arc::new(match self.read_bucket().await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "cannot read tool specs; the turn runs without tools");
                BTreeMap::new()
            }
        });
        *cache = Some((Instant::now(), specs.clone()));
        specs
    }

    async fn read_bucket(&self) -> Result<BTreeMap<String, ToolSpec>, BusError> {
        let bucket = self.bus.subjects().tools_bucket();
        let kv = match self.bus.jetstream().get_key_value(&bucket).await {
            Ok(kv) => kv,
            // No tool-runner has ever started in this namespace.
            Err(_) => return Ok(BTreeMap::new()),
        };
        let mut keys = kv.keys().await.map_err(|e| BusError::Nats(e.to_string()))?;
        let mut out = BTreeMap::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| BusError::Nats(e.to_string()))?;
            if let Ok(Some(bytes)) = kv.get(&key).await {
                match ToolSpec::decode(bytes) {
                    Ok(spec) if ToolName::parse(&spec.name).is_ok() => {
                        out.insert(spec.name.clone(), spec);
                    }
                    _ => tracing::warn!(key, "ignoring an invalid tool spec"),
                }
            }
        }
        Ok(out)
    }

    /// Runs one call on tool-runner. Every failure becomes a `ToolResult` error the model can read.
    pub async fn call(
        &self,
        spec: Option<&ToolSpec>,
        call: ToolCall,
        trace: &TraceContext,
    ) -> ToolResult {
        let failed = |kind: ToolErrorKind, message: String, retryable: bool| ToolResult {
            call_id: call.call_id.clone(),
            name: call.name.clone(),
            outcome: Some(tool_result::Outcome::Error(ToolError {
                kind: kind as i32,
                message,
                retryable,
            })),
            ..Default::default()
        };
        let Some(spec) = spec else {
            return failed(
                ToolErrorKind::NotFound,
                format!("There is no tool named \"{}\".", call.name),
                false,
            );
        };
        let Ok(name) = ToolName::parse(&spec.name) else {
            return failed(ToolErrorKind::NotFound, "Invalid tool name.".into(), false);
        };
        let timeout = Duration::from_millis(spec.timeout_ms.max(1000)) + Duration::from_secs(2);
        match self
            .bus
            .request::<ToolCall, ToolResult>(
                self.bus.subjects().tool(&name),
                &call,
                trace,
                Some(timeout),
            )
            .await
        {
            Ok(mut r) => {
                r.call_id = call.call_id.clone();
                r
            }
            Err(BusError::NoResponders { .. }) => failed(
                ToolErrorKind::Upstream,
                format!(
                    "The tool \"{}\" is unavailable right now: no service is serving it.",
                    call.name
                ),
                true,
            ),
            Err(BusError::Timeout { timeout, .. }) => failed(
                ToolErrorKind::Timeout,
                format!(
                    "The tool \"{}\" did not finish within {}s.",
                    call.name,
                    timeout.as_secs()
                ),
                true,
            ),
            Err(e) => failed(
                ToolErrorKind::Upstream,
                format!("The tool call failed: {e}"),
                true,
            ),
        }
    }
}

/// A spec as the model sees it. A schema that is not valid JSON becomes an open object.
pub fn to_llm_tool(spec: &ToolSpec) -> LlmTool {
    LlmTool {
        name: spec.name.clone(),
        description: spec.description.clone(),
        parameters: serde_json::from_str(&spec.parameters_json_schema)
            .unwrap_or_else(|_| serde_json::json!({"type": "object"})),
    }
}

/// Text of a result for the model: the output, or the error with its kind.
pub fn result_text(r: &ToolResult) -> (bool, String) {
    match &r.outcome {
        Some(tool_result::Outcome::Output(o)) => (true, o.clone()),
        Some(tool_result::Outcome::Error(e)) => {
            let kind = ToolErrorKind::try_from(e.kind)
                .map(|k| {
                    k.as_str_name()
                        .trim_start_matches("TOOL_ERROR_KIND_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|_| "error".into());
            let retry = if e.retryable {
                " (may succeed if retried)"
            } else {
                ""
            };
            (false, format!("ERROR [{kind}]{retry}: {}", e.message))
        }
        None => (false, "ERROR: the tool returned nothing".into()),
    }
}
