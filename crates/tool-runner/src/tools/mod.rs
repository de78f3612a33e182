//! The tools, one file each, all of one shape: a struct built from
//! `[tools]` config that implements [`Tool`], registered by name in [`ALL`].
//!
//! Tools reach files only through [`crate::sandbox`]; they must never call
//! `std::fs` with a path of their own making.

mod delete_file;
mod edit_file;
mod exec;
mod fetch_url;
mod grep_search;
mod list_dir;
mod read_file;
mod web_search;
mod write_file;

use std::{
    collections::BTreeMap,
    io::{self, BufRead, Read},
    sync::Arc,
};

use nexus_common::config::ToolsConfig;
use nexus_tools::{DynTool, Spec};

pub use self::web_search::BraveApi;
use crate::{error::ToolFailure, sandbox::Workspace};

/// What building a tool may use.
#[derive(Clone)]
pub struct ToolEnv {
    pub workspace: Arc<Workspace>,
    pub config: ToolsConfig,
    /// Brave Search for `web_search` (`BRAVE_API_KEY`, read once at start); `Err`
    /// says why it is not offered.
    pub brave: Result<BraveApi, String>,
}

impl ToolEnv {
    /// The same workspace with other `[tools]` settings.
    pub fn with_config(&self, config: ToolsConfig) -> Self {
        Self {
            workspace: self.workspace.clone(),
            config,
            brave: self.brave.clone(),
        }
    }
}

type Build = fn(&ToolEnv) -> Arc<dyn DynTool>;

/// Every tool tool-runner knows, by name. A new tool is one file and one line here.
pub const ALL: &[(&str, Build)] = &[
    (read_file::NAME, read_file::build),
    (write_file::NAME, write_file::build),
    (edit_file::NAME, edit_file::build),
    (list_dir::NAME, list_dir::build),
    (grep_search::NAME, grep_search::build),
    (delete_file::NAME, delete_file::build),
    (web_search::NAME, web_search::build),
    (fetch_url::NAME, fetch_url::build),
    (exec::NAME, exec::build),
];

/// Whether a tool can be offered here; `Err` says why not (`nexus status`).
type Offered = fn(&ToolEnv) -> Result<(), String>;

/// Tools offered only when what they need is there.
const CONDITIONS: &[(&str, Offered)] = &[
    (web_search::NAME, web_search::offered),
    (exec::NAME, exec::offered),
];

/// The tools this process serves: all of [`ALL`] minus `[tools] disabled`.
pub struct Registry {
    tools: BTreeMap<&'static str, (Spec, Arc<dyn DynTool>)>,
    disabled: Vec<&'static str>,
    not_offered: Vec<(&'static str, String)>,
}

impl Registry {
    pub fn build(env: &ToolEnv) -> Self {
        let config = &env.config;
        for name in &config.disabled {
            // `<server>__<tool>` names an MCP tool (checked when the server lists them);
            // `message`, `remember`, `memory_search` belong to other providers.
            let elsewhere = name.contains("__")
                || ["message", "remember", "memory_search"].contains(&name.as_str());
            if !elsewhere && !ALL.iter().any(|(n, _)| n == name) {
                tracing::warn!(tool = %name, "[tools] disabled names a tool that does not exist");
            }
        }
        let mut tools = BTreeMap::new();
        let mut disabled = Vec::new();
        let mut not_offered = Vec::new();
        for (name, build) in ALL {
            if config.disabled.iter().any(|d| d == name) {
                disabled.push(*name);
                continue;
            }
            let condition = CONDITIONS.iter().find(|(n, _)| n == name);
            if let Some(Err(why)) = condition.map(|(_, offered)| offered(env)) {
                not_offered.push((*name, why));
                continue;
            }
            let tool = build(env);
            tools.insert(*name, (tool.spec(), tool));
        }
        Self {
            tools,
            disabled,
            not_offered,
        }
    }

    /// Served tools in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&Spec, &Arc<dyn DynTool>)> {
        self.tools.values().map(|(s, t)| (s, t))
    }

    pub fn get(&self, name: &str) -> Option<(&Spec, &Arc<dyn DynTool>)> {
        self.tools.get(name).map(|(s, t)| (s, t))
    }

    /// Known tools switched off by config.
    pub fn disabled(&self) -> &[&'static str] {
        &self.disabled
    }

    /// Known tools that cannot be offered here, and why.
    pub fn not_offered(&self) -> &[(&'static str, String)] {
        &self.not_offered
    }
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
mod fuzz;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod testing {
    use nexus_tools::Caller;

    use super::*;
    use crate::{error::ToolErrorKind, sandbox::tests::World};

    /// A world (workspace + outside secret) and what tools are built from in it.
    pub(crate) fn world() -> (World, ToolEnv) {
        let world = World::new();
        let env = ToolEnv {
            workspace: Arc::new(Workspace::open(world.dir.path()).unwrap()),
            config: ToolsConfig::default(),
            brave: Err("BRAVE_API_KEY is not set".into()),
        };
        (world, env)
    }

    pub(crate) async fn ok(tool: &dyn DynTool, args: serde_json::Value) -> String {
        match tool.call_json(&Caller::default(), args.clone()).await {
            Ok(out) => out,
            Err(e) => panic!("{} {args} failed: {e:?}", tool.spec().name),
        }
    }

    pub(crate) async fn fails(
        tool: &dyn DynTool,
        args: serde_json::Value,
        kind: ToolErrorKind,
    ) -> String {
        match tool.call_json(&Caller::default(), args.clone()).await {
            Err(e) if e.kind == kind => e.message,
            other => panic!(
                "{} {args}: expected {kind:?}, got {other:?}",
                tool.spec().name
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_builds_every_tool_except_the_disabled_ones() {
        let (_w, env) = testing::world();
        let all = Registry::build(&env);
        let names: Vec<_> = all.iter().map(|(s, _)| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "delete_file",
                "edit_file",
                "fetch_url",
                "grep_search",
                "list_dir",
                "read_file",
                "write_file"
            ]
        );
        let not_offered = all.not_offered();
        assert_eq!(
            not_offered[0],
            ("web_search", "BRAVE_API_KEY is not set".to_owned())
        );
        // No nexus-sandbox helper beside the unit-test binary.
        assert_eq!(not_offered[1].0, "exec");
        assert!(
            not_offered[1].1.contains("nexus-sandbox"),
            "{not_offered:?}"
        );
        let keyed = ToolEnv {
            brave: BraveApi::new(Some("k".into()), None),
            ..env.clone()
        };
        assert!(Registry::build(&keyed).get("web_search").is_some());
        let config = ToolsConfig {
            disabled: vec!["delete_file".into(), "nonexistent".into()],
            ..Default::default()
        };
        let some = Registry::build(&env.with_config(config));
        assert!(some.get("delete_file").is_none());
        assert_eq!(some.disabled(), ["delete_file"]);
        assert_eq!(some.iter().count(), 6);
    }

    #[test]
    fn every_spec_has_an_object_schema_and_a_timeout() {
        let (_w, env) = testing::world();
        for (spec, _) in Registry::build(&env).iter() {
            assert_eq!(spec.parameters["type"], "object", "{}", spec.name);
            assert!(spec.parameters["properties"].is_object(), "{}", spec.name);
            assert!(!spec.timeout.is_zero(), "{}", spec.name);
            assert!(!spec.description.is_empty(), "{}", spec.name);
            assert_eq!(spec.requires_approval, spec.name == "delete_file");
        }
    }
}
