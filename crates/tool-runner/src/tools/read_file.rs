//! `read_file`: a text file of the workspace, whole or a range of lines.
//!
//! It must never return a binary file, nor load a whole file larger than
//! `[tools] max_file_bytes` (a line range streams instead).

use std::{
    io::{self, BufRead, BufReader},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use nexus_tools::{Caller, DynTool, Tool, typed};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ToolEnv, binary_refusal, blocking, looks_binary, next_line, read_text};
use crate::{error::ToolFailure, sandbox::Workspace};

pub const NAME: &str = "read_file";

pub fn build(env: &ToolEnv) -> Arc<dyn DynTool> {
    typed(ReadFile {
        ws: env.workspace.clone(),
        max_file_bytes: env.config.max_file_bytes,
        max_output_bytes: env.config.max_output_bytes,
    })
}

pub struct ReadFile {
    ws: Arc<Workspace>,
    max_file_bytes: u64,
    /// A range read stops collecting here; the runner cuts the rest anyway.
    max_output_bytes: usize,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// File path relative to the workspace
    path: String,
    /// First line to read (1-based)
    #[schemars(range(min = 1))]
    offset_line: Option<u64>,
    /// How many lines to read
    #[schemars(range(min = 1))]
    limit_lines: Option<u64>,
}

#[async_trait]
impl Tool for ReadFile {
    type Args = Args;
    const NAME: &'static str = NAME;

    fn description(&self) -> String {
        "Read a text file in the workspace. Paths are relative to the workspace. \
         Give offset_line (1-based) and limit_lines to read part of a large file."
            .into()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn call(&self, _: &Caller, args: Args) -> Result<String, ToolFailure> {
        let ws = self.ws.clone();
        let (max_file, max_out) = (self.max_file_bytes, self.max_output_bytes);
        blocking(move || {
            let path = ws.resolve(&args.path)?;
            let shown = path.shown();
            let opened = ws.open_file(&path)?;
            if args.offset_line.is_none() && args.limit_lines.is_none() {
                if opened.len > max_file {
                    return Err(ToolFailure::invalid_args(format!(
                        "'{shown}' is {} bytes, more than the {max_file}-byte limit for reading a \
                         whole file; read it in parts with offset_line and limit_lines",
                        opened.len
                    )));
                }
                let text = read_text(opened, &shown, max_file)?;
                if text.is_empty() {
                    return Ok(format!("('{shown}' is empty)"));
                }
                return Ok(text);
            }
            let first = args.offset_line.unwrap_or(1);
            if first == 0 {
                return Err(ToolFailure::invalid_args("offset_line starts at 1"));
            }
            if args.limit_lines == Some(0) {
                return Err(ToolFailure::invalid_args("limit_lines must be at least 1"));
            }
            read_range(opened.file, &shown, first, args.limit_lines, max_out)
                .map_err(|e| ToolFailure::internal(format!("cannot read '{shown}': {e}")))?
        })
        .await
    }
}

/// Streams lines `first..first+limit` without holding more than the output cap.
fn read_range(
    file: std::fs::File,
    shown: &str,
    first: u64,
    limit: Option<u64>,
    max_out: usize,
) -> io::Result<Result<String, ToolFailure>> {
    let mut reader = BufReader::with_capacity(super::SNIFF_BYTES, file);
    if looks_binary(reader.fill_buf()?) {
        return Ok(Err(binary_refusal(shown)));
    }
    let mut line = Vec::new();
    let mut number = 0u64;
    while number + 1 < first {
        if !next_line(&mut reader, &mut line, 0)? {
            return Ok(Err(ToolFailure::invalid_args(format!(
                "'{shown}' has only {number} lines; offset_line {first} is past the end"
            ))));
        }
        number += 1;
    }
    let mut out = Vec::new();
    let mut full = false;
    while limit.is_none_or(|l| number + 1 - first < l) {
        if out.len() > max_out {
            full = true;
            break;
        }
        if !next_line(&mut reader, &mut line, max_out + 1)? {
            break;
        }
        number += 1;
        out.extend_from_slice(&line);
    }
    if number < first {
        return Ok(Err(ToolFailure::invalid_args(format!(
            "'{shown}' has only {number} lines; offset_line {first} is past the end"
        ))));
    }
    let mut text = format!("[{shown}: lines {first}-{number}]\n");
    text.push_str(&String::from_utf8_lossy(&out));
    let more = full || next_line(&mut reader, &mut line, 0)?;
    if more {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "[more lines follow; continue with offset_line={}]",
            number + 1
        ));
    }
    Ok(Ok(text))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use nexus_common::config::ToolsConfig;
    use serde_json::json;

    use super::*;
    use crate::{
        error::ToolErrorKind,
        sandbox::tests::SECRET,
        tools::testing::{fails, ok, world},
    };

    #[tokio::test]
    async fn a_whole_file_is_returned_as_is() {
        let (w, ctx) = world();
        w.write("notes/a.md", "line one\nline two\n");
        let tool = build(&ctx);
        let out = ok(&*tool, json!({"path": "notes/a.md"})).await;
        assert_eq!(out, "line one\nline two\n");
    }

    #[tokio::test]
    async fn a_line_range_is_returned_with_its_position_and_a_hint_to_continue() {
        let (w, ctx) = world();
        let text: String = (1..=10).map(|i| format!("l{i}\n")).collect();
        w.write("t.txt", &text);
        let tool = build(&ctx);
        let out = ok(
            &*tool,
            json!({"path": "t.txt", "offset_line": 3, "limit_lines": 2}),
        )
        .await;
        assert_eq!(
            out,
            "[t.txt: lines 3-4]\nl3\nl4\n[more lines follow; continue with offset_line=5]"
        );
        let out = ok(&*tool, json!({"path": "t.txt", "offset_line": 9})).await;
        assert_eq!(out, "[t.txt: lines 9-10]\nl9\nl10\n");
        let m = fails(
            &*tool,
            json!({"path": "t.txt", "offset_line": 11}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        assert!(m.contains("only 10 lines"), "{m}");
    }

    #[tokio::test]
    async fn a_file_over_the_size_limit_needs_a_line_range() {
        let (w, ctx) = world();
        w.write("big.txt", &"0123456789\n".repeat(20));
        let tool = build(&ctx.with_config(ToolsConfig {
            max_file_bytes: 100,
            ..ToolsConfig::default()
        }));
        let m = fails(
            &*tool,
            json!({"path": "big.txt"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        assert!(m.contains("offset_line"), "{m}");
        let out = ok(
            &*tool,
            json!({"path": "big.txt", "offset_line": 20, "limit_lines": 5}),
        )
        .await;
        assert_eq!(out, "[big.txt: lines 20-20]\n0123456789\n");
    }

    #[tokio::test]
    async fn a_binary_file_is_refused_clearly() {
        let (w, ctx) = world();
        w.write("img.bin", "PNG\0\0\x01data");
        let tool = build(&ctx);
        let m = fails(
            &*tool,
            json!({"path": "img.bin"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
        assert!(m.contains("binary"), "{m}");
        fails(
            &*tool,
            json!({"path": "img.bin", "limit_lines": 1}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
    }

    #[tokio::test]
    async fn missing_files_and_bad_arguments_are_told_apart() {
        let (_w, ctx) = world();
        let tool = build(&ctx);
        let m = fails(&*tool, json!({"path": "nope.md"}), ToolErrorKind::NotFound).await;
        assert_eq!(m, "'nope.md' does not exist");
        let m = fails(&*tool, json!({"file": "x"}), ToolErrorKind::InvalidArgs).await;
        assert!(m.contains("unknown field `file`"), "{m}");
        fails(&*tool, json!({"path": 3}), ToolErrorKind::InvalidArgs).await;
    }

    #[tokio::test]
    async fn nothing_outside_the_workspace_can_be_read() {
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
            format!("../{outside_name}/secret.txt"),
            "~/secret.txt".into(),
            "link-file".into(),
            "link-dir/secret.txt".into(),
            "hard".into(),
        ] {
            for args in [
                json!({"path": path}),
                json!({"path": path, "offset_line": 1}),
            ] {
                let m = fails(&*tool, args, ToolErrorKind::Denied).await;
                assert!(!m.contains(SECRET), "{m}");
            }
        }
        w.assert_secret_untouched();
    }
}
