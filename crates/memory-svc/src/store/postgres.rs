//! The PostgreSQL backend: any `postgres://` URL, used as given, so replicas on
//! different machines share one history. The primary key on the turn id makes a
//! concurrent duplicate append wait for the first and then do nothing. It must
//! never rewrite the URL it was given (search_path, TLS and pooling are the operator's).

use sqlx::{
    ConnectOptions as _, Connection as _, PgConnection, PgPool, Row,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{Answered, LOCK_TIMEOUT, NewTurn, PastEntry, StoreError, TurnId, past_entry_row, sql};
use nexus_common::domain::SessionKey;

pub(super) const BACKEND: &str = "postgres";

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Sessions in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// PostgreSQL locks rows, not the database: writers need no queue.
    pub(super) async fn writing(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        None
    }

    pub(super) async fn open(options: PgConnectOptions) -> Result<Self, StoreError> {
        let url = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let connect_error = |error| StoreError::Connect {
            backend: BACKEND,
            url: url.clone(),
            error,
        };
        // One direct connection first: a pool only reports "timed out" and
        // hides why (refused, unknown database, authentication).
        options
            .connect()
            .await
            .map_err(connect_error)?
            .close()
            .await
            .map_err(connect_error)?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
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

    shared_store_methods!(PgPool, PgConnectOptions);
}

upsert_session_fn!(PgConnection);
