//! Budgets and rate limits: the `[limits]` settings, a user's limits after an
//! admin's overrides, the UTC windows budgets are counted in, and which budget a
//! consumption has reached. Pure arithmetic, shared by agent-core (which enforces)
//! and `nexus usage` (which reports).
//!
//! It must never do I/O: the counters live in NATS KV and the consumption in the
//! usage ledger; callers hand their values in.

use std::collections::BTreeMap;

use jiff::{Timestamp, ToSpan as _, civil::Date, tz::TimeZone};
use serde::{Deserialize, Serialize};

use crate::config::Price;

/// Length of the message-rate window: limits are per minute, sliding.
pub const RATE_WINDOW_MS: i64 = 60_000;

/// `[limits]`: 0 (or absent) means unlimited. Days and months are UTC, like the ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Messages one user may send per minute (all their chats together).
    pub user_messages_per_minute: u64,
    /// Messages per minute on each channel, all users together.
    pub channel_messages_per_minute: u64,
    /// Model tokens (input + output) one user may use per UTC day.
    pub user_tokens_per_day: u64,
    /// Model tokens one user may use per UTC calendar month.
    pub user_tokens_per_month: u64,
    /// USD one user may spend per UTC day, priced by `[llm.prices]`.
    pub user_cost_per_day: f64,
    /// USD one user may spend per UTC calendar month.
    pub user_cost_per_month: f64,
    /// USD the whole deployment may spend per UTC day.
    pub total_cost_per_day: f64,
}

impl LimitsConfig {
    /// Checks that costs are finite and not negative.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("user_cost_per_day", self.user_cost_per_day),
            ("user_cost_per_month", self.user_cost_per_month),
            ("total_cost_per_day", self.total_cost_per_day),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!(
                    "[limits] {name} must be a number of USD, 0 or more (0 = unlimited), not {v}"
                ));
            }
        }
        Ok(())
    }

    /// The limits of a user: each override an admin set, else the setting.
    pub fn for_user(&self, o: &Overrides) -> UserLimits {
        UserLimits {
            messages_per_minute: o
                .messages_per_minute
                .unwrap_or(self.user_messages_per_minute),
            tokens_per_day: o.tokens_per_day.unwrap_or(self.user_tokens_per_day),
            tokens_per_month: o.tokens_per_month.unwrap_or(self.user_tokens_per_month),
            cost_per_day: o.cost_per_day.unwrap_or(self.user_cost_per_day),
            cost_per_month: o.cost_per_month.unwrap_or(self.user_cost_per_month),
        }
    }
}

/// What an admin set for one user (`nexus users limit`); `None` keeps the setting.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overrides {
    pub messages_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub tokens_per_month: Option<u64>,
    pub cost_per_day: Option<f64>,
    pub cost_per_month: Option<f64>,
}

/// One user's limits in effect; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UserLimits {
    pub messages_per_minute: u64,
    pub tokens_per_day: u64,
    pub tokens_per_month: u64,
    pub cost_per_day: f64,
    pub cost_per_month: f64,
}

impl UserLimits {
    /// Whether any budget needs the ledger read.
    pub fn has_budget(&self) -> bool {
        self.tokens_per_day > 0
            || self.tokens_per_month > 0
            || self.cost_per_day > 0.0
            || self.cost_per_month > 0.0
    }
}

/// The UTC day and month an instant falls in, and when each ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    /// `YYYY-MM-DD`, the ledger's day.
    pub day: String,
    /// `YYYY-MM-01`: the month's first ledger day.
    pub month_start: String,
    /// `YYYY-MM`.
    pub month: String,
    /// Start of the next UTC day, in ms.
    pub next_day_ms: i64,
    /// Start of the next UTC month, in ms.
    pub next_month_ms: i64,
}

/// The UTC windows of `now_ms`.
pub fn windows(now_ms: i64) -> Windows {
    let ts = Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH);
    let date: Date = ts.to_zoned_datetime(TimeZone::UTC).date();
    let first = date.first_of_month();
    let start_ms = |d: Date| {
        d.to_zoned_datetime(TimeZone::UTC)
            .map(|z| z.timestamp().as_millisecond())
            .unwrap_or(i64::MAX)
    };
    let next_day = date.checked_add(1.day()).map(start_ms).unwrap_or(i64::MAX);
    let next_month = first
        .checked_add(1.month())
        .map(start_ms)
        .unwrap_or(i64::MAX);
    Windows {
        day: date.to_string(),
        month_start: first.to_string(),
        month: date.strftime("%Y-%m").to_string(),
        next_day_ms: next_day,
        next_month_ms: next_month,
    }
}

/// Tokens and their price over some ledger rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Consumption {
    /// Input plus output tokens.
    pub tokens: u64,
    /// USD, over the models that have a price.
    pub cost: f64,
    /// Some tokens were of a model without a price: `cost` is a lower bound.
    pub unpriced: bool,
}

impl Consumption {
    /// Adds one row of `model`'s tokens, priced from `prices` (USD per million tokens).
    pub fn add(&mut self, model: &str, input: u64, output: u64, prices: &BTreeMap<String, Price>) {
        self.tokens = self.tokens.saturating_add(input).saturating_add(output);
        match prices.get(model) {
            Some(p) => self.cost += (input as f64 * p.input + output as f64 * p.output) / 1e6,
            None if input + output > 0 => self.unpriced = true,
            None => {}
        }
    }
}

/// Which limit was reached, named as its setting in `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    UserMessagesPerMinute,
    ChannelMessagesPerMinute,
    UserTokensPerDay,
    UserTokensPerMonth,
    UserCostPerDay,
    UserCostPerMonth,
    TotalCostPerDay,
}

impl LimitKind {
    /// The setting's name (also the admin event's `limit`).
    pub fn setting(self) -> &'static str {
        match self {
            Self::UserMessagesPerMinute => "user_messages_per_minute",
            Self::ChannelMessagesPerMinute => "channel_messages_per_minute",
            Self::UserTokensPerDay => "user_tokens_per_day",
            Self::UserTokensPerMonth => "user_tokens_per_month",
            Self::UserCostPerDay => "user_cost_per_day",
            Self::UserCostPerMonth => "user_cost_per_month",
            Self::TotalCostPerDay => "total_cost_per_day",
        }
    }
}

/// A budget that is used up: no model call until `resume_at_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub kind: LimitKind,
    pub limit: f64,
    pub used: f64,
    /// The window it holds for: a day (`YYYY-MM-DD`) or a month (`YYYY-MM`).
    pub window: String,
    pub resume_at_ms: i64,
}

/// The budgets a turn starting now would exceed: a budget is reached when what was
/// used is at or over it. Several at once are all returned, longest-lasting first,
/// so the notice names the time the user can really continue.
pub fn budget_breaches(
    limits: &UserLimits,
    total_cost_per_day: f64,
    user_day: &Consumption,
    user_month: &Consumption,
    all_day: &Consumption,
    w: &Windows,
) -> Vec<Breach> {
    let day = |kind, limit: f64, used: f64| Breach {
        kind,
        limit,
        used,
        window: w.day.clone(),
        resume_at_ms: w.next_day_ms,
    };
    let month = |kind, limit: f64, used: f64| Breach {
        kind,
        limit,
        used,
        window: w.month.clone(),
        resume_at_ms: w.next_month_ms,
    };
    let mut out = Vec::new();
    let tokens = |n: u64| n as f64;
    if limits.tokens_per_month > 0 && user_month.tokens >= limits.tokens_per_month {
        out.push(month(
            LimitKind::UserTokensPerMonth,
            tokens(limits.tokens_per_month),
            tokens(user_month.tokens),
        ));
    }
    if limits.cost_per_month > 0.0 && user_month.cost >= limits.cost_per_month {
        out.push(month(
            LimitKind::UserCostPerMonth,
            limits.cost_per_month,
            user_month.cost,
        ));
    }
    if limits.tokens_per_day > 0 && user_day.tokens >= limits.tokens_per_day {
        out.push(day(
            LimitKind::UserTokensPerDay,
            tokens(limits.tokens_per_day),
            tokens(user_day.tokens),
        ));
    }
    if limits.cost_per_day > 0.0 && user_day.cost >= limits.cost_per_day {
        out.push(day(
            LimitKind::UserCostPerDay,
            limits.cost_per_day,
            user_day.cost,
        ));
    }
    if total_cost_per_day > 0.0 && all_day.cost >= total_cost_per_day {
        out.push(day(
            LimitKind::TotalCostPerDay,
            total_cost_per_day,
            all_day.cost,
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// 2026-12-31 23:59:59.999 UTC.
    const LAST_MS_OF_2026: i64 = 1_798_761_599_999;

    #[test]
    fn windows_are_utc_days_and_months_and_end_at_the_next_midnight() {
        let w = windows(LAST_MS_OF_2026);
        assert_eq!(w.day, "2026-12-31");
        assert_eq!(w.month, "2026-12");
        assert_eq!(w.month_start, "2026-12-01");
        assert_eq!(w.next_day_ms, LAST_MS_OF_2026 + 1);
        assert_eq!(w.next_month_ms, LAST_MS_OF_2026 + 1);
        let next = windows(LAST_MS_OF_2026 + 1);
        assert_eq!(
            (next.day.as_str(), next.month.as_str()),
            ("2027-01-01", "2027-01")
        );
        assert_eq!(next.next_day_ms, LAST_MS_OF_2026 + 1 + 86_400_000);
        // February of a common year has 28 days.
        let feb = windows(LAST_MS_OF_2026 + 1 + 31 * 86_400_000 + 5);
        assert_eq!(feb.day, "2027-02-01");
        assert_eq!(
            feb.next_month_ms - (LAST_MS_OF_2026 + 1 + 31 * 86_400_000),
            28 * 86_400_000
        );
    }

    #[test]
    fn overrides_win_over_settings_and_zero_means_unlimited() {
        let config = LimitsConfig {
            user_tokens_per_day: 1000,
            user_messages_per_minute: 5,
            ..Default::default()
        };
        let none = config.for_user(&Overrides::default());
        assert_eq!((none.tokens_per_day, none.messages_per_minute), (1000, 5));
        assert!(none.has_budget());
        let raised = config.for_user(&Overrides {
            tokens_per_day: Some(0),
            messages_per_minute: Some(50),
            ..Default::default()
        });
        assert_eq!((raised.tokens_per_day, raised.messages_per_minute), (0, 50));
        assert!(!raised.has_budget());
        assert!(
            !LimitsConfig::default()
                .for_user(&Overrides::default())
                .has_budget()
        );
    }

    #[test]
    fn a_budget_is_reached_at_its_limit_not_before() {
        let w = windows(LAST_MS_OF_2026 - 3_600_000);
        let limits = UserLimits {
            tokens_per_day: 100,
            ..Default::default()
        };
        let used = |tokens| Consumption {
            tokens,
            ..Default::default()
        };
        let none = Consumption::default();
        assert!(budget_breaches(&limits, 0.0, &used(99), &used(99), &none, &w).is_empty());
        let b = budget_breaches(&limits, 0.0, &used(100), &used(100), &none, &w);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].kind, LimitKind::UserTokensPerDay);
        assert_eq!(b[0].window, "2026-12-31");
        assert_eq!(b[0].resume_at_ms, LAST_MS_OF_2026 + 1);
        // Unlimited budgets are never reached, however much was used.
        assert!(
            budget_breaches(
                &UserLimits::default(),
                0.0,
                &used(u64::MAX),
                &used(u64::MAX),
                &none,
                &w
            )
            .is_empty()
        );
    }

    #[test]
    fn month_budgets_come_first_and_the_deployment_budget_counts_everyone() {
        let w = windows(LAST_MS_OF_2026 - 10 * 86_400_000);
        let limits = UserLimits {
            tokens_per_day: 10,
            tokens_per_month: 10,
            ..Default::default()
        };
        let mine = Consumption {
            tokens: 10,
            cost: 0.01,
            unpriced: false,
        };
        let everyone = Consumption {
            tokens: 10_000,
            cost: 5.0,
            unpriced: false,
        };
        let b = budget_breaches(&limits, 5.0, &mine, &mine, &everyone, &w);
        let kinds: Vec<_> = b.iter().map(|b| b.kind).collect();
        assert_eq!(
            kinds,
            [
                LimitKind::UserTokensPerMonth,
                LimitKind::UserTokensPerDay,
                LimitKind::TotalCostPerDay
            ]
        );
        assert_eq!(b[0].window, "2026-12");
        assert!(b[0].resume_at_ms > b[1].resume_at_ms);
        assert!(
            budget_breaches(
                &limits,
                5.01,
                &Consumption::default(),
                &Consumption::default(),
                &everyone,
                &w
            )
            .is_empty()
        );
    }

    #[test]
    fn cost_is_priced_per_million_tokens_and_unpriced_models_are_flagged() {
        let prices = BTreeMap::from([(
            "m".to_owned(),
            Price {
                input: 0.4,
                output: 1.6,
            },
        )]);
        let mut c = Consumption::default();
        c.add("m", 1_000_000, 500_000, &prices);
        assert_eq!(c.tokens, 1_500_000);
        assert!((c.cost - 1.2).abs() < 1e-9, "{}", c.cost);
        assert!(!c.unpriced);
        c.add("local", 10, 0, &prices);
        assert!(c.unpriced);
        assert_eq!(c.tokens, 1_500_010);
    }

    #[test]
    fn limits_come_from_the_file_or_the_environment_and_default_to_unlimited() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let c = crate::Config::from_sources(None, env(&[])).unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        let c = crate::Config::from_sources(
            Some((
                std::path::Path::new("n.toml"),
                "[limits]\nuser_tokens_per_day = 1000\nuser_cost_per_month = 2.5\n",
            )),
            env(&[
                ("NEXUS__LIMITS__USER_MESSAGES_PER_MINUTE", "5"),
                ("NEXUS__LIMITS__TOTAL_COST_PER_DAY", "20"),
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.user_tokens_per_day, 1000);
        assert_eq!(c.limits.user_messages_per_minute, 5);
        assert!((c.limits.user_cost_per_month - 2.5).abs() < 1e-12);
        assert!((c.limits.total_cost_per_day - 20.0).abs() < 1e-12);
        let err =
            crate::Config::from_sources(None, env(&[("NEXUS__LIMITS__USER_COST_PER_DAY", "-1")]))
                .unwrap_err();
        assert!(err.to_string().contains("user_cost_per_day"), "{err}");
        let err =
            crate::Config::from_sources(None, env(&[("NEXUS__LIMITS__MESAGES", "1")])).unwrap_err();
        assert!(err.to_string().contains("mesages"), "{err}");
    }

    #[test]
    fn negative_or_infinite_costs_are_refused() {
        let bad = LimitsConfig {
            user_cost_per_day: -1.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("user_cost_per_day"));
        let bad = LimitsConfig {
            total_cost_per_day: f64::INFINITY,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        assert!(LimitsConfig::default().validate().is_ok());
    }
}
