//! Property tests of what callers and providers send: tool calls, results and
//! announcements in both encodings decode or fail with a message, and a decoded call
//! runs through [`execute`] into a typed tool whose arguments are any JSON at all:
//! the result is always a `ToolResult`, an `invalid_args` failure for arguments that do
//! not fit, never a panic. `PROPTEST_CASES` sets the count.

use nexus_testkit::fuzz::{self, config};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;
use crate::{Caller, Spec, Tool, ToolErrorKind, ToolFailure, execute, typed};

/// Any JSON value, nested a few levels.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    fuzz::json_value("[a-z_]{0,12}", 3, 6)
}

/// An arguments object: the typed tool's own fields with any values, and strays.
fn arguments() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec!["name", "times", "ratio", "tags", "mode", "stray"]);
    prop_oneof![
        json_value(),
        prop::collection::btree_map(field, json_value(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
    ]
}

/// A tool whose arguments use the shapes tools' arguments have.
struct Echo;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct EchoArgs {
    name: String,
    times: Option<u32>,
    #[serde(default)]
    ratio: f64,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    mode: Mode,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Plain,
    Loud,
}

#[async_trait::async_trait]
impl Tool for Echo {
    type Args = EchoArgs;
    const NAME: &'static str = "echo";
    fn description(&self) -> String {
        "Echoes.".into()
    }
    async fn call(&self, _: &Caller, args: EchoArgs) -> Result<String, ToolFailure> {
        let EchoArgs {
            name,
            times,
            ratio,
            tags,
            mode,
        } = args;
        Ok(format!(
            "EchoArgs {name} {times:?} {ratio} {tags:?} {mode:?}"
        ))
    }
}

/// Runs a decoded call into [`Echo`]; the result is always one `ToolResult`.
fn run(call: ToolCall) -> ToolResult {
    let tool = typed(Echo);
    let spec: Spec = tool.spec();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(execute(tool.as_ref(), &spec, call, 1000))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_random_payloads_decode_or_fail_with_a_message(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for encoding in [Encoding::Protobuf, Encoding::Json] {
            if let Err(e) = decode_call(&bytes, encoding) {
                prop_assert!(!e.is_empty());
            }
            if let Err(e) = decode_result(&bytes, encoding) {
                prop_assert!(!e.is_empty());
            }
            let headers = encoding.headers();
            if let Ok(a) = decode_announcement(&bytes, Some(&headers)) {
                let _ = encode_announcement(&a);
            }
        }
    }

    #[test]
    fn fuzz_json_calls_with_any_arguments_give_a_result(
        arguments in arguments(),
        name in prop_oneof![Just("echo".to_owned()), Just(String::new()), any::<String>()],
        context in prop::option::of(json_value()),
    ) {
        let mut doc = json!({"call_id": "c1", "name": name, "arguments": arguments});
        if let Some(c) = context {
            doc["context"] = c;
        }
        let Ok(call) = decode_call(doc.to_string().as_bytes(), Encoding::Json) else {
            return Ok(());
        };
        // The same call over protobuf decodes to the same thing.
        let again = decode_call(&encode_call(&call, Encoding::Protobuf), Encoding::Protobuf).unwrap();
        prop_assert_eq!(&again, &call);
        let result = run(call.clone());
        prop_assert_eq!(&result.call_id, &call.call_id);
        match result.outcome {
            Some(tool_result::Outcome::Output(out)) => prop_assert!(out.starts_with("EchoArgs")),
            Some(tool_result::Outcome::Error(e)) => {
                prop_assert_eq!(ToolErrorKind::from(e.kind()), ToolErrorKind::InvalidArgs);
                prop_assert!(!e.message.is_empty());
            }
            None => prop_assert!(false, "a result without an outcome"),
        }
    }

    #[test]
    fn fuzz_argument_text_of_protobuf_calls_gives_a_result(arguments_json in prop_oneof![
        any::<String>(),
        json_value().prop_map(|v| v.to_string()),
        "[ \\{\\}\\[\\]\":,a-z0-9]{0,40}",
    ]) {
        let call = ToolCall { call_id: "c2".into(), name: "echo".into(), arguments_json, context: None };
        let call = decode_call(&encode_call(&call, Encoding::Protobuf), Encoding::Protobuf).unwrap();
        let result = run(call);
        prop_assert!(result.outcome.is_some());
    }

    #[test]
    fn fuzz_json_results_and_announcements_decode_or_fail(
        doc in json_value(),
        seed in prop::sample::select(vec![
            json!({"call_id": "c", "name": "t", "output": "ok", "truncated": false, "duration_ms": 3}),
            json!({"call_id": "c", "error": {"kind": "timeout", "message": "slow", "retryable": true}}),
            json!({"protocol": 1, "provider": "p", "instance": "i", "version": "1", "ttl_ms": 6000,
                   "specs": [{"name": "t", "description": "d", "parameters": {"type": "object"}, "timeout_ms": 0}],
                   "status": {"mcp x": "ok"}}),
        ]),
        field in "[a-z_]{1,12}",
    ) {
        // A seed with one member set to any value, and any document on its own.
        let mut edited = seed;
        if let Some(map) = edited.as_object_mut() {
            let key = map.keys().find(|k| k.starts_with(&field[..1])).cloned().unwrap_or(field);
            map.insert(key, doc.clone());
        }
        let json = Encoding::Json.headers();
        for payload in [doc.to_string(), edited.to_string()] {
            if let Ok(r) = decode_result(payload.as_bytes(), Encoding::Json) {
                prop_assert!(r.outcome.is_some());
                let _ = encode_result(&r, Encoding::Json);
            }
            if let Ok(a) = decode_announcement(payload.as_bytes(), Some(&json)) {
                for spec in &a.specs {
                    prop_assert!(spec.timeout_ms > 0);
                    prop_assert!(serde_json::from_str::<Value>(&spec.parameters_json_schema).is_ok());
                }
            }
        }
    }
}
