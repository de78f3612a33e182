//! `write_file`: creates or replaces a text file of the workspace.
//!
//! It must never leave a half-written file (the sandbox writes to a temp file
//! and renames it) nor create anything outside the workspace.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use nexus_common::config::ToolsConfig;
use serde::Deserialize;
use serde_json::json;

use super::{Spec, Tool, ToolCtx, blocking, parse_args};
use crate::error::ToolFailure;

pub const NAME: &str = "write_file";

pub fn build(config: &ToolsConfig) -> Arc<dyn Tool> {
    Arc::new(WriteFile {
        max_file_bytes: config.max_file_bytes,
    })
}

pub struct WriteFile {
    max_file_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    path: String,
    content: String,
}

#[async_trait]
impl Tool for WriteFile {
    fn spec(&self) -> Spec {
        Spec {
            name: NAME,
            description: "Create or overwrite a text file in the workspace with the given content. \
                          Missing parent directories are created. Paths are relative to the workspace.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the workspace"},
                    "content": {"type": "string", "description": "The complete new content of the file"}
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
            requires_approval: false,
            timeout: Duration::from_secs(10),
        }
    }

    async fn call(&self, ctx: &ToolCtx, args: serde_json::Value) -> Result<String, ToolFailure> {
        let args: Args = parse_args(args)?;
        if args.content.len() as u64 > self.max_file_bytes {
            return Err(ToolFailure::invalid_args(format!(
                "content is {} bytes, more than the {}-byte file limit",
                args.content.len(),
                self.max_file_bytes
            )));
        }
        let ws = ctx.workspace.clone();
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
    use super::*;
    use crate::{
        error::ToolErrorKind,
        tools::testing::{config, fails, ok, world},
    };

    #[tokio::test]
    async fn a_new_file_is_created_with_its_directories() {
        let (w, ctx) = world();
        let tool = build(&config());
        let out = ok(
            &*tool,
            &ctx,
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
        let tool = build(&config());
        let out = ok(&*tool, &ctx, json!({"path": "a.txt", "content": "short"})).await;
        assert_eq!(out, "overwrote 'a.txt' (5 bytes)");
        assert_eq!(w.read("a.txt"), "short");
    }

    #[tokio::test]
    async fn a_directory_is_not_overwritten() {
        let (w, ctx) = world();
        w.write("dir/x", "x");
        let tool = build(&config());
        let m = fails(
            &*tool,
            &ctx,
            json!({"path": "dir", "content": "x"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        assert!(m.contains("directory"), "{m}");
        fails(
            &*tool,
            &ctx,
            json!({"path": "dir/x/y", "content": "x"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
    }

    #[tokio::test]
    async fn content_over_the_file_limit_is_refused() {
        let (_w, ctx) = world();
        let tool = build(&ToolsConfig {
            max_file_bytes: 4,
            ..config()
        });
        fails(
            &*tool,
            &ctx,
            json!({"path": "a", "content": "12345"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
    }

    #[tokio::test]
    async fn nothing_outside_the_workspace_can_be_written() {
        let (w, ctx) = world();
        w.plant_escapes();
        let tool = build(&config());
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
                &ctx,
                json!({"path": path, "content": "pwned"}),
                ToolErrorKind::Denied,
            )
            .await;
        }
        w.assert_secret_untouched();
    }
}
