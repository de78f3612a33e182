//! One tool of an MCP server as the runtime holds it: `<server>__<tool>` with the
//! server's own input schema, called over the server's live connection.
//!
//! It must never wait on the server longer than its timeout, and never show the
//! model raw binary content (images, audio, blobs are described, not dumped).

use std::time::Duration;

use async_trait::async_trait;
use nexus_common::domain::ToolName;
use nexus_tools::{Caller, DynTool, Spec, ToolFailure};
use rmcp::{
    Peer, RoleClient, ServiceError,
    model::{CallToolRequestParams, CallToolResult, ContentBlock, ErrorCode, ResourceContents},
};
use serde_json::Value;

/// Added to the call timeout in the spec, so the runtime's own timeout (and
/// agent-core's) fires after ours, whose message names the server.
const SPEC_GRACE: Duration = Duration::from_secs(1);

/// A tool of one connected MCP server.
pub(super) struct McpTool {
    spec: Spec,
    server: String,
    /// The name the server knows it by.
    remote: String,
    peer: Peer<RoleClient>,
    timeout: Duration,
}

impl McpTool {
    /// The tool as Nexus offers it, or why its name cannot be a Nexus tool name.
    pub(super) fn new(
        server: &str,
        tool: &rmcp::model::Tool,
        peer: Peer<RoleClient>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let name = nexus_name(server, &tool.name)?;
        let description = tool
            .description
            .as_deref()
            .or(tool.title.as_deref())
            .filter(|d| !d.trim().is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{} from the MCP server '{server}'", tool.name));
        Ok(Self {
            spec: Spec {
                name,
                description,
                parameters: parameters(&tool.input_schema),
                requires_approval: false,
                timeout: timeout + SPEC_GRACE,
            },
            server: server.to_owned(),
            remote: tool.name.to_string(),
            peer,
            timeout,
        })
    }

    /// The same tool, needing a person's yes before each call or not.
    pub(super) fn requiring_approval(mut self, yes: bool) -> Self {
        self.spec.requires_approval = yes;
        self
    }
}

/// `<server>__<tool>`, if that is a valid tool name.
pub(super) fn nexus_name(server: &str, tool: &str) -> Result<String, String> {
    let name = format!("{server}__{tool}");
    ToolName::parse(&name)
        .map(|n| n.as_str().to_owned())
        .map_err(|e| e.to_string())
}

/// The server's input schema as providers take it: an object schema, without
/// the `$schema` and `title` noise (as `nexus_tools::schema_of` does for ours).
fn parameters(schema: &rmcp::model::JsonObject) -> Value {
    let mut schema = schema.clone();
    schema.remove("$schema");
    schema.remove("title");
    schema
        .entry("type")
        .or_insert_with(|| Value::String("object".into()));
    schema
        .entry("properties")
        .or_insert_with(|| Value::Object(Default::default()));
    Value::Object(schema)
}

#[async_trait]
impl DynTool for McpTool {
    fn spec(&self) -> Spec {
        self.spec.clone()
    }

    async fn call_json(&self, _caller: &Caller, args: Value) -> Result<String, ToolFailure> {
        let Value::Object(arguments) = args else {
            return Err(ToolFailure::invalid_args("arguments must be a JSON object"));
        };
        let params = CallToolRequestParams::new(self.remote.clone()).with_arguments(arguments);
        // rmcp has no timeout of its own; dropping the call on timeout sends the
        // server a cancellation.
        match tokio::time::timeout(self.timeout, self.peer.call_tool(params)).await {
            Ok(Ok(result)) => outcome(&self.server, result),
            Ok(Err(error)) => Err(failure(&self.server, &self.remote, error)),
            Err(_) => Err(ToolFailure::timeout(format!(
                "the MCP server '{}' did not answer {} within {} s",
                self.server,
                self.remote,
                self.timeout.as_secs_f64()
            ))),
        }
    }
}

/// A result's content as text; `isError` makes it a failure with the server's words.
fn outcome(server: &str, result: CallToolResult) -> Result<String, ToolFailure> {
    let mut text = result
        .content
        .iter()
        .map(describe)
        .collect::<Vec<_>>()
        .join("\n");
    if text.is_empty()
        && let Some(structured) = &result.structured_content
    {
        text = structured.to_string();
    }
    if result.is_error == Some(true) {
        if text.trim().is_empty() {
            text = format!("the MCP server '{server}' reported an error without a message");
        }
        // The server looked at the arguments and said no: the same call fails again.
        return Err(ToolFailure::upstream(text).retryable(false));
    }
    Ok(text)
}

/// One content block as text: text as is, anything else named with its size.
fn describe(block: &ContentBlock) -> String {
    match block {
        ContentBlock::Text(t) => t.text.clone(),
        ContentBlock::Image(i) => {
            format!("[image: {}, {} bytes]", i.mime_type, decoded_len(&i.data))
        }
        ContentBlock::Audio(a) => {
            format!("[audio: {}, {} bytes]", a.mime_type, decoded_len(&a.data))
        }
        ContentBlock::Resource(r) => match &r.resource {
            ResourceContents::TextResourceContents { uri, text, .. } => {
                format!("[resource {uri}]\n{text}")
            }
            ResourceContents::BlobResourceContents {
                uri,
                mime_type,
                blob,
                ..
            } => format!(
                "[resource {uri}: {}, {} bytes]",
                mime_type.as_deref().unwrap_or("binary"),
                decoded_len(blob)
            ),
            _ => "[resource]".into(),
        },
        ContentBlock::ResourceLink(link) => match &link.mime_type {
            Some(mime) => format!("[resource link: {} ({}, {mime})]", link.uri, link.name),
            None => format!("[resource link: {} ({})]", link.uri, link.name),
        },
        _ => "[content of a type Nexus does not show]".into(),
    }
}

/// Bytes that base64 `data` stands for.
fn decoded_len(data: &str) -> usize {
    let data = data.trim_end();
    let padding = data.bytes().rev().take_while(|&b| b == b'=').count();
    (data.len() * 3 / 4).saturating_sub(padding)
}

/// A call that got no result: the server refused it, or the connection failed.
fn failure(server: &str, tool: &str, error: ServiceError) -> ToolFailure {
    match error {
        ServiceError::McpError(e) if e.code == ErrorCode::INVALID_PARAMS => {
            ToolFailure::invalid_args(format!("{}", e.message))
        }
        ServiceError::McpError(e) if e.code == ErrorCode::METHOD_NOT_FOUND => {
            ToolFailure::not_found(format!(
                "the MCP server '{server}' does not know {tool}: {}",
                e.message
            ))
        }
        ServiceError::McpError(e) => ToolFailure::upstream(format!(
            "the MCP server '{server}' refused the call: {} (error {})",
            e.message, e.code.0
        ))
        .retryable(false),
        ServiceError::Timeout { .. } => ToolFailure::timeout(format!(
            "the MCP server '{server}' did not answer {tool} in time"
        )),
        // Closed or broken: the supervisor restarts the server, so a later try may work.
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
            ToolFailure::upstream(format!(
                "the MCP server '{server}' is not connected (it stopped or its connection failed); \
                 it is being restarted, try again in a few seconds"
            ))
        }
        other => ToolFailure::upstream(format!(
            "the MCP server '{server}' failed to answer {tool}: {other}"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use nexus_tools::ToolErrorKind;
    use rmcp::model::Resource;
    use serde_json::json;

    use super::*;

    fn result(content: Vec<ContentBlock>, is_error: bool) -> CallToolResult {
        let mut r = CallToolResult::success(content);
        r.is_error = Some(is_error);
        r
    }

    #[test]
    fn text_is_joined_and_other_content_is_described_with_its_size() {
        let r = result(
            vec![
                ContentBlock::text("first"),
                ContentBlock::image("aGVsbG8=", "image/png"),
                ContentBlock::text("second"),
                ContentBlock::ResourceLink(Resource::new("file:///a.txt", "a.txt")),
            ],
            false,
        );
        assert_eq!(
            outcome("s", r).unwrap(),
            "first\n[image: image/png, 5 bytes]\nsecond\n[resource link: file:///a.txt (a.txt)]"
        );
    }

    #[test]
    fn an_error_result_is_an_upstream_failure_with_the_servers_text_that_is_not_retried() {
        let e = outcome(
            "time",
            result(vec![ContentBlock::text("Invalid timezone")], true),
        )
        .unwrap_err();
        assert_eq!(e.kind, ToolErrorKind::Upstream);
        assert!(!e.retryable);
        assert_eq!(e.message, "Invalid timezone");
        let e = outcome("time", result(vec![], true)).unwrap_err();
        assert!(e.message.contains("without a message"), "{}", e.message);
    }

    #[test]
    fn structured_content_stands_in_for_missing_text() {
        let mut r = result(vec![], false);
        r.structured_content = Some(json!({"sum": 3}));
        assert_eq!(outcome("s", r).unwrap(), r#"{"sum":3}"#);
    }

    #[test]
    fn names_are_prefixed_with_the_server_and_invalid_ones_refused() {
        assert_eq!(
            nexus_name("time", "convert_time").unwrap(),
            "time__convert_time"
        );
        assert_eq!(nexus_name("every", "get-sum").unwrap(), "every__get-sum");
        assert!(nexus_name("s", "has.dot").is_err());
        assert!(nexus_name("s", "has space").is_err());
        assert!(nexus_name("s", &"x".repeat(70)).is_err());
    }

    #[test]
    fn the_schema_is_the_servers_as_an_object_schema() {
        let schema = json!({"$schema": "x", "title": "T", "type": "object",
            "properties": {"a": {"type": "string"}}, "required": ["a"]});
        let p = parameters(schema.as_object().unwrap());
        assert_eq!(
            p,
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
        );
        let p = parameters(json!({}).as_object().unwrap());
        assert_eq!(p, json!({"type": "object", "properties": {}}));
    }
}
