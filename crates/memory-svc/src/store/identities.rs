//! Linked identities: which user id a (channel, sender id) is. The same SQL
//! runs on both backends; a macro writes the two typed copies.
//!
//! It must never validate or default an id: `ops` hands it checked values and
//! falls back to the default user id itself.

use sqlx::Row as _;

use super::{Identity, StoreError};

pub(super) mod sql {
    pub const GET: &str = "SELECT channel, sender_id, user_id, linked_at_ms FROM identities \
         WHERE channel = $1 AND sender_id = $2";

    pub const LINK: &str = "INSERT INTO identities (channel, sender_id, user_id, linked_at_ms) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (channel, sender_id) DO UPDATE SET user_id = excluded.user_id, \
         linked_at_ms = excluded.linked_at_ms";

    pub const LIST: &str = "SELECT channel, sender_id, user_id, linked_at_ms FROM identities \
         WHERE $1 = '' OR user_id = $1 ORDER BY channel, sender_id";
}

macro_rules! identity_queries {
    ($pool:ty, $row:ty) => {
        pub(in crate::store) fn identity(row: &$row) -> Result<Identity, StoreError> {
            Ok(Identity {
                channel: row.try_get("channel")?,
                sender_id: row.try_get("sender_id")?,
                user_id: row.try_get("user_id")?,
                linked_at_ms: row.try_get("linked_at_ms")?,
            })
        }

        pub(in crate::store) async fn get(
            pool: &$pool,
            channel: &str,
            sender_id: &str,
        ) -> Result<Option<Identity>, StoreError> {
            let row = sqlx::query(super::sql::GET)
                .bind(channel)
                .bind(sender_id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(identity).transpose()
        }

        pub(in crate::store) async fn list(
            pool: &$pool,
            user_id: Option<&str>,
        ) -> Result<Vec<Identity>, StoreError> {
            let rows = sqlx::query(super::sql::LIST)
                .bind(user_id.unwrap_or_default())
                .fetch_all(pool)
                .await?;
            rows.iter().map(identity).collect()
        }
    };
}

pub(super) mod sqlite {
    use super::*;
    identity_queries!(sqlx::SqlitePool, sqlx::sqlite::SqliteRow);
}

pub(super) mod postgres {
    use super::*;
    identity_queries!(sqlx::PgPool, sqlx::postgres::PgRow);
}
