//! Retrieval over the Markdown memory: which files are memory (MEMORY.md,
//! `USER_<id>.md`, `memories/*.md`), who may read each, keeping their index
//! fresh, and turning a question into ranked excerpts.
//!
//! Freshness is checked where it matters, on the request: a file whose size or
//! mtime differs from what was indexed (or that changed too close to its
//! indexing for mtime to tell) is read and hashed, and re-chunked when its
//! hash differs. So a person's edit is searchable on the next turn, with no
//! watcher and no restart, on every replica.
//!
//! It must never let a search see another user's `USER_<id>.md`, and never
//! follow a symlink out of `memories/`.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::UNIX_EPOCH,
};

use nexus_common::now_ms;
use sha2::{Digest as _, Sha256};
use tokio::{io::AsyncReadExt as _, sync::Mutex};

use crate::{
    files::is_file_safe,
    markdown::{self, HEADING_SEPARATOR},
    store::{ChunkHit, ChunkQuery, IndexedFile, KeptChunks, SessionStore, StoreError},
};

/// The shared long-term memory.
pub const MEMORY_FILE: &str = "MEMORY.md";
/// Daily journals and other shared notes: `memories/<name>.md`, not recursive.
pub const JOURNAL_DIR: &str = "memories";
/// Bytes of one file that are indexed; the rest of a larger file is not searchable.
pub const MAX_INDEXED_BYTES: u64 = 4 * 1024 * 1024;
/// Journals indexed at most (by name, newest days last in a listing).
const MAX_JOURNALS: usize = 10_000;
/// A file modified this close before it was indexed is re-hashed on the next
/// check, because an edit within mtime's granularity keeps the same stat.
const RACY_NS: i64 = 2_000_000_000;
/// Words of a query that are searched for at most.
const MAX_TERMS: usize = 32;

/// Words that say nothing about what is asked: questions, pronouns, glue.
const STOP_WORDS: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "aren",
    "as",
    "at",
    "be",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "didn",
    "do",
    "does",
    "doesn",
    "doing",
    "don",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "if",
    "in",
    "into",
    "is",
    "isn",
    "it",
    "its",
    "itself",
    "just",
    "know",
    "ll",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "please",
    "re",
    "recall",
    "remember",
    "said",
    "same",
    "say",
    "she",
    "should",
    "so",
    "some",
    "such",
    "tell",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "us",
    "ve",
    "very",
    "was",
    "wasn",
    "we",
    "were",
    "weren",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "won",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// A user id that can name `USER_<id>.md` (see [`is_file_safe`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    /// `None` for an id that cannot name a file (empty, too long, or not `[A-Za-z0-9_-]`).
    pub fn parse(s: &str) -> Option<Self> {
        is_file_safe(s).then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `USER_<id>.md`, relative to the workspace.
    pub fn profile_file(&self) -> String {
        format!("USER_{}.md", self.0)
    }
}

/// One Markdown file of the memory and whom it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryFile {
    /// Relative to the workspace, with `/`.
    pub path: String,
    /// The user a `USER_<id>.md` belongs to; `None` for shared files.
    pub owner: Option<UserId>,
}

impl MemoryFile {
    pub fn memory_md() -> Self {
        Self {
            path: MEMORY_FILE.to_owned(),
            owner: None,
        }
    }

    pub fn profile(user: &UserId) -> Self {
        Self {
            path: user.profile_file(),
            owner: Some(user.clone()),
        }
    }

    fn owner_str(&self) -> &str {
        self.owner.as_ref().map_or("", UserId::as_str)
    }
}

/// Why the index could not answer.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {path}: {error}")]
    Io { path: String, error: io::Error },
}

/// The search index of one workspace's Markdown memory.
#[derive(Debug, Clone)]
pub struct MemoryIndex {
    store: SessionStore,
    root: PathBuf,
    /// One re-index at a time in this process: concurrent requests that find
    /// the same stale file wait instead of each re-reading it.
    reindexing: Arc<Mutex<()>>,
}

impl MemoryIndex {
    pub fn new(store: SessionStore, root: impl Into<PathBuf>) -> Self {
        Self {
            store,
            root: root.into(),
            reindexing: Arc::new(Mutex::new(())),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Ranked excerpts of what `reader` may see: the shared files and, for a
    /// user, their own `USER_<id>.md`. Every such file is brought up to date first.
    pub async fn search(
        &self,
        query: &str,
        reader: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<ChunkHit>, IndexError> {
        let terms = terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        self.refresh(reader).await?;
        Ok(self
            .store
            .search_chunks(ChunkQuery {
                terms: &terms,
                owner: reader.map_or("", UserId::as_str),
                path: None,
                limit,
            })
            .await?)
    }

    /// Ranked excerpts of MEMORY.md alone, after bringing it up to date.
    pub async fn search_memory_md(
        &self,
        query: &str,
        limit: u32,
    ) -> Result<Vec<ChunkHit>, IndexError> {
        let terms = terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        self.refresh_file(&MemoryFile::memory_md()).await?;
        Ok(self
            .store
            .search_chunks(ChunkQuery {
                terms: &terms,
                owner: "",
                path: Some(MEMORY_FILE),
                limit,
            })
            .await?)
    }

    /// Brings the index of every file `reader` may see up to date with the
    /// disk, and forgets indexed files of that scope that are gone.
    pub async fn refresh(&self, reader: Option<&UserId>) -> Result<(), IndexError> {
        let mut files = vec![MemoryFile::memory_md()];
        files.extend(reader.map(MemoryFile::profile));
        files.extend(self.journals().await?);
        let mut known: HashMap<String, IndexedFile> = self
            .store
            .indexed_files(reader.map_or("", UserId::as_str))
            .await?
            .into_iter()
            .map(|f| (f.path.clone(), f))
            .collect();
        for file in &files {
            let row = known.remove(&file.path);
            self.sync(file, row.as_ref()).await?;
        }
        // What is left was indexed once and is no longer listed (a deleted journal).
        for path in known.into_keys() {
            self.store.forget_indexed_file(&path).await?;
        }
        Ok(())
    }

    /// Brings one file's index up to date with the disk.
    pub async fn refresh_file(&self, file: &MemoryFile) -> Result<(), IndexError> {
        let row = self.store.indexed_file(&file.path).await?;
        self.sync(file, row.as_ref()).await
    }

    /// `memories/*.md` that are plain files with file-safe names.
    async fn journals(&self) -> Result<Vec<MemoryFile>, IndexError> {
        let dir = self.root.join(JOURNAL_DIR);
        let io_error = |error| IndexError::Io {
            path: JOURNAL_DIR.to_owned(),
            error,
        };
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io_error)? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".md") else {
                continue;
            };
            if !is_journal_stem(stem) {
                continue;
            }
            // file_type does not follow symlinks: a link out of the workspace is skipped.
            if !entry.file_type().await.map_err(io_error)?.is_file() {
                continue;
            }
            out.push(MemoryFile {
                path: format!("{JOURNAL_DIR}/{name}"),
                owner: None,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        if out.len() > MAX_JOURNALS {
            tracing::warn!(
                journals = out.len(),
                indexed = MAX_JOURNALS,
                "too many journals; only the last ones by name are searchable"
            );
            out.drain(..out.len() - MAX_JOURNALS);
        }
        Ok(out)
    }

    /// Re-indexes `file` if it changed since `row` was stored, forgets it if it is gone.
    async fn sync(&self, file: &MemoryFile, row: Option<&IndexedFile>) -> Result<(), IndexError> {
        let io_error = |error| IndexError::Io {
            path: file.path.clone(),
            error,
        };
        let path = self.root.join(&file.path);
        let meta = match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Some(meta),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(e)),
        };
        let Some(meta) = meta else {
            if row.is_some() {
                self.store.forget_indexed_file(&file.path).await?;
            }
            return Ok(());
        };
        let size_bytes = i64::try_from(meta.len()).unwrap_or(i64::MAX);
        let mtime_ns = mtime_ns(&meta);
        let fresh = |row: &IndexedFile| {
            row.size_bytes == size_bytes && row.mtime_ns == mtime_ns && !is_racy(row)
        };
        if row.is_some_and(fresh) {
            return Ok(());
        }

        let _one_at_a_time = self.reindexing.lock().await;
        // Another request may have re-indexed it while this one waited.
        let row = self.store.indexed_file(&file.path).await?;
        if row.as_ref().is_some_and(fresh) {
            return Ok(());
        }
        let bytes = read_head(&path, MAX_INDEXED_BYTES)
            .await
            .map_err(io_error)?;
        if meta.len() > MAX_INDEXED_BYTES {
            tracing::warn!(
                file = file.path,
                bytes = meta.len(),
                indexed = MAX_INDEXED_BYTES,
                "file too large to index whole; its end is not searchable"
            );
        }
        let indexed = IndexedFile {
            path: file.path.clone(),
            owner: file.owner_str().to_owned(),
            size_bytes,
            mtime_ns,
            sha256: sha256_hex(&bytes),
            indexed_at_ms: now_ms(),
        };
        if row
            .as_ref()
            .is_some_and(|r| r.sha256 == indexed.sha256 && r.owner == indexed.owner)
        {
            self.store.touch_indexed_file(&indexed).await?;
            return Ok(());
        }
        let chunks = chunks_of(&file.path, &bytes);
        let kept = row
            .as_ref()
            .and_then(|row| kept_chunks(&file.path, row, &indexed, &bytes, &chunks));
        self.store.update_chunks(&indexed, &chunks, kept).await?;
        tracing::debug!(
            file = file.path,
            chunks = chunks.len(),
            kept = kept.map_or(0, |k| k.same),
            "memory file indexed"
        );
        Ok(())
    }
}

/// The searchable chunks of a file's bytes.
fn chunks_of(path: &str, bytes: &[u8]) -> Vec<markdown::Chunk> {
    let mut chunks = markdown::chunks(&String::from_utf8_lossy(bytes));
    // Only a journal's sections are filed by reader; elsewhere a marker means nothing.
    if !is_journal_path(path) {
        for chunk in &mut chunks {
            chunk.readers = None;
        }
    }
    chunks
}

/// When the file only grew since `row` was indexed (its old bytes are the new
/// bytes' start, as when a journal gets a section), the stored chunks that are
/// still right: those of the old bytes up to the first that differs (the last
/// paragraph may have grown).
fn kept_chunks(
    path: &str,
    row: &IndexedFile,
    now: &IndexedFile,
    bytes: &[u8],
    chunks: &[markdown::Chunk],
) -> Option<KeptChunks> {
    let old_len = usize::try_from(row.size_bytes).ok()?;
    if row.owner != now.owner || old_len > bytes.len() || old_len as u64 > MAX_INDEXED_BYTES {
        return None;
    }
    let old = &bytes[..old_len];
    if sha256_hex(old) != row.sha256 {
        return None;
    }
    let before = chunks_of(path, old);
    let same = before
        .iter()
        .zip(chunks)
        .take_while(|(a, b)| a == b)
        .count();
    Some(KeptChunks {
        stored: before.len(),
        same,
    })
}

/// Whether `path` (relative to the workspace) is under `memories/`.
pub fn is_journal_path(path: &str) -> bool {
    path.strip_prefix(JOURNAL_DIR)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// A journal's name without `.md`: `2025-03-01`, or any other file-safe name.
fn is_journal_stem(stem: &str) -> bool {
    !stem.is_empty()
        && stem.len() <= 128
        && !stem.starts_with('.')
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Whether `row`'s stat may hide an edit made right after it was indexed. An
/// mtime far in the future (clock skew, copied files) is not: any edit moves it.
fn is_racy(row: &IndexedFile) -> bool {
    let indexed_at_ns = row.indexed_at_ms.saturating_mul(1_000_000);
    (indexed_at_ns.saturating_sub(RACY_NS)..=indexed_at_ns.saturating_add(RACY_NS))
        .contains(&row.mtime_ns)
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

async fn read_head(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The words of a query worth searching for: lowercased runs of letters and
/// digits, two characters or more, without stop words or repeats.
pub fn terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in query.split(|c: char| !(c.is_alphabetic() || c.is_ascii_digit())) {
        let word = word.to_lowercase();
        if word.chars().count() < 2 || STOP_WORDS.contains(&word.as_str()) || out.contains(&word) {
            continue;
        }
        out.push(word);
        if out.len() == MAX_TERMS {
            break;
        }
    }
    out
}

/// How a hit is labelled: `<heading path> (lines a-b)`.
pub fn label(hit: &ChunkHit) -> String {
    let heading = if hit.heading.is_empty() {
        "(before the first heading)"
    } else {
        hit.heading.as_str()
    };
    let lines = if hit.line_start == hit.line_end {
        format!("line {}", hit.line_start)
    } else {
        format!("lines {}-{}", hit.line_start, hit.line_end)
    };
    format!("{heading} ({lines})")
}

/// MEMORY.md as excerpts: the best `hits` that fit in `budget` bytes (note
/// included), in file order, each under a `## <heading path>` label. `None`
/// when not even one excerpt fits, or there are none.
pub fn excerpts(total_bytes: u64, hits: &[ChunkHit], budget: usize) -> Option<String> {
    /// Text worth showing at least, when the best hit has to be cut to fit.
    const MIN_CUT: usize = 80;
    let note = format!(
        "[{MEMORY_FILE} is {total_bytes} bytes, more than fits here: these are its parts most \
         relevant to the message, each under its heading path ({}-separated).]\n",
        HEADING_SEPARATOR.trim()
    );
    let mut left = budget.checked_sub(note.len())?;
    let mut chosen: Vec<(u32, String)> = Vec::new();
    for hit in hits {
        let head = format!("\n## {}\n", label(hit));
        let block_len = head.len() + hit.text.len() + 1;
        if block_len <= left {
            left -= block_len;
            chosen.push((hit.line_start, format!("{head}{}\n", hit.text)));
        } else if chosen.is_empty() && left >= head.len() + MIN_CUT {
            // The most relevant part is too long: show its beginning rather than nothing.
            let room = left - head.len() - "…\n".len();
            let mut cut = room.min(hit.text.len());
            while !hit.text.is_char_boundary(cut) {
                cut -= 1;
            }
            let block = format!("{head}{}…\n", &hit.text[..cut]);
            left -= block.len();
            chosen.push((hit.line_start, block));
        }
    }
    if chosen.is_empty() {
        return None;
    }
    chosen.sort_by_key(|(line, _)| *line);
    let mut out = note;
    for (_, block) in chosen {
        out.push_str(&block);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn hit(heading: &str, line: u32, text: &str) -> ChunkHit {
        ChunkHit {
            path: MEMORY_FILE.into(),
            heading: heading.into(),
            line_start: line,
            line_end: line,
            text: text.into(),
            score: 1.0,
        }
    }

    #[test]
    fn queries_keep_their_meaningful_words_once() {
        assert_eq!(
            terms("What is the name of Alice's dog? The DOG, I mean."),
            ["name", "alice", "dog", "mean"]
        );
        assert_eq!(terms("Straße 2025 x"), ["straße", "2025"]);
        assert!(terms("what is it?").is_empty());
        assert!(terms("\"OR\" NEAR(a b) *").contains(&"near".to_owned()));
    }

    #[test]
    fn excerpts_fit_the_budget_in_file_order_with_their_headings() {
        let hits = [
            hit("Memory > Pets", 40, "- Alice's dog is Biscuit."),
            hit("Memory > Work", 12, "- Alice works at Acme."),
            hit("Memory > Long", 90, &"x".repeat(5000)),
        ];
        let out = excerpts(100_000, &hits, 400).unwrap();
        assert!(out.len() <= 400, "{}", out.len());
        assert!(out.starts_with("[MEMORY.md is 100000 bytes"), "{out}");
        let work = out
            .find("## Memory > Work (line 12)\n- Alice works at Acme.")
            .unwrap();
        let pets = out
            .find("## Memory > Pets (line 40)\n- Alice's dog is Biscuit.")
            .unwrap();
        assert!(work < pets, "file order: {out}");
        assert!(!out.contains("xxx"), "a hit that does not fit is left out");
    }

    #[test]
    fn a_best_hit_larger_than_the_budget_is_cut_and_a_tiny_budget_gives_nothing() {
        let long = "é".repeat(3000);
        let hits = [hit("", 1, &long)];
        let out = excerpts(9000, &hits, 600).unwrap();
        assert!(out.len() <= 600, "{}", out.len());
        assert!(out.contains("## (before the first heading) (line 1)\néé"));
        assert!(out.ends_with("…\n"));
        assert_eq!(excerpts(9000, &hits, 100), None);
        assert_eq!(excerpts(9000, &[], 10_000), None);
    }

    #[test]
    fn only_plain_names_are_journals() {
        for ok in ["2025-03-01", "notes_v2", "a.b"] {
            assert!(is_journal_stem(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a b", "ü", &"x".repeat(129)] {
            assert!(!is_journal_stem(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_grown_file_keeps_the_chunks_of_its_unchanged_start() {
        let path = "memories/2026-12-04.md";
        let indexed_as = |bytes: &[u8]| IndexedFile {
            path: path.into(),
            owner: String::new(),
            size_bytes: i64::try_from(bytes.len()).unwrap(),
            mtime_ns: 1,
            sha256: sha256_hex(bytes),
            indexed_at_ms: 1,
        };
        let kept = |old: &str, new: &str| {
            let new = new.as_bytes();
            kept_chunks(
                path,
                &indexed_as(old.as_bytes()),
                &indexed_as(new),
                new,
                &chunks_of(path, new),
            )
        };
        let day = "# Journal\n\n## 09:00\n<!-- nexus:journal id=1 users=a -->\n\n- one\n- two\n";
        let section = "\n## 10:00\n<!-- nexus:journal id=2 users=b -->\n\n- three\n";
        assert_eq!(
            kept(day, &format!("{day}{section}")),
            Some(KeptChunks { stored: 2, same: 2 })
        );
        // The last item grew a line: it is indexed again, the first stays.
        assert_eq!(
            kept(day, &format!("{day}  more of two\n")),
            Some(KeptChunks { stored: 2, same: 1 })
        );
        // An edit before the end, a shrunk file or another owner: all again.
        assert_eq!(kept(day, &day.replace("one", "uno")), None);
        assert_eq!(kept(day, &day[..day.len() - 4]), None);
        let new = format!("{day}{section}");
        let mut theirs = indexed_as(day.as_bytes());
        theirs.owner = "alice".into();
        assert_eq!(
            kept_chunks(
                path,
                &theirs,
                &indexed_as(new.as_bytes()),
                new.as_bytes(),
                &chunks_of(path, new.as_bytes())
            ),
            None
        );
    }

    #[test]
    fn a_file_changed_within_two_seconds_of_its_indexing_is_checked_again() {
        let row = |mtime_ns: i64, indexed_at_ms: i64| IndexedFile {
            path: MEMORY_FILE.into(),
            owner: String::new(),
            size_bytes: 1,
            mtime_ns,
            sha256: String::new(),
            indexed_at_ms,
        };
        assert!(is_racy(&row(10_000_000_000, 10_500)));
        assert!(!is_racy(&row(10_000_000_000, 12_500)));
        assert!(
            !is_racy(&row(20_000_000_000, 10_500)),
            "a future mtime changes with any edit"
        );
    }
}
