//! Budgets and message rates, checked before a turn calls the model (`[limits]`,
//! and per user what admins set with `nexus users limit`).
//!
//! Where the state lives, so that every replica sees the same:
//! - message rates: a sliding one-minute log per user and per channel in the
//!   `N_limits` KV bucket (`rate.user.<user>`, `rate.channel.<channel>`), changed
//!   only by compare-and-set on the entry's revision;
//! - token and cost budgets: the usage ledger (memory-svc `usage`, UTC days);
//! - the notice of a budget: `notice.<limit>.<window>.<user>` in `N_limits`, created
//!   once — the message that created it is the one answered (again, if redelivered);
//! - admins' overrides: `UserLimits` in `N_user_limits`, by user id.
//!
//! It must never keep a count in the replica's memory, and never call the model.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use nexus_bus::{
    MemoryOp, kv_key,
    limits::{overrides, user_limits_bucket},
};
use nexus_common::limits::{
    Breach, Consumption, LimitKind, RATE_WINDOW_MS, UserLimits, budget_breaches, windows,
};
use nexus_proto::v1::{
    InboundKind, LimitReached, UsageRequest, UsageResponse, UserLimits as StoredLimits, event,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::{agent::Agent, turn::Turn};

/// Tries of one compare-and-set before the turn is retried instead.
const CAS_TRIES: usize = 32;
/// `N_limits` keeps an entry this long after its last write: a month's notice
/// outlives its month, a rate log its minute by far.
const LIMITS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(33 * 24 * 3600);

/// Whether a turn may call the model.
#[derive(Debug, PartialEq)]
pub(crate) enum Gate {
    Open,
    /// Over a limit: `notice` is the one text the user gets for it, `None` when
    /// they were told already.
    Refused {
        notice: Option<String>,
    },
}

/// One limit a message ran into.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    breach: Breach,
    /// This message carries the notice (the first refused one, or its redelivery).
    notify: bool,
}

/// A sliding one-minute log of admitted messages, and who was told to wait.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RateLog {
    /// Admitted messages of the last minute: (ms, message id), oldest first.
    at: Vec<(i64, String)>,
    /// Per user: until when their notice holds, and the message that carried it.
    notices: BTreeMap<String, (i64, String)>,
}

/// What a rate log says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateVerdict {
    Allowed,
    Refused { resume_at_ms: i64, notify: bool },
}

impl RateLog {
    /// Admits `msg` of `user` at `now` under `limit` messages a minute, or refuses it.
    /// A message already admitted (a redelivery) is admitted again without counting;
    /// refused messages are not counted, so waiting is enough to continue.
    pub(crate) fn admit(&mut self, now: i64, limit: u64, msg: &str, user: &str) -> RateVerdict {
        self.at.retain(|(t, _)| *t > now - RATE_WINDOW_MS);
        self.notices.retain(|_, (until, _)| *until > now);
        if self.at.iter().any(|(_, id)| id == msg) {
            return RateVerdict::Allowed;
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if self.at.len() < limit {
            self.at.push((now, msg.to_owned()));
            return RateVerdict::Allowed;
        }
        // Free again when enough of the minute's messages have aged out to leave room for one.
        self.at.sort_by_key(|(t, _)| *t);
        let resume_at_ms = self.at[self.at.len() - limit].0 + RATE_WINDOW_MS;
        let notify = match self.notices.get(user) {
            None => {
                self.notices
                    .insert(user.to_owned(), (resume_at_ms, msg.to_owned()));
                true
            }
            Some((_, id)) => id == msg,
        };
        RateVerdict::Refused {
            resume_at_ms,
            notify,
        }
    }
}

impl Agent {
    async fn limits_kv(&self) -> Result<&kv::Store, String> {
        self.limits_kv
            .get_or_try_init(|| async {
                self.bus
                    .ensure_kv_bucket(
                        &self.bus.subjects().limits_bucket(),
                        1,
                        Some(LIMITS_MAX_AGE),
                        "message-rate logs and budget notices",
                    )
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
    }

    async fn user_limits_kv(&self) -> Result<&kv::Store, String> {
        self.user_limits_kv
            .get_or_try_init(|| async {
                user_limits_bucket(&self.bus)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
    }

    /// The user's limits: the settings, with what an admin set for them.
    async fn limits_of(&self, user_id: &str) -> Result<UserLimits, String> {
        if let Some(stored) = self.user_limits_seen.fresh(user_id) {
            return Ok(self.config.limits.for_user(&overrides(&stored)));
        }
        let kv = self.user_limits_kv().await?;
        let stored = match kv.get(kv_key(user_id)).await {
            Ok(Some(bytes)) => StoredLimits::decode(bytes).map_err(|e| e.to_string())?,
            Ok(None) => StoredLimits::default(),
            Err(e) => return Err(e.to_string()),
        };
        self.user_limits_seen.remember(user_id, stored.clone());
        Ok(self.config.limits.for_user(&overrides(&stored)))
    }

    /// Checks every limit for this turn (its user resolved). Every turn that would
    /// call the model (job fires and sub-agents too) counts against the budgets; only
    /// messages people sent count against message rates.
    pub(crate) async fn limits_gate(&self, turn: &Turn) -> Result<Gate, String> {
        let settings = &self.config.limits;
        let limits = self.limits_of(&turn.user_id).await?;
        let now = nexus_common::now_ms();
        let mut refusals = Vec::new();

        if limits.has_budget() || settings.total_cost_per_day > 0.0 {
            let w = windows(now);
            let prices = &self.config.llm.prices;
            let mut user_day = Consumption::default();
            let mut user_month = Consumption::default();
            for row in self
                .ledger(&w.month_start, &w.day, &turn.user_id, turn)
                .await?
            {
                if row.day == w.day {
                    user_day.add(&row.model, row.input_tokens, row.output_tokens, prices);
                }
                user_month.add(&row.model, row.input_tokens, row.output_tokens, prices);
            }
            let mut all_day = Consumption::default();
            if settings.total_cost_per_day > 0.0 {
                for row in self.ledger(&w.day, &w.day, "", turn).await? {
                    all_day.add(&row.model, row.input_tokens, row.output_tokens, prices);
                }
            }
            let breaches = budget_breaches(
                &limits,
                settings.total_cost_per_day,
                &user_day,
                &user_month,
                &all_day,
                &w,
            );
            // The longest-lasting budget is the one to tell about: it says when the
            // user can really continue.
            if let Some(breach) = breaches.into_iter().next() {
                let notify = self.first_notice(&breach, turn).await?;
                refusals.push(Refusal { breach, notify });
            }
        }

        // Job fires and sub-agents are not messages someone sent.
        let person =
            turn.msg.kind != InboundKind::Scheduled as i32 && crate::tasks::task_of(turn).is_none();
        let channel = turn.session.channel().to_string();
        let rates = [
            (
                LimitKind::UserMessagesPerMinute,
                limits.messages_per_minute,
                format!("rate.user.{}", kv_key(&turn.user_id)),
            ),
            (
                LimitKind::ChannelMessagesPerMinute,
                settings.channel_messages_per_minute,
                format!("rate.channel.{}", kv_key(&channel)),
            ),
        ];
        // Budgets first: a message they refuse takes no slot of a minute.
        for (kind, limit, key) in rates {
            if !person || limit == 0 || !refusals.is_empty() {
                continue;
            }
            if let RateVerdict::Refused {
                resume_at_ms,
                notify,
            } = self.admit(&key, now, limit, turn).await?
            {
                refusals.push(Refusal {
                    breach: Breach {
                        kind,
                        limit: limit as f64,
                        used: limit as f64,
                        window: "60s".to_owned(),
                        resume_at_ms,
                    },
                    notify,
                });
            }
        }

        let Some(told) = refusals
            .iter()
            .filter(|r| r.notify)
            .max_by_key(|r| r.breach.resume_at_ms)
        else {
            return Ok(if refusals.is_empty() {
                Gate::Open
            } else {
                tracing::info!(user_id = %turn.user_id, "over a limit and told already; no model call, no reply");
                Gate::Refused { notice: None }
            });
        };
        // The notice names the latest time any limit holds until.
        let resume_at_ms = refusals
            .iter()
            .map(|r| r.breach.resume_at_ms)
            .max()
            .unwrap_or(told.breach.resume_at_ms);
        for r in refusals.iter().filter(|r| r.notify) {
            tracing::info!(
                user_id = %turn.user_id,
                limit = r.breach.kind.setting(),
                value = r.breach.limit,
                used = r.breach.used,
                window = %r.breach.window,
                "limit reached; the user is told once"
            );
            self.bus
                .emit(event::Kind::LimitReached(LimitReached {
                    user_id: turn.user_id.clone(),
                    channel: channel.clone(),
                    session_id: turn.session.id(),
                    turn_id: turn.msg.id.clone(),
                    limit: r.breach.kind.setting().to_owned(),
                    value: r.breach.limit,
                    used: r.breach.used,
                    window: r.breach.window.clone(),
                    resume_at_ms: r.breach.resume_at_ms,
                }))
                .await;
        }
        Ok(Gate::Refused {
            notice: Some(notice_text(&told.breach, resume_at_ms)),
        })
    }

    /// One compare-and-set of a rate log: the verdict of the write that won.
    async fn admit(
        &self,
        key: &str,
        now: i64,
        limit: u64,
        turn: &Turn,
    ) -> Result<RateVerdict, String> {
        let kv = self.limits_kv().await?;
        for _ in 0..CAS_TRIES {
            let (mut log, revision) = match kv.entry(key).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<RateLog>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Ok(_) => (RateLog::default(), None),
                Err(e) => return Err(format!("reading {key}: {e}")),
            };
            let verdict = log.admit(now, limit, &turn.msg.id, &turn.user_id);
            let bytes = serde_json::to_vec(&log).map_err(|e| e.to_string())?;
            let written = match revision {
                Some(r) => kv.update(key, bytes.into(), r).await.is_ok(),
                None => kv.create(key, bytes.into()).await.is_ok(),
            };
            if written {
                return Ok(verdict);
            }
        }
        Err(format!(
            "{key}: changed by others {CAS_TRIES} times in a row"
        ))
    }

    /// Whether this message carries the notice of `breach`: the first message to
    /// claim the (limit, window, user) key does, and so does its redelivery.
    async fn first_notice(&self, breach: &Breach, turn: &Turn) -> Result<bool, String> {
        let kv = self.limits_kv().await?;
        let key = format!(
            "notice.{}.{}.{}",
            breach.kind.setting(),
            kv_key(&breach.window),
            kv_key(&turn.user_id)
        );
        match kv.create(&key, turn.msg.id.clone().into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match kv.get(&key).await {
                Ok(Some(owner)) => Ok(owner.as_ref() == turn.msg.id.as_bytes()),
                Ok(None) => Ok(false),
                Err(e) => Err(format!("reading {key}: {e}")),
            },
            Err(e) => Err(format!("creating {key}: {e}")),
        }
    }

    /// Ledger rows of `from..=to` (UTC days), of one user or (`""`) everyone.
    async fn ledger(
        &self,
        from: &str,
        to: &str,
        user_id: &str,
        turn: &Turn,
    ) -> Result<Vec<nexus_proto::v1::UsageRow>, String> {
        let resp: UsageResponse = self
            .bus
            .request_idempotent(
                self.bus.subjects().memory(MemoryOp::Usage),
                &UsageRequest {
                    from_day: from.to_owned(),
                    to_day: to.to_owned(),
                    user_id: user_id.to_owned(),
                },
                &turn.trace,
                None,
            )
            .await
            .map_err(|e| format!("usage ledger: {e}"))?;
        Ok(resp.rows)
    }
}

/// The one polite notice for a limit, naming when the user can continue.
pub(crate) fn notice_text(breach: &Breach, resume_at_ms: i64) -> String {
    let at = jiff::Timestamp::from_millisecond(resume_at_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let clock = at.strftime("%H:%M:%S UTC").to_string();
    let when = at.strftime("%Y-%m-%d %H:%M UTC").to_string();
    let n = breach.limit;
    let after = "Messages you send before then will not be answered.";
    match breach.kind {
        LimitKind::UserMessagesPerMinute => format!(
            "Sorry, you have sent more than {n} messages in the last minute, which is the most I can take. \
             Please continue at {clock}. {after}"
        ),
        LimitKind::ChannelMessagesPerMinute => format!(
            "Sorry, this channel has reached its limit of {n} messages a minute. Please continue at {clock}. {after}"
        ),
        LimitKind::UserTokensPerDay => format!(
            "Sorry, you have used your budget of {n} tokens for today ({}, UTC). You can continue at {when}. \
             {after} An admin can raise your limit.",
            breach.window
        ),
        LimitKind::UserTokensPerMonth => format!(
            "Sorry, you have used your budget of {n} tokens for this month ({}, UTC). You can continue at {when}. \
             {after} An admin can raise your limit.",
            breach.window
        ),
        LimitKind::UserCostPerDay => format!(
            "Sorry, you have used your budget of ${n:.2} for today ({}, UTC). You can continue at {when}. \
             {after} An admin can raise your limit.",
            breach.window
        ),
        LimitKind::UserCostPerMonth => format!(
            "Sorry, you have used your budget of ${n:.2} for this month ({}, UTC). You can continue at {when}. \
             {after} An admin can raise your limit.",
            breach.window
        ),
        LimitKind::TotalCostPerDay => format!(
            "Sorry, this assistant has used its whole budget for today ({}, UTC). You can continue at {when}. {after}",
            breach.window
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: i64 = 1_798_761_000_000;

    #[test]
    fn a_minute_admits_the_limit_then_refuses_with_one_notice_until_room_frees() {
        let mut log = RateLog::default();
        assert_eq!(log.admit(T0, 2, "m1", "ada"), RateVerdict::Allowed);
        assert_eq!(log.admit(T0 + 10_000, 2, "m2", "ada"), RateVerdict::Allowed);
        // Full: the first refusal carries the notice, the next ones do not.
        let first = log.admit(T0 + 20_000, 2, "m3", "ada");
        assert_eq!(
            first,
            RateVerdict::Refused {
                resume_at_ms: T0 + RATE_WINDOW_MS,
                notify: true
            }
        );
        assert_eq!(
            log.admit(T0 + 30_000, 2, "m4", "ada"),
            RateVerdict::Refused {
                resume_at_ms: T0 + RATE_WINDOW_MS,
                notify: false
            }
        );
        // A redelivered refused message that carried the notice carries it again.
        assert_eq!(log.admit(T0 + 31_000, 2, "m3", "ada"), first);
        // A redelivered admitted message is admitted without counting twice.
        assert_eq!(log.admit(T0 + 32_000, 2, "m2", "ada"), RateVerdict::Allowed);
        assert_eq!(log.at.len(), 2);
        // Refused messages do not count: once m1 is a minute old there is room.
        assert_eq!(
            log.admit(T0 + RATE_WINDOW_MS + 1, 2, "m5", "ada"),
            RateVerdict::Allowed
        );
        // Full again later: a new episode, a new notice.
        assert_eq!(
            log.admit(T0 + RATE_WINDOW_MS + 2, 2, "m6", "ada"),
            RateVerdict::Refused {
                resume_at_ms: T0 + 10_000 + RATE_WINDOW_MS,
                notify: true
            }
        );
    }

    #[test]
    fn on_a_shared_log_each_user_is_told_once() {
        let mut log = RateLog::default();
        assert_eq!(log.admit(T0, 1, "a1", "ada"), RateVerdict::Allowed);
        let told = |v| matches!(v, RateVerdict::Refused { notify: true, .. });
        assert!(told(log.admit(T0 + 1, 1, "a2", "ada")));
        assert!(told(log.admit(T0 + 2, 1, "b1", "bob")));
        assert!(!told(log.admit(T0 + 3, 1, "a3", "ada")));
        assert!(!told(log.admit(T0 + 4, 1, "b2", "bob")));
    }

    #[test]
    fn a_lowered_limit_waits_until_enough_messages_aged_out() {
        let mut log = RateLog::default();
        for (i, t) in [0, 1_000, 2_000, 3_000].into_iter().enumerate() {
            assert_eq!(
                log.admit(T0 + t, 10, &format!("m{i}"), "ada"),
                RateVerdict::Allowed
            );
        }
        // Four in the window, now two allowed: room once three have aged out.
        assert_eq!(
            log.admit(T0 + 4_000, 2, "m9", "ada"),
            RateVerdict::Refused {
                resume_at_ms: T0 + 2_000 + RATE_WINDOW_MS,
                notify: true
            }
        );
    }

    #[test]
    fn the_log_survives_its_json_form() {
        let mut log = RateLog::default();
        log.admit(T0, 1, "m1", "ada");
        log.admit(T0 + 1, 1, "m2", "ada");
        let back: RateLog = serde_json::from_slice(&serde_json::to_vec(&log).unwrap()).unwrap();
        assert_eq!(back, log);
    }

    #[test]
    fn notices_say_when_the_user_can_continue() {
        let w = windows(T0);
        let day = Breach {
            kind: LimitKind::UserTokensPerDay,
            limit: 1000.0,
            used: 1200.0,
            window: w.day.clone(),
            resume_at_ms: w.next_day_ms,
        };
        let text = notice_text(&day, w.next_day_ms);
        assert!(
            text.contains("1000 tokens for today (2026-12-31, UTC)"),
            "{text}"
        );
        assert!(text.contains("continue at 2027-01-01 00:00 UTC"), "{text}");
        let rate = Breach {
            kind: LimitKind::UserMessagesPerMinute,
            limit: 5.0,
            used: 5.0,
            window: "60s".into(),
            resume_at_ms: T0 + 42_000,
        };
        let text = notice_text(&rate, T0 + 42_000);
        assert!(text.contains("more than 5 messages"), "{text}");
        assert!(text.contains("continue at 23:50:42 UTC"), "{text}");
    }
}
