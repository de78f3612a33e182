//! The tool protocol's two encodings. Protobuf (`ToolCall`, `ToolResult`,
//! `ToolAnnouncement` of `tool.proto`) is what Nexus's own providers speak; the
//! JSON form carries the same fields for providers in languages without protobuf
//! tooling. A JSON announcement (header `Content-Type: application/json`) makes
//! its tools' calls JSON too. `proto/TOOL_PROTOCOL.md` is the contract.

use std::collections::HashMap;

use async_nats::HeaderMap;
use bytes::Bytes;
use nexus_proto::v1::{
    ToolAnnouncement, ToolCall, ToolContext, ToolError, ToolResult, ToolSpec, tool_result,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::failure::ToolErrorKind;

/// Version of the protocol this crate speaks.
pub const PROTOCOL: u32 = 1;
/// Header naming the encoding of a payload; absent means protobuf.
pub const CONTENT_TYPE: &str = "Content-Type";
pub const JSON: &str = "application/json";
/// `ToolSpec.encoding` of a JSON provider.
pub const JSON_ENCODING: &str = "json";

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// The encoding a request or announcement says it has.
    pub fn of_headers(headers: Option<&HeaderMap>) -> Self {
        match headers.and_then(|h| h.get(CONTENT_TYPE)) {
            Some(v) if v.as_str().starts_with(JSON) => Self::Json,
            _ => Self::Protobuf,
        }
    }

    /// The encoding calls of this tool take.
    pub fn of_spec(spec: &ToolSpec) -> Self {
        if spec.encoding == JSON_ENCODING {
            Self::Json
        } else {
            Self::Protobuf
        }
    }

    /// Headers that say so (none for protobuf).
    pub fn headers(self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if self == Self::Json {
            h.insert(CONTENT_TYPE, JSON);
        }
        h
    }
}

#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct JsonContext {
    session_id: String,
    user_id: String,
    channel: String,
    chat_id: String,
    turn_id: String,
    approved: bool,
    /// The user's IANA time zone, when their profile names one.
    timezone: String,
}

#[derive(Serialize, Deserialize)]
struct JsonCall {
    #[serde(default)]
    call_id: String,
    #[serde(default)]
    name: String,
    /// The model's arguments object itself, not a string of it.
    #[serde(default)]
    arguments: serde_json::Value,
    #[serde(default)]
    context: Option<JsonContext>,
}

#[derive(Serialize, Deserialize)]
struct JsonError {
    kind: String,
    message: String,
    #[serde(default)]
    retryable: bool,
}

#[derive(Serialize, Deserialize)]
struct JsonResult {
    #[serde(default)]
    call_id: String,
    #[serde(default)]
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<JsonError>,
    #[serde(default)]
    truncated: bool,
    #[serde(default)]
    duration_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct JsonSpec {
    name: String,
    #[serde(default)]
    description: String,
    /// A JSON Schema object.
    #[serde(default)]
    parameters: serde_json::Value,
    #[serde(default)]
    requires_approval: bool,
    #[serde(default)]
    timeout_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct JsonAnnouncement {
    protocol: u32,
    provider: String,
    instance: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    specs: Vec<JsonSpec>,
    ttl_ms: u64,
    #[serde(default)]
    withdrawn: bool,
    #[serde(default)]
    status: HashMap<String, String>,
}

pub fn encode_call(call: &ToolCall, encoding: Encoding) -> Bytes {
    match encoding {
        Encoding::Protobuf => call.encode_to_vec().into(),
        Encoding::Json => {
            let arguments = serde_json::from_str(&call.arguments_json)
                .unwrap_or_else(|_| serde_json::Value::String(call.arguments_json.clone()));
            let context = call.context.as_ref().map(|c| JsonContext {
                session_id: c.session_id.clone(),
                user_id: c.user_id.clone(),
                channel: c.channel.clone(),
                chat_id: c.chat_id.clone(),
                turn_id: c.turn_id.clone(),
                approved: c.approved,
                timezone: c.timezone.clone(),
            });
            json_bytes(&JsonCall {
                call_id: call.call_id.clone(),
                name: call.name.clone(),
                arguments,
                context,
            })
        }
    }
}

pub fn decode_call(payload: &[u8], encoding: Encoding) -> Result<ToolCall, String> {
    match encoding {
        Encoding::Protobuf => ToolCall::decode(payload)
            .map_err(|e| format!("the request is not a valid ToolCall protobuf message: {e}")),
        Encoding::Json => {
            let c: JsonCall = serde_json::from_slice(payload)
                .map_err(|e| format!("the request is not a valid JSON tool call: {e}"))?;
            Ok(ToolCall {
                call_id: c.call_id,
                name: c.name,
                arguments_json: match c.arguments {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                },
                context: c.context.map(|c| ToolContext {
                    session_id: c.session_id,
                    user_id: c.user_id,
                    channel: c.channel,
                    chat_id: c.chat_id,
                    turn_id: c.turn_id,
                    approved: c.approved,
                    timezone: c.timezone,
                }),
            })
        }
    }
}

pub fn encode_result(result: &ToolResult, encoding: Encoding) -> Bytes {
    match encoding {
        Encoding::Protobuf => result.encode_to_vec().into(),
        Encoding::Json => {
            let (output, error) = match &result.outcome {
                Some(tool_result::Outcome::Output(o)) => (Some(o.clone()), None),
                Some(tool_result::Outcome::Error(e)) => (
                    None,
                    Some(JsonError {
                        kind: ToolErrorKind::from(e.kind()).as_str().to_owned(),
                        message: e.message.clone(),
                        retryable: e.retryable,
                    }),
                ),
                None => (Some(String::new()), None),
            };
            json_bytes(&JsonResult {
                call_id: result.call_id.clone(),
                name: result.name.clone(),
                output,
                error,
                truncated: result.truncated,
                duration_ms: result.duration_ms,
            })
        }
    }
}

pub fn decode_result(payload: &[u8], encoding: Encoding) -> Result<ToolResult, String> {
    match encoding {
        Encoding::Protobuf => ToolResult::decode(payload)
            .map_err(|e| format!("the answer is not a valid ToolResult: {e}")),
        Encoding::Json => {
            let r: JsonResult = serde_json::from_slice(payload)
                .map_err(|e| format!("the answer is not a valid JSON tool result: {e}"))?;
            let outcome = match (r.error, r.output) {
                (Some(e), _) => tool_result::Outcome::Error(ToolError {
                    kind: nexus_proto::v1::ToolErrorKind::from(ToolErrorKind::parse(&e.kind))
                        as i32,
                    message: e.message,
                    retryable: e.retryable,
                }),
                (None, Some(o)) => tool_result::Outcome::Output(o),
                (None, None) => {
                    return Err("the JSON tool result has neither output nor error".into());
                }
            };
            Ok(ToolResult {
                call_id: r.call_id,
                name: r.name,
                outcome: Some(outcome),
                truncated: r.truncated,
                duration_ms: r.duration_ms,
            })
        }
    }
}

pub fn encode_announcement(a: &ToolAnnouncement) -> Bytes {
    a.encode_to_vec().into()
}

/// Decodes an announcement in the encoding its headers name. Specs of a JSON
/// announcement are marked JSON, so calls to them are JSON as well.
pub fn decode_announcement(
    payload: &[u8],
    headers: Option<&HeaderMap>,
) -> Result<ToolAnnouncement, String> {
    match Encoding::of_headers(headers) {
        Encoding::Protobuf => {
            ToolAnnouncement::decode(payload).map_err(|e| format!("not a ToolAnnouncement: {e}"))
        }
        Encoding::Json => {
            let a: JsonAnnouncement = serde_json::from_slice(payload)
                .map_err(|e| format!("not a JSON tool announcement: {e}"))?;
            Ok(ToolAnnouncement {
                protocol: a.protocol,
                provider: a.provider.clone(),
                instance: a.instance,
                version: a.version.clone(),
                specs: a
                    .specs
                    .into_iter()
                    .map(|s| ToolSpec {
                        name: s.name,
                        description: s.description,
                        parameters_json_schema: if s.parameters.is_null() {
                            r#"{"type":"object","properties":{}}"#.to_owned()
                        } else {
                            s.parameters.to_string()
                        },
                        requires_approval: s.requires_approval,
                        // Unsaid means the runtime's default, not "no time at all".
                        timeout_ms: if s.timeout_ms == 0 {
                            crate::tool::DEFAULT_TIMEOUT.as_millis() as u64
                        } else {
                            s.timeout_ms
                        },
                        provider: format!("{}/{}", a.provider, a.version),
                        encoding: JSON_ENCODING.to_owned(),
                    })
                    .collect(),
                ttl_ms: a.ttl_ms,
                withdrawn: a.withdrawn,
                status: a.status,
            })
        }
    }
}

fn json_bytes<T: Serialize>(value: &T) -> Bytes {
    // Serializing these plain structs cannot fail; an empty body would be answered as invalid.
    serde_json::to_vec(value).unwrap_or_default().into()
}

#[cfg(test)]
pub(crate) mod fuzz;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_json_call_and_result_carry_what_the_protobuf_ones_do() {
        let call = ToolCall {
            call_id: "c1".into(),
            name: "weather".into(),
            arguments_json: r#"{"city":"Paris"}"#.into(),
            context: Some(ToolContext {
                session_id: "s".into(),
                user_id: "u".into(),
                approved: true,
                ..Default::default()
            }),
        };
        let bytes = encode_call(&call, Encoding::Json);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v["arguments"]["city"], "Paris",
            "arguments travel as an object"
        );
        let back = decode_call(&bytes, Encoding::Json).unwrap();
        assert_eq!(back.call_id, "c1");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&back.arguments_json).unwrap(),
            serde_json::json!({"city": "Paris"})
        );
        assert_eq!(back.context, call.context);

        let failed = decode_result(
            br#"{"call_id":"c1","error":{"kind":"upstream","message":"down","retryable":true}}"#,
            Encoding::Json,
        )
        .unwrap();
        let Some(tool_result::Outcome::Error(e)) = &failed.outcome else {
            panic!("{failed:?}")
        };
        assert_eq!(e.kind(), nexus_proto::v1::ToolErrorKind::Upstream);
        assert!(e.retryable);
        let ok = decode_result(br#"{"call_id":"c1","output":"18 C"}"#, Encoding::Json).unwrap();
        assert_eq!(
            ok.outcome,
            Some(tool_result::Outcome::Output("18 C".into()))
        );
        assert!(decode_result(br#"{"call_id":"c1"}"#, Encoding::Json).is_err());
        assert!(decode_result(b"junk", Encoding::Json).is_err());
        let again = decode_result(&encode_result(&ok, Encoding::Json), Encoding::Json).unwrap();
        assert_eq!(again, ok);
    }

    #[test]
    fn a_json_announcement_marks_its_tools_as_json() {
        let body = br#"{"protocol":1,"provider":"weather","instance":"w1","version":"0.1",
            "specs":[{"name":"weather","description":"d","parameters":{"type":"object"},"timeout_ms":5000}],
            "ttl_ms":6000}"#;
        let a = decode_announcement(body, Some(&Encoding::Json.headers())).unwrap();
        assert_eq!(a.specs[0].encoding, JSON_ENCODING);
        assert_eq!(a.specs[0].provider, "weather/0.1");
        assert_eq!(Encoding::of_spec(&a.specs[0]), Encoding::Json);
        assert!(
            decode_announcement(body, None).is_err(),
            "without the header it is protobuf"
        );
        let silent =
            br#"{"protocol":1,"provider":"p","instance":"i","specs":[{"name":"t"}],"ttl_ms":6000}"#;
        let a = decode_announcement(silent, Some(&Encoding::Json.headers())).unwrap();
        assert_eq!(
            a.specs[0].timeout_ms, 30_000,
            "no timeout means the default"
        );
    }
}
