//! The usage ledger: model calls and tokens summed per UTC day, user, channel,
//! model and purpose. Each event is counted once: the sums and the sequence of
//! the last event counted move in one transaction, and an event at or below
//! that sequence (a redelivery) changes nothing.
//!
//! It must never decide what an event means (`usage` in the crate root does).

use sqlx::Row;

use super::{SessionStore, StoreError};

/// One model call, as the ledger counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageKey {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub user_id: String,
    pub channel: String,
    pub model: String,
    pub purpose: String,
}

/// Sums of one ledger row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSums {
    pub key: UsageKey,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

mod sql {
    // Writes first, so the transaction holds the write lock from its first
    // statement (a read first would have to upgrade, which SQLite refuses while
    // another connection writes). One of the two moves the cursor iff `$2` is new.
    pub const ADVANCE_CURSOR: &str =
        "UPDATE usage_cursor SET last_seq = $2 WHERE consumer = $1 AND last_seq < $2";

    pub const FIRST_CURSOR: &str = "INSERT INTO usage_cursor (consumer, last_seq) VALUES ($1, $2) \
         ON CONFLICT (consumer) DO NOTHING";

    pub const ADD: &str = "INSERT INTO usage_daily (day, user_id, channel, model, purpose, calls, input_tokens, output_tokens) \
         VALUES ($1, $2, $3, $4, $5, 1, $6, $7) \
         ON CONFLICT (day, user_id, channel, model, purpose) DO UPDATE SET \
           calls = usage_daily.calls + 1, \
           input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
           output_tokens = usage_daily.output_tokens + excluded.output_tokens";

    pub const ROWS: &str = "SELECT day, user_id, channel, model, purpose, calls, input_tokens, output_tokens \
         FROM usage_daily WHERE day >= $1 AND day <= $2 AND ($3 = '' OR user_id = $3) \
         ORDER BY day, user_id, channel, model, purpose";
}

impl SessionStore {
    /// Counts one call, once: `false` (nothing changed) when `seq` was counted already.
    pub async fn record_usage(
        &self,
        consumer: &str,
        seq: u64,
        key: &UsageKey,
        input_tokens: u64,
        output_tokens: u64,
    ) -> Result<bool, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let counted = in_tx!(self, tx => {
            let advanced = sqlx::query(sql::ADVANCE_CURSOR)
                .bind(consumer)
                .bind(seq)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            let new = advanced
                || sqlx::query(sql::FIRST_CURSOR)
                    .bind(consumer)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
            if new {
                sqlx::query(sql::ADD)
                    .bind(&key.day)
                    .bind(&key.user_id)
                    .bind(&key.channel)
                    .bind(&key.model)
                    .bind(&key.purpose)
                    .bind(tokens(input_tokens))
                    .bind(tokens(output_tokens))
                    .execute(&mut *tx)
                    .await?;
            }
            new
        });
        Ok(counted)
    }

    /// Ledger rows of the days `from_day..=to_day` (`YYYY-MM-DD`), in order; only
    /// `user`'s when given (what a budget check reads).
    pub async fn usage(
        &self,
        from_day: &str,
        to_day: &str,
        user: Option<&str>,
    ) -> Result<Vec<UsageSums>, StoreError> {
        on_pool!(self, pool => {
            sqlx::query(sql::ROWS)
                .bind(from_day)
                .bind(to_day)
                .bind(user.unwrap_or_default())
                .fetch_all(pool)
                .await?
                .iter()
                .map(usage_row)
                .collect::<Result<Vec<_>, _>>()
        })
    }
}

fn usage_row<R: Row>(row: &R) -> Result<UsageSums, StoreError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let count = |name: &str| -> Result<u64, StoreError> {
        let n: i64 = row.try_get(name)?;
        Ok(u64::try_from(n).unwrap_or_default())
    };
    Ok(UsageSums {
        key: UsageKey {
            day: row.try_get("day")?,
            user_id: row.try_get("user_id")?,
            channel: row.try_get("channel")?,
            model: row.try_get("model")?,
            purpose: row.try_get("purpose")?,
        },
        calls: count("calls")?,
        input_tokens: count("input_tokens")?,
        output_tokens: count("output_tokens")?,
    })
}
