//! The session store: sessions, turns and their history entries in SQL, and
//! the full-text index of the Markdown memory (`chunks`).
//!
//! It owns the schema (embedded migrations, one set per backend) and the two
//! explicit backends, SQLite (the default, a file under the workspace) and
//! PostgreSQL (any `postgres://` URL, used as given). Appending a turn is one
//! transaction, and a turn id that is already stored is a no-op: this table is
//! the second line of defence against answering one message twice. A session
//! reset (/new) only moves the start of its history: turns are never deleted,
//! so an archived turn still counts as answered.
//!
//! It must never see protobuf types or NATS: callers hand it validated domain
//! values and opaque reply bytes.

/// The store operations both backends share: the SQL text is the same (SQLite accepts
/// `$n` parameters), only the pool and connection types differ.
macro_rules! shared_store_methods {
    ($pool:ty, $options:ty) => {
        pub(super) async fn append(
            &self,
            turn: &NewTurn,
            count_pending: bool,
        ) -> Result<Option<u32>, StoreError> {
            let session_id = turn.session.id();
            let mut tx = self.pool.begin().await?;
            let _writing = self.writing().await;
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
                return Ok(None);
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
            let pending = if count_pending {
                let turns: i64 = sqlx::query(super::consolidation::sql::PENDING_TURNS)
                    .bind(&session_id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("turns")?;
                u32::try_from(turns).unwrap_or(u32::MAX)
            } else {
                0
            };
            tx.commit().await?;
            Ok(Some(pending))
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
            rows.iter().map(past_entry_row).collect()
        }

        pub(super) async fn answered(
            &self,
            turn_id: &TurnId,
        ) -> Result<Option<Answered>, StoreError> {
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

        pub(super) async fn reset(
            &self,
            session: &SessionKey,
            at_ms: i64,
        ) -> Result<i64, StoreError> {
            let mut tx = self.pool.begin().await?;
            let _writing = self.writing().await;
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

        pub(super) async fn model_override(
            &self,
            session: &SessionKey,
        ) -> Result<String, StoreError> {
            let row = sqlx::query(sql::MODEL_OVERRIDE)
                .bind(session.id())
                .fetch_optional(&self.pool)
                .await?;
            Ok(row
                .map(|row| row.try_get("model_override"))
                .transpose()?
                .unwrap_or_default())
        }

        pub(super) fn pool(&self) -> &$pool {
            &self.pool
        }

        /// How this store was opened, so a test can open it again.
        #[cfg(test)]
        pub(super) fn options(&self) -> $options {
            (*self.pool.connect_options()).clone()
        }

        pub(super) async fn close(&self) {
            self.pool.close().await;
        }
    };
}

/// `upsert_session` for one backend's connection type.
macro_rules! upsert_session_fn {
    ($conn:ty) => {
        /// Creates the session's row, or marks it as just used.
        async fn upsert_session(
            conn: &mut $conn,
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
    };
}

/// The same statements on either pool.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            SessionStore::Sqlite(s) => {
                let $pool = s.pool();
                $body
            }
            SessionStore::Postgres(s) => {
                let $pool = s.pool();
                $body
            }
        }
    };
}

/// [`on_pool!`] for a write outside a transaction: on SQLite it waits its turn among
/// this process's writers (`SqliteStore::writing`), not in SQLite's busy handler,
/// where a background job's write lost to the turns' queued writes for seconds.
/// The connection comes first, as for a transaction: a writer that queued first
/// would wait for a connection that writers in transactions hold while they queue.
macro_rules! writing_on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            SessionStore::Sqlite(s) => {
                let mut conn = s.pool().acquire().await?;
                let _writing = s.writing().await;
                let $pool = &mut *conn;
                $body
            }
            SessionStore::Postgres(s) => {
                let $pool = s.pool();
                $body
            }
        }
    };
}

/// The same transaction on either pool.
macro_rules! in_tx {
    ($store:expr, $tx:ident => $body:expr) => {
        match $store {
            SessionStore::Sqlite(s) => {
                let mut $tx = s.pool().begin().await?;
                let _writing = s.writing().await;
                let out = $body;
                $tx.commit().await?;
                out
            }
            SessionStore::Postgres(s) => {
                let mut $tx = s.pool().begin().await?;
                let _writing = s.writing().await;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}

mod chunks;
mod consolidation;
mod identities;
mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;
mod usage;

use std::{str::FromStr, time::Duration};

use nexus_common::{
    domain::{InvalidValue, SessionKey},
    now_ms,
};
use sqlx::{Row, postgres::PgConnectOptions, sqlite::SqliteConnectOptions};

pub use chunks::{ChunkHit, ChunkQuery, IndexedFile, KeptChunks};
pub use consolidation::{
    BatchEntry, Claim, Consolidation, EarlierSummary, MAX_BATCH_ENTRY_CHARS, NewConsolidation,
    RangeFacts,
};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use usage::{UsageEvent, UsageKey, UsageSums};

/// How long a connection waits for a lock or a free pool slot before failing.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Who spoke an entry. The numbers are the stored values and equal the proto `Role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User = 1,
    Assistant = 2,
    Tool = 3,
    System = 4,
}

impl Role {
    /// The stored (and wire) number.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The role stored as `code`; `None` for anything else, `0` included.
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::User),
            2 => Some(Self::Assistant),
            3 => Some(Self::Tool),
            4 => Some(Self::System),
            _ => None,
        }
    }
}

/// One message of a turn, as it goes into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub role: Role,
    pub text: String,
    /// For [`Role::Tool`]: which tool and which call; empty otherwise.
    pub tool_name: String,
    pub tool_call_id: String,
    pub at_ms: i64,
}

/// An entry read back from history, with the turn it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastEntry {
    pub turn_id: TurnId,
    pub entry: Entry,
}

/// The id of a turn: the inbound message id it answers (`<channel>:<upstream id>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TurnId(String);

impl TurnId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let bad = |why| InvalidValue {
            what: "turn id",
            value: s.chars().take(80).collect(),
            why,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > 512 || s.chars().any(char::is_control) {
            return Err(bad("it is too long or holds control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The model chosen for a session with /model: trimmed, at most
/// [`ModelOverride::MAX_CHARS`] characters, no control characters. Empty means
/// none (the configured route); whether a provider knows the name is the caller's check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelOverride(String);

impl ModelOverride {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let s = s.trim();
        let bad = |why| InvalidValue {
            what: "model",
            value: s.chars().take(80).collect(),
            why,
        };
        if s.chars().count() > Self::MAX_CHARS {
            return Err(bad("it is longer than 200 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(bad("it holds control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A finished turn to store atomically.
#[derive(Debug, Clone)]
pub struct NewTurn {
    pub session: SessionKey,
    pub turn_id: TurnId,
    pub user_id: String,
    /// In conversation order.
    pub entries: Vec<Entry>,
    /// The reply that went out, encoded by the caller; the store never looks inside.
    pub reply: Option<Vec<u8>>,
    pub at_ms: i64,
}

/// A (channel, sender id) linked to a user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub channel: String,
    pub sender_id: String,
    pub user_id: String,
    pub linked_at_ms: i64,
}

/// What [`SessionStore::turn_reads`] reads for one turn.
#[derive(Debug, Clone, Copy)]
pub struct TurnQuery<'a> {
    pub session: &'a SessionKey,
    /// History window, in turns; summaries cover what came before it.
    pub turns: u32,
    /// Most summaries of earlier turns.
    pub summaries: u32,
    /// The turn to look up as answered, if any.
    pub turn_id: Option<&'a TurnId>,
    /// (channel, sender id) whose linked identity to look up, if any.
    pub sender: Option<(&'a str, &'a str)>,
}

/// A turn's reads: each as [`SessionStore::answered`], [`SessionStore::identity`],
/// [`SessionStore::history`], [`SessionStore::model_override`] and
/// [`SessionStore::earlier_summaries`] would return it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnReads {
    pub answered: Option<Answered>,
    pub identity: Option<Identity>,
    pub history: Vec<PastEntry>,
    pub model_override: String,
    pub earlier: Vec<EarlierSummary>,
}

/// `sql` with its parameters renamed: `$k` becomes `$to[k - 1]`, so that statements
/// written on their own can run as one multi-statement query sharing one list of
/// arguments. The SQL here holds `$` only in parameters.
fn renumbered(sql: &str, to: &[usize]) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let k: usize = rest[..digits].parse().unwrap_or(0);
        match k.checked_sub(1).and_then(|i| to.get(i)) {
            Some(n) => out.push_str(&n.to_string()),
            None => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// A turn that is already stored: the message it answers was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub reply: Option<Vec<u8>>,
}

/// Why the store failed. Every variant is the service's fault, not the caller's.
///
/// Each message carries its cause in its own text, so the one line that ends
/// up in a service error header or a log is enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "DATABASE_URL {0} is not supported: use sqlite://<file> or postgres://… (postgresql://…)"
    )]
    UnsupportedUrl(String),
    #[error("DATABASE_URL {url} is invalid: {error}")]
    BadUrl { url: String, error: sqlx::Error },
    #[error("cannot create the database directory {path}: {error}")]
    CreateDir { path: String, error: std::io::Error },
    #[error("cannot open the {backend} database at {url}: {error}")]
    Connect {
        backend: &'static str,
        url: String,
        error: sqlx::Error,
    },
    #[error("cannot migrate the {backend} database: {error}")]
    Migrate {
        backend: &'static str,
        error: sqlx::migrate::MigrateError,
    },
    #[error("database error: {0}")]
    Query(sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Query(error)
    }
}

/// Sessions, turns and history, on one of the two backends.
#[derive(Debug, Clone)]
pub enum SessionStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl SessionStore {
    /// Opens the database at `url` and brings its schema up to date.
    /// `sqlite:` URLs get their directory created; `postgres://` and
    /// `postgresql://` URLs are used as given.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let bad_url = |error| StoreError::BadUrl {
            url: redact_url(url),
            error,
        };
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url).map_err(bad_url)?;
            Self::open_sqlite(options).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(bad_url)?;
            Self::open_postgres(options).await
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// Opens a SQLite database (WAL, busy timeout, foreign keys) and migrates it.
    pub async fn open_sqlite(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        SqliteStore::open(options).await.map(Self::Sqlite)
    }

    /// Opens a PostgreSQL database and migrates it.
    pub async fn open_postgres(options: PgConnectOptions) -> Result<Self, StoreError> {
        PgStore::open(options).await.map(Self::Postgres)
    }

    /// `"sqlite"` or `"postgres"`, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => sqlite::BACKEND,
            Self::Postgres(_) => postgres::BACKEND,
        }
    }

    /// Stores a finished turn in one transaction. Returns `false`, changing
    /// nothing, when a turn with this id is already stored.
    pub async fn append(&self, turn: &NewTurn) -> Result<bool, StoreError> {
        Ok(self.append_counting(turn, false).await?.is_some())
    }

    /// Like [`Self::append`]; `None` when the turn was already stored, else the
    /// session's unsummarized turns after it when `count_pending` (0 when not).
    /// The count is not free (it grows with the session while journaling is off),
    /// so it is asked for only where it is used.
    pub async fn append_counting(
        &self,
        turn: &NewTurn,
        count_pending: bool,
    ) -> Result<Option<u32>, StoreError> {
        match self {
            Self::Sqlite(s) if turn.entries.len() <= sqlite::ONE_TRIP_ENTRIES => {
                s.append_in_one_trip(turn, count_pending).await
            }
            Self::Sqlite(s) => s.append(turn, count_pending).await,
            Self::Postgres(s) => s.append(turn, count_pending).await,
        }
    }

    /// Everything a turn's context reads from the store. SQLite answers it in one
    /// trip to a connection's thread; PostgreSQL with its queries at once.
    pub async fn turn_reads(&self, q: &TurnQuery<'_>) -> Result<TurnReads, StoreError> {
        match self {
            Self::Sqlite(s) => s.turn_reads(q).await,
            Self::Postgres(_) => {
                let (answered, identity, history, model_override, earlier) = tokio::try_join!(
                    async {
                        match q.turn_id {
                            Some(id) => self.answered(id).await,
                            None => Ok(None),
                        }
                    },
                    async {
                        match q.sender {
                            Some((channel, sender)) => self.identity(channel, sender).await,
                            None => Ok(None),
                        }
                    },
                    self.history(q.session, q.turns),
                    self.model_override(q.session),
                    self.earlier_summaries(q.session, q.turns, q.summaries),
                )?;
                Ok(TurnReads {
                    answered,
                    identity,
                    history,
                    model_override,
                    earlier,
                })
            }
        }
    }

    /// Entries of the last `turns` turns of a session that are not archived
    /// (see [`Self::reset`]), oldest first.
    pub async fn history(
        &self,
        session: &SessionKey,
        turns: u32,
    ) -> Result<Vec<PastEntry>, StoreError> {
        match self {
            Self::Sqlite(s) => s.history(session, turns).await,
            Self::Postgres(s) => s.history(session, turns).await,
        }
    }

    /// The stored turn with this id, if the message it answers was answered.
    pub async fn answered(&self, turn_id: &TurnId) -> Result<Option<Answered>, StoreError> {
        match self {
            Self::Sqlite(s) => s.answered(turn_id).await,
            Self::Postgres(s) => s.answered(turn_id).await,
        }
    }

    /// Archives every turn of the session so far: later history starts after
    /// them, while they stay stored and answered. Returns how many turns were
    /// archived by this call (0 when none came since the last reset). Turns
    /// without entries (chat commands) are not counted: they are not history.
    pub async fn reset(&self, session: &SessionKey) -> Result<u32, StoreError> {
        let at_ms = now_ms();
        let archived = match self {
            Self::Sqlite(s) => s.reset(session, at_ms).await,
            Self::Postgres(s) => s.reset(session, at_ms).await,
        }?;
        Ok(u32::try_from(archived).unwrap_or(u32::MAX))
    }

    /// Stores the session's model override; an empty one clears it.
    pub async fn set_model(
        &self,
        session: &SessionKey,
        model: &ModelOverride,
    ) -> Result<(), StoreError> {
        writing_on_pool!(self, pool => {
            sqlx::query(sql::SET_MODEL)
                .bind(session.id())
                .bind(session.channel().as_str())
                .bind(session.chat_id())
                .bind(session.thread_id())
                .bind(now_ms())
                .bind(model.as_str())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The session's model override; empty when none was set (or the session is unknown).
    pub async fn model_override(&self, session: &SessionKey) -> Result<String, StoreError> {
        match self {
            Self::Sqlite(s) => s.model_override(session).await,
            Self::Postgres(s) => s.model_override(session).await,
        }
    }

    /// The identity linked to this sender, if any.
    pub async fn identity(
        &self,
        channel: &str,
        sender_id: &str,
    ) -> Result<Option<Identity>, StoreError> {
        match self {
            Self::Sqlite(s) => identities::sqlite::get(s.pool(), channel, sender_id).await,
            Self::Postgres(s) => identities::postgres::get(s.pool(), channel, sender_id).await,
        }
    }

    /// Links a sender to a user id, replacing an earlier link; returns the link.
    /// The caller has validated the three values.
    pub async fn link_identity(
        &self,
        channel: &str,
        sender_id: &str,
        user_id: &str,
    ) -> Result<Identity, StoreError> {
        let identity = Identity {
            channel: channel.to_owned(),
            sender_id: sender_id.to_owned(),
            user_id: user_id.to_owned(),
            linked_at_ms: now_ms(),
        };
        writing_on_pool!(self, pool => {
            sqlx::query(identities::sql::LINK)
                .bind(&identity.channel)
                .bind(&identity.sender_id)
                .bind(&identity.user_id)
                .bind(identity.linked_at_ms)
                .execute(pool)
                .await?;
        });
        Ok(identity)
    }

    /// Every linked identity, or those of one user, by channel and sender id.
    pub async fn identities(&self, user_id: Option<&str>) -> Result<Vec<Identity>, StoreError> {
        match self {
            Self::Sqlite(s) => identities::sqlite::list(s.pool(), user_id).await,
            Self::Postgres(s) => identities::postgres::list(s.pool(), user_id).await,
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(s) => s.close().await,
        }
    }
}

/// SQL both backends accept as written (`$n` parameters and `ON CONFLICT` work
/// in SQLite ≥ 3.24 and PostgreSQL alike); only the schema differs.
mod sql {
    pub const UPSERT_SESSION: &str = "INSERT INTO sessions (id, channel, chat_id, thread_id, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $5) \
         ON CONFLICT (id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms";

    pub const INSERT_TURN: &str = "INSERT INTO turns (turn_id, session_id, user_id, created_at_ms, reply) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (turn_id) DO NOTHING";

    macro_rules! insert_entry_into {
        () => {
            "INSERT INTO entries (session_id, turn_id, seq, role, text, tool_name, tool_call_id, at_ms) "
        };
    }
    /// [`INSERT_ENTRY`] without its `VALUES`, for a statement of several rows.
    pub const INSERT_ENTRY_INTO: &str = insert_entry_into!();
    pub const INSERT_ENTRY: &str = concat!(
        insert_entry_into!(),
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    );

    // Only entries after the session's reset point count, and of those the
    // last `$2` turns. A turn's position is that of its first entry (seq 0): entry
    // ids grow with every append, while clocks of different replicas may disagree.
    // The window is found walking back from the newest entry, so a turn costs the
    // same in a session of ten turns as in one of ten thousand (grouping every
    // entry since /new made a long session's turns ever slower).
    pub const HISTORY: &str = "WITH starts AS ( \
             SELECT id, turn_id FROM entries \
             WHERE session_id = $1 AND seq = 0 \
               AND id > COALESCE((SELECT history_from_entry FROM sessions WHERE id = $1), 0) \
             ORDER BY id DESC LIMIT $2) \
         SELECT turn_id, role, text, tool_name, tool_call_id, at_ms FROM entries \
         WHERE session_id = $1 \
           AND id >= (SELECT COALESCE(MIN(id), 0) FROM starts) \
           AND turn_id IN (SELECT turn_id FROM starts) \
         ORDER BY id";

    pub const ANSWERED: &str = "SELECT reply FROM turns WHERE turn_id = $1";

    // Run after UPSERT_SESSION in the same transaction, so the session row exists
    // and is locked until ARCHIVE_UP_TO: a concurrent reset waits and then sees 0.
    pub const UNARCHIVED: &str = "SELECT COUNT(DISTINCT turn_id) AS turns, MAX(id) AS last_entry FROM entries \
         WHERE session_id = $1 AND id > (SELECT history_from_entry FROM sessions WHERE id = $1)";

    pub const ARCHIVE_UP_TO: &str = "UPDATE sessions SET history_from_entry = $2 WHERE id = $1";

    pub const SET_MODEL: &str = "INSERT INTO sessions (id, channel, chat_id, thread_id, created_at_ms, updated_at_ms, model_override) \
         VALUES ($1, $2, $3, $4, $5, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms, model_override = excluded.model_override";

    pub const MODEL_OVERRIDE: &str = "SELECT model_override FROM sessions WHERE id = $1";
}

/// Builds a [`PastEntry`] from the columns of [`sql::HISTORY`].
fn past_entry(
    turn_id: String,
    role: i32,
    text: String,
    tool_name: String,
    tool_call_id: String,
    at_ms: i64,
) -> Result<PastEntry, StoreError> {
    let role = Role::from_code(role).ok_or_else(|| {
        StoreError::Corrupt(format!("turn {turn_id} has an entry with role {role}"))
    })?;
    let turn_id = TurnId::parse(&turn_id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(PastEntry {
        turn_id,
        entry: Entry {
            role,
            text,
            tool_name,
            tool_call_id,
            at_ms,
        },
    })
}

/// A row of [`sql::HISTORY`] on either backend.
fn past_entry_row<R: Row>(row: &R) -> Result<PastEntry, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    past_entry(
        row.try_get("turn_id")?,
        row.try_get("role")?,
        row.try_get("text")?,
        row.try_get("tool_name")?,
        row.try_get("tool_call_id")?,
        row.try_get("at_ms")?,
    )
}

/// A database URL fit for logs and errors: no password, no query string.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // `sqlite:file.db` and the like carry no credentials.
        return url.split('?').next().unwrap_or_default().to_owned();
    };
    let rest = rest.split('?').next().unwrap_or_default();
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

#[cfg(test)]
mod url_tests {
    use super::redact_url;

    #[test]
    fn passwords_and_query_strings_never_reach_an_error_message() {
        assert_eq!(
            redact_url("postgres://bob:s3cret@db.example:5432/nexus?password=x"),
            "postgres://bob@db.example:5432/nexus"
        );
        assert_eq!(
            redact_url("sqlite:///w/.nexus/nexus.db?mode=rwc"),
            "sqlite:///w/.nexus/nexus.db"
        );
        assert_eq!(redact_url("sqlite:x.db"), "sqlite:x.db");
    }
}
