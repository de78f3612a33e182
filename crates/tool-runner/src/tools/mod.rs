//! The tools, one file each, all of one shape: a struct built from
//! `[tools]` config that implements [`Tool`], registered by name in [`ALL`].
//!
//! Tools reach files only through [`crate::sandbox`]; they must never call
//! `std::fs` with a path of their own making.

mod delete_file;
mod edit_file;
mod grep_search;
mod list_dir;
mod read_file;
mod write_file;

use std::{
    collections::BTreeMap,
    io::{self, BufRead, Read},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use nexus_common::config::ToolsConfig;
use serde::de::DeserializeOwned;

use crate::{error::ToolFailure, sandbox::Workspace};

/// What a tool is, for the model and for policy. Converted to the protobuf
/// `ToolSpec` only when published.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: &'static str,
    pub description: &'static str,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
    /// A human must say yes before each call.
    pub requires_approval: bool,
    /// How long one call may run.
    pub timeout: Duration,
}

/// Who is calling. Travels beside the arguments; the model never sees it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub session_id: String,
    pub user_id: String,
    pub turn_id: String,
}

/// Everything a call may use besides its arguments.
#[derive(Debug, Clone)]
pub struct ToolCtx {
    pub workspace: Arc<Workspace>,
    pub caller: Caller,
}

/// One tool.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    fn spec(&self) -> Spec;
    /// Runs the tool. The text returned is shown to the model (after the size cap).
    async fn call(&self, ctx: &ToolCtx, args: serde_json::Value) -> Result<String, ToolFailure>;
}

type Build = fn(&ToolsConfig) -> Arc<dyn Tool>;

/// Every tool tool-runner knows, by name.
pub const ALL: &[(&str, Build)] = &[
    (read_file::NAME, read_file::build),
    (write_file::NAME, write_file::build),
    (edit_file::NAME, edit_file::build),
    (list_dir::NAME, list_dir::build),
    (grep_search::NAME, grep_search::build),
    (delete_file::NAME, delete_file::build),
];

/// The tools this process serves: all of [`ALL`] minus `[tools] disabled`.
pub struct Registry {
    tools: BTreeMap<&'static str, (Spec, Arc<dyn Tool>)>,
    disabled: Vec<&'static str>,
}

impl Registry {
    pub fn from_config(config: &ToolsConfig) -> Self {
        for name in &config.disabled {
            if !ALL.iter().any(|(n, _)| n == name) {
                tracing::warn!(tool = %name, "[tools] disabled names a tool that does not exist");
            }
        }
        let mut tools = BTreeMap::new();
        let mut disabled = Vec::new();
        for (name, build) in ALL {
            if config.disabled.iter().any(|d| d == name) {
                disabled.push(*name);
                continue;
            }
            let tool = build(config);
            tools.insert(*name, (tool.spec(), tool));
        }
        Self { tools, disabled }
    }

    /// Served tools in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&Spec, &Arc<dyn Tool>)> {
        self.tools.values().map(|(s, t)| (s, t))
    }

    pub fn get(&self, name: &str) -> Option<(&Spec, &Arc<dyn Tool>)> {
        self.tools.get(name).map(|(s, t)| (s, t))
    }

    /// Known tools switched off by config.
    pub fn disabled(&self) -> &[&'static str] {
        &self.disabled
    }
}

/// Parses the arguments object into a tool's typed arguments.
fn parse_args<T: DeserializeOwned>(args: serde_json::Value) -> Result<T, ToolFailure> {
    serde_json::from_value(args)
        .map_err(|e| ToolFailure::invalid_args(format!("invalid arguments: {e}")))
}

/// Runs filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ToolFailure> + Send + 'static,
) -> Result<T, ToolFailure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ToolFailure::internal(format!("the tool stopped unexpectedly: {e}")))?
}

/// Bytes sniffed to tell text from binary.
const SNIFF_BYTES: usize = 8192;

/// Binary files hold NUL bytes early on; text files (any UTF-8 or Latin-1) do not.
fn looks_binary(head: &[u8]) -> bool {
    head[..head.len().min(SNIFF_BYTES)].contains(&0)
}

/// Reads a whole file whose size was checked, refusing binary content.
fn read_text(
    opened: crate::sandbox::OpenedFile,
    shown: &str,
    max_bytes: u64,
) -> Result<String, ToolFailure> {
    if opened.len > max_bytes {
        return Err(ToolFailure::invalid_args(format!(
            "'{shown}' is {} bytes, more than the {max_bytes}-byte limit for a whole file",
            opened.len
        )));
    }
    let mut bytes = Vec::with_capacity(opened.len as usize);
    // `take` guards against a file that grows while being read.
    opened
        .file
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ToolFailure::internal(format!("cannot read '{shown}': {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(ToolFailure::invalid_args(format!(
            "'{shown}' grew beyond the {max_bytes}-byte limit while it was read"
        )));
    }
    if looks_binary(&bytes) {
        return Err(binary_refusal(shown));
    }
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Reads one line (with its `\n`) into `out`, keeping at most `cap` bytes of it
/// so one huge line cannot fill memory. Returns false at the end of the file.
fn next_line(r: &mut impl BufRead, out: &mut Vec<u8>, cap: usize) -> io::Result<bool> {
    out.clear();
    let mut any = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(any);
        }
        any = true;
        let (len, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&buf[..len.min(room)]);
        r.consume(len);
        if done {
            return Ok(true);
        }
    }
}

fn binary_refusal(shown: &str) -> ToolFailure {
    ToolFailure::invalid_args(format!(
        "'{shown}' looks like a binary file (it contains NUL bytes); only text files can be read or edited"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod testing {
    use super::*;
    use crate::{error::ToolErrorKind, sandbox::tests::World};

    /// A world (workspace + outside secret) and a context for calls in it.
    pub(crate) fn world() -> (World, ToolCtx) {
        let world = World::new();
        let ctx = ToolCtx {
            workspace: Arc::new(Workspace::open(world.dir.path()).unwrap()),
            caller: Caller::default(),
        };
        (world, ctx)
    }

    pub(crate) async fn ok(tool: &dyn Tool, ctx: &ToolCtx, args: serde_json::Value) -> String {
        match tool.call(ctx, args.clone()).await {
            Ok(out) => out,
            Err(e) => panic!("{} {args} failed: {e:?}", tool.spec().name),
        }
    }

    pub(crate) async fn fails(
        tool: &dyn Tool,
        ctx: &ToolCtx,
        args: serde_json::Value,
        kind: ToolErrorKind,
    ) -> String {
        match tool.call(ctx, args.clone()).await {
            Err(e) if e.kind == kind => e.message,
            other => panic!(
                "{} {args}: expected {kind:?}, got {other:?}",
                tool.spec().name
            ),
        }
    }

    pub(crate) fn config() -> ToolsConfig {
        ToolsConfig::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_builds_every_tool_except_the_disabled_ones() {
        let all = Registry::from_config(&ToolsConfig::default());
        let names: Vec<_> = all.iter().map(|(s, _)| s.name).collect();
        assert_eq!(
            names,
            [
                "delete_file",
                "edit_file",
                "grep_search",
                "list_dir",
                "read_file",
                "write_file"
            ]
        );
        let config = ToolsConfig {
            disabled: vec!["delete_file".into(), "nonexistent".into()],
            ..Default::default()
        };
        let some = Registry::from_config(&config);
        assert!(some.get("delete_file").is_none());
        assert_eq!(some.disabled(), ["delete_file"]);
        assert_eq!(some.iter().count(), 5);
    }

    #[test]
    fn every_spec_has_an_object_schema_and_a_timeout() {
        for (spec, _) in Registry::from_config(&ToolsConfig::default()).iter() {
            assert_eq!(spec.parameters["type"], "object", "{}", spec.name);
            assert!(spec.parameters["properties"].is_object(), "{}", spec.name);
            assert!(!spec.timeout.is_zero(), "{}", spec.name);
            assert!(!spec.description.is_empty(), "{}", spec.name);
            assert_eq!(spec.requires_approval, spec.name == "delete_file");
        }
    }
}
