//! The SQLite backend: one file under the workspace, WAL mode so readers never
//! wait for the writer, and a busy timeout so concurrent writers queue instead
//! of failing. It must never be shared by replicas on different machines.

use sqlx::{
    ConnectOptions as _, Connection as _, Row, SqliteConnection, SqlitePool,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{
    Answered, LOCK_TIMEOUT, ModelOverride, NewTurn, PastEntry, StoreError, TurnId, past_entry, sql,
};
use nexus_common::domain::SessionKey;

pub(super) const BACKEND: &str = "sqlite";

/// Page cache per connection, in KiB.
const CACHE_KIB: u32 = 256;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Sessions in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
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
        Ok(Self { pool })
    }

    shared_store_methods!(SqlitePool, SqliteConnectOptions);
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
