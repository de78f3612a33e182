//! The usage ledger: model calls and tokens summed per UTC day, user, channel,
//! model and purpose. Each event is counted once: the sums and the sequences of
//! the events counted move in one transaction, and an event whose sequence is
//! recorded (a redelivery) changes nothing. Batches may be counted in any order
//! (two replicas, each with a batch): every event not yet recorded is counted.
//! Below the consumer's floor (`usage_cursor.last_seq`) everything is settled;
//! [`SessionStore::settle_usage_below`] raises it as the events stream expires
//! old events, and forgets the sequences under it.
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
    // another connection writes); on PostgreSQL the row lock also orders the
    // batches of several replicas. Returns the floor.
    pub const FLOOR: &str = "INSERT INTO usage_cursor (consumer, last_seq) VALUES ($1, 0) \
         ON CONFLICT (consumer) DO UPDATE SET last_seq = usage_cursor.last_seq RETURNING last_seq";

    /// Records the sequences above the floor (`$2`, a JSON array) not recorded
    /// yet, and returns those.
    pub const RECORD_SQLITE: &str = "INSERT INTO usage_counted (consumer, seq) \
         SELECT $1, value FROM json_each($2) WHERE value > $3 \
         ON CONFLICT DO NOTHING RETURNING seq";
    pub const RECORD_POSTGRES: &str = "INSERT INTO usage_counted (consumer, seq) \
         SELECT $1, s.seq FROM (SELECT jsonb_array_elements_text($2::jsonb)::bigint AS seq) s \
         WHERE s.seq > $3 ON CONFLICT DO NOTHING RETURNING seq";

    pub const ADD: &str = "INSERT INTO usage_daily (day, user_id, channel, model, purpose, calls, input_tokens, output_tokens) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (day, user_id, channel, model, purpose) DO UPDATE SET \
           calls = usage_daily.calls + excluded.calls, \
           input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
           output_tokens = usage_daily.output_tokens + excluded.output_tokens";

    pub const RAISE_FLOOR: &str =
        "UPDATE usage_cursor SET last_seq = $2 WHERE consumer = $1 AND last_seq < $2";
    pub const FORGET_BELOW: &str = "DELETE FROM usage_counted WHERE consumer = $1 AND seq <= $2";

    pub const ROWS: &str = "SELECT day, user_id, channel, model, purpose, calls, input_tokens, output_tokens \
         FROM usage_daily WHERE day >= $1 AND day <= $2 AND ($3 = '' OR user_id = $3) \
         ORDER BY day, user_id, channel, model, purpose";
}

/// One model call's event, as the ledger's intake hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// Its sequence in the events stream.
    pub seq: u64,
    pub key: UsageKey,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl SessionStore {
    /// Counts one call, once: `false` (nothing changed) when `seq` was counted already.
    #[cfg(test)]
    pub async fn record_usage(
        &self,
        consumer: &str,
        seq: u64,
        key: &UsageKey,
        input_tokens: u64,
        output_tokens: u64,
    ) -> Result<bool, StoreError> {
        let event = UsageEvent {
            seq,
            key: key.clone(),
            input_tokens,
            output_tokens,
        };
        Ok(self.record_usage_batch(consumer, &[event]).await? == 1)
    }

    /// Counts each event of `events` not counted before, in one transaction;
    /// returns how many were new. One statement records the sequences and one per
    /// ledger row adds to it, however many events the batch holds.
    pub async fn record_usage_batch(
        &self,
        consumer: &str,
        events: &[UsageEvent],
    ) -> Result<usize, StoreError> {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let seqs = format!(
            "[{}]",
            events
                .iter()
                .map(|e| int(e.seq).to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let record = match self {
            SessionStore::Sqlite(_) => sql::RECORD_SQLITE,
            SessionStore::Postgres(_) => sql::RECORD_POSTGRES,
        };
        let counted = in_tx!(self, tx => {
            let floor: i64 = sqlx::query(sql::FLOOR)
                .bind(consumer)
                .fetch_one(&mut *tx)
                .await?
                .try_get("last_seq")?;
            let mut new: std::collections::HashSet<i64> = sqlx::query(record)
                .bind(consumer)
                .bind(&seqs)
                .bind(floor)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get::<i64, _>("seq"))
                .collect::<Result<_, _>>()?;
            let counted = new.len();
            // Summed per ledger row first; rows in key order, the same in every replica.
            let mut sums: std::collections::BTreeMap<(&str, &str, &str, &str, &str), [i64; 3]> =
                std::collections::BTreeMap::new();
            for e in events {
                if !new.remove(&int(e.seq)) {
                    continue;
                }
                let k = &e.key;
                let sum = sums
                    .entry((&k.day, &k.user_id, &k.channel, &k.model, &k.purpose))
                    .or_default();
                sum[0] += 1;
                sum[1] = sum[1].saturating_add(int(e.input_tokens));
                sum[2] = sum[2].saturating_add(int(e.output_tokens));
            }
            for ((day, user_id, channel, model, purpose), [calls, input, output]) in sums {
                sqlx::query(sql::ADD)
                    .bind(day)
                    .bind(user_id)
                    .bind(channel)
                    .bind(model)
                    .bind(purpose)
                    .bind(calls)
                    .bind(input)
                    .bind(output)
                    .execute(&mut *tx)
                    .await?;
            }
            counted
        });
        Ok(counted)
    }

    /// Marks every event up to `last_seq` settled (the events stream no longer holds
    /// them, so none can be delivered again) and forgets their sequences.
    pub async fn settle_usage_below(
        &self,
        consumer: &str,
        last_seq: u64,
    ) -> Result<(), StoreError> {
        let last_seq = i64::try_from(last_seq).unwrap_or(i64::MAX);
        in_tx!(self, tx => {
            sqlx::query(sql::RAISE_FLOOR)
                .bind(consumer)
                .bind(last_seq)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::FORGET_BELOW)
                .bind(consumer)
                .bind(last_seq)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
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
