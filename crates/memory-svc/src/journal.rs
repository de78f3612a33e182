//! Daily journals and consolidated facts, written from the summaries stored in
//! SQL: `memories/YYYY-MM-DD.md` (in the configured timezone) gets one section
//! per summarized batch, and each lasting fact becomes a bullet in MEMORY.md
//! or in the `USER_<id>.md` of the person it is about.
//!
//! Writing is idempotent, so a summary can be applied again after a crash: a
//! section carries its summary's id in its marker and is appended only when
//! that marker is absent, and a fact already in its file is not added twice.
//! Files are append-only from here; people may edit them, and their edits stay.
//!
//! It must never call a model (agent-core writes the summaries) and never let
//! a section be filed without a marker naming its readers.

use std::{io, path::PathBuf, time::Duration};

use jiff::{Timestamp, civil::Date, tz::TimeZone};
use nexus_common::now_ms;
use serde::{Deserialize, Serialize};

use crate::{
    edit::{self, EditError},
    index::{JOURNAL_DIR, MemoryFile, MemoryIndex, UserId},
    markdown::{self, Added, JOURNAL_MARKER},
    store::{Consolidation, SessionStore, StoreError},
    tools::{DEFAULT_SECTION, new_file},
};

/// How long a journal write waits for another writer of the same file.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Summaries applied per pass; the rest wait for the next one.
const APPLY_BATCH: u32 = 100;
/// Longest summary written for one batch, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 4000;
/// Longest fact, in bytes (as for `remember`).
pub const MAX_FACT_BYTES: usize = 1000;
/// Facts one summary may carry.
pub const MAX_FACTS: usize = 20;
/// Bytes of a journal read to answer a question about its day.
const MAX_DAY_BYTES: u64 = 256 * 1024;

/// A lasting fact as stored with its summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFact {
    pub text: String,
    /// Empty: shared (MEMORY.md); else the participant it is about.
    #[serde(default)]
    pub user_id: String,
}

/// Why a summary could not be written to the files.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("stored facts of summary {id} do not parse: {error}")]
    Facts { id: i64, error: serde_json::Error },
    #[error("journal writer stopped unexpectedly: {0}")]
    Join(String),
}

/// The journals of one workspace, in one timezone.
#[derive(Debug, Clone)]
pub struct Journal {
    store: SessionStore,
    index: MemoryIndex,
    root: PathBuf,
    tz: TimeZone,
}

impl Journal {
    pub fn new(store: SessionStore, index: MemoryIndex, tz: TimeZone) -> Self {
        let root = index.root().to_owned();
        Self {
            store,
            index,
            root,
            tz,
        }
    }

    /// The local day of an instant (`Display` is `YYYY-MM-DD`).
    pub fn day_of(&self, at_ms: i64) -> Date {
        local_day(&self.tz, at_ms)
    }

    /// Today, in the configured timezone.
    pub fn today(&self) -> Date {
        self.day_of(now_ms())
    }

    fn clock(&self, at_ms: i64) -> String {
        Timestamp::from_millisecond(at_ms)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned_datetime(self.tz.clone())
            .strftime("%H:%M")
            .to_string()
    }

    /// Writes every stored summary whose files are not written yet. Returns how
    /// many were applied, or the first failure; a summary that fails stays for
    /// the next pass and does not hold up the others.
    pub async fn apply_pending(&self) -> Result<usize, JournalError> {
        let pending = self.store.unapplied_consolidations(APPLY_BATCH).await?;
        let mut applied = 0;
        let mut first_error = None;
        for c in pending {
            match self.apply(&c).await {
                Ok(()) => {
                    self.store.mark_applied(c.id, now_ms()).await?;
                    applied += 1;
                }
                Err(error) => {
                    tracing::warn!(%error, summary = c.id, "summary not written to the files yet");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(applied),
        }
    }

    /// The journal section and the facts of one summary, each written once.
    async fn apply(&self, c: &Consolidation) -> Result<(), JournalError> {
        let facts: Vec<StoredFact> = serde_json::from_str(&c.facts_json)
            .map_err(|error| JournalError::Facts { id: c.id, error })?;
        let name = format!("{}.md", c.day);
        let section = self.section(c);
        let marker = marker_prefix(c.id);
        let (root, day) = (self.root.clone(), c.day.clone());
        let name_in = name.clone();
        blocking(move || {
            edit::edit_locked_in(&root, Some(JOURNAL_DIR), &name_in, LOCK_WAIT, |current| {
                let text = current.unwrap_or_else(|| day_header(&day));
                if text.lines().any(|l| l.trim_start().starts_with(&marker)) {
                    return None;
                }
                let mut text = text;
                if !text.is_empty() && !text.ends_with("\n\n") {
                    text.push_str(if text.ends_with('\n') { "\n" } else { "\n\n" });
                }
                text.push_str(&section);
                Some(text)
            })
        })
        .await??;
        self.refresh(&MemoryFile {
            path: format!("{JOURNAL_DIR}/{name}"),
            owner: None,
        })
        .await;

        for fact in facts {
            let file = match UserId::parse(&fact.user_id) {
                Some(user) if c.users.contains(&fact.user_id) => MemoryFile::profile(&user),
                // Not a participant (or not set): the fact is kept shared only when unowned.
                _ if fact.user_id.is_empty() => MemoryFile::memory_md(),
                _ => {
                    tracing::warn!(
                        summary = c.id,
                        "fact about someone who was not in the conversation dropped"
                    );
                    continue;
                }
            };
            let (root, path, owner) = (self.root.clone(), file.path.clone(), file.owner.clone());
            let text = markdown::one_line(&fact.text);
            blocking(move || {
                edit::edit_locked(&root, &path, LOCK_WAIT, |current| {
                    let current = current.unwrap_or_else(|| new_file(owner.as_ref()));
                    match markdown::add_bullet(&current, DEFAULT_SECTION, &text) {
                        Added::Changed(text) => Some(text),
                        Added::AlreadyThere => None,
                    }
                })
            })
            .await??;
            self.refresh(&file).await;
        }
        tracing::info!(
            summary = c.id,
            session = c.session_id,
            journal = %format!("{JOURNAL_DIR}/{name}"),
            turns = c.turns,
            "journal written"
        );
        Ok(())
    }

    /// Searchable at once; if this fails the next search re-indexes anyway.
    async fn refresh(&self, file: &MemoryFile) {
        if let Err(error) = self.index.refresh_file(file).await {
            tracing::warn!(%error, file = file.path, "journal not indexed yet");
        }
    }

    /// One summary as a journal section: a heading a person can scan, the marker
    /// that files it (its readers are the conversation's participants), the bullets.
    pub fn section(&self, c: &Consolidation) -> String {
        let span = {
            let (from, to) = (self.clock(c.first_at_ms), self.clock(c.last_at_ms));
            if from == to {
                from
            } else {
                format!("{from}–{to}")
            }
        };
        let who = if c.users.is_empty() {
            "unknown".to_owned()
        } else {
            c.users.join(", ")
        };
        let session = markdown::one_line(&c.session_id.replace("<!--", "< !--"));
        let session: String = session.chars().take(120).collect();
        let turns = if c.turns == 1 {
            "1 turn".to_owned()
        } else {
            format!("{} turns", c.turns)
        };
        format!(
            "## {span} · {session} · {who} ({turns})\n{}users={} -->\n\n{}\n",
            marker_prefix(c.id),
            c.users.join(" "),
            bullets(&c.summary),
        )
    }

    /// The sections of a day's journal that `reader` may see (its own
    /// conversations, and parts without a marker), at most `budget` bytes.
    pub async fn day_for_reader(
        &self,
        day: Date,
        reader: Option<&UserId>,
        budget: usize,
    ) -> io::Result<Option<String>> {
        let path = self.root.join(JOURNAL_DIR).join(format!("{day}.md"));
        let text = match read_head(&path, MAX_DAY_BYTES).await {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut out = String::new();
        for section in sections(&text) {
            let visible = match section.readers {
                None => true,
                Some(readers) => reader.is_some_and(|r| readers.iter().any(|u| u == r.as_str())),
            };
            if !visible || section.text.trim().is_empty() {
                continue;
            }
            if out.len() + section.text.len() > budget {
                out.push_str("(more of this day's journal was left out)\n");
                break;
            }
            out.push_str(&section.text);
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        Ok((!out.trim().is_empty()).then_some(out))
    }
}

/// The day an instant falls on in `tz`.
pub fn local_day(tz: &TimeZone, at_ms: i64) -> Date {
    Timestamp::from_millisecond(at_ms)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned_datetime(tz.clone())
        .date()
}

/// `<!-- nexus:journal id=<id> `: how a section's marker starts.
fn marker_prefix(id: i64) -> String {
    format!("{JOURNAL_MARKER}id={id} ")
}

/// The first lines of a new day's journal.
fn day_header(day: &str) -> String {
    let title = day
        .parse::<Date>()
        .map(|d| d.strftime("%A %-d %B %Y").to_string())
        .unwrap_or_else(|_| day.to_owned());
    format!(
        "# Journal · {title}\n\nWhat happened in each conversation on this day, summarized by Nexus as \
         conversations happen. New sections are appended; edits made here are kept.\n\n"
    )
}

/// A summary as Markdown bullets that cannot break the file's structure: no
/// headings, no comments (a marker inside a summary must not file anything).
fn bullets(summary: &str) -> String {
    let mut out = String::new();
    for line in summary.lines() {
        let line = line.trim_end().replace("<!--", "< !--");
        let body = line.trim_start();
        if body.is_empty() {
            continue;
        }
        let body = body.trim_start_matches('#').trim_start();
        let indented = line.starts_with("  ") && !out.is_empty();
        let item = if body.starts_with("- ") || body.starts_with("* ") {
            body.to_owned()
        } else {
            format!("- {body}")
        };
        let item = if indented { format!("  {item}") } else { item };
        if out.len() + item.len() + 1 > MAX_SUMMARY_BYTES {
            out.push_str("- …\n");
            break;
        }
        out.push_str(&item);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("- (no summary)\n");
    }
    out
}

/// A part of a journal: the text before the first `##`, or one `##` section.
struct Section {
    text: String,
    readers: Option<Vec<String>>,
}

fn sections(text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    let mut current = Section {
        text: String::new(),
        readers: None,
    };
    let mut marker_allowed = false;
    for line in text.lines() {
        if line.starts_with("## ") {
            out.push(std::mem::replace(
                &mut current,
                Section {
                    text: String::new(),
                    readers: None,
                },
            ));
            marker_allowed = true;
        } else if let Some(users) = markdown::journal_marker_users(line) {
            if marker_allowed && current.readers.is_none() {
                current.readers = Some(users);
            }
            continue;
        } else if !line.trim().is_empty() {
            marker_allowed = false;
        }
        current.text.push_str(line);
        current.text.push('\n');
    }
    out.push(current);
    // The day's title and intro say nothing on their own.
    out.retain(|s| {
        s.text
            .lines()
            .any(|l| !l.starts_with('#') && !l.trim().is_empty())
    });
    out.into_iter()
        .filter(|s| !s.text.starts_with("# Journal"))
        .collect()
}

/// Days a question names, most recent first: "today", "yesterday", weekday
/// names (the last such day before today) and ISO dates. At most three.
pub fn days_named(query: &str, today: Date) -> Vec<Date> {
    let mut out: Vec<Date> = Vec::new();
    let mut add = |d: Date| {
        if !out.contains(&d) && out.len() < 3 {
            out.push(d);
        }
    };
    for word in query.split(|c: char| !(c.is_alphanumeric() || c == '-')) {
        let lower = word.to_lowercase();
        let offset = match lower.as_str() {
            "today" => Some(0),
            "yesterday" => Some(1),
            _ => weekday_number(&lower).map(|wanted| {
                let now = i64::from(today.weekday().to_monday_zero_offset());
                let back = (now - wanted).rem_euclid(7);
                if back == 0 { 7 } else { back }
            }),
        };
        if let Some(days) = offset {
            if let Ok(d) = today.checked_sub(jiff::Span::new().days(days)) {
                add(d);
            }
        } else if word.len() == 10
            && let Ok(d) = word.parse::<Date>()
        {
            add(d);
        }
    }
    out
}

/// Monday 0 … Sunday 6, for full names only ("sat" and "sun" are words too).
fn weekday_number(word: &str) -> Option<i64> {
    const NAMES: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    NAMES.iter().position(|n| *n == word).map(|i| i as i64)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JournalError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JournalError::Join(e.to_string()))
}

async fn read_head(path: &std::path::Path, limit: u64) -> io::Result<String> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn day(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn the_day_of_a_turn_is_the_day_in_the_configured_timezone() {
        // 2026-11-24 20:30 UTC is already the 25th in Auckland, still the 24th in New York.
        let at_ms = 1_795_552_200_000;
        let in_tz = |name: &str| local_day(&TimeZone::get(name).unwrap(), at_ms).to_string();
        assert_eq!(in_tz("UTC"), "2026-11-24");
        assert_eq!(in_tz("Pacific/Auckland"), "2026-11-25");
        assert_eq!(in_tz("America/New_York"), "2026-11-24");
    }

    #[test]
    fn a_question_names_days_by_word_weekday_or_date() {
        // 2026-11-24 is a Tuesday.
        let today = day("2026-11-24");
        let named = |q: &str| -> Vec<String> {
            days_named(q, today)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(named("What did we discuss on Monday?"), ["2026-11-23"]);
        assert_eq!(named("and last tuesday"), ["2026-11-17"]);
        assert_eq!(named("yesterday or today"), ["2026-11-23", "2026-11-24"]);
        assert_eq!(named("the 2026-11-01 meeting"), ["2026-11-01"]);
        assert_eq!(
            named("we sat in the sun on 2026-13-01"),
            Vec::<String>::new()
        );
        assert_eq!(
            named("monday tuesday wednesday thursday").len(),
            3,
            "at most three days"
        );
    }

    #[test]
    fn a_summary_becomes_bullets_without_headings_or_comments() {
        let out = bullets(
            "Planned the launch.\n\n## Heading\n- kept\n  - nested\n<!-- nexus:journal id=1 users=x -->",
        );
        assert_eq!(
            out,
            "- Planned the launch.\n- Heading\n- kept\n  - nested\n- < !-- nexus:journal id=1 users=x -->\n"
        );
        assert_eq!(bullets(" \n"), "- (no summary)\n");
        assert!(bullets(&"word ".repeat(5000)).len() <= MAX_SUMMARY_BYTES + 8);
    }

    #[test]
    fn a_days_sections_are_split_by_their_readers() {
        let text = "# Journal · Monday\n\nintro\n\n## 09:00 · a\n<!-- nexus:journal id=1 users=alice -->\n\n- one\n\n\
                    ## 10:00 · b\n<!-- nexus:journal id=2 users=bob -->\n- two\n\n## Notes\n- by hand\n";
        let got: Vec<(String, Option<Vec<String>>)> = sections(text)
            .into_iter()
            .map(|s| (s.text.lines().next().unwrap().to_owned(), s.readers))
            .collect();
        assert_eq!(
            got,
            [
                ("## 09:00 · a".to_owned(), Some(vec!["alice".to_owned()])),
                ("## 10:00 · b".to_owned(), Some(vec!["bob".to_owned()])),
                ("## Notes".to_owned(), None),
            ]
        );
    }
}
