//! `delete_file`: moves one regular file of the workspace to the trash.
//!
//! The spec asks for human approval, but `ToolContext` carries no approval
//! yet, so this tool must never destroy anything: it only moves regular files
//! (never directories or symlinks) into `.nexus/trash/`, where an operator can
//! restore them.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use nexus_tools::{Caller, DynTool, Tool, typed};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ToolEnv, blocking};
use crate::{error::ToolFailure, sandbox::Workspace};

pub const NAME: &str = "delete_file";

pub fn build(env: &ToolEnv) -> Arc<dyn DynTool> {
    typed(DeleteFile {
        ws: env.workspace.clone(),
    })
}

pub struct DeleteFile {
    ws: Arc<Workspace>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// File path relative to the workspace
    path: String,
}

#[async_trait]
impl Tool for DeleteFile {
    type Args = Args;
    const NAME: &'static str = NAME;

    fn description(&self) -> String {
        "Delete a file in the workspace (not a directory). The file is moved to \
         the workspace trash, so the deletion can be undone by an operator."
            .into()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
    fn requires_approval(&self) -> bool {
        true
    }

    async fn call(&self, caller: &Caller, args: Args) -> Result<String, ToolFailure> {
        let ws = self.ws.clone();
        let caller = caller.clone();
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

    use serde_json::json;

    use super::*;
    use crate::{
        error::ToolErrorKind,
        tools::testing::{fails, ok, world},
    };

    #[tokio::test]
    async fn a_deleted_file_lands_in_the_trash_with_its_content() {
        let (w, ctx) = world();
        w.write("old/notes.md", "keep me");
        let tool = build(&ctx);
        let out = ok(&*tool, json!({"path": "old/notes.md"})).await;
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
        let tool = build(&ctx);
        w.write("a.md", "one");
        ok(&*tool, json!({"path": "a.md"})).await;
        w.write("a.md", "two");
        ok(&*tool, json!({"path": "a.md"})).await;
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
        let tool = build(&ctx);
        let m = fails(&*tool, json!({"path": "dir"}), ToolErrorKind::InvalidArgs).await;
        assert!(m.contains("never directories"), "{m}");
        fails(&*tool, json!({"path": "."}), ToolErrorKind::InvalidArgs).await;
        let m = fails(&*tool, json!({"path": "link"}), ToolErrorKind::InvalidArgs).await;
        assert!(m.contains("symbolic link"), "{m}");
        assert_eq!(w.read("dir/a.md"), "a");
        fails(&*tool, json!({"path": "gone.md"}), ToolErrorKind::NotFound).await;
    }

    #[tokio::test]
    async fn nothing_outside_the_workspace_or_in_the_trash_can_be_deleted() {
        let (w, ctx) = world();
        w.plant_escapes();
        w.write(".nexus/trash/x", "x");
        let tool = build(&ctx);
        for path in [
            w.secret().display().to_string(),
            "link-file".into(),
            "link-dir/secret.txt".into(),
            "hard".into(),
            ".nexus/trash/x".into(),
        ] {
            fails(&*tool, json!({"path": path}), ToolErrorKind::Denied).await;
        }
        w.assert_secret_untouched();
        assert_eq!(w.read(".nexus/trash/x"), "x");
    }
}
