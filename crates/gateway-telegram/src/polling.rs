//! `getUpdates` long polling, driven here rather than by teloxide's dispatcher so
//! the offset can be tied to JetStream: it moves past an update only after the
//! update was stored (or deliberately skipped). Telegram drops updates below the
//! offset of the next call, so a crash before that call replays them, and the
//! replay is deduplicated by `Nats-Msg-Id`.
//!
//! A watchdog reconnects with exponential backoff when polling fails or stalls,
//! and reports `degraded` / `recovered` as service events.

use std::time::Duration;

use nexus_common::shutdown::CancellationToken;
use teloxide::{
    ApiError, Bot, RequestError,
    payloads::GetUpdatesSetters,
    requests::Requester,
    types::{AllowedUpdate, Update},
};
use tokio::time::Instant;

use crate::{
    inbound::Handled,
    telegram::{BACKOFF, Telegram, new_bot},
};

/// Extra time a long poll may take beyond its timeout before it counts as stalled.
const STALL_GRACE: Duration = Duration::from_secs(10);
/// Without a successful poll for this many poll timeouts, polling is degraded.
const DEGRADED_AFTER_TIMEOUTS: u32 = 3;
/// Consecutive failures after which polling is degraded whatever the time.
const DEGRADED_AFTER_FAILURES: u32 = 2;

/// Polls until `shutdown`; the batch in hand is always finished first.
pub(crate) async fn run(tg: &Telegram, shutdown: CancellationToken) -> anyhow::Result<()> {
    let timeout = tg.settings.poll_timeout;
    let mut bot = tg.bot.clone();
    let mut offset: Option<i32> = None;
    // Failed or stalled polls in a row, and the wait before the next.
    let mut poll_backoff = BACKOFF;
    let mut degraded = false;
    let mut last_ok = Instant::now();
    let mut intake_backoff = BACKOFF;

    loop {
        let mut request = bot
            .get_updates()
            .timeout(timeout.as_secs() as u32)
            .allowed_updates([AllowedUpdate::Message]);
        if let Some(o) = offset {
            request = request.offset(o);
        }
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tokio::time::timeout(timeout + STALL_GRACE, request) => r,
        };
        let error = match result {
            Ok(Ok(updates)) => {
                if degraded {
                    tracing::info!("polling Telegram recovered");
                    tg.notice(
                        "recovered",
                        format!(
                            "getUpdates answers again after {} failed attempts",
                            poll_backoff.failures()
                        ),
                    )
                    .await;
                }
                degraded = false;
                poll_backoff.reset();
                last_ok = Instant::now();

                match take_in(tg, &updates, &mut offset).await {
                    Ok(()) => intake_backoff.reset(),
                    Err(reason) => {
                        // The failed update stays unconfirmed: the next poll brings it again.
                        let wait = intake_backoff.fail();
                        tracing::warn!(
                            reason,
                            retry_in_secs = wait.as_secs(),
                            "update not taken in; it will be fetched again"
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => {
                // A stalled connection: treat like a failure and start over on a fresh client.
                let wait = poll_backoff.fail();
                tracing::warn!(
                    waited_secs = (timeout + STALL_GRACE).as_secs(),
                    "getUpdates stalled"
                );
                if !degraded {
                    degraded = true;
                    tg.notice(
                        "degraded",
                        "getUpdates stalled; reconnecting to Telegram".to_owned(),
                    )
                    .await;
                }
                if !reconnect(tg, &mut bot, wait, &shutdown).await {
                    break;
                }
                continue;
            }
        };

        match &error {
            RequestError::Api(ApiError::InvalidToken) => {
                anyhow::bail!("Telegram refused TELEGRAM_BOT_TOKEN (Unauthorized)");
            }
            RequestError::Api(ApiError::CantGetUpdates) => {
                // A webhook is registered; polling and webhooks exclude each other.
                tracing::warn!("a webhook is set for this bot; removing it to poll");
                if let Err(e) = bot.delete_webhook().await {
                    tracing::warn!(error = %tg.scrub(&e), "deleteWebhook failed");
                }
            }
            RequestError::Api(ApiError::TerminatedByOtherGetUpdates) => {
                tracing::warn!(
                    "another process polls this bot; run one gateway-telegram per token"
                );
            }
            _ => {}
        }
        let wait = poll_backoff.fail();
        let failures = poll_backoff.failures();
        let detail = tg.scrub(&error);
        tracing::warn!(error = %detail, failures, "getUpdates failed");
        let stalled_for = last_ok.elapsed();
        if !degraded
            && (failures >= DEGRADED_AFTER_FAILURES
                || stalled_for > timeout * DEGRADED_AFTER_TIMEOUTS)
        {
            degraded = true;
            tg.notice(
                "degraded",
                format!(
                    "getUpdates failing for {}s ({failures} attempts): {detail}",
                    stalled_for.as_secs()
                ),
            )
            .await;
        }
        if !reconnect(tg, &mut bot, wait, &shutdown).await {
            break;
        }
    }

    confirm(tg, &bot, offset).await;
    Ok(())
}

/// Stores the batch in order. The offset moves past each update once it is stored
/// or skipped; the first failure ends the batch.
async fn take_in(
    tg: &Telegram,
    updates: &[Update],
    offset: &mut Option<i32>,
) -> Result<(), String> {
    for update in updates {
        match tg.handle_update(update).await {
            Ok(handled) => {
                match &handled {
                    Handled::Stored { duplicate: true } => {
                        tracing::info!(update = update.id.0, "update was stored before")
                    }
                    Handled::Ignored(why) => tracing::debug!(update = update.id.0, why, "ignored"),
                    _ => tracing::debug!(update = update.id.0, ?handled, "update handled"),
                }
                *offset = Some(next_offset(update));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

fn next_offset(update: &Update) -> i32 {
    i32::try_from(update.id.0)
        .unwrap_or(i32::MAX)
        .saturating_add(1)
}

/// Waits out the backoff and replaces the client, so a wedged connection pool is dropped.
async fn reconnect(
    tg: &Telegram,
    bot: &mut Bot,
    wait: Duration,
    shutdown: &CancellationToken,
) -> bool {
    tracing::info!(retry_in_secs = wait.as_secs(), "reconnecting to Telegram");
    tokio::select! {
        _ = shutdown.cancelled() => return false,
        _ = tokio::time::sleep(wait) => {}
    }
    match new_bot(&tg.settings) {
        Ok(fresh) => *bot = fresh,
        Err(error) => tracing::warn!(%error, "keeping the old HTTP client"),
    }
    true
}

/// Tells Telegram which updates are stored before exiting, so a restart replays none.
async fn confirm(tg: &Telegram, bot: &Bot, offset: Option<i32>) {
    let Some(offset) = offset else { return };
    // Updates below `offset` are dropped by this call; the one it may return is not confirmed.
    let request = bot.get_updates().offset(offset).timeout(0).limit(1);
    match tokio::time::timeout(Duration::from_secs(5), request).await {
        Ok(Ok(_)) => tracing::debug!(offset, "offset confirmed"),
        Ok(Err(e)) => {
            tracing::debug!(error = %tg.scrub(&e), "offset not confirmed; replays are deduplicated")
        }
        Err(_) => tracing::debug!("offset not confirmed in time; replays are deduplicated"),
    }
}
