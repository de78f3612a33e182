//! The tools agent-core can offer the model: live as their providers announce
//! them (`nexus_tools::ToolDirectory`), and called over `N.tool.<name>` in the
//! encoding each provider speaks — plus `message` and `spawn`, which agent-core
//! serves itself (they only queue an `OutboundMessage` or a task).
//!
//! Failures come back as data.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use nexus_bus::{Bus, BusError, TraceContext};
use nexus_common::{Config, domain::ToolName, shutdown::CancellationToken};
use nexus_proto::v1::{ToolCall, ToolError, ToolErrorKind, ToolResult, ToolSpec, tool_result};
use nexus_tools::wire::{self, Encoding};

use crate::{context::estimate_tokens, llm::LlmTool, message, tasks};

/// Tool specs by name.
pub type Specs = Arc<BTreeMap<String, ToolSpec>>;

/// The live tools and how to call them.
#[derive(Clone)]
pub struct ToolDirectory {
    bus: Bus,
    config: Arc<Config>,
    live: nexus_tools::ToolDirectory,
    offered: OfferCache,
}

impl ToolDirectory {
    /// Starts following the providers' announcements until `shutdown`.
    pub async fn start(
        bus: Bus,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) -> Result<Self, BusError> {
        let live = nexus_tools::ToolDirectory::start(&bus, shutdown).await?;
        Ok(Self {
            bus,
            config,
            live,
            offered: OfferCache::default(),
        })
    }

    /// The tools available now.
    pub async fn specs(&self) -> Specs {
        let mut specs = self.live.specs();
        if !self
            .config
            .tools
            .disabled
            .iter()
            .any(|d| d == message::NAME)
        {
            specs.insert(message::NAME.to_owned(), message::spec());
        }
        if self.config.subagents.max_depth > 0
            && !self.config.tools.disabled.iter().any(|d| d == tasks::NAME)
        {
            specs.insert(tasks::NAME.to_owned(), tasks::spec());
        }
        Arc::new(specs)
    }

    /// `specs` as the model is offered them, and the prompt tokens they take.
    pub fn offer(&self, specs: &Specs) -> (Arc<[LlmTool]>, u32) {
        self.offered.offer(specs)
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
        if spec.name == message::NAME {
            let turn_id = call
                .context
                .as_ref()
                .map(|c| c.turn_id.as_str())
                .unwrap_or("");
            let sent = match serde_json::from_str(&call.arguments_json) {
                Ok(arguments) => {
                    message::send(&self.bus, &self.config, turn_id, arguments, trace).await
                }
                Err(e) => Err(nexus_tools::ToolFailure::invalid_args(format!(
                    "arguments are not valid JSON: {e}"
                ))),
            };
            return ToolResult {
                call_id: call.call_id.clone(),
                name: call.name.clone(),
                outcome: Some(match sent {
                    Ok(text) => tool_result::Outcome::Output(text),
                    Err(failure) => tool_result::Outcome::Error(failure.into()),
                }),
                ..Default::default()
            };
        }
        let timeout = Duration::from_millis(spec.timeout_ms.max(1000)) + Duration::from_secs(2);
        let encoding = Encoding::of_spec(spec);
        let answer = self
            .bus
            .request_bytes(
                self.bus.subjects().tool(&name),
                wire::encode_call(&call, encoding),
                encoding.headers(),
                trace,
                Some(timeout),
            )
            .await
            .and_then(|bytes| {
                wire::decode_result(&bytes, encoding).map_err(|message| BusError::Decode {
                    what: "ToolResult",
                    message,
                })
            });
        match answer {
            Ok(mut r) => {
                r.call_id = call.call_id.clone();
                // A third-party provider may not cap its output; the model's context is ours.
                // Failures pass through as they came: the model must read them to fix its call.
                r.outcome = match r.outcome.take() {
                    Some(tool_result::Outcome::Output(text)) => {
                        let (text, cut) =
                            nexus_tools::cap_output(text, self.config.tools.max_output_bytes);
                        r.truncated |= cut;
                        Some(tool_result::Outcome::Output(text))
                    }
                    other => other,
                };
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

/// The last specs converted for the model. Converted again only when the live set
/// changes: parsing every schema on every turn cost about a tenth of agent-core's CPU
/// per turn (perf, `nexus-bench turns`).
#[derive(Clone, Default)]
struct OfferCache(Arc<Mutex<Option<Offer>>>);

struct Offer {
    specs: Specs,
    tools: Arc<[LlmTool]>,
    tokens: u32,
}

impl OfferCache {
    fn offer(&self, specs: &Specs) -> (Arc<[LlmTool]>, u32) {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = last.as_ref()
            && (Arc::ptr_eq(&o.specs, specs) || o.specs == *specs)
        {
            return (Arc::clone(&o.tools), o.tokens);
        }
        let tools: Arc<[LlmTool]> = specs.values().map(to_llm_tool).collect();
        let tokens = tools
            .iter()
            .map(|t| estimate_tokens(&t.parameters.to_string()) + estimate_tokens(&t.description))
            .sum();
        *last = Some(Offer {
            specs: Arc::clone(specs),
            tools: Arc::clone(&tools),
            tokens,
        });
        (tools, tokens)
    }
}

/// A spec as the model sees it. A schema that is not valid JSON becomes an open object.
fn to_llm_tool(spec: &ToolSpec) -> LlmTool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(schema: &str) -> Specs {
        let spec = |name: &str| ToolSpec {
            name: name.into(),
            description: format!("{name} things"),
            parameters_json_schema: schema.into(),
            ..Default::default()
        };
        Arc::new(BTreeMap::from([
            ("a".to_owned(), spec("a")),
            ("b".to_owned(), spec("b")),
        ]))
    }

    #[test]
    fn tools_are_converted_once_while_the_specs_stay_the_same() {
        let cache = OfferCache::default();
        let schema = r#"{"type":"object","properties":{"path":{"type":"string"}}}"#;
        let (first, tokens) = cache.offer(&specs(schema));
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].parameters["properties"]["path"]["type"], "string");
        let each = estimate_tokens(schema) + estimate_tokens("a things");
        assert_eq!(tokens, 2 * each);

        // Equal specs, built anew (as every turn does): the same conversion.
        let (again, again_tokens) = cache.offer(&specs(schema));
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(again_tokens, tokens);

        // A changed schema is converted afresh; one that is not JSON is an open object.
        let (changed, _) = cache.offer(&specs("not json"));
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(changed[0].parameters, serde_json::json!({"type": "object"}));
    }
}
