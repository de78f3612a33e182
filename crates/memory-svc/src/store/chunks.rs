//! The full-text index of the Markdown memory, in the same database as the
//! sessions: `memory_files` (what each file looked like when indexed) and
//! `memory_chunks` (its paragraphs and list items), ranked by FTS5's bm25 on
//! SQLite and by `ts_rank_cd` over a GIN-indexed `tsvector` on PostgreSQL.
//!
//! It must never decide which files exist or who may read them (that is
//! `index`), and never put caller text into SQL other than as a bound value.

use sqlx::{QueryBuilder, Row};

use super::{SessionStore, StoreError};
use crate::markdown::Chunk;

/// Rows per multi-row insert; far below both backends' bind-parameter limits.
const INSERT_BATCH: usize = 500;

/// A Markdown file as it was when it was indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedFile {
    /// Relative to the workspace, with `/`: `MEMORY.md`, `USER_<id>.md`, `memories/<day>.md`.
    pub path: String,
    /// The user id a `USER_<id>.md` belongs to; empty for shared files.
    pub owner: String,
    pub size_bytes: i64,
    pub mtime_ns: i64,
    /// Hex SHA-256 of the indexed bytes.
    pub sha256: String,
    pub indexed_at_ms: i64,
}

/// What of a file's stored index is still right: it holds `stored` chunks, and
/// the first `same` of them are the new content's first chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptChunks {
    pub stored: usize,
    pub same: usize,
}

/// What to search for, and where.
#[derive(Debug, Clone, Copy)]
pub struct ChunkQuery<'a> {
    /// Words, each matched on its own (any of them): letters and digits only.
    pub terms: &'a [String],
    /// Shared chunks match, and those of this user or that list this user
    /// among their readers (empty: shared only).
    pub owner: &'a str,
    /// Only chunks of this file.
    pub path: Option<&'a str>,
    pub limit: u32,
}

/// One ranked chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkHit {
    pub path: String,
    pub heading: String,
    pub line_start: u32,
    pub line_end: u32,
    pub text: String,
    /// Higher is better; comparable only within one search.
    pub score: f64,
}

mod sql {
    pub const FILES: &str = "SELECT path, owner, size_bytes, mtime_ns, sha256, indexed_at_ms \
         FROM memory_files WHERE owner = '' OR owner = $1 ORDER BY path";

    pub const FILE: &str = "SELECT path, owner, size_bytes, mtime_ns, sha256, indexed_at_ms \
         FROM memory_files WHERE path = $1";

    // First statement of a re-index: on PostgreSQL it locks the file's row, so a
    // concurrent re-index of the same file waits here and then sees our chunks.
    pub const UPSERT_FILE: &str = "INSERT INTO memory_files (path, owner, size_bytes, mtime_ns, sha256, indexed_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (path) DO UPDATE SET owner = excluded.owner, size_bytes = excluded.size_bytes, \
         mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, indexed_at_ms = excluded.indexed_at_ms";

    pub const DELETE_CHUNKS: &str = "DELETE FROM memory_chunks WHERE path = $1";

    pub const DELETE_CHUNKS_FROM: &str = "DELETE FROM memory_chunks WHERE path = $1 AND seq >= $2";

    pub const COUNT_CHUNKS: &str = "SELECT COUNT(*) FROM memory_chunks WHERE path = $1";

    pub const DELETE_FILE: &str = "DELETE FROM memory_files WHERE path = $1";

    // Only when the content is still the one indexed; otherwise the next check re-indexes.
    pub const TOUCH_FILE: &str = "UPDATE memory_files SET size_bytes = $2, mtime_ns = $3, indexed_at_ms = $4 \
         WHERE path = $1 AND sha256 = $5";

    pub const INSERT_CHUNKS: &str =
        "INSERT INTO memory_chunks (path, owner, seq, heading, line_start, line_end, text) ";

    // Headings weigh twice as much as text (bm25 is lower-is-better, hence the minus).
    pub const SEARCH_SQLITE: &str = "SELECT c.path, c.heading, c.line_start, c.line_end, c.text, \
                -bm25(memory_chunks_fts, 2.0, 1.0) AS score \
         FROM memory_chunks_fts JOIN memory_chunks c ON c.id = memory_chunks_fts.rowid \
         WHERE memory_chunks_fts MATCH $1 \
           AND (c.owner = '' OR c.owner = $2 OR instr(c.owner, ' ' || $2 || ' ') > 0) \
           AND ($3 IS NULL OR c.path = $3) \
         ORDER BY score DESC, c.path, c.seq LIMIT $4";

    // websearch_to_tsquery never fails on odd input; normalization 1 favours short chunks.
    pub const SEARCH_POSTGRES: &str = "SELECT path, heading, line_start, line_end, text, \
                ts_rank_cd(tsv, q, 1)::float8 AS score \
         FROM memory_chunks, websearch_to_tsquery('english', $1) AS q \
         WHERE tsv @@ q AND (owner = '' OR owner = $2 OR strpos(owner, ' ' || $2 || ' ') > 0) \
           AND ($3::text IS NULL OR path = $3) \
         ORDER BY score DESC, path, seq LIMIT $4";
}

/// `"a" OR "b"`: each term a quoted FTS5 string, so no term is read as syntax.
fn fts5_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "")))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// `a or b` for `websearch_to_tsquery`; terms hold only letters and digits.
fn websearch_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| {
            t.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
        })
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" or ")
}

impl SessionStore {
    /// The indexed shared files and those of `owner` (empty: shared only).
    pub async fn indexed_files(&self, owner: &str) -> Result<Vec<IndexedFile>, StoreError> {
        let rows = match self {
            Self::Sqlite(s) => sqlx::query(sql::FILES)
                .bind(owner)
                .fetch_all(s.pool())
                .await?
                .into_iter()
                .map(|r| file_row(&r))
                .collect::<Result<_, _>>()?,
            Self::Postgres(s) => sqlx::query(sql::FILES)
                .bind(owner)
                .fetch_all(s.pool())
                .await?
                .into_iter()
                .map(|r| file_row(&r))
                .collect::<Result<_, _>>()?,
        };
        Ok(rows)
    }

    /// The indexed state of one file, if it was ever indexed.
    pub async fn indexed_file(&self, path: &str) -> Result<Option<IndexedFile>, StoreError> {
        Ok(match self {
            Self::Sqlite(s) => sqlx::query(sql::FILE)
                .bind(path)
                .fetch_optional(s.pool())
                .await?
                .map(|r| file_row(&r))
                .transpose()?,
            Self::Postgres(s) => sqlx::query(sql::FILE)
                .bind(path)
                .fetch_optional(s.pool())
                .await?
                .map(|r| file_row(&r))
                .transpose()?,
        })
    }

    /// Replaces a file's chunks in one transaction.
    pub async fn replace_chunks(
        &self,
        file: &IndexedFile,
        chunks: &[Chunk],
    ) -> Result<(), StoreError> {
        self.update_chunks(file, chunks, None).await
    }

    /// Stores `chunks` as the file's index in one transaction. With `kept`, the
    /// stored rows are believed to be the old content's `kept.stored` chunks whose
    /// first `kept.same` equal `chunks`' first: only the rest is deleted and
    /// inserted, so a journal that grows by a section costs that section, not the
    /// whole day again (FTS5 work is by far the dearest part of a re-index). When
    /// the row count says otherwise, every chunk is replaced.
    pub async fn update_chunks(
        &self,
        file: &IndexedFile,
        chunks: &[Chunk],
        kept: Option<KeptChunks>,
    ) -> Result<(), StoreError> {
        in_tx!(self, tx => {
            upsert_file(file).execute(&mut *tx).await?;
            let mut from = 0;
            if let Some(kept) = kept {
                let stored: i64 = sqlx::query_scalar(sql::COUNT_CHUNKS)
                    .bind(&file.path)
                    .fetch_one(&mut *tx)
                    .await?;
                if usize::try_from(stored).is_ok_and(|n| n == kept.stored) {
                    from = kept.same.min(chunks.len());
                }
            }
            sqlx::query(sql::DELETE_CHUNKS_FROM)
                .bind(&file.path)
                .bind(i32::try_from(from).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await?;
            for (at, batch) in chunks[from..].chunks(INSERT_BATCH).enumerate() {
                insert_chunks(file, from + at * INSERT_BATCH, batch)
                    .build()
                    // Not kept in the connection's statement cache: the last batch's
                    // row count differs nearly every time a journal grows, and each
                    // count cached a statement of up to 500 rows per connection (the
                    // bench's soak: memory-svc +100 MiB per 20,000 turns).
                    .persistent(false)
                    .execute(&mut *tx)
                    .await?;
            }
        });
        Ok(())
    }

    /// Records that a file changed on disk (size or mtime) but not in content.
    pub async fn touch_indexed_file(&self, file: &IndexedFile) -> Result<(), StoreError> {
        writing_on_pool!(self, pool => {
            sqlx::query(sql::TOUCH_FILE)
                .bind(&file.path)
                .bind(file.size_bytes)
                .bind(file.mtime_ns)
                .bind(file.indexed_at_ms)
                .bind(&file.sha256)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Removes a file and its chunks from the index (the file is gone).
    pub async fn forget_indexed_file(&self, path: &str) -> Result<(), StoreError> {
        in_tx!(self, tx => {
            sqlx::query(sql::DELETE_CHUNKS)
                .bind(path)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::DELETE_FILE)
                .bind(path)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }

    /// The chunks that match any of the terms, best first.
    pub async fn search_chunks(&self, query: ChunkQuery<'_>) -> Result<Vec<ChunkHit>, StoreError> {
        if query.terms.is_empty() || query.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::from(query.limit);
        let rows = match self {
            Self::Sqlite(s) => sqlx::query(sql::SEARCH_SQLITE)
                .bind(fts5_query(query.terms))
                .bind(query.owner)
                .bind(query.path)
                .bind(limit)
                .fetch_all(s.pool())
                .await?
                .iter()
                .map(hit_row)
                .collect::<Result<_, _>>()?,
            Self::Postgres(s) => {
                let terms = websearch_query(query.terms);
                if terms.is_empty() {
                    return Ok(Vec::new());
                }
                sqlx::query(sql::SEARCH_POSTGRES)
                    .bind(terms)
                    .bind(query.owner)
                    .bind(query.path)
                    .bind(limit)
                    .fetch_all(s.pool())
                    .await?
                    .iter()
                    .map(hit_row)
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(rows)
    }
}

fn upsert_file<DB>(
    file: &IndexedFile,
) -> sqlx::query::Query<'_, DB, <DB as sqlx::Database>::Arguments<'_>>
where
    DB: sqlx::Database,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>(sql::UPSERT_FILE)
        .bind(file.path.clone())
        .bind(file.owner.clone())
        .bind(file.size_bytes)
        .bind(file.mtime_ns)
        .bind(file.sha256.clone())
        .bind(file.indexed_at_ms)
}

/// One multi-row insert of `chunks`, numbered from `first`.
fn insert_chunks<'a, DB>(
    file: &'a IndexedFile,
    first: usize,
    chunks: &'a [Chunk],
) -> QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut builder = QueryBuilder::<DB>::new(sql::INSERT_CHUNKS);
    builder.push_values(chunks.iter().enumerate(), |mut row, (i, chunk)| {
        let seq = first + i;
        row.push_bind(file.path.clone())
            .push_bind(chunk_owner(file, chunk))
            .push_bind(i32::try_from(seq).unwrap_or(i32::MAX))
            .push_bind(chunk.heading.clone())
            .push_bind(i32::try_from(chunk.line_start).unwrap_or(i32::MAX))
            .push_bind(i32::try_from(chunk.line_end).unwrap_or(i32::MAX))
            .push_bind(chunk.text.clone());
    });
    builder
}

/// A chunk's owner: the file's, or for a journal section the readers its marker
/// lists, space-padded (` alice bob `; ` ` for none), which a search matches by word.
fn chunk_owner(file: &IndexedFile, chunk: &Chunk) -> String {
    match &chunk.readers {
        Some(readers) => format!(" {} ", readers.join(" ")),
        None => file.owner.clone(),
    }
}

fn file_row<R: Row>(row: &R) -> Result<IndexedFile, StoreError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(IndexedFile {
        path: row.try_get("path")?,
        owner: row.try_get("owner")?,
        size_bytes: row.try_get("size_bytes")?,
        mtime_ns: row.try_get("mtime_ns")?,
        sha256: row.try_get("sha256")?,
        indexed_at_ms: row.try_get("indexed_at_ms")?,
    })
}

fn hit_row<R: Row>(row: &R) -> Result<ChunkHit, StoreError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    f64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let line = |name: &str| -> Result<u32, StoreError> {
        let n: i32 = row.try_get(name)?;
        u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{name} is {n}")))
    };
    Ok(ChunkHit {
        path: row.try_get("path")?,
        heading: row.try_get("heading")?,
        line_start: line("line_start")?,
        line_end: line("line_end")?,
        text: row.try_get("text")?,
        score: row.try_get("score")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_become_quoted_fts5_strings_or_websearch_words() {
        let terms = vec!["dog".to_owned(), "na\"me".to_owned()];
        assert_eq!(fts5_query(&terms), "\"dog\" OR \"name\"");
        assert_eq!(websearch_query(&terms), "dog or name");
        assert_eq!(websearch_query(&["-".to_owned()]), "");
    }
}
