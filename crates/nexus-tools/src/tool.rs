//! What a tool is: a typed [`Tool`] whose argument type gives the JSON Schema the
//! model sees, or a [`DynTool`] that brings its own schema (an MCP server's tool).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::failure::ToolFailure;

/// How long a call may run when the tool does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a tool is, for the model and for policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
    /// A person must say yes in the chat before each call.
    pub requires_approval: bool,
    /// How long one call may run.
    pub timeout: Duration,
}

/// Who is calling. Travels beside the arguments; the model never sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub session_id: String,
    pub user_id: String,
    pub channel: String,
    pub chat_id: String,
    pub turn_id: String,
    /// A person said yes to this exact call.
    pub approved: bool,
    /// The user's IANA time zone as their profile names it; empty when unknown.
    pub timezone: String,
}

/// A tool with typed arguments. Its schema is derived from `Args` (doc comments
/// become descriptions), so the two cannot drift apart.
///
/// ```text
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Args { /// The city, e.g. "Paris"
///               city: String }
/// ```
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    type Args: DeserializeOwned + JsonSchema + Send + 'static;
    /// The name the model calls it by; also the last token of `N.tool.<name>`.
    const NAME: &'static str;

    /// What it does, for the model: when to use it and what it returns.
    fn description(&self) -> String;
    fn timeout(&self) -> Duration {
        DEFAULT_TIMEOUT
    }
    fn requires_approval(&self) -> bool {
        false
    }
    /// Runs the call. The text returned is shown to the model (after the output cap).
    async fn call(&self, caller: &Caller, args: Self::Args) -> Result<String, ToolFailure>;
}

/// A tool as the runtime holds it: spec plus a call on untyped arguments.
#[async_trait]
pub trait DynTool: Send + Sync + 'static {
    fn spec(&self) -> Spec;
    /// Runs the call with the model's arguments object.
    async fn call_json(
        &self,
        caller: &Caller,
        args: serde_json::Value,
    ) -> Result<String, ToolFailure>;
}

/// Wraps a typed tool for the runtime.
pub fn typed<T: Tool>(tool: T) -> Arc<dyn DynTool> {
    Arc::new(Typed(tool))
}

struct Typed<T>(T);

#[async_trait]
impl<T: Tool> DynTool for Typed<T> {
    fn spec(&self) -> Spec {
        Spec {
            name: T::NAME.to_owned(),
            description: self.0.description(),
            parameters: schema_of::<T::Args>(),
            requires_approval: self.0.requires_approval(),
            timeout: self.0.timeout(),
        }
    }

    async fn call_json(
        &self,
        caller: &Caller,
        args: serde_json::Value,
    ) -> Result<String, ToolFailure> {
        let args: T::Args = parse_args(args)?;
        self.0.call(caller, args).await
    }
}

/// The JSON Schema of an arguments type, as providers' APIs take it: an object
/// schema without the `$schema` and `title` noise.
pub fn schema_of<A: JsonSchema>() -> serde_json::Value {
    let mut schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<A>()
        .to_value();
    if let Some(map) = schema.as_object_mut() {
        map.remove("$schema");
        map.remove("title");
        if !map.contains_key("properties") && map.get("type").is_some_and(|t| t == "object") {
            map.insert("properties".into(), serde_json::json!({}));
        }
    }
    schema
}

/// Parses the model's arguments object into a tool's typed arguments; the error
/// names the field, so the model can fix its call.
pub fn parse_args<T: DeserializeOwned>(args: serde_json::Value) -> Result<T, ToolFailure> {
    serde_json::from_value(args)
        .map_err(|e| ToolFailure::invalid_args(format!("invalid arguments: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    /// Says hello.
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct HelloArgs {
        /// Whom to greet, e.g. "Ada"
        name: String,
        /// How many times (default 1)
        times: Option<u32>,
    }

    struct Hello;

    #[async_trait]
    impl Tool for Hello {
        type Args = HelloArgs;
        const NAME: &'static str = "hello";
        fn description(&self) -> String {
            "Greets someone.".into()
        }
        async fn call(&self, _: &Caller, args: HelloArgs) -> Result<String, ToolFailure> {
            Ok(format!("hello {}", args.name).repeat(args.times.unwrap_or(1) as usize))
        }
    }

    #[test]
    fn the_schema_comes_from_the_argument_type_with_its_doc_comments() {
        let spec = typed(Hello).spec();
        assert_eq!(spec.name, "hello");
        let p = &spec.parameters;
        assert_eq!(p["type"], "object");
        assert_eq!(p["required"], json!(["name"]));
        assert_eq!(
            p["properties"]["name"]["description"],
            "Whom to greet, e.g. \"Ada\""
        );
        assert!(p["properties"]["times"].is_object());
        assert_eq!(p["additionalProperties"], json!(false));
        assert!(p.get("$schema").is_none() && p.get("title").is_none());
    }

    #[tokio::test]
    async fn arguments_are_parsed_into_the_type_and_bad_ones_name_the_field() {
        let tool = typed(Hello);
        let out = tool
            .call_json(&Caller::default(), json!({"name": "Ada", "times": 2}))
            .await
            .unwrap();
        assert_eq!(out, "hello Adahello Ada");
        let e = tool
            .call_json(&Caller::default(), json!({"nam": "Ada"}))
            .await
            .unwrap_err();
        assert_eq!(e.kind, crate::ToolErrorKind::InvalidArgs);
        assert!(e.message.contains("nam"), "{}", e.message);
    }
}
