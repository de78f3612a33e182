//! The SQLite backend: one file under the workspace, WAL mode so readers never
//! wait for the writer, and a busy timeout so concurrent writers queue instead
//! of failing. It must never be shared by replicas on different machines.

use std::{borrow::Cow, sync::LazyLock};

use futures::TryStreamExt as _;
use sqlx::{
    ConnectOptions as _, Connection as _, Either, Executor as _, Row, SqliteConnection, SqlitePool,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{
    Answered, LOCK_TIMEOUT, NewTurn, PastEntry, StoreError, TurnId, TurnQuery, TurnReads,
    consolidation, identities, past_entry_row, renumbered, sql,
};
use nexus_common::domain::SessionKey;

pub(super) const BACKEND: &str = "sqlite";

/// Most entries a turn may have to be appended in one trip (see
/// [`SqliteStore::append_in_one_trip`]); a longer turn takes the statement-by-statement
/// path. SQLite numbers at most 32,766 parameters per query.
pub(super) const ONE_TRIP_ENTRIES: usize = 64;

// Why one trip: sqlx runs each SQLite statement on its connection's own thread, and
// each statement is a hand-off there and back. A turn's reads took five of them and
// its append seven, and the hand-offs (context switches, on two cores) were a third
// of memory-svc's CPU per turn. SQLite runs a query string of several statements in
// order, with the `$n` parameters shared, and sqlx streams each statement's rows
// followed by its result; that behaviour is specific to sqlx's SQLite driver (and
// deprecated there for the generic `query` API), so the store tests pin it, and an
// upgrade of sqlx that drops it fails them rather than the service.

/// A turn's reads as one query: history, the model override, earlier summaries,
/// whether the turn is answered, the sender's linked identity.
/// `$1` session id, `$2` history turns, `$3` most summaries, `$4` turn id (or ''),
/// `$5` channel, `$6` sender id (both '' when none).
static TURN_READS: LazyLock<String> = LazyLock::new(|| {
    [
        sql::HISTORY.to_owned(),
        sql::MODEL_OVERRIDE.to_owned(),
        consolidation::sql::EARLIER.to_owned(),
        renumbered(sql::ANSWERED, &[4]),
        renumbered(identities::sql::GET, &[5, 6]),
    ]
    .join(";\n")
});
/// Statements in [`TURN_READS`].
const TURN_READ_STATEMENTS: usize = 5;

/// Page cache per connection, in KiB.
const CACHE_KIB: u32 = 256;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Sessions in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Held by each write transaction of this process from its first write to its
    /// end. SQLite has one writer at a time; a connection that finds the write lock
    /// taken waits in SQLite's busy handler, which sleeps 1, 2, 5, 10… ms between
    /// tries (a turn's append waited over a second behind a journal's re-index in
    /// the soak). Queued here, the next writer starts as soon as the last commits.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl SqliteStore {
    /// Waits for this process's other write transactions to end (see `writer`).
    /// Take it holding a connection already (after BEGIN, which in SQLite takes no
    /// lock): a writer that held the queue while waiting for a pooled connection would
    /// wait for writers that hold every connection and wait for the queue.
    pub(super) async fn writing(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.writer.lock().await)
    }

    pub(super) async fn open(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let file = options.get_filename().to_owned();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|error| StoreError::CreateDir {
                    path: dir.display().to_string(),
                    error,
                })?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL syncs at checkpoints, not at every commit: a killed
            // process loses nothing, a power cut may lose the last commits but never
            // corrupts the file. That matches JetStream, which syncs its file store
            // every two minutes; FULL cost an fsync per commit, several per turn,
            // serialised across all sessions (ARCHITECTURE.md, Decisions).
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(LOCK_TIMEOUT)
            .foreign_keys(true)
            // Each pooled connection has a page cache of its own, 2 MiB by default:
            // 16 MiB over the pool once the database outgrows it, which the 100,000-turn
            // soak counted as growth. The pages stay in the kernel's page cache, one
            // read away; the hot ones (the tables' upper B-tree levels) fit in this.
            .pragma("cache_size", format!("-{CACHE_KIB}"));
        let connect_error = |error| StoreError::Connect {
            backend: BACKEND,
            url: format!("sqlite://{}", file.display()),
            error,
        };
        // One direct connection first: a pool only reports "timed out" and
        // hides why (permissions, a directory in the way, a corrupt file).
        options
            .connect()
            .await
            .map_err(connect_error)?
            .close()
            .await
            .map_err(connect_error)?;
        let pool = SqlitePoolOptions::new()
            // Four, not eight: SQLite has one writer at a time, and the machine's cores,
            // not connections, bound the readers. The 40,000-turn soak ran at 573 turns/s
            // with four (436 with eight, 492 with two) and grew memory-svc by 4.1 MiB
            // rather than 6.6: each connection holds its own caches and thread.
            .max_connections(4)
            // sqlx pings an idle connection before lending it, a round trip to the
            // connection's worker thread per query (a third of memory-svc's thread
            // hand-offs in a turn). A SQLite connection is an open file in this
            // process: there is no far end to have gone away.
            .test_before_acquire(false)
            // SQLite rolls a transaction back by itself on some errors (a full disk,
            // an I/O error). sqlx does not see that: its ROLLBACK then fails, it still
            // counts the connection as in a transaction, and would nest the next one in
            // a savepoint that never commits (a turn was answered but never stored in
            // the full-disk chaos test). A connection given back in that state is
            // closed and a fresh one opened; a healthy one is never in a transaction
            // when given back.
            .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .acquire_timeout(LOCK_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        MIGRATIONS
            .run(&pool)
            .await
            .map_err(|error| StoreError::Migrate {
                backend: BACKEND,
                error,
            })?;
        Ok(Self {
            pool,
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    shared_store_methods!(SqlitePool, SqliteConnectOptions);

    /// [`super::SessionStore::turn_reads`] in one trip to a connection's thread.
    pub(super) async fn turn_reads(&self, q: &TurnQuery<'_>) -> Result<TurnReads, StoreError> {
        let (channel, sender) = q.sender.unwrap_or_default();
        let query = sqlx::query(TURN_READS.as_str())
            .bind(q.session.id())
            .bind(i64::from(q.turns))
            .bind(i64::from(q.summaries))
            .bind(q.turn_id.map(TurnId::as_str).unwrap_or_default())
            .bind(channel)
            .bind(sender);
        let mut steps = self.pool.fetch_many(query);
        let mut reads = TurnReads::default();
        let mut done = 0;
        while let Some(step) = steps.try_next().await? {
            let row = match step {
                Either::Left(_) => {
                    done += 1;
                    continue;
                }
                Either::Right(row) => row,
            };
            match done {
                0 => reads.history.push(past_entry_row(&row)?),
                1 => reads.model_override = row.try_get("model_override")?,
                2 => reads
                    .earlier
                    .push(consolidation::earlier_summary_row(&row)?),
                3 => {
                    reads.answered = Some(Answered {
                        reply: row.try_get("reply")?,
                    })
                }
                4 => reads.identity = Some(identities::sqlite::identity(&row)?),
                _ => break,
            }
        }
        if done != TURN_READ_STATEMENTS {
            return Err(StoreError::Corrupt(format!(
                "a turn's reads ran {done} of {TURN_READ_STATEMENTS} statements"
            )));
        }
        // Newest first from the query, oldest first to the caller.
        reads.earlier.reverse();
        Ok(reads)
    }

    /// [`super::SessionStore::append_counting`] for a turn of at most
    /// [`ONE_TRIP_ENTRIES`] entries: the session, the turn, its entries and the
    /// pending count in one trip between BEGIN and COMMIT. A turn already stored
    /// inserts nothing new (its turn row) or fails on its entries' unique key; either
    /// way the transaction is rolled back.
    pub(super) async fn append_in_one_trip(
        &self,
        turn: &NewTurn,
        count_pending: bool,
    ) -> Result<Option<u32>, StoreError> {
        let text = append_sql(turn.entries.len(), count_pending);
        let mut query = sqlx::query(text.as_ref())
            .bind(turn.session.id())
            .bind(turn.session.channel().as_str())
            .bind(turn.session.chat_id())
            .bind(turn.session.thread_id())
            .bind(turn.at_ms)
            .bind(turn.turn_id.as_str())
            .bind(&turn.user_id)
            .bind(turn.reply.as_deref());
        for (seq, entry) in turn.entries.iter().enumerate() {
            query = query
                .bind(seq as i32)
                .bind(entry.role.code())
                .bind(&entry.text)
                .bind(&entry.tool_name)
                .bind(&entry.tool_call_id)
                .bind(entry.at_ms);
        }
        // Few shapes are common (a turn without tools has two entries): those stay
        // prepared; a rare long turn is prepared for its one use.
        let query = query.persistent(turn.entries.len() <= COMMON_ENTRIES);
        let mut tx = self.pool.begin().await?;
        let _writing = self.writing().await;
        let mut done = 0;
        let mut turn_inserted = None;
        let mut pending = 0;
        let outcome = {
            let mut steps = tx.fetch_many(query);
            loop {
                match steps.try_next().await {
                    Ok(Some(Either::Left(result))) => {
                        // Statement 0 is the session, 1 the turn.
                        if done == 1 {
                            turn_inserted = Some(result.rows_affected() > 0);
                        }
                        done += 1;
                    }
                    Ok(Some(Either::Right(row))) => {
                        let turns: i64 = row.try_get("turns")?;
                        pending = u32::try_from(turns).unwrap_or(u32::MAX);
                    }
                    Ok(None) => break Ok(()),
                    Err(error) => break Err(error),
                }
            }
        };
        match (turn_inserted, outcome) {
            (Some(true), Ok(())) => {
                tx.commit().await?;
                Ok(Some(pending))
            }
            (Some(false), _) => {
                tx.rollback().await?;
                Ok(None)
            }
            (_, Err(error)) => Err(error.into()),
            (None, Ok(())) => Err(StoreError::Corrupt(format!(
                "appending a turn ran {done} statements and never the turn's insert"
            ))),
        }
    }
}

/// Entry counts whose append statements are built once and kept (a turn without
/// tools has two entries); they are also the ones kept prepared.
const COMMON_ENTRIES: usize = 8;

/// [`append_sql`] for 0 to [`COMMON_ENTRIES`] entries, without and with the count.
static COMMON_APPEND_SQL: LazyLock<Vec<[String; 2]>> = LazyLock::new(|| {
    (0..=COMMON_ENTRIES)
        .map(|n| [build_append_sql(n, false), build_append_sql(n, true)])
        .collect()
});

/// The statements of [`SqliteStore::append_in_one_trip`] for `entries` entries:
/// `$1`–`$5` the session (id, channel, chat, thread, time), `$6` turn id, `$7` user
/// id, `$8` reply, then six per entry (seq, role, text, tool name, call id, time).
/// Built once for the common shapes, not on every turn.
fn append_sql(entries: usize, count_pending: bool) -> Cow<'static, str> {
    match COMMON_APPEND_SQL.get(entries) {
        Some(built) => Cow::Borrowed(built[usize::from(count_pending)].as_str()),
        None => Cow::Owned(build_append_sql(entries, count_pending)),
    }
}

fn build_append_sql(entries: usize, count_pending: bool) -> String {
    let mut statements = vec![
        sql::UPSERT_SESSION.to_owned(),
        renumbered(sql::INSERT_TURN, &[6, 1, 7, 5, 8]),
    ];
    if entries > 0 {
        let rows: Vec<String> = (0..entries)
            .map(|i| {
                let p = 9 + 6 * i;
                format!(
                    "($1, $6, ${}, ${}, ${}, ${}, ${}, ${})",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5
                )
            })
            .collect();
        statements.push(format!(
            "{}VALUES {}",
            sql::INSERT_ENTRY_INTO,
            rows.join(", ")
        ));
    }
    if count_pending {
        statements.push(consolidation::sql::PENDING_TURNS.to_owned());
    }
    statements.join(";\n")
}

upsert_session_fn!(SqliteConnection);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_connection_whose_transaction_sqlite_ended_is_not_lent_again() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(SqliteConnectOptions::new().filename(dir.path().join("t.db")))
                .await
                .unwrap();
        {
            let mut conn = store.pool().acquire().await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            // SQLite ends the transaction by itself, as it may on a full disk.
            sqlx::raw_sql("ROLLBACK").execute(&mut *tx).await.unwrap();
            drop(tx);
            // sqlx's own ROLLBACK then fails, and it still counts a transaction: the
            // state the pool must not lend out again.
            assert!(conn.is_in_transaction());
        }
        // More acquisitions than the pool has connections: each would meet it.
        for _ in 0..8 {
            let conn = store.pool().acquire().await.unwrap();
            assert!(!conn.is_in_transaction());
        }
    }
}
