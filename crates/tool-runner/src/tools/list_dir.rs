//! `list_dir`: the entries of a workspace directory, optionally recursive.
//!
//! It must never follow a symlink (they are listed with `@`, not entered) and
//! never show `.nexus/`.

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use async_trait::async_trait;
use nexus_tools::{Caller, DynTool, Tool, typed};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ToolEnv, blocking};
use crate::{
    error::ToolFailure,
    sandbox::{EntryKind, Workspace},
};

pub const NAME: &str = "list_dir";

/// Entries listed when the model does not say.
const DEFAULT_MAX_ENTRIES: usize = 500;
/// Entries listed at most, whatever the model asks.
const MAX_ENTRIES: usize = 5000;

pub fn build(env: &ToolEnv) -> Arc<dyn DynTool> {
    typed(ListDir {
        ws: env.workspace.clone(),
    })
}

pub struct ListDir {
    ws: Arc<Workspace>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// Directory relative to the workspace
    #[serde(default = "dot")]
    path: String,
    /// Also list subdirectories
    #[serde(default)]
    recursive: bool,
    /// Entries to list at most (default 500)
    #[schemars(range(min = 1, max = MAX_ENTRIES))]
    max_entries: Option<usize>,
}

fn dot() -> String {
    ".".to_owned()
}

#[async_trait]
impl Tool for ListDir {
    type Args = Args;
    const NAME: &'static str = NAME;

    fn description(&self) -> String {
        "List a directory of the workspace, sorted by name. Directories end with \
         '/', symbolic links with '@'. Paths shown are relative to the workspace."
            .into()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(15)
    }

    async fn call(&self, _: &Caller, args: Args) -> Result<String, ToolFailure> {
        let max = args
            .max_entries
            .unwrap_or(DEFAULT_MAX_ENTRIES)
            .clamp(1, MAX_ENTRIES);
        let ws = self.ws.clone();
        blocking(move || {
            let dir = ws.resolve(&args.path)?;
            let mut lines = Vec::new();
            let mut capped = false;
            ws.walk(&dir, args.recursive, &mut |entry| {
                if lines.len() == max {
                    capped = true;
                    return ControlFlow::Break(());
                }
                let mut line = entry.rel().display().to_string();
                match entry.kind {
                    EntryKind::Dir => line.push('/'),
                    EntryKind::Symlink => line.push('@'),
                    EntryKind::File | EntryKind::Other => {}
                }
                lines.push(line);
                ControlFlow::Continue(())
            })?;
            if lines.is_empty() {
                return Ok(format!("('{}' is empty)", dir.shown()));
            }
            let mut out = lines.join("\n");
            if capped {
                out.push_str(&format!(
                    "\n[listing stopped after {max} entries; list a subdirectory or raise max_entries (at most {MAX_ENTRIES})]"
                ));
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        error::ToolErrorKind,
        tools::testing::{fails, ok, world},
    };

    #[tokio::test]
    async fn the_root_is_listed_sorted_with_directories_marked() {
        let (w, ctx) = world();
        w.write("b.md", "");
        w.write("a/x.txt", "");
        w.write(".nexus/nexus.db", "");
        let tool = build(&ctx);
        assert_eq!(ok(&*tool, json!({})).await, "a/\nb.md");
        assert_eq!(
            ok(&*tool, json!({"recursive": true})).await,
            "a/\na/x.txt\nb.md"
        );
        assert_eq!(ok(&*tool, json!({"path": "a"})).await, "a/x.txt");
    }

    #[tokio::test]
    async fn symlinks_are_marked_and_not_entered() {
        let (w, ctx) = world();
        w.plant_escapes();
        let tool = build(&ctx);
        let out = ok(&*tool, json!({"recursive": true})).await;
        assert_eq!(out, "hard\nlink-dir@\nlink-file@");
        fails(&*tool, json!({"path": "link-dir"}), ToolErrorKind::Denied).await;
        let name = w
            .outside
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        fails(
            &*tool,
            json!({"path": format!("../{name}")}),
            ToolErrorKind::Denied,
        )
        .await;
        fails(&*tool, json!({"path": ".nexus"}), ToolErrorKind::Denied).await;
    }

    #[tokio::test]
    async fn a_long_listing_says_it_was_capped() {
        let (w, ctx) = world();
        for i in 0..5 {
            w.write(&format!("f{i}"), "");
        }
        let tool = build(&ctx);
        let out = ok(&*tool, json!({"max_entries": 2})).await;
        assert!(
            out.starts_with("f0\nf1\n[listing stopped after 2 entries"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_file_or_missing_path_is_not_a_directory() {
        let (w, ctx) = world();
        w.write("f.txt", "");
        let tool = build(&ctx);
        fails(&*tool, json!({"path": "f.txt"}), ToolErrorKind::InvalidArgs).await;
        fails(&*tool, json!({"path": "nope"}), ToolErrorKind::NotFound).await;
        assert_eq!(ok(&*tool, json!({"path": "."})).await, "f.txt");
    }
}
