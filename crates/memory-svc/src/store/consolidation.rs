//! Journaling state in SQL: each session's consolidated-up-to pointer and
//! lease, and the `consolidations` table that holds every summary written.
//!
//! The pointer moves in the same transaction that stores a summary, and only
//! from the value the batch was claimed at: a range is summarized once, by
//! whoever commits first, and a crash before the commit leaves it to be
//! claimed again. The Markdown files are written from the stored rows
//! afterwards (see `journal`), so a crash between the two loses nothing.
//!
//! It must never decide what a batch should hold beyond "the oldest turns"
//! (the day cut and the byte cap are the caller's) and never touch a file.

use nexus_common::domain::{ChannelName, SessionKey};
use sqlx::Row;

use super::{Entry, SessionStore, StoreError, TurnId, past_entry_row};

/// Longest entry text handed to a summarizer; the rest is cut.
pub const MAX_BATCH_ENTRY_CHARS: i32 = 4000;

/// One entry of a claimed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    pub id: i64,
    pub turn_id: TurnId,
    /// The user the turn was stored for.
    pub user_id: String,
    pub entry: Entry,
}

/// The oldest unconsolidated turns of a session, under a lease.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The pointer when claimed: the batch starts after it.
    pub from_entry: i64,
    /// Whole turns, oldest first.
    pub entries: Vec<BatchEntry>,
    /// Unconsolidated turns of the session when claimed, the batch's included.
    pub pending_turns: u32,
}

/// What is known of a range of entries, to file its summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeFacts {
    pub turns: u32,
    pub first_at_ms: i64,
    pub last_at_ms: i64,
    /// Users who spoke, sorted.
    pub users: Vec<String>,
}

/// A summary to store with the pointer move.
#[derive(Debug, Clone)]
pub struct NewConsolidation {
    pub session: SessionKey,
    pub from_entry: i64,
    pub to_entry: i64,
    pub range: RangeFacts,
    pub day: String,
    pub summary: String,
    /// JSON, as stored.
    pub facts_json: String,
    pub model: String,
    pub at_ms: i64,
}

/// A stored summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consolidation {
    pub id: i64,
    pub session_id: String,
    pub from_entry: i64,
    pub to_entry: i64,
    pub turns: u32,
    pub first_at_ms: i64,
    pub last_at_ms: i64,
    pub day: String,
    pub users: Vec<String>,
    pub summary: String,
    pub facts_json: String,
    pub model: String,
}

/// An earlier part of a conversation, summarized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierSummary {
    pub summary: String,
    pub first_at_ms: i64,
    pub last_at_ms: i64,
    pub turns: u32,
}

pub(super) mod sql {
    // Due: unconsolidated entries exist, the lease is free, and there are enough
    // of them, the conversation went quiet, or /new archived some.
    pub const DUE: &str = "SELECT s.id, s.channel, s.chat_id, s.thread_id FROM sessions s \
         WHERE s.consolidation_until_ms < $1 \
           AND EXISTS (SELECT 1 FROM entries e WHERE e.session_id = s.id AND e.id > s.consolidated_to_entry) \
           AND (s.updated_at_ms <= $2 \
                OR s.history_from_entry > s.consolidated_to_entry \
                OR (SELECT COUNT(DISTINCT e.turn_id) FROM entries e \
                    WHERE e.session_id = s.id AND e.id > s.consolidated_to_entry) >= $3) \
         ORDER BY s.updated_at_ms LIMIT $4";

    pub const PENDING_TURNS: &str = "SELECT COUNT(DISTINCT turn_id) AS turns FROM entries \
         WHERE session_id = $1 \
           AND id > COALESCE((SELECT consolidated_to_entry FROM sessions WHERE id = $1), 0)";

    // First statement of a claim: on PostgreSQL it locks the row, on SQLite it
    // takes the write lock, so two claims of one session run one after the other.
    pub const LEASE: &str = "UPDATE sessions SET consolidation_owner = $2, consolidation_until_ms = $3 \
         WHERE id = $1 AND (consolidation_until_ms < $4 OR consolidation_owner = $2)";

    pub const POINTER: &str = "SELECT consolidated_to_entry FROM sessions WHERE id = $1";

    pub const BATCH: &str = "SELECT e.id, e.turn_id, e.role, substr(e.text, 1, CAST($4 AS INTEGER)) AS text, e.tool_name, \
                e.tool_call_id, e.at_ms, t.user_id \
         FROM entries e JOIN turns t ON t.turn_id = e.turn_id \
         WHERE e.session_id = $1 AND e.id > $2 \
           AND e.turn_id IN (SELECT turn_id FROM entries WHERE session_id = $1 AND id > $2 \
                             GROUP BY turn_id ORDER BY MIN(id) LIMIT $3) \
         ORDER BY e.id";

    pub const UNLEASE: &str = "UPDATE sessions SET consolidation_owner = '', consolidation_until_ms = 0 \
         WHERE id = $1 AND consolidation_owner = $2";

    pub const RANGE: &str = "SELECT COUNT(DISTINCT e.turn_id) AS turns, MIN(e.at_ms) AS first_at_ms, \
                MAX(e.at_ms) AS last_at_ms \
         FROM entries e WHERE e.session_id = $1 AND e.id > $2 AND e.id <= $3";

    pub const RANGE_USERS: &str = "SELECT DISTINCT t.user_id FROM entries e \
         JOIN turns t ON t.turn_id = e.turn_id \
         WHERE e.session_id = $1 AND e.id > $2 AND e.id <= $3 ORDER BY t.user_id";

    // Only from the value the batch was claimed at: a second commit of the range moves nothing.
    pub const MOVE_POINTER: &str = "UPDATE sessions SET consolidated_to_entry = $3, consolidation_owner = '', \
                consolidation_until_ms = 0, consolidation_failures = 0 \
         WHERE id = $1 AND consolidated_to_entry = $2";

    pub const INSERT: &str = "INSERT INTO consolidations (session_id, from_entry, to_entry, turns, first_at_ms, \
                last_at_ms, day, users, summary, facts, model, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

    pub const FAIL: &str = "UPDATE sessions SET consolidation_owner = '', consolidation_until_ms = $3, \
                consolidation_failures = consolidation_failures + 1 \
         WHERE id = $1 AND consolidation_owner = $2";

    pub const FAILURES: &str = "SELECT consolidation_failures FROM sessions WHERE id = $1";

    pub const UNAPPLIED: &str = "SELECT id, session_id, from_entry, to_entry, turns, first_at_ms, last_at_ms, \
                day, users, summary, facts, model \
         FROM consolidations WHERE applied_at_ms IS NULL ORDER BY id LIMIT $1";

    pub const MARK_APPLIED: &str = "UPDATE consolidations SET applied_at_ms = $2 WHERE id = $1";

    // Summaries since the last /new that cover turns before the history window.
    // The window starts at the first entry of its oldest turn, found as HISTORY finds it.
    pub const EARLIER: &str = "WITH reset AS (SELECT COALESCE((SELECT history_from_entry FROM sessions WHERE id = $1), 0) AS at), \
         starts AS (SELECT id FROM entries WHERE session_id = $1 AND seq = 0 AND id > (SELECT at FROM reset) \
             ORDER BY id DESC LIMIT $2), \
         window_start AS (SELECT COALESCE(MIN(id), 0) AS id FROM starts) \
         SELECT c.summary, c.first_at_ms, c.last_at_ms, c.turns FROM consolidations c \
         WHERE c.session_id = $1 AND c.to_entry > (SELECT at FROM reset) \
           AND c.from_entry + 1 < (SELECT id FROM window_start) \
         ORDER BY c.to_entry DESC LIMIT $3";
}

impl SessionStore {
    /// Sessions to summarize now, quietest first (see [`sql::DUE`]).
    pub async fn due_sessions(
        &self,
        now_ms: i64,
        idle_before_ms: i64,
        batch_turns: u32,
        limit: u32,
    ) -> Result<Vec<SessionKey>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(sql::DUE)
                .bind(now_ms)
                .bind(idle_before_ms)
                .bind(i64::from(batch_turns))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|row| {
                    let channel: String = row.try_get("channel")?;
                    let chat: String = row.try_get("chat_id")?;
                    let thread: String = row.try_get("thread_id")?;
                    Ok((channel, chat, thread))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        rows.into_iter()
            .map(|(channel, chat, thread)| {
                let channel = ChannelName::parse(&channel)
                    .map_err(|e| StoreError::Corrupt(format!("session channel: {e}")))?;
                SessionKey::new(channel, &chat, &thread)
                    .map_err(|e| StoreError::Corrupt(format!("session key: {e}")))
            })
            .collect()
    }

    /// Turns of the session not consolidated yet.
    pub async fn pending_turns(&self, session: &SessionKey) -> Result<u32, StoreError> {
        let turns: i64 = on_pool!(self, pool => {
            sqlx::query(sql::PENDING_TURNS)
                .bind(session.id())
                .fetch_one(pool)
                .await?
                .try_get("turns")?
        });
        Ok(u32::try_from(turns).unwrap_or(u32::MAX))
    }

    /// Takes the session's lease until `lease_until_ms` and returns its oldest
    /// unconsolidated turns (at most `max_turns`). `None` when another owner
    /// holds the lease, the session is unknown, or nothing is left (the lease
    /// is then given back).
    pub async fn claim(
        &self,
        session: &SessionKey,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        max_turns: u32,
    ) -> Result<Option<Claim>, StoreError> {
        let id = session.id();
        let claimed = in_tx!(self, tx => {
            let leased = sqlx::query(sql::LEASE)
                .bind(&id)
                .bind(owner)
                .bind(lease_until_ms)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if leased == 0 {
                None
            } else {
                let from_entry: i64 = sqlx::query(sql::POINTER)
                    .bind(&id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("consolidated_to_entry")?;
                let pending: i64 = sqlx::query(sql::PENDING_TURNS)
                    .bind(&id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("turns")?;
                let rows = sqlx::query(sql::BATCH)
                    .bind(&id)
                    .bind(from_entry)
                    .bind(i64::from(max_turns))
                    .bind(MAX_BATCH_ENTRY_CHARS)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut entries = Vec::with_capacity(rows.len());
                for row in rows {
                    let past = past_entry_row(&row)?;
                    entries.push(BatchEntry {
                        id: row.try_get("id")?,
                        turn_id: past.turn_id,
                        user_id: row.try_get("user_id")?,
                        entry: past.entry,
                    });
                }
                if entries.is_empty() {
                    sqlx::query(sql::UNLEASE)
                        .bind(&id)
                        .bind(owner)
                        .execute(&mut *tx)
                        .await?;
                    None
                } else {
                    Some(Claim {
                        from_entry,
                        entries,
                        pending_turns: u32::try_from(pending).unwrap_or(u32::MAX),
                    })
                }
            }
        });
        Ok(claimed)
    }

    /// Turns, times and speakers of the entries in `(from_entry, to_entry]`.
    pub async fn range_facts(
        &self,
        session: &SessionKey,
        from_entry: i64,
        to_entry: i64,
    ) -> Result<RangeFacts, StoreError> {
        let id = session.id();
        let (turns, first, last, users) = on_pool!(self, pool => {
            let row = sqlx::query(sql::RANGE)
                .bind(&id)
                .bind(from_entry)
                .bind(to_entry)
                .fetch_one(pool)
                .await?;
            let turns: i64 = row.try_get("turns")?;
            let first: Option<i64> = row.try_get("first_at_ms")?;
            let last: Option<i64> = row.try_get("last_at_ms")?;
            let users = sqlx::query(sql::RANGE_USERS)
                .bind(&id)
                .bind(from_entry)
                .bind(to_entry)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| row.try_get::<String, _>("user_id"))
                .collect::<Result<Vec<_>, _>>()?;
            (turns, first, last, users)
        });
        Ok(RangeFacts {
            turns: u32::try_from(turns).unwrap_or(u32::MAX),
            first_at_ms: first.unwrap_or_default(),
            last_at_ms: last.unwrap_or_default(),
            users,
        })
    }

    /// Stores a summary and moves the pointer past it, atomically; `false`,
    /// storing nothing, when the pointer is no longer at `from_entry` (the
    /// range was committed already, by this caller's retry or another one).
    pub async fn commit_consolidation(&self, new: &NewConsolidation) -> Result<bool, StoreError> {
        let id = new.session.id();
        let committed = in_tx!(self, tx => {
            let moved = sqlx::query(sql::MOVE_POINTER)
                .bind(&id)
                .bind(new.from_entry)
                .bind(new.to_entry)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved == 1 {
                sqlx::query(sql::INSERT)
                    .bind(&id)
                    .bind(new.from_entry)
                    .bind(new.to_entry)
                    .bind(i32::try_from(new.range.turns).unwrap_or(i32::MAX))
                    .bind(new.range.first_at_ms)
                    .bind(new.range.last_at_ms)
                    .bind(&new.day)
                    .bind(new.range.users.join(" "))
                    .bind(&new.summary)
                    .bind(&new.facts_json)
                    .bind(&new.model)
                    .bind(new.at_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            moved == 1
        });
        Ok(committed)
    }

    /// Gives the lease back. With `failed`, the session is left alone until
    /// `now_ms` plus a backoff that doubles with each failure in a row.
    pub async fn release_claim(
        &self,
        session: &SessionKey,
        owner: &str,
        failed: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let id = session.id();
        if !failed {
            writing_on_pool!(self, pool => {
                sqlx::query(sql::UNLEASE).bind(&id).bind(owner).execute(pool).await?;
            });
            return Ok(());
        }
        let failures: i32 = on_pool!(self, pool => {
            sqlx::query(sql::FAILURES)
                .bind(&id)
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get("consolidation_failures"))
                .transpose()?
                .unwrap_or_default()
        });
        let until = now_ms.saturating_add(backoff_ms(failures));
        writing_on_pool!(self, pool => {
            sqlx::query(sql::FAIL)
                .bind(&id)
                .bind(owner)
                .bind(until)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Summaries whose files are not written yet, oldest first.
    pub async fn unapplied_consolidations(
        &self,
        limit: u32,
    ) -> Result<Vec<Consolidation>, StoreError> {
        on_pool!(self, pool => {
            sqlx::query(sql::UNAPPLIED)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let turns: i32 = row.try_get("turns")?;
                    let users: String = row.try_get("users")?;
                    Ok(Consolidation {
                        id: row.try_get("id")?,
                        session_id: row.try_get("session_id")?,
                        from_entry: row.try_get("from_entry")?,
                        to_entry: row.try_get("to_entry")?,
                        turns: u32::try_from(turns).unwrap_or_default(),
                        first_at_ms: row.try_get("first_at_ms")?,
                        last_at_ms: row.try_get("last_at_ms")?,
                        day: row.try_get("day")?,
                        users: users.split_whitespace().map(str::to_owned).collect(),
                        summary: row.try_get("summary")?,
                        facts_json: row.try_get("facts")?,
                        model: row.try_get("model")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    /// Records that a summary's files are written.
    pub async fn mark_applied(&self, id: i64, at_ms: i64) -> Result<(), StoreError> {
        writing_on_pool!(self, pool => {
            sqlx::query(sql::MARK_APPLIED).bind(id).bind(at_ms).execute(pool).await?;
        });
        Ok(())
    }

    /// Up to `limit` summaries of this conversation (since its last /new) that
    /// cover turns older than its last `window_turns`, oldest first.
    pub async fn earlier_summaries(
        &self,
        session: &SessionKey,
        window_turns: u32,
        limit: u32,
    ) -> Result<Vec<EarlierSummary>, StoreError> {
        let mut out = on_pool!(self, pool => {
            sqlx::query(sql::EARLIER)
                .bind(session.id())
                .bind(i64::from(window_turns))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(earlier_summary_row)
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        out.reverse();
        Ok(out)
    }
}

/// A row of [`sql::EARLIER`] on either backend.
pub(super) fn earlier_summary_row<R: Row>(row: &R) -> Result<EarlierSummary, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let turns: i32 = row.try_get("turns")?;
    Ok(EarlierSummary {
        summary: row.try_get("summary")?,
        first_at_ms: row.try_get("first_at_ms")?,
        last_at_ms: row.try_get("last_at_ms")?,
        turns: u32::try_from(turns).unwrap_or_default(),
    })
}

/// One minute, doubling per failure in a row, at most an hour.
fn backoff_ms(failures_before: i32) -> i64 {
    let doublings = u32::try_from(failures_before.clamp(0, 6)).unwrap_or(0);
    (60_000i64 << doublings).min(3_600_000)
}

#[cfg(test)]
mod unit {
    use super::backoff_ms;

    #[test]
    fn backoff_doubles_and_is_capped_at_an_hour() {
        assert_eq!(backoff_ms(0), 60_000);
        assert_eq!(backoff_ms(1), 120_000);
        assert_eq!(backoff_ms(5), 1_920_000);
        assert_eq!(backoff_ms(6), 3_600_000);
        assert_eq!(backoff_ms(60), 3_600_000);
    }
}
