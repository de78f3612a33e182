//! Jobs and their fires in SQL: SQLite (a file under the workspace, the default)
//! or PostgreSQL (any `postgres://` URL, used as given, shared by replicas).
//!
//! The schema is two tables made with idempotent `CREATE TABLE IF NOT EXISTS` at
//! start, not sqlx migrations: memory-svc runs its migrations in the same database,
//! and a second migrator on `_sqlx_migrations` would see memory-svc's versions as
//! unknown. Every name starts with `scheduler_`.
//!
//! Exactly once per due time rests on [`Store::claim`]: one transaction moves a job's
//! `next_run_ms` from the due time to the next one only if it still holds the due time
//! (compare-and-set), and records the fire (`scheduler_fires`, keyed by job and due
//! time) with the message to publish. Of replicas racing for one due time exactly one
//! changes the row; a fire whose publishing was not recorded is published again.
//!
//! It must never see NATS; fires are opaque bytes to it.

use std::{str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions as _, Connection as _, Row as _,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions},
};

use crate::{
    cron::CronExpr,
    job::{Job, Origin},
    schedule::{MissedPolicy, Schedule},
};

/// How long a connection waits for a lock or a free pool slot before failing.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the store failed. Every variant is the scheduler's fault, not the caller's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "DATABASE_URL {0} is not supported: use sqlite://<file> or postgres://… (postgresql://…)"
    )]
    UnsupportedUrl(String),
    #[error("cannot open the {backend} database: {error}")]
    Connect {
        backend: &'static str,
        error: sqlx::Error,
    },
    #[error("cannot create the database directory {path}: {error}")]
    CreateDir { path: String, error: std::io::Error },
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("stored job {id} is invalid: {why}")]
    Corrupt { id: String, why: String },
}

/// A claim of one due time of one job, with what it changes.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job_id: String,
    /// The due time claimed: the job's `next_run_ms` right now.
    pub due_ms: i64,
    /// What `next_run_ms` becomes; `None`: the job is done.
    pub next_ms: Option<i64>,
    /// Set as the job's last run (a fire); `None` leaves it (a skip).
    pub last_run_ms: Option<i64>,
    pub outcome: String,
    /// The encoded message to publish; `None` for a skipped due time.
    pub fire: Option<Vec<u8>>,
    /// Which scheduler instance claims it (for operators reading the table).
    pub by: String,
    pub now_ms: i64,
}

/// A fire claimed but not recorded as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFire {
    pub job_id: String,
    pub due_ms: i64,
    pub payload: Vec<u8>,
}

/// How many jobs match a list, whatever its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub active: u32,
    pub paused: u32,
}

/// What [`Store::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Yes,
    /// The owner already has this many active jobs, the limit.
    TooMany(u32),
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The jobs store.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

/// The same statements on either pool: the SQL text is shared (`$n` parameters,
/// `ON CONFLICT` and `RETURNING` mean the same in SQLite and PostgreSQL).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// A [`Job`] from a row of `sql::COLUMNS`.
macro_rules! job_of {
    ($row:expr) => {{
        let row = $row;
        let id: String = row.try_get("id")?;
        let corrupt = |why: String| StoreError::Corrupt {
            id: id.clone(),
            why,
        };
        let cron: Option<String> = row.try_get("cron_expr")?;
        let every: Option<i64> = row.try_get("every_secs")?;
        let at: Option<i64> = row.try_get("at_ms")?;
        let anchor_ms: i64 = row.try_get("anchor_ms")?;
        let schedule = match (cron, every, at) {
            (Some(c), None, None) => {
                Schedule::Cron(CronExpr::from_str(&c).map_err(|e| corrupt(e.to_string()))?)
            }
            (None, Some(s), None) => Schedule::Every {
                every: Duration::from_secs(u64::try_from(s).unwrap_or(1).max(1)),
                anchor_ms,
            },
            (None, None, Some(at_ms)) => Schedule::At { at_ms },
            _ => return Err(corrupt("it needs exactly one of cron, every, at".into())),
        };
        let missed: String = row.try_get("missed")?;
        Job {
            owner: row.try_get("owner")?,
            origin: Origin {
                channel: row.try_get("channel")?,
                chat_id: row.try_get("chat_id")?,
                thread_id: row.try_get("thread_id")?,
            },
            message: row.try_get("message")?,
            schedule,
            tz: row.try_get("tz")?,
            missed: MissedPolicy::parse(&missed)
                .ok_or_else(|| corrupt(format!("unknown missed-fire policy {missed:?}")))?,
            paused: row.try_get::<i64, _>("paused")? != 0,
            next_run_ms: row.try_get("next_run_ms")?,
            last_run_ms: row.try_get("last_run_ms")?,
            last_outcome: row.try_get("last_outcome")?,
            created_at_ms: row.try_get("created_at_ms")?,
            id,
        }
    }};
}

impl Store {
    /// Opens the database at `url` and creates the tables if missing.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let connect = |backend| move |error| StoreError::Connect { backend, error };
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url).map_err(connect("sqlite"))?;
            Self::open_sqlite(options).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(connect("postgres"))?;
            Self::open_postgres(options).await
        } else {
            Err(StoreError::UnsupportedUrl(
                url.split("://").next().unwrap_or_default().to_owned() + "://…",
            ))
        }
    }

    /// A SQLite file (WAL, a busy timeout so writers of several processes queue).
    pub async fn open_sqlite(options: SqliteConnectOptions) -> Result<Self, StoreError> {
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
            .busy_timeout(LOCK_TIMEOUT);
        let connect = |error| StoreError::Connect {
            backend: "sqlite",
            error,
        };
        // One direct connection first: a pool only reports "timed out" and hides why.
        options
            .connect()
            .await
            .map_err(connect)?
            .close()
            .await
            .map_err(connect)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(LOCK_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(connect)?;
        let mut tx = pool.begin().await?;
        for statement in sql::schema("BLOB") {
            sqlx::query(&statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Self {
            backend: Backend::Sqlite(pool),
        })
    }

    /// A PostgreSQL database.
    pub async fn open_postgres(options: PgConnectOptions) -> Result<Self, StoreError> {
        let connect = |error| StoreError::Connect {
            backend: "postgres",
            error,
        };
        options
            .connect()
            .await
            .map_err(connect)?
            .close()
            .await
            .map_err(connect)?;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(LOCK_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(connect)?;
        let mut tx = pool.begin().await?;
        // Replicas starting together would race in CREATE TABLE IF NOT EXISTS (a
        // duplicate key in pg_type); the lock makes them take turns.
        sqlx::query("SELECT pg_advisory_xact_lock(7301164211)")
            .execute(&mut *tx)
            .await?;
        for statement in sql::schema("BYTEA") {
            sqlx::query(&statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Self {
            backend: Backend::Postgres(pool),
        })
    }

    /// `"sqlite"` or `"postgres"`, for logs.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Stores a new job unless its owner already has `max_active` jobs waiting to fire.
    pub async fn insert(&self, job: &Job, max_active: u32) -> Result<Inserted, StoreError> {
        let (cron, every, at) = match &job.schedule {
            Schedule::Cron(expr) => (Some(expr.to_string()), None, None),
            Schedule::Every { every, .. } => (
                None,
                Some(i64::try_from(every.as_secs()).unwrap_or(i64::MAX)),
                None,
            ),
            Schedule::At { at_ms } => (None, None, Some(*at_ms)),
        };
        let anchor = match job.schedule {
            Schedule::Every { anchor_ms, .. } => anchor_ms,
            _ => job.created_at_ms,
        };
        // One statement, so SQLite takes the write lock first and waits for other
        // writers (a read-then-write transaction fails at once if one wrote in
        // between). Two concurrent adds by one user in PostgreSQL may both pass the
        // count: the limit guards against runaway models, not an accounting boundary.
        on_pool!(self, pool => {
            let inserted = sqlx::query(sql::INSERT)
                .bind(&job.id)
                .bind(&job.owner)
                .bind(&job.origin.channel)
                .bind(&job.origin.chat_id)
                .bind(&job.origin.thread_id)
                .bind(&job.message)
                .bind(cron)
                .bind(every)
                .bind(at)
                .bind(anchor)
                .bind(&job.tz)
                .bind(job.missed.as_str())
                .bind(i64::from(job.paused))
                .bind(job.next_run_ms)
                .bind(job.created_at_ms)
                .bind(i64::from(max_active))
                .execute(pool)
                .await?
                .rows_affected();
            if inserted == 1 {
                return Ok(Inserted::Yes);
            }
            let active: i64 = sqlx::query(sql::ACTIVE_OF_OWNER)
                .bind(&job.owner)
                .fetch_one(pool)
                .await?
                .try_get("n")?;
            Ok(Inserted::TooMany(u32::try_from(active).unwrap_or(u32::MAX)))
        })
    }

    /// One job; with `owner`, only if it is theirs.
    pub async fn get(&self, id: &str, owner: Option<&str>) -> Result<Option<Job>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {} FROM scheduler_jobs WHERE id = $1 AND ($2 = '' OR owner = $2)", sql::COLUMNS))
                .bind(id)
                .bind(owner.unwrap_or_default())
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(row) => Some(job_of!(row)),
                None => None,
            })
        })
    }

    /// Jobs (of `owner`, or all), the soonest due first, then those that will not
    /// fire again. A row that is not a valid job is left out (and logged).
    pub async fn list(&self, owner: Option<&str>, limit: u32) -> Result<Vec<Job>, StoreError> {
        let limit = if limit == 0 {
            i64::MAX
        } else {
            i64::from(limit)
        };
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM scheduler_jobs WHERE ($1 = '' OR owner = $1) \
                 ORDER BY paused, next_run_ms IS NULL, next_run_ms, created_at_ms, id LIMIT $2",
                sql::COLUMNS
            ))
            .bind(owner.unwrap_or_default())
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let mut jobs = Vec::with_capacity(rows.len());
            for row in rows {
                match (|| -> Result<Job, StoreError> { Ok(job_of!(&row)) })() {
                    Ok(job) => jobs.push(job),
                    Err(error) => tracing::error!(%error, "invalid stored job left out of a list"),
                }
            }
            Ok(jobs)
        })
    }

    /// How many jobs there are (of `owner`, or all).
    pub async fn counts(&self, owner: Option<&str>) -> Result<Counts, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(sql::COUNTS)
                .bind(owner.unwrap_or_default())
                .fetch_one(pool)
                .await?;
            let n = |c: &str| -> Result<u32, StoreError> {
                Ok(u32::try_from(row.try_get::<i64, _>(c)?).unwrap_or(u32::MAX))
            };
            Ok(Counts {
                total: n("total")?,
                active: n("active")?,
                paused: n("paused")?,
            })
        })
    }

    /// Deletes a job (with `owner`, only theirs) and returns it. A fire it already
    /// claimed is still published.
    pub async fn remove(&self, id: &str, owner: Option<&str>) -> Result<Option<Job>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(&format!(
                "DELETE FROM scheduler_jobs WHERE id = $1 AND ($2 = '' OR owner = $2) RETURNING {}",
                sql::COLUMNS
            ))
            .bind(id)
            .bind(owner.unwrap_or_default())
            .fetch_optional(pool)
            .await?;
            Ok(match row {
                Some(row) => Some(job_of!(row)),
                None => None,
            })
        })
    }

    /// Pauses or resumes a job (with `owner`, only theirs), setting `next_run_ms` as
    /// given when resuming. Returns the job as it is now.
    pub async fn set_paused(
        &self,
        id: &str,
        owner: Option<&str>,
        paused: bool,
        next_run_ms: Option<i64>,
        outcome: &str,
    ) -> Result<Option<Job>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(&format!(
                "UPDATE scheduler_jobs SET paused = $3, \
                   next_run_ms = CASE WHEN $3 = 0 THEN $4 ELSE next_run_ms END, \
                   last_outcome = CASE WHEN $5 = '' THEN last_outcome ELSE $5 END \
                 WHERE id = $1 AND ($2 = '' OR owner = $2) RETURNING {}",
                sql::COLUMNS
            ))
            .bind(id)
            .bind(owner.unwrap_or_default())
            .bind(i64::from(paused))
            .bind(next_run_ms)
            .bind(outcome)
            .fetch_optional(pool)
            .await?;
            Ok(match row {
                Some(row) => Some(job_of!(row)),
                None => None,
            })
        })
    }

    /// Jobs due at `now_ms` (not paused), the most overdue first. A row that is not
    /// a valid job is paused with the reason, so it cannot hold up the others.
    pub async fn due(&self, now_ms: i64, limit: u32) -> Result<Vec<Job>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM scheduler_jobs \
                 WHERE paused = 0 AND next_run_ms IS NOT NULL AND next_run_ms <= $1 \
                 ORDER BY next_run_ms LIMIT $2",
                sql::COLUMNS
            ))
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            let mut jobs = Vec::with_capacity(rows.len());
            for row in rows {
                let id: String = row.try_get("id")?;
                let job = (|| -> Result<Job, StoreError> { Ok(job_of!(&row)) })();
                match job {
                    Ok(job) => jobs.push(job),
                    Err(error) => {
                        tracing::error!(%error, job = id, "invalid stored job paused");
                        sqlx::query(
                            "UPDATE scheduler_jobs SET paused = 1, last_outcome = $2 WHERE id = $1",
                        )
                        .bind(&id)
                        .bind(format!("paused: {error}"))
                        .execute(pool)
                        .await?;
                    }
                }
            }
            Ok(jobs)
        })
    }

    /// The soonest due time of any job that is not paused.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT MIN(next_run_ms) AS next FROM scheduler_jobs \
                 WHERE paused = 0 AND next_run_ms IS NOT NULL",
            )
            .fetch_one(pool)
            .await?;
            Ok(row.try_get::<Option<i64>, _>("next")?)
        })
    }

    /// Claims a due time: moves the job on and records the fire, in one
    /// transaction, only if the job still waits for exactly this due time and is
    /// not paused. `false`: another replica claimed it first (or it was paused,
    /// removed or changed meanwhile), and nothing changed.
    pub async fn claim(&self, claim: &Claim) -> Result<bool, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let moved = sqlx::query(sql::CLAIM)
                .bind(&claim.job_id)
                .bind(claim.due_ms)
                .bind(claim.next_ms)
                .bind(claim.last_run_ms)
                .bind(&claim.outcome)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            if let Some(payload) = &claim.fire {
                sqlx::query(sql::INSERT_FIRE)
                    .bind(&claim.job_id)
                    .bind(claim.due_ms)
                    .bind(claim.now_ms)
                    .bind(&claim.by)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Records that a fire is in the stream; with `outcome`, also the job's last
    /// outcome (if this fire is still its last run).
    pub async fn mark_published(
        &self,
        job_id: &str,
        due_ms: i64,
        now_ms: i64,
        outcome: Option<&str>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE scheduler_fires SET published_at_ms = $3 \
                 WHERE job_id = $1 AND due_ms = $2 AND published_at_ms IS NULL",
            )
            .bind(job_id)
            .bind(due_ms)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if let Some(outcome) = outcome {
                sqlx::query(sql::SET_OUTCOME)
                    .bind(job_id)
                    .bind(due_ms)
                    .bind(outcome)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Sets the job's last outcome, if `due_ms` is still its last run.
    pub async fn note(&self, job_id: &str, due_ms: i64, outcome: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(sql::SET_OUTCOME)
                .bind(job_id)
                .bind(due_ms)
                .bind(outcome)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Fires claimed at or before `claimed_before_ms` and not recorded as published.
    pub async fn unpublished(
        &self,
        claimed_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<PendingFire>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT job_id, due_ms, payload FROM scheduler_fires \
                 WHERE published_at_ms IS NULL AND claimed_at_ms <= $1 \
                 ORDER BY claimed_at_ms, due_ms LIMIT $2",
            )
            .bind(claimed_before_ms)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            let mut fires = Vec::with_capacity(rows.len());
            for row in rows {
                fires.push(PendingFire {
                    job_id: row.try_get("job_id")?,
                    due_ms: row.try_get("due_ms")?,
                    payload: row.try_get("payload")?,
                });
            }
            Ok(fires)
        })
    }

    /// Forgets published fires and finished one-shots older than `before_ms`.
    pub async fn prune(&self, before_ms: i64) -> Result<u64, StoreError> {
        on_pool!(self, pool => {
            let fires = sqlx::query(
                "DELETE FROM scheduler_fires WHERE published_at_ms IS NOT NULL AND published_at_ms < $1",
            )
            .bind(before_ms)
            .execute(pool)
            .await?
            .rows_affected();
            let jobs = sqlx::query(
                "DELETE FROM scheduler_jobs WHERE next_run_ms IS NULL \
                 AND COALESCE(last_run_ms, created_at_ms) < $1",
            )
            .bind(before_ms)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(fires + jobs)
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

mod sql {
    /// The tables, with the backend's type for bytes.
    pub fn schema(bytes: &str) -> [String; 5] {
        [
            "CREATE TABLE IF NOT EXISTS scheduler_jobs ( \
               id TEXT PRIMARY KEY, \
               owner TEXT NOT NULL, \
               channel TEXT NOT NULL, \
               chat_id TEXT NOT NULL, \
               thread_id TEXT NOT NULL DEFAULT '', \
               message TEXT NOT NULL, \
               cron_expr TEXT, \
               every_secs BIGINT, \
               at_ms BIGINT, \
               anchor_ms BIGINT NOT NULL, \
               tz TEXT NOT NULL, \
               missed TEXT NOT NULL, \
               paused BIGINT NOT NULL DEFAULT 0, \
               next_run_ms BIGINT, \
               last_run_ms BIGINT, \
               last_outcome TEXT NOT NULL DEFAULT '', \
               created_at_ms BIGINT NOT NULL)"
                .to_owned(),
            "CREATE INDEX IF NOT EXISTS scheduler_jobs_due ON scheduler_jobs (next_run_ms)"
                .to_owned(),
            "CREATE INDEX IF NOT EXISTS scheduler_jobs_owner ON scheduler_jobs (owner)".to_owned(),
            format!(
                "CREATE TABLE IF NOT EXISTS scheduler_fires ( \
                   job_id TEXT NOT NULL, \
                   due_ms BIGINT NOT NULL, \
                   claimed_at_ms BIGINT NOT NULL, \
                   claimed_by TEXT NOT NULL, \
                   published_at_ms BIGINT, \
                   payload {bytes} NOT NULL, \
                   PRIMARY KEY (job_id, due_ms))"
            ),
            "CREATE INDEX IF NOT EXISTS scheduler_fires_unpublished \
             ON scheduler_fires (published_at_ms, claimed_at_ms)"
                .to_owned(),
        ]
    }

    pub const COLUMNS: &str = "id, owner, channel, chat_id, thread_id, message, cron_expr, \
         every_secs, at_ms, anchor_ms, tz, missed, paused, next_run_ms, last_run_ms, last_outcome, \
         created_at_ms";

    // Inserts only while the owner has fewer than $16 jobs waiting to fire.
    pub const INSERT: &str = "INSERT INTO scheduler_jobs (id, owner, channel, chat_id, thread_id, \
         message, cron_expr, every_secs, at_ms, anchor_ms, tz, missed, paused, next_run_ms, \
         created_at_ms) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 \
         WHERE (SELECT COUNT(*) FROM scheduler_jobs WHERE owner = $2 AND next_run_ms IS NOT NULL) < $16";

    pub const ACTIVE_OF_OWNER: &str = "SELECT COUNT(*) AS n FROM scheduler_jobs \
         WHERE owner = $1 AND next_run_ms IS NOT NULL";

    pub const COUNTS: &str = "SELECT COUNT(*) AS total, \
         COALESCE(SUM(CASE WHEN paused = 0 AND next_run_ms IS NOT NULL THEN 1 ELSE 0 END), 0) AS active, \
         COALESCE(SUM(CASE WHEN paused <> 0 THEN 1 ELSE 0 END), 0) AS paused \
         FROM scheduler_jobs WHERE ($1 = '' OR owner = $1)";

    // The compare-and-set that makes a due time fire once: only the transaction
    // that still finds `next_run_ms = due` moves it on.
    pub const CLAIM: &str = "UPDATE scheduler_jobs SET next_run_ms = $3, \
         last_run_ms = COALESCE($4, last_run_ms), last_outcome = $5 \
         WHERE id = $1 AND next_run_ms = $2 AND paused = 0";

    pub const SET_OUTCOME: &str =
        "UPDATE scheduler_jobs SET last_outcome = $3 WHERE id = $1 AND last_run_ms = $2";

    pub const INSERT_FIRE: &str = "INSERT INTO scheduler_fires \
         (job_id, due_ms, claimed_at_ms, claimed_by, payload) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (job_id, due_ms) DO NOTHING";
}
