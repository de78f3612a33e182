//! `edit_file`: replaces one exact piece of text in a file of the workspace.
//!
//! It must never guess: `old_text` has to match exactly once, otherwise the
//! file is left as it was and the model is told how many matches there were.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use nexus_tools::{Caller, DynTool, Tool, typed};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ToolEnv, blocking, read_text};
use crate::{error::ToolFailure, sandbox::Workspace};

pub const NAME: &str = "edit_file";

pub fn build(env: &ToolEnv) -> Arc<dyn DynTool> {
    typed(EditFile {
        ws: env.workspace.clone(),
        max_file_bytes: env.config.max_file_bytes,
    })
}

pub struct EditFile {
    ws: Arc<Workspace>,
    max_file_bytes: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// File path relative to the workspace
    path: String,
    /// Exact text to replace; must occur exactly once
    old_text: String,
    /// Replacement text
    new_text: String,
}

#[async_trait]
impl Tool for EditFile {
    type Args = Args;
    const NAME: &'static str = NAME;

    fn description(&self) -> String {
        "Replace text in a workspace file. old_text must match the file's content \
         exactly once (whitespace and line breaks included); include enough \
         surrounding text to make it unique."
            .into()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn call(&self, _: &Caller, args: Args) -> Result<String, ToolFailure> {
        if args.old_text.is_empty() {
            return Err(ToolFailure::invalid_args(
                "old_text is empty; give the exact text to replace (use write_file to create a file)",
            ));
        }
        let ws = self.ws.clone();
        let max = self.max_file_bytes;
        blocking(move || {
            let path = ws.resolve(&args.path)?;
            let shown = path.shown();
            let text = read_text(ws.open_file(&path)?, &shown, max)?;
            match text.matches(args.old_text.as_str()).count() {
                1 => {}
                0 => {
                    return Err(ToolFailure::invalid_args(format!(
                        "old_text was not found in '{shown}' (0 matches); it must match the \
                         file exactly once, whitespace and line breaks included — read the file first"
                    )));
                }
                n => {
                    return Err(ToolFailure::invalid_args(format!(
                        "old_text matches {n} times in '{shown}'; it must match exactly once — \
                         include more surrounding text to make it unique"
                    )));
                }
            }
            let edited = text.replacen(args.old_text.as_str(), &args.new_text, 1);
            ws.write_atomic(&path, edited.as_bytes())?;
            Ok(format!(
                "edited '{shown}': replaced {} line(s) with {}",
                args.old_text.lines().count().max(1),
                args.new_text.lines().count()
            ))
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
    async fn an_exact_single_match_is_replaced() {
        let (w, ctx) = world();
        w.write("a.md", "alpha\nbeta\ngamma\n");
        let tool = build(&ctx);
        let out = ok(
            &*tool,
            json!({"path": "a.md", "old_text": "beta\n", "new_text": "BETA\nDELTA\n"}),
        )
        .await;
        assert_eq!(out, "edited 'a.md': replaced 1 line(s) with 2");
        assert_eq!(w.read("a.md"), "alpha\nBETA\nDELTA\ngamma\n");
    }

    #[tokio::test]
    async fn no_match_is_refused_and_says_zero() {
        let (w, ctx) = world();
        w.write("a.md", "alpha\n");
        let tool = build(&ctx);
        let m = fails(
            &*tool,
            json!({"path": "a.md", "old_text": "Alpha", "new_text": "x"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        assert!(m.contains("0 matches"), "{m}");
        assert_eq!(w.read("a.md"), "alpha\n");
    }

    #[tokio::test]
    async fn several_matches_are_refused_and_counted() {
        let (w, ctx) = world();
        w.write("a.md", "x = 1\nx = 1\nx = 1\n");
        let tool = build(&ctx);
        let m = fails(
            &*tool,
            json!({"path": "a.md", "old_text": "x = 1", "new_text": "x = 2"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        assert!(m.contains("matches 3 times"), "{m}");
        assert_eq!(w.read("a.md"), "x = 1\nx = 1\nx = 1\n");
    }

    #[tokio::test]
    async fn an_empty_old_text_and_a_missing_file_are_refused() {
        let (w, ctx) = world();
        w.write("a.md", "alpha\n");
        let tool = build(&ctx);
        fails(
            &*tool,
            json!({"path": "a.md", "old_text": "", "new_text": "x"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        fails(
            &*tool,
            json!({"path": "b.md", "old_text": "a", "new_text": "x"}),
            ToolErrorKind::NotFound,
        )
        .await;
    }

    #[tokio::test]
    async fn nothing_outside_the_workspace_can_be_edited() {
        let (w, ctx) = world();
        w.plant_escapes();
        let tool = build(&ctx);
        for path in [
            w.secret().display().to_string(),
            "link-file".into(),
            "link-dir/secret.txt".into(),
            "hard".into(),
        ] {
            fails(
                &*tool,
                json!({"path": path, "old_text": "secret", "new_text": "pwned"}),
                ToolErrorKind::Denied,
            )
            .await;
        }
        w.assert_secret_untouched();
    }
}
