//! The memory retrieval figure: memory-svc's index (SQLite FTS5) over a
//! generated Markdown corpus, searched in-process the way a `memory_search`
//! call does, without NATS in the way.
//!
//! The corpus is deterministic (a fixed seed), so runs compare.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use memory_svc::{MemoryIndex, SessionStore, index::JOURNAL_DIR};

/// Journal files the corpus is split into: each stays below the index's per-file limit.
const FILES: usize = 40;
/// Words the corpus is made of.
const VOCABULARY: usize = 6_000;
/// Hits asked for per search, as the `memory_search` tool does by default.
const LIMIT: u32 = 8;

/// What the retrieval run measured.
pub struct Retrieval {
    pub corpus_bytes: u64,
    pub files: usize,
    pub index_build: Duration,
    /// Per-search latency, sorted.
    pub searches: Vec<Duration>,
}

/// Writes a corpus of about `bytes` under a temporary workspace, indexes it,
/// then times `searches` searches with varied queries.
pub async fn run(bytes: usize, searches: usize) -> anyhow::Result<Retrieval> {
    let workspace = tempfile::tempdir()?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let words = vocabulary(&mut rng);
    let corpus_bytes = write_corpus(workspace.path(), bytes, &words, &mut rng)?;

    let db = workspace.path().join(".nexus/nexus.db");
    let store = SessionStore::connect(&format!("sqlite://{}", db.display()))
        .await
        .context("opening the SQLite store")?;
    let index = MemoryIndex::new(store.clone(), workspace.path());
    let started = Instant::now();
    index.refresh(None).await.context("indexing the corpus")?;
    let index_build = started.elapsed();

    let mut times = Vec::with_capacity(searches);
    let mut hits = 0usize;
    for _ in 0..searches {
        let query = query(&words, &mut rng);
        let started = Instant::now();
        let found = index
            .search(&query, None, LIMIT)
            .await
            .with_context(|| format!("searching {query:?}"))?;
        times.push(started.elapsed());
        hits += found.len();
    }
    store.close().await;
    anyhow::ensure!(
        hits > 0,
        "no search found anything: the corpus is not indexed"
    );
    times.sort();
    Ok(Retrieval {
        corpus_bytes,
        files: FILES,
        index_build,
        searches: times,
    })
}

/// Made-up words of two to four syllables: varied, and no stop words.
fn vocabulary(rng: &mut Rng) -> Vec<String> {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mer", "tin", "sha", "ve", "dor", "qui", "bel", "nar", "sil", "tor", "pra",
        "zen", "fo", "gul", "hex", "jin", "wal", "rud", "cym", "pol", "ost", "yar",
    ];
    let mut words: Vec<String> = Vec::with_capacity(VOCABULARY);
    while words.len() < VOCABULARY {
        let n = 2 + rng.below(3);
        let word: String = (0..n)
            .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
            .collect();
        if !words.contains(&word) {
            words.push(word);
        }
    }
    words
}

/// A skewed pick: a few words are common, most are rare, as in real notes.
fn word<'a>(words: &'a [String], rng: &mut Rng) -> &'a str {
    let a = rng.below(words.len());
    let b = rng.below(words.len());
    &words[a.min(b)]
}

/// `memories/<n>.md` files with headed sections of short paragraphs and lists.
fn write_corpus(root: &Path, bytes: usize, words: &[String], rng: &mut Rng) -> anyhow::Result<u64> {
    let dir = root.join(JOURNAL_DIR);
    std::fs::create_dir_all(&dir)?;
    let per_file = bytes / FILES;
    let mut total = 0u64;
    for f in 0..FILES {
        let mut text = format!("# Journal {f:03}\n\n");
        let mut section = 0;
        while text.len() < per_file {
            section += 1;
            let title: Vec<&str> = (0..3).map(|_| word(words, rng)).collect();
            text.push_str(&format!("## {section} {}\n\n", title.join(" ")));
            for _ in 0..1 + rng.below(3) {
                if rng.below(3) == 0 {
                    for _ in 0..2 + rng.below(4) {
                        let item: Vec<&str> =
                            (0..4 + rng.below(8)).map(|_| word(words, rng)).collect();
                        text.push_str(&format!("- {}\n", item.join(" ")));
                    }
                } else {
                    let sentence: Vec<&str> =
                        (0..20 + rng.below(60)).map(|_| word(words, rng)).collect();
                    text.push_str(&format!("{}.\n", sentence.join(" ")));
                }
                text.push('\n');
            }
        }
        let path = dir.join(format!("{f:03}.md"));
        std::fs::write(&path, &text)?;
        // Written long ago, as notes are: a file changed within the index's
        // mtime granularity is re-hashed on every search, which is not the steady state.
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(SystemTime::now() - Duration::from_secs(3600))?;
        total += text.len() as u64;
    }
    Ok(total)
}

/// A question of two to four corpus words among filler, like a person asks.
fn query(words: &[String], rng: &mut Rng) -> String {
    let n = 2 + rng.below(3);
    let picked: Vec<&str> = (0..n).map(|_| word(words, rng)).collect();
    format!("what do my notes say about {}?", picked.join(" and "))
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
