//! `write_file`: creates or replaces a text file of the workspace.
//!
//! It must never leave a half-written file (the sandbox writes to a temp file
//! and renames it) nor create anything outside the workspace.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use nexus_tools::{Caller, DynTool, Tool, typed};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ToolEnv, blocking};
use crate::{error::ToolFailure, sandbox::Workspace};

pub const NAME: &str = "write_file";

pub fn build(env: &ToolEnv) -> Arc<dyn DynTool> {
    typed(WriteFile {
        ws: env.workspace.clone(),
        max_file_bytes: env.config.max_file_bytes,
    })
}

pub struct WriteFile {
    ws: Arc<Workspace>,
    max_file_bytes: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// File path relative to the workspace
    path: String,
    /// The complete new content of the file
    content: String,
}

#[async_trait]
impl Tool for WriteFile {
    type Args = Args;
    const NAME: &'static str = NAME;

    fn description(&self) -> String {
        "Create or overwrite a text file in the workspace with the given content. \
         Missing parent directories are created. Paths are relative to the workspace."
            .into()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn call(&self, _: &Caller, args: Args) -> Result<String, ToolFailure> {
        if args.content.len() as u64 > self.max_file_bytes {
            return Err(ToolFailure::invalid_args(format!(
                "content is {} bytes, more than the {}-byte file limit",
                args.content.len(),
                self.max_file_bytes
            )));
        }
        let ws = self.ws.clone();
        blocking(move || {
            let path = ws.resolve(&args.path)?;
            let created = ws.write_atomic(&path, args.content.as_bytes())?;
            let verb = if created { "created" } else { "overwrote" };
            Ok(format!(
                "{verb} '{}' ({} bytes)",
                path.shown(),
                args.content.len()
            ))
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use nexus_common::config::ToolsConfig;
    use serde_json::json;

    use super::*;
    use crate::{
        error::ToolErrorKind,
        tools::testing::{fails, ok, world},
    };

    #[tokio::test]
    async fn a_new_file_is_created_with_its_directories() {
        let (w, ctx) = world();
        let tool = build(&ctx);
        let out = ok(
            &*tool,
            json!({"path": "docs/new/plan.md", "content": "# Plan\n"}),
        )
        .await;
        assert_eq!(out, "created 'docs/new/plan.md' (7 bytes)");
        assert_eq!(w.read("docs/new/plan.md"), "# Plan\n");
    }

    #[tokio::test]
    async fn an_existing_file_is_replaced_whole() {
        let (w, ctx) = world();
        w.write("a.txt", "a long original text");
        let tool = build(&ctx);
        let out = ok(&*tool, json!({"path": "a.txt", "content": "short"})).await;
        assert_eq!(out, "overwrote 'a.txt' (5 bytes)");
        assert_eq!(w.read("a.txt"), "short");
    }

    #[tokio::test]
    async fn a_directory_is_not_overwritten() {
        let (w, ctx) = world();
        w.write("dir/x", "x");
        let tool = build(&ctx);
        let m = fails(
            &*tool,
            json!({"path": "dir", "content": "x"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        assert!(m.contains("directory"), "{m}");
        fails(
            &*tool,
            json!({"path": "dir/x/y", "content": "x"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
    }

    #[tokio::test]
    async fn content_over_the_file_limit_is_refused() {
        let (_w, ctx) = world();
        let tool = build(&ctx.with_config(ToolsConfig {
            max_file_bytes: 4,
            ..ToolsConfig::default()
        }));
        fails(
            &*tool,
            json!({"path": "a", "content": "12345"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
    }

    #[tokio::test]
    async fn nothing_outside_the_workspace_can_be_written() {
        let (w, ctx) = world();
        w.plant_escapes();
        let tool = build(&ctx);
        let outside_name = w
            .outside
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        for path in [
            w.secret().display().to_string(),
            w.outside.path().join("new.txt").display().to_string(),
            format!("../{outside_name}/secret.txt"),
            format!("../{outside_name}/new.txt"),
            "~/new.txt".into(),
            "link-file".into(),
            "link-dir/secret.txt".into(),
            "link-dir/new.txt".into(),
            "link-dir/sub/new.txt".into(),
            "hard".into(),
            ".nexus/nexus.db".into(),
        ] {
            fails(
                &*tool,
                json!({"path": path, "content": "pwned"}),
                ToolErrorKind::Denied,
            )
            .await;
        }
        w.assert_secret_untouched();
    }
}
