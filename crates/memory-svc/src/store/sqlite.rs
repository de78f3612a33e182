//! The SQLite backend: one file under the workspace, WAL mode so readers never
//! wait for the writer, and a busy timeout so concurrent writers queue instead
//! of failing. It must never be shared by replicas on different machines.

use sqlx::{
    ConnectOptions as _, Connection as _, Row, SqliteConnection, SqlitePool,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};

use super::{
    Answered, LOCK_TIMEOUT, ModelOverride, NewTurn, PastEntry, StoreError, TurnId, past_entry, sql,
};
use nexus_common::domain::SessionKey;

pub(super) const BACKEND: &str = "sqlite";

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
            .busy_timeout(LOCK_TIMEOUT)
            .foreign_keys(true);
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
            .max_connections(8)
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

    pub(super) async fn append(&self, turn: &NewTurn) -> Result<bool, StoreError> {
        let session_id = turn.session.id();
        let mut tx = self.pool.begin().await?;
        upsert_session(&mut tx, &turn.session, turn.at_ms).await?;
        let inserted = sqlx::query(sql::INSERT_TURN)
            .bind(turn.turn_id.as_str())
            .bind(&session_id)
            .bind(&turn.user_id)
            .bind(turn.at_ms)
            .bind(turn.reply.as_deref())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for (seq, entry) in turn.entries.iter().enumerate() {
            sqlx::query(sql::INSERT_ENTRY)
                .bind(&session_id)
                .bind(turn.turn_id.as_str())
                .bind(seq as i32)
                .bind(entry.role.code())
                .bind(&entry.text)
                .bind(&entry.tool_name)
                .bind(&entry.tool_call_id)
                .bind(entry.at_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn history(
        &self,
        session: &SessionKey,
        turns: u32,
    ) -> Result<Vec<PastEntry>, StoreError> {
        let rows = sqlx::query(sql::HISTORY)
            .bind(session.id())
            .bind(i64::from(turns))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| {
                past_entry(
                    row.try_get("turn_id")?,
                    row.try_get("role")?,
                    row.try_get("text")?,
                    row.try_get("tool_name")?,
                    row.try_get("tool_call_id")?,
                    row.try_get("at_ms")?,
                )
            })
            .collect()
    }

    pub(super) async fn answered(&self, turn_id: &TurnId) -> Result<Option<Answered>, StoreError> {
        let row = sqlx::query(sql::ANSWERED)
            .bind(turn_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Answered {
                reply: row.try_get("reply")?,
            })
        })
        .transpose()
    }

    pub(super) async fn reset(&self, session: &SessionKey, at_ms: i64) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        upsert_session(&mut tx, session, at_ms).await?;
        let row = sqlx::query(sql::UNARCHIVED)
            .bind(session.id())
            .fetch_one(&mut *tx)
            .await?;
        let turns: i64 = row.try_get("turns")?;
        if let Some(last_entry) = row.try_get::<Option<i64>, _>("last_entry")? {
            sqlx::query(sql::ARCHIVE_UP_TO)
                .bind(session.id())
                .bind(last_entry)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(turns)
    }

    pub(super) async fn set_model(
        &self,
        session: &SessionKey,
        model: &ModelOverride,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(sql::SET_MODEL)
            .bind(session.id())
            .bind(session.channel().as_str())
            .bind(session.chat_id())
            .bind(session.thread_id())
            .bind(at_ms)
            .bind(model.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn model_override(&self, session: &SessionKey) -> Result<String, StoreError> {
        let row = sqlx::query(sql::MODEL_OVERRIDE)
            .bind(session.id())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|row| row.try_get("model_override"))
            .transpose()?
            .unwrap_or_default())
    }

    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// How this store was opened, so a test can open it again.
    #[cfg(test)]
    pub(super) fn options(&self) -> SqliteConnectOptions {
        (*self.pool.connect_options()).clone()
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the session's row, or marks it as just used.
async fn upsert_session(
    conn: &mut SqliteConnection,
    session: &SessionKey,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql::UPSERT_SESSION)
        .bind(session.id())
        .bind(session.channel().as_str())
        .bind(session.chat_id())
        .bind(session.thread_id())
        .bind(at_ms)
        .execute(conn)
        .await?;
    Ok(())
}
