//! `delete_file`: moves one regular file of the workspace to the trash.
//!
//! The spec asks for human approval, but `ToolContext` carries no approval
//! yet, so this tool must never destroy anything: it only moves regular files
//! (never directories or symlinks) into `.nexus/trash/`, where an operator can
//! restore them.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use nexus_common::config::ToolsConfig;
use serde::Deserialize;
use serde_json::json;

use super::{Spec, Tool, ToolCtx, blocking, parse_args};
use crate::error::ToolFailure;

pub const NAME: &str = "delete_file";

pub fn build(_config: &ToolsConfig) -> Arc<dyn Tool> {
    Arc::new(DeleteFile)
}

pub struct DeleteFile;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    path: String,
}

#[async_trait]
impl Tool for DeleteFile {
    fn spec(&self) -> Spec {
        Spec {
            name: NAME,
            description: "Delete a file in the workspace (not a directory). The file is moved to \
                          the workspace trash, so the deletion can be undone by an operator.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the workspace"}
                },
                "required": ["path"],
                "additionalProperties": false
            }),
            requires_approval: true,
            timeout: Duration::from_secs(10),
        }
    }

    async fn call(&self, ctx: &ToolCtx, args: serde_json::Value) -> Result<String, ToolFailure> {
        let args: Args = parse_args(args)?;
        let ws = ctx.workspace.clone();
        let caller = ctx.caller.clone();
        blocking(move || {
            let path = ws.resolve(&args.path)?;
            let trashed = ws.trash(&path)?;
            tracing::info!(
                path = %path.shown(),
                trash = %trashed.display(),
                session_id = %caller.session_id,
                "file moved to the trash"
            );
            Ok(format!(
                "deleted '{}': it was moved to the trash as '{}' and can be restored from there",
                path.shown(),
                trashed.display()
            ))
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::{
        error::ToolErrorKind,
        tools::testing::{config, fails, ok, world},
    };

    #[tokio::test]
    async fn a_deleted_file_lands_in_the_trash_with_its_content() {
        let (w, ctx) = world();
        w.write("old/notes.md", "keep me");
        let tool = build(&config());
        let out = ok(&*tool, &ctx, json!({"path": "old/notes.md"})).await;
        assert!(
            out.starts_with("deleted 'old/notes.md': it was moved to the trash as '.nexus/trash/"),
            "{out}"
        );
        assert!(!w.dir.path().join("old/notes.md").exists());
        let trashed = out.split('\'').nth(3).unwrap();
        assert!(trashed.ends_with("-notes.md"), "{trashed}");
        assert_eq!(w.read(trashed), "keep me");
        // The directory itself stays.
        assert!(w.dir.path().join("old").is_dir());
    }

    #[tokio::test]
    async fn deleting_the_same_name_twice_keeps_both_copies() {
        let (w, ctx) = world();
        let tool = build(&config());
        w.write("a.md", "one");
        ok(&*tool, &ctx, json!({"path": "a.md"})).await;
        w.write("a.md", "two");
        ok(&*tool, &ctx, json!({"path": "a.md"})).await;
        let trash = std::fs::read_dir(w.dir.path().join(".nexus/trash"))
            .unwrap()
            .count();
        assert_eq!(trash, 2);
    }

    #[tokio::test]
    async fn directories_and_symlinks_are_never_deleted() {
        let (w, ctx) = world();
        w.write("dir/a.md", "a");
        symlink(w.dir.path().join("dir/a.md"), w.dir.path().join("link")).unwrap();
        let tool = build(&config());
        let m = fails(
            &*tool,
            &ctx,
            json!({"path": "dir"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        assert!(m.contains("never directories"), "{m}");
        fails(
            &*tool,
            &ctx,
            json!({"path": "."}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        let m = fails(
            &*tool,
            &ctx,
            json!({"path": "link"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        assert!(m.contains("symbolic link"), "{m}");
        assert_eq!(w.read("dir/a.md"), "a");
        fails(
            &*tool,
            &ctx,
            json!({"path": "gone.md"}),
            ToolErrorKind::NotFound,
        )
        .await;
    }

    #[tokio::test]
    async fn nothing_outside_the_workspace_or_in_the_trash_can_be_deleted() {
        let (w, ctx) = world();
        w.plant_escapes();
        w.write(".nexus/trash/x", "x");
        let tool = build(&config());
        for path in [
            w.secret().display().to_string(),
            "link-file".into(),
            "link-dir/secret.txt".into(),
            "hard".into(),
            ".nexus/trash/x".into(),
        ] {
            fails(&*tool, &ctx, json!({"path": path}), ToolErrorKind::Denied).await;
        }
        w.assert_secret_untouched();
        assert_eq!(w.read(".nexus/trash/x"), "x");
    }
}
