//! `grep_search`: lines of workspace files that match a regular expression.
//!
//! It must never read a file the sandbox would refuse to `read_file` (symlinks
//! are not followed, hard-linked files are skipped), nor binary files, nor
//! `.nexus/`; and it must stop at the result cap.

use std::{
    io::{BufRead, BufReader},
    ops::ControlFlow,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use globset::{GlobBuilder, GlobMatcher};
use nexus_tools::{Caller, DynTool, Tool, typed};
use regex::{Regex, RegexBuilder};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ToolEnv, blocking, looks_binary, next_line};
use crate::{
    error::ToolFailure,
    sandbox::{EntryKind, SandboxError, Workspace, WorkspacePath},
};

pub const NAME: &str = "grep_search";

/// Characters of a matching line shown at most.
const MAX_LINE_CHARS: usize = 300;
/// Bytes of one line searched at most (a minified file is one huge line).
const MAX_LINE_BYTES: usize = 256 * 1024;

pub fn build(env: &ToolEnv) -> Arc<dyn DynTool> {
    typed(GrepSearch {
        ws: env.workspace.clone(),
        max_results: env.config.grep_max_results.max(1),
        max_file_bytes: env.config.max_file_bytes,
    })
}

pub struct GrepSearch {
    ws: Arc<Workspace>,
    max_results: usize,
    max_file_bytes: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// Regular expression
    pattern: String,
    /// File or directory to search, relative to the workspace
    #[serde(default = "dot")]
    path: String,
    /// Only files whose name (or relative path, if it has a '/') matches, e.g. "*.md"
    glob: Option<String>,
    #[serde(default)]
    case_insensitive: bool,
    /// Matches to return at most (capped by the service's limit)
    #[schemars(range(min = 1))]
    max_results: Option<usize>,
}

fn dot() -> String {
    ".".to_owned()
}

/// Files passed over, reported so the model knows the search was not exhaustive.
#[derive(Default)]
struct Skipped {
    binary: usize,
    large: usize,
    refused: usize,
    unreadable: usize,
}

impl Skipped {
    fn count(&mut self, e: &SandboxError) {
        match e {
            SandboxError::Denied(_) => self.refused += 1,
            _ => self.unreadable += 1,
        }
    }
}

struct Search {
    regex: Regex,
    glob: Option<GlobMatcher>,
    max_results: usize,
    max_file_bytes: u64,
    results: Vec<String>,
    skipped: Skipped,
}

#[async_trait]
impl Tool for GrepSearch {
    type Args = Args;
    const NAME: &'static str = NAME;

    fn description(&self) -> String {
        "Search workspace files for lines matching a regular expression (Rust regex \
         syntax). Prints 'path:line: text'. Narrow with path and a glob such as \
         \"*.md\". Binary files are skipped."
            .into()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    async fn call(&self, _: &Caller, args: Args) -> Result<String, ToolFailure> {
        let regex = RegexBuilder::new(&args.pattern)
            .case_insensitive(args.case_insensitive)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| ToolFailure::invalid_args(format!("pattern is not a valid regex: {e}")))?;
        let glob = args
            .glob
            .as_deref()
            .map(|g| {
                GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map(|g| g.compile_matcher())
                    .map_err(|e| ToolFailure::invalid_args(format!("glob is invalid: {e}")))
            })
            .transpose()?;
        if args.max_results == Some(0) {
            return Err(ToolFailure::invalid_args("max_results must be at least 1"));
        }
        let mut search = Search {
            regex,
            glob,
            max_results: args
                .max_results
                .unwrap_or(self.max_results)
                .min(self.max_results),
            max_file_bytes: self.max_file_bytes,
            results: Vec::new(),
            skipped: Skipped::default(),
        };
        let ws = self.ws.clone();
        blocking(move || {
            let start = ws.resolve(&args.path)?;
            let capped = match ws.kind(&start)? {
                EntryKind::Dir => {
                    let mut capped = false;
                    ws.walk(
                        &start,
                        true,
                        &mut |entry| match (entry.kind, entry.path()) {
                            (EntryKind::File, Some(file)) => {
                                // Found by walking: a refusal is a skip, counted in the report.
                                let flow = search.file(&ws, file, false).unwrap_or_else(|e| {
                                    search.skipped.count(&e);
                                    ControlFlow::Continue(())
                                });
                                capped |= flow.is_break();
                                flow
                            }
                            _ => ControlFlow::Continue(()),
                        },
                    )?;
                    capped
                }
                // Named directly: searched even if the glob would skip it, and a
                // refusal is the answer.
                EntryKind::File => search.file(&ws, &start, true)?.is_break(),
                EntryKind::Symlink | EntryKind::Other => {
                    return Err(ToolFailure::invalid_args(format!(
                        "'{}' is neither a file nor a directory",
                        start.shown()
                    )));
                }
            };
            Ok(search.report(&args.pattern, &start, capped))
        })
        .await
    }
}

impl Search {
    /// Searches one file; breaks once the result cap is reached.
    fn file(
        &mut self,
        ws: &Workspace,
        file: &WorkspacePath,
        direct: bool,
    ) -> Result<ControlFlow<()>, SandboxError> {
        if !direct && let Some(glob) = &self.glob {
            let rel = file.rel();
            let name_matches = rel.file_name().is_some_and(|n| glob.is_match(n));
            if !name_matches && !glob.is_match(rel) {
                return Ok(ControlFlow::Continue(()));
            }
        }
        let opened = ws.open_file(file)?;
        if opened.len > self.max_file_bytes {
            self.skipped.large += 1;
            return Ok(ControlFlow::Continue(()));
        }
        let mut reader = BufReader::with_capacity(super::SNIFF_BYTES, opened.file);
        match reader.fill_buf() {
            Ok(head) if looks_binary(head) => {
                self.skipped.binary += 1;
                return Ok(ControlFlow::Continue(()));
            }
            Ok(_) => {}
            Err(_) => {
                self.skipped.unreadable += 1;
                return Ok(ControlFlow::Continue(()));
            }
        }
        let shown = file.shown();
        let mut line = Vec::new();
        let mut number = 0u64;
        while let Ok(true) = next_line(&mut reader, &mut line, MAX_LINE_BYTES) {
            number += 1;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if self.regex.is_match(text) {
                if self.results.len() == self.max_results {
                    return Ok(ControlFlow::Break(()));
                }
                let mut shown_line: String = text.chars().take(MAX_LINE_CHARS).collect();
                if shown_line.len() < text.len() {
                    shown_line.push('…');
                }
                self.results.push(format!("{shown}:{number}: {shown_line}"));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    fn report(self, pattern: &str, start: &WorkspacePath, capped: bool) -> String {
        let mut out = if self.results.is_empty() {
            format!("no matches for /{pattern}/ in '{}'", start.shown())
        } else {
            self.results.join("\n")
        };
        if capped {
            out.push_str(&format!(
                "\n[results capped at {}; narrow the pattern, path or glob to see the rest]",
                self.max_results
            ));
        }
        let s = &self.skipped;
        let notes: Vec<String> = [
            (s.binary, "binary"),
            (s.large, "larger than the file size limit"),
            (
                s.refused,
                "refused by the sandbox (several hard links, or no permission)",
            ),
            (s.unreadable, "unreadable"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if !notes.is_empty() {
            out.push_str(&format!("\n[skipped files: {}]", notes.join(", ")));
        }
        out
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
        sandbox::tests::SECRET,
        tools::testing::{fails, ok, world},
    };

    #[tokio::test]
    async fn matches_are_printed_as_path_line_text() {
        let (w, ctx) = world();
        w.write("a.md", "intro\nTODO: write tests\n");
        w.write("src/b.rs", "// todo later\nfn main() {}\n");
        let tool = build(&ctx);
        let out = ok(&*tool, json!({"pattern": "TODO"})).await;
        assert_eq!(out, "a.md:2: TODO: write tests");
        let out = ok(&*tool, json!({"pattern": "todo", "case_insensitive": true})).await;
        assert_eq!(out, "a.md:2: TODO: write tests\nsrc/b.rs:1: // todo later");
    }

    #[tokio::test]
    async fn a_glob_and_a_path_narrow_the_search() {
        let (w, ctx) = world();
        w.write("a.md", "hit\n");
        w.write("b.txt", "hit\n");
        w.write("docs/c.md", "hit\n");
        let tool = build(&ctx);
        let out = ok(&*tool, json!({"pattern": "hit", "glob": "*.md"})).await;
        assert_eq!(out, "a.md:1: hit\ndocs/c.md:1: hit");
        let out = ok(&*tool, json!({"pattern": "hit", "glob": "docs/*.md"})).await;
        assert_eq!(out, "docs/c.md:1: hit");
        let out = ok(&*tool, json!({"pattern": "hit", "path": "docs"})).await;
        assert_eq!(out, "docs/c.md:1: hit");
        let out = ok(&*tool, json!({"pattern": "hit", "path": "b.txt"})).await;
        assert_eq!(out, "b.txt:1: hit");
        let out = ok(&*tool, json!({"pattern": "miss"})).await;
        assert_eq!(out, "no matches for /miss/ in '.'");
    }

    #[tokio::test]
    async fn results_are_capped_and_the_cap_is_announced() {
        let (w, ctx) = world();
        w.write("a.txt", &"x\n".repeat(10));
        let tool = build(&ctx.with_config(ToolsConfig {
            grep_max_results: 3,
            ..ToolsConfig::default()
        }));
        let out = ok(&*tool, json!({"pattern": "x", "max_results": 100})).await;
        assert_eq!(
            out,
            "a.txt:1: x\na.txt:2: x\na.txt:3: x\n[results capped at 3; narrow the pattern, path or glob to see the rest]"
        );
        let out = ok(&*tool, json!({"pattern": "x", "max_results": 1})).await;
        assert!(out.starts_with("a.txt:1: x\n[results capped at 1"), "{out}");
    }

    #[tokio::test]
    async fn binary_files_and_nexus_are_skipped() {
        let (w, ctx) = world();
        w.write("bin.dat", "needle\0\0");
        w.write(".nexus/nexus.db", "needle");
        w.write("t.txt", "needle");
        let tool = build(&ctx);
        let out = ok(&*tool, json!({"pattern": "needle"})).await;
        assert_eq!(out, "t.txt:1: needle\n[skipped files: 1 binary]");
    }

    #[tokio::test]
    async fn a_bad_regex_or_glob_is_invalid_args() {
        let (_w, ctx) = world();
        let tool = build(&ctx);
        let m = fails(&*tool, json!({"pattern": "("}), ToolErrorKind::InvalidArgs).await;
        assert!(m.contains("regex"), "{m}");
        fails(
            &*tool,
            json!({"pattern": "a", "glob": "[a"}),
            ToolErrorKind::InvalidArgs,
        )
        .await;
    }

    #[tokio::test]
    async fn the_outside_secret_is_never_searched() {
        let (w, ctx) = world();
        w.plant_escapes();
        let tool = build(&ctx);
        let out = ok(&*tool, json!({"pattern": "secret"})).await;
        assert!(!out.contains(SECRET), "{out}");
        assert!(out.contains("1 refused by the sandbox"), "{out}");
        for path in ["link-dir", "link-file", "hard", "/"] {
            let m = fails(
                &*tool,
                json!({"pattern": "secret", "path": path}),
                ToolErrorKind::Denied,
            )
            .await;
            assert!(!m.contains(SECRET), "{m}");
        }
        w.assert_secret_untouched();
    }
}
