//! The admins' per-user limits as agent-core and `nexus users limit` share them:
//! one bucket, opened the same way by both, and one reading of what it holds.

use async_nats::jetstream::kv;
use nexus_common::limits::Overrides;
use nexus_proto::v1::UserLimits;

use crate::{Bus, BusError};

/// `N_user_limits`: a `UserLimits` per user id, kept for good.
pub async fn user_limits_bucket(bus: &Bus) -> Result<kv::Store, BusError> {
    bus.ensure_kv_bucket(
        &bus.subjects().user_limits_bucket(),
        5,
        None,
        "limits admins set per user (nexus users limit)",
    )
    .await
}

/// What an admin stored, as overrides of the `[limits]` settings.
pub fn overrides(stored: &UserLimits) -> Overrides {
    Overrides {
        messages_per_minute: stored.messages_per_minute,
        tokens_per_day: stored.tokens_per_day,
        tokens_per_month: stored.tokens_per_month,
        cost_per_day: stored.cost_per_day,
        cost_per_month: stored.cost_per_month,
    }
}
