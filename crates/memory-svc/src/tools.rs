//! The memory tools memory-svc serves on `N.tool.<name>`, beside tool-runner's:
//! `remember` appends a fact under a heading of MEMORY.md (or of the caller's
//! own `USER_<id>.md`), `memory_search` ranks excerpts of the memory the
//! caller may read. From `ToolCall` bytes to a `ToolResult`, whatever happens.
//!
//! The caller's user id comes from `ToolCall.context`, never from the model's
//! arguments. It must never answer a call with anything but a `ToolResult`
//! (failures are results with a kind), and never touch NATS: `server` does.

use std::{path::PathBuf, time::Duration};

use nexus_common::config::ToolsConfig;
use nexus_proto::{
    Message as _,
    v1::{self, ToolCall, ToolResult, tool_result::Outcome},
};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::{
    edit::{self, EditError, Edited},
    files::MEMORY_TEMPLATE,
    index::{self, MemoryFile, MemoryIndex, UserId},
    markdown::{self, Added},
};

/// The heading facts go under when the model names none.
pub const DEFAULT_SECTION: &str = "Facts";
/// Longest fact, in bytes: a fact is a sentence, not a document.
const MAX_FACT_BYTES: usize = 1000;
/// Longest heading a fact may be filed under, in characters.
const MAX_SECTION_CHARS: usize = 100;
/// Longest query, in characters.
const MAX_QUERY_CHARS: usize = 1000;
/// Excerpts `memory_search` returns by default, and at most.
const DEFAULT_RESULTS: u32 = 5;
const MAX_RESULTS: u32 = 20;
/// One excerpt's text in a search result, at most.
const MAX_EXCERPT_BYTES: usize = 1500;
/// How long `remember` waits for another writer of the same file.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Room kept under the output cap for the truncation note.
const TRUNCATION_NOTE_ROOM: usize = 160;

/// A tool memory-svc serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryTool {
    Remember,
    Search,
}

impl MemoryTool {
    pub const ALL: [MemoryTool; 2] = [MemoryTool::Remember, MemoryTool::Search];

    /// The tool's name: the last token of `N.tool.<name>` and its key in the tools bucket.
    pub fn name(self) -> &'static str {
        match self {
            MemoryTool::Remember => "remember",
            MemoryTool::Search => "memory_search",
        }
    }

    /// How long one call may run.
    pub fn timeout(self) -> Duration {
        match self {
            MemoryTool::Remember => Duration::from_secs(15),
            MemoryTool::Search => Duration::from_secs(10),
        }
    }

    /// The spec published in the tools bucket; `provider` is `memory-svc/<version>`.
    pub fn spec(self, provider: &str) -> v1::ToolSpec {
        let (description, parameters) = match self {
            MemoryTool::Remember => (
                "Save a fact to long-term memory so it is known in later conversations. \
                 scope \"shared\" (default) writes to MEMORY.md, which everyone's conversations \
                 see; scope \"user\" writes to the memory of the person you are talking to, which \
                 only their conversations see. Use \"user\" for anything personal about them. \
                 People can read and edit these Markdown files.",
                json!({
                    "type": "object",
                    "properties": {
                        "fact": {
                            "type": "string",
                            "description": "The fact, as one self-contained sentence (names, not pronouns)"
                        },
                        "section": {
                            "type": "string",
                            "description": "Heading to file it under, e.g. \"Preferences\"; default \"Facts\""
                        },
                        "scope": {
                            "type": "string",
                            "enum": ["shared", "user"],
                            "description": "\"shared\" (default) or \"user\""
                        }
                    },
                    "required": ["fact"],
                    "additionalProperties": false
                }),
            ),
            MemoryTool::Search => (
                "Search long-term memory (MEMORY.md, daily journals in memories/, and the memory \
                 of the person you are talking to) by keywords. Returns the most relevant \
                 excerpts, best first, each with its file, heading and lines.",
                json!({
                    "type": "object",
                    "properties": {
                        "query": {
                            "type": "string",
                            "description": "Keywords or a question, e.g. \"Alice birthday\""
                        },
                        "limit": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_RESULTS,
                            "description": "Excerpts to return; default 5"
                        }
                    },
                    "required": ["query"],
                    "additionalProperties": false
                }),
            ),
        };
        v1::ToolSpec {
            name: self.name().to_owned(),
            description: description.to_owned(),
            parameters_json_schema: parameters.to_string(),
            requires_approval: false,
            timeout_ms: u64::try_from(self.timeout().as_millis()).unwrap_or(u64::MAX),
            encoding: String::new(),
            provider: provider.to_owned(),
        }
    }
}

/// A failed call: its kind, whether retrying may help, and a message safe to show the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ToolFailure {
    pub kind: v1::ToolErrorKind,
    pub message: String,
    pub retryable: bool,
}

impl ToolFailure {
    pub fn new(kind: v1::ToolErrorKind, message: impl Into<String>) -> Self {
        use v1::ToolErrorKind as K;
        Self {
            kind,
            message: message.into(),
            retryable: matches!(kind, K::Timeout | K::Upstream),
        }
    }

    fn invalid_args(message: impl Into<String>) -> Self {
        Self::new(v1::ToolErrorKind::InvalidArgs, message)
    }
}

impl From<ToolFailure> for v1::ToolError {
    fn from(f: ToolFailure) -> Self {
        Self {
            kind: f.kind as i32,
            message: f.message,
            retryable: f.retryable,
        }
    }
}

impl From<EditError> for ToolFailure {
    fn from(e: EditError) -> Self {
        let kind = match &e {
            EditError::Busy { .. } => v1::ToolErrorKind::Timeout,
            EditError::TooLarge { .. } | EditError::NotText { .. } => v1::ToolErrorKind::Denied,
            EditError::BadName { .. } | EditError::Io { .. } => v1::ToolErrorKind::Internal,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<index::IndexError> for ToolFailure {
    fn from(e: index::IndexError) -> Self {
        tracing::error!(error = %e, "memory search failed");
        let kind = match e {
            index::IndexError::Store(_) => v1::ToolErrorKind::Upstream,
            index::IndexError::Io { .. } => v1::ToolErrorKind::Internal,
        };
        Self::new(kind, "The memory index is unavailable right now.")
    }
}

/// Where `remember` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// MEMORY.md, seen in everyone's conversations.
    #[default]
    Shared,
    /// The caller's own `USER_<id>.md`.
    User,
}

/// Arguments of `remember`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RememberArgs {
    pub fact: String,
    #[serde(default)]
    pub section: Option<String>,
    #[serde(default)]
    pub scope: Option<Scope>,
}

/// Arguments of `memory_search`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    pub query: String,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// The memory tools of one workspace.
#[derive(Debug, Clone)]
pub struct MemoryTools {
    root: PathBuf,
    index: MemoryIndex,
    max_output_bytes: usize,
    enabled: Vec<MemoryTool>,
}

impl MemoryTools {
    /// The tools over `index`'s workspace; `[tools] disabled` switches them off by name.
    pub fn new(index: MemoryIndex, config: &ToolsConfig) -> Self {
        let enabled = MemoryTool::ALL
            .into_iter()
            .filter(|t| !config.disabled.iter().any(|d| d == t.name()))
            .collect();
        Self {
            root: index.root().to_owned(),
            index,
            max_output_bytes: config.max_output_bytes.max(TRUNCATION_NOTE_ROOM * 2),
            enabled,
        }
    }

    /// The tools to serve and advertise.
    pub fn enabled(&self) -> &[MemoryTool] {
        &self.enabled
    }

    /// Answers one `ToolCall` payload. Never fails: every failure is in the result.
    pub async fn handle(&self, tool: MemoryTool, payload: &[u8]) -> ToolResult {
        let started = Instant::now();
        let (call_id, outcome) = match ToolCall::decode(payload) {
            Ok(call) => {
                let outcome =
                    match tokio::time::timeout(tool.timeout(), self.call(tool, &call)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(ToolFailure::new(
                            v1::ToolErrorKind::Timeout,
                            format!(
                                "{} did not finish within {} ms",
                                tool.name(),
                                tool.timeout().as_millis()
                            ),
                        )),
                    };
                (call.call_id, outcome)
            }
            Err(error) => (
                String::new(),
                Err(ToolFailure::invalid_args(format!(
                    "the request is not a valid ToolCall protobuf message: {error}"
                ))),
            ),
        };
        let (outcome, truncated) = match outcome {
            Ok(text) => {
                let (text, truncated) = cap_output(text, self.max_output_bytes);
                (Outcome::Output(text), truncated)
            }
            Err(failure) => (Outcome::Error(failure.into()), false),
        };
        ToolResult {
            call_id,
            name: tool.name().to_owned(),
            outcome: Some(outcome),
            truncated,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    async fn call(&self, tool: MemoryTool, call: &ToolCall) -> Result<String, ToolFailure> {
        if !call.name.is_empty() && call.name != tool.name() {
            return Err(ToolFailure::invalid_args(format!(
                "the call names tool '{}' but was sent to '{}'",
                call.name,
                tool.name()
            )));
        }
        if !self.enabled.contains(&tool) {
            return Err(ToolFailure::new(
                v1::ToolErrorKind::Denied,
                format!("{} is switched off here", tool.name()),
            ));
        }
        let caller = call
            .context
            .as_ref()
            .and_then(|c| UserId::parse(&c.user_id));
        match tool {
            MemoryTool::Remember => {
                self.remember(caller.as_ref(), parse_args(&call.arguments_json)?)
                    .await
            }
            MemoryTool::Search => {
                self.search(caller.as_ref(), parse_args(&call.arguments_json)?)
                    .await
            }
        }
    }

    /// Appends `args.fact` as a bullet under its section, creating the file or
    /// heading if missing; a bullet already there is not added twice.
    pub async fn remember(
        &self,
        caller: Option<&UserId>,
        args: RememberArgs,
    ) -> Result<String, ToolFailure> {
        let fact = markdown::one_line(&args.fact);
        if fact.is_empty() {
            return Err(ToolFailure::invalid_args("fact is empty"));
        }
        if fact.len() > MAX_FACT_BYTES {
            return Err(ToolFailure::invalid_args(format!(
                "fact is {} bytes; keep it under {MAX_FACT_BYTES}, one fact per call",
                fact.len()
            )));
        }
        let section = match args.section.as_deref().map(section_name) {
            None => DEFAULT_SECTION.to_owned(),
            Some(Ok(section)) if section.is_empty() => DEFAULT_SECTION.to_owned(),
            Some(Ok(section)) => section,
            Some(Err(failure)) => return Err(failure),
        };
        let file = match args.scope.unwrap_or_default() {
            Scope::Shared => MemoryFile::memory_md(),
            Scope::User => match caller {
                Some(user) => MemoryFile::profile(user),
                None => {
                    return Err(ToolFailure::new(
                        v1::ToolErrorKind::Denied,
                        "scope \"user\" needs to know who is speaking, and this call carries no \
                         usable user id; use scope \"shared\" only if everyone may see the fact",
                    ));
                }
            },
        };
        let root = self.root.clone();
        let (name, owner) = (file.path.clone(), file.owner.clone());
        let (bullet_fact, heading) = (fact.clone(), section.clone());
        let edited = tokio::task::spawn_blocking(move || {
            edit::edit_locked(&root, &name, LOCK_WAIT, |current| {
                let text = current.unwrap_or_else(|| new_file(owner.as_ref()));
                match markdown::add_bullet(&text, &heading, &bullet_fact) {
                    Added::Changed(text) => Some(text),
                    Added::AlreadyThere => None,
                }
            })
        })
        .await
        .map_err(|e| {
            ToolFailure::new(
                v1::ToolErrorKind::Internal,
                format!("remember stopped unexpectedly: {e}"),
            )
        })??;
        // Searchable at once; if this fails the next search re-indexes anyway.
        if let Err(error) = self.index.refresh_file(&file).await {
            tracing::warn!(%error, file = file.path, "remembered fact not indexed yet");
        }
        tracing::info!(file = file.path, section, ?edited, "fact remembered");
        Ok(match edited {
            Edited::Written => format!("Remembered in {} under \"{section}\": {fact}", file.path),
            Edited::Unchanged => format!(
                "Already in {} under \"{section}\"; nothing changed: {fact}",
                file.path
            ),
        })
    }

    /// The best excerpts for `args.query` among the shared files and the caller's own.
    pub async fn search(
        &self,
        caller: Option<&UserId>,
        args: SearchArgs,
    ) -> Result<String, ToolFailure> {
        let query = args.query.trim();
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(ToolFailure::invalid_args(format!(
                "query is longer than {MAX_QUERY_CHARS} characters; use a few keywords"
            )));
        }
        if index::terms(query).is_empty() {
            return Err(ToolFailure::invalid_args(
                "query has no words to search for; use names or keywords, e.g. \"Alice birthday\"",
            ));
        }
        let limit = args.limit.unwrap_or(DEFAULT_RESULTS).clamp(1, MAX_RESULTS);
        let hits = self.index.search(query, caller, limit).await?;
        if hits.is_empty() {
            return Ok(format!("Nothing in memory matches \"{query}\"."));
        }
        let mut out = format!(
            "{} excerpt{} for \"{query}\", best first:\n",
            hits.len(),
            if hits.len() == 1 { "" } else { "s" }
        );
        for (i, hit) in hits.iter().enumerate() {
            let mut text = hit.text.as_str();
            let mut cut = "";
            if text.len() > MAX_EXCERPT_BYTES {
                let mut end = MAX_EXCERPT_BYTES;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text = &text[..end];
                cut = "…";
            }
            out.push_str(&format!(
                "\n{}. {} > {}\n{text}{cut}\n",
                i + 1,
                hit.path,
                index::label(hit)
            ));
        }
        Ok(out)
    }
}

/// What a memory file starts as when `remember` creates it.
pub(crate) fn new_file(owner: Option<&UserId>) -> String {
    match owner {
        None => MEMORY_TEMPLATE.to_owned(),
        Some(user) => format!(
            "# {} — memory of this person\n\nFacts only their conversations see. People may \
             edit this file.\n",
            user.profile_file()
        ),
    }
}

/// A heading as given by the model: one line, without leading `#`, bounded.
fn section_name(raw: &str) -> Result<String, ToolFailure> {
    let section = markdown::one_line(raw.trim().trim_start_matches('#'));
    if section.chars().count() > MAX_SECTION_CHARS {
        return Err(ToolFailure::invalid_args(format!(
            "section is longer than {MAX_SECTION_CHARS} characters; name a heading"
        )));
    }
    if section.chars().any(char::is_control) {
        return Err(ToolFailure::invalid_args(
            "section holds control characters",
        ));
    }
    Ok(section)
}

/// The model's arguments: a JSON object of the tool's fields (empty text counts as `{}`).
fn parse_args<T: for<'de> Deserialize<'de>>(json: &str) -> Result<T, ToolFailure> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| ToolFailure::invalid_args(format!("arguments are not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ToolFailure::invalid_args("arguments must be a JSON object"));
    }
    serde_json::from_value(value)
        .map_err(|e| ToolFailure::invalid_args(format!("invalid arguments: {e}")))
}

/// Cuts output to `max` bytes (on a character boundary) and says so.
fn cap_output(text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut cut = max.saturating_sub(TRUNCATION_NOTE_ROOM);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = text[..cut].to_owned();
    out.push_str(&format!(
        "\n[output truncated: showing {cut} of {} bytes; ask for fewer results]",
        text.len()
    ));
    (out, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn specs_are_valid_json_schemas_named_like_their_subjects() {
        for tool in MemoryTool::ALL {
            let spec = tool.spec("memory-svc/0.1.0");
            assert!(nexus_common::domain::ToolName::parse(&spec.name).is_ok());
            let schema: serde_json::Value =
                serde_json::from_str(&spec.parameters_json_schema).unwrap();
            assert_eq!(schema["type"], "object");
            assert_eq!(spec.provider, "memory-svc/0.1.0");
            assert!(!spec.requires_approval);
            assert!(spec.timeout_ms >= 1000);
        }
    }

    #[test]
    fn arguments_are_checked_before_anything_is_written() {
        let bad: Result<RememberArgs, _> = parse_args(r#"{"fact": "x", "user_id": "someone"}"#);
        assert!(bad.unwrap_err().message.contains("unknown field"));
        let bad: Result<RememberArgs, _> = parse_args(r#"{"fact": "x", "scope": "everyone"}"#);
        assert_eq!(bad.unwrap_err().kind, v1::ToolErrorKind::InvalidArgs);
        let bad: Result<SearchArgs, _> = parse_args("[1]");
        assert!(bad.unwrap_err().message.contains("JSON object"));
        let ok: RememberArgs = parse_args(r#"{"fact": "x", "scope": "user"}"#).unwrap();
        assert_eq!(ok.scope, Some(Scope::User));
        assert_eq!(section_name("## Pets ").unwrap(), "Pets");
        assert!(section_name(&"p".repeat(101)).is_err());
    }

    #[test]
    fn output_over_the_cap_is_cut_on_a_character_and_flagged() {
        let (out, truncated) = cap_output("é".repeat(1000), 500);
        assert!(truncated);
        assert!(out.len() <= 500);
        assert!(out.contains("[output truncated"));
        assert_eq!(cap_output("hi".into(), 500), ("hi".into(), false));
    }
}
