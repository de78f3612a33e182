//! The memory tools memory-svc serves on `N.tool.<name>`, beside tool-runner's:
//! `remember` appends a fact under a heading of MEMORY.md (or of the caller's
//! own `USER_<id>.md`), `memory_search` ranks excerpts of the memory the
//! caller may read. From `ToolCall` bytes to a `ToolResult`, whatever happens.
//!
//! The caller's user id comes from `ToolCall.context`, never from the model's
//! arguments. It must never answer a call with anything but a `ToolResult`
//! (failures are results with a kind), and never touch NATS: `server` does.

use std::{path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use nexus_common::config::ToolsConfig;
use nexus_tools::{Caller, DynTool, Tool, ToolErrorKind, ToolFailure, typed};
use schemars::JsonSchema;
use serde::Deserialize;

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

/// The names of the memory tools.
pub const REMEMBER: &str = "remember";
pub const MEMORY_SEARCH: &str = "memory_search";

impl From<EditError> for ToolFailure {
    fn from(e: EditError) -> Self {
        let kind = match &e {
            EditError::Busy { .. } => ToolErrorKind::Timeout,
            EditError::TooLarge { .. } | EditError::NotText { .. } => ToolErrorKind::Denied,
            EditError::BadName { .. } | EditError::Io { .. } => ToolErrorKind::Internal,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<index::IndexError> for ToolFailure {
    fn from(e: index::IndexError) -> Self {
        tracing::error!(error = %e, "memory search failed");
        let kind = match e {
            index::IndexError::Store(_) => ToolErrorKind::Upstream,
            index::IndexError::Io { .. } => ToolErrorKind::Internal,
        };
        Self::new(kind, "The memory index is unavailable right now.")
    }
}

/// Where `remember` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// MEMORY.md, seen in everyone's conversations.
    #[default]
    Shared,
    /// The caller's own `USER_<id>.md`.
    User,
}

/// Arguments of `remember`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RememberArgs {
    /// The fact, as one self-contained sentence (names, not pronouns)
    pub fact: String,
    /// Heading to file it under, e.g. "Preferences"; default "Facts"
    #[serde(default)]
    pub section: Option<String>,
    /// "shared" (default): MEMORY.md, which everyone's conversations see; "user": the
    /// memory of the person you are talking to
    #[serde(default)]
    pub scope: Option<Scope>,
}

/// Arguments of `memory_search`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Keywords or a question, e.g. "Alice birthday"
    pub query: String,
    /// Excerpts to return; default 5
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_RESULTS))]
    pub limit: Option<u32>,
}

/// The memory tools of one workspace.
#[derive(Debug, Clone)]
pub struct MemoryTools {
    root: PathBuf,
    index: MemoryIndex,
}

impl MemoryTools {
    pub fn new(index: MemoryIndex) -> Self {
        Self {
            root: index.root().to_owned(),
            index,
        }
    }

    /// The tools to serve: both, minus those `[tools] disabled` names.
    pub fn serve(self: &Arc<Self>, config: &ToolsConfig) -> Vec<Arc<dyn DynTool>> {
        let all = [
            (REMEMBER, typed(Remember(self.clone()))),
            (MEMORY_SEARCH, typed(Search(self.clone()))),
        ];
        all.into_iter()
            .filter(|(name, _)| !config.disabled.iter().any(|d| d == name))
            .map(|(_, tool)| tool)
            .collect()
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
                    return Err(ToolFailure::denied(
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
        .map_err(|e| ToolFailure::internal(format!("remember stopped unexpectedly: {e}")))??;
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

/// `remember`: a fact into MEMORY.md or the caller's own profile.
struct Remember(Arc<MemoryTools>);

#[async_trait]
impl Tool for Remember {
    type Args = RememberArgs;
    const NAME: &'static str = REMEMBER;

    fn description(&self) -> String {
        "Save a fact to long-term memory so it is known in later conversations. \
         scope \"shared\" (default) writes to MEMORY.md, which everyone's conversations \
         see; scope \"user\" writes to the memory of the person you are talking to, which \
         only their conversations see. Use \"user\" for anything personal about them. \
         People can read and edit these Markdown files."
            .into()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(15)
    }

    async fn call(&self, caller: &Caller, args: RememberArgs) -> Result<String, ToolFailure> {
        // Who speaks comes from the call's context, never from the model's arguments.
        self.0
            .remember(UserId::parse(&caller.user_id).as_ref(), args)
            .await
    }
}

/// `memory_search`: excerpts of the memory the caller may read.
struct Search(Arc<MemoryTools>);

#[async_trait]
impl Tool for Search {
    type Args = SearchArgs;
    const NAME: &'static str = MEMORY_SEARCH;

    fn description(&self) -> String {
        "Search long-term memory (MEMORY.md, daily journals in memories/, and the memory \
         of the person you are talking to) by keywords. Returns the most relevant \
         excerpts, best first, each with its file, heading and lines."
            .into()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn call(&self, caller: &Caller, args: SearchArgs) -> Result<String, ToolFailure> {
        self.0
            .search(UserId::parse(&caller.user_id).as_ref(), args)
            .await
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse_args<T: for<'de> Deserialize<'de>>(json: &str) -> Result<T, ToolFailure> {
        nexus_tools::parse_args(serde_json::from_str(json).unwrap())
    }

    #[tokio::test]
    async fn specs_are_object_schemas_named_like_their_subjects() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = crate::store::SessionStore::connect(&url).await.unwrap();
        let tools = Arc::new(MemoryTools::new(MemoryIndex::new(store, dir.path())));
        let served = tools.serve(&ToolsConfig::default());
        let names: Vec<String> = served.iter().map(|t| t.spec().name).collect();
        assert_eq!(names, [REMEMBER, MEMORY_SEARCH]);
        for tool in &served {
            let spec = tool.spec();
            assert!(nexus_common::domain::ToolName::parse(&spec.name).is_ok());
            assert_eq!(spec.parameters["type"], "object");
            assert!(!spec.requires_approval);
            assert!(spec.timeout >= Duration::from_secs(1));
        }
        let config = ToolsConfig {
            disabled: vec![REMEMBER.into()],
            ..Default::default()
        };
        assert_eq!(tools.serve(&config).len(), 1);
    }

    #[test]
    fn arguments_are_checked_before_anything_is_written() {
        let bad: Result<RememberArgs, _> = parse_args(r#"{"fact": "x", "user_id": "someone"}"#);
        assert!(bad.unwrap_err().message.contains("unknown field"));
        let bad: Result<RememberArgs, _> = parse_args(r#"{"fact": "x", "scope": "everyone"}"#);
        assert_eq!(bad.unwrap_err().kind, ToolErrorKind::InvalidArgs);
        let ok: RememberArgs = parse_args(r#"{"fact": "x", "scope": "user"}"#).unwrap();
        assert_eq!(ok.scope, Some(Scope::User));
        assert_eq!(section_name("## Pets ").unwrap(), "Pets");
        assert!(section_name(&"p".repeat(101)).is_err());
    }
}
