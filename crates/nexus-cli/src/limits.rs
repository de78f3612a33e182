//! Limits for admins: `nexus users limit` sets a user's own limits (the
//! `N_user_limits` KV bucket agent-core reads before each model call), and the
//! limits part of `nexus usage` shows each user's consumption against them.
//!
//! It must never enforce anything (agent-core does) and never touch the database;
//! consumption comes from memory-svc's usage ledger.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, bail};
use async_nats::jetstream::kv;
use clap::Args;
use futures::StreamExt as _;
use nexus_bus::{
    Bus, MemoryOp, kv_key,
    limits::{overrides, user_limits_bucket},
};
use nexus_common::{
    Config,
    limits::{Consumption, UserLimits as Effective, windows},
    now_ms,
};
use nexus_proto::v1::{UsageRequest, UsageResponse, UserLimits};
use prost::Message as _;
use serde_json::json;

use crate::users::ask_memory;

/// Tries of one compare-and-set before giving up (another admin keeps changing the user).
const CAS_TRIES: usize = 10;

#[derive(Args)]
pub struct LimitArgs {
    /// The user id, as `nexus users list` and `nexus usage` show it.
    user: String,
    /// Messages per minute: a number, 0 for unlimited, or `default` for [limits].
    #[arg(long, allow_negative_numbers = true)]
    messages_per_minute: Option<Setting<u64>>,
    /// Tokens (input + output) per UTC day.
    #[arg(long, allow_negative_numbers = true)]
    tokens_per_day: Option<Setting<u64>>,
    /// Tokens per UTC calendar month.
    #[arg(long, allow_negative_numbers = true)]
    tokens_per_month: Option<Setting<u64>>,
    /// USD per UTC day, priced by [llm.prices].
    #[arg(long, allow_negative_numbers = true)]
    cost_per_day: Option<Setting<f64>>,
    /// USD per UTC calendar month.
    #[arg(long, allow_negative_numbers = true)]
    cost_per_month: Option<Setting<f64>>,
}

/// A value given on the command line: a limit, or back to the setting.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Setting<T> {
    Value(T),
    Default,
}

impl<T: std::str::FromStr> std::str::FromStr for Setting<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "default" => Ok(Self::Default),
            "unlimited" | "none" => "0".parse().map(Self::Value).map_err(|_| "bad zero".into()),
            v => v.parse().map(Self::Value).map_err(|_| {
                format!("{v:?} is not a limit: give a number (0 = unlimited) or `default`")
            }),
        }
    }
}

fn apply<T: Copy>(setting: Option<Setting<T>>, stored: &mut Option<T>) {
    match setting {
        Some(Setting::Value(v)) => *stored = Some(v),
        Some(Setting::Default) => *stored = None,
        None => {}
    }
}

/// `nexus users limit`: changes what is given and prints the user's limits.
pub async fn set(config: &Config, args: LimitArgs) -> anyhow::Result<String> {
    let user = args.user.trim();
    if user.is_empty()
        || user.len() > 256
        || user.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        bail!("user id {user:?} must be 1 to 256 characters without spaces or control characters");
    }
    for cost in [args.cost_per_day, args.cost_per_month]
        .into_iter()
        .flatten()
    {
        if let Setting::Value(v) = cost
            && (!v.is_finite() || v < 0.0)
        {
            bail!("a cost limit is a number of USD, 0 or more (0 = unlimited), not {v}");
        }
    }
    let bus = Bus::connect(config, "nexus-users").await?;
    let kv = user_limits_bucket(&bus)
        .await
        .context("opening the user limits bucket")?;
    let key = kv_key(user);
    let changes = args.messages_per_minute.is_some()
        || args.tokens_per_day.is_some()
        || args.tokens_per_month.is_some()
        || args.cost_per_day.is_some()
        || args.cost_per_month.is_some();
    let mut tries = 0;
    let stored = loop {
        let (mut stored, revision) =
            match kv.entry(&key).await.context("reading the user's limits")? {
                Some(e) if e.operation == kv::Operation::Put => (
                    UserLimits::decode(e.value).context("the stored limits are unreadable")?,
                    Some(e.revision),
                ),
                _ => (UserLimits::default(), None),
            };
        if !changes {
            break stored;
        }
        stored.user_id = user.to_owned();
        apply(args.messages_per_minute, &mut stored.messages_per_minute);
        apply(args.tokens_per_day, &mut stored.tokens_per_day);
        apply(args.tokens_per_month, &mut stored.tokens_per_month);
        apply(args.cost_per_day, &mut stored.cost_per_day);
        apply(args.cost_per_month, &mut stored.cost_per_month);
        stored.updated_at_ms = now_ms();
        let bytes = stored.encode_to_vec();
        let written = match revision {
            Some(r) => kv.update(&key, bytes.into(), r).await.is_ok(),
            None => kv.create(&key, bytes.into()).await.is_ok(),
        };
        if written {
            break stored;
        }
        tries += 1;
        if tries >= CAS_TRIES {
            bail!("the limits of {user} keep changing under us; try again");
        }
    };
    let limits = config.limits.for_user(&overrides(&stored));
    Ok(describe(user, &stored, &limits))
}

/// The user's limits, each with where it comes from.
fn describe(user: &str, stored: &UserLimits, l: &Effective) -> String {
    let from = |set: bool| {
        if set {
            format!("(set for {user})")
        } else {
            "([limits])".to_owned()
        }
    };
    let rows = [
        (
            "messages_per_minute",
            l.messages_per_minute.to_string(),
            stored.messages_per_minute.is_some(),
        ),
        (
            "tokens_per_day",
            l.tokens_per_day.to_string(),
            stored.tokens_per_day.is_some(),
        ),
        (
            "tokens_per_month",
            l.tokens_per_month.to_string(),
            stored.tokens_per_month.is_some(),
        ),
        (
            "cost_per_day",
            format!("{:.2} USD", l.cost_per_day),
            stored.cost_per_day.is_some(),
        ),
        (
            "cost_per_month",
            format!("{:.2} USD", l.cost_per_month),
            stored.cost_per_month.is_some(),
        ),
    ];
    let mut out = format!("limits of {user} (0 = unlimited):\n");
    for (name, value, set) in rows {
        out.push_str(&format!("  {name:<20} {value:<14} {}\n", from(set)));
    }
    out
}

/// One user's consumption in the current UTC day and month, against their limits.
#[derive(Debug, Clone, PartialEq)]
pub struct UserLine {
    pub user_id: String,
    pub limits: Effective,
    pub day: Consumption,
    pub month: Consumption,
}

/// Everyone's consumption against their limits, and the deployment's day.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsReport {
    pub day: String,
    pub month: String,
    pub users: Vec<UserLine>,
    pub all_day: Consumption,
    pub total_cost_per_day: f64,
}

/// Reads this month's ledger and the stored limits.
pub async fn report(bus: &Bus, config: &Config) -> anyhow::Result<LimitsReport> {
    let w = windows(now_ms());
    let reply: UsageResponse = ask_memory(
        bus,
        config,
        MemoryOp::Usage,
        &UsageRequest {
            from_day: w.month_start.clone(),
            to_day: w.day.clone(),
            user_id: String::new(),
        },
    )
    .await?;
    let kv = user_limits_bucket(bus)
        .await
        .context("opening the user limits bucket")?;
    let mut stored: BTreeMap<String, UserLimits> = BTreeMap::new();
    let mut keys = kv.keys().await.context("listing the user limits")?;
    while let Some(key) = keys.next().await {
        let key = key.context("listing the user limits")?;
        if let Some(bytes) = kv.get(&key).await.context("reading the user limits")?
            && let Ok(l) = UserLimits::decode(bytes)
        {
            stored.insert(l.user_id.clone(), l);
        }
    }
    Ok(build(&w.day, &w.month, &reply.rows, &stored, config))
}

fn build(
    day: &str,
    month: &str,
    rows: &[nexus_proto::v1::UsageRow],
    stored: &BTreeMap<String, UserLimits>,
    config: &Config,
) -> LimitsReport {
    let prices = &config.llm.prices;
    let users: BTreeSet<&str> = rows
        .iter()
        .map(|r| r.user_id.as_str())
        .filter(|u| !u.is_empty())
        .chain(stored.keys().map(String::as_str))
        .collect();
    let mut all_day = Consumption::default();
    let users = users
        .into_iter()
        .map(|user| {
            let mut line = UserLine {
                user_id: user.to_owned(),
                limits: config
                    .limits
                    .for_user(&stored.get(user).map(overrides).unwrap_or_default()),
                day: Consumption::default(),
                month: Consumption::default(),
            };
            for r in rows.iter().filter(|r| r.user_id == user) {
                if r.day == day {
                    line.day
                        .add(&r.model, r.input_tokens, r.output_tokens, prices);
                }
                line.month
                    .add(&r.model, r.input_tokens, r.output_tokens, prices);
            }
            line
        })
        .collect();
    for r in rows.iter().filter(|r| r.day == day) {
        all_day.add(&r.model, r.input_tokens, r.output_tokens, prices);
    }
    LimitsReport {
        day: day.to_owned(),
        month: month.to_owned(),
        users,
        all_day,
        total_cost_per_day: config.limits.total_cost_per_day,
    }
}

impl LimitsReport {
    pub fn to_json(&self) -> serde_json::Value {
        let used = |c: &Consumption| json!({"tokens": c.tokens, "cost_usd": c.cost, "cost_is_lower_bound": c.unpriced});
        json!({
            "day": self.day,
            "month": self.month,
            "users": self.users.iter().map(|u| json!({
                "user": u.user_id,
                "today": used(&u.day),
                "this_month": used(&u.month),
                "messages_per_minute": u.limits.messages_per_minute,
                "tokens_per_day": u.limits.tokens_per_day,
                "tokens_per_month": u.limits.tokens_per_month,
                "cost_per_day": u.limits.cost_per_day,
                "cost_per_month": u.limits.cost_per_month,
            })).collect::<Vec<_>>(),
            "deployment": {"today": used(&self.all_day), "total_cost_per_day": self.total_cost_per_day},
        })
    }

    /// The table under `nexus usage`: used / limit, `-` where there is no limit.
    pub fn to_text(&self) -> String {
        let of = |used: String, limit: String| format!("{used} / {limit}");
        let n = |v: u64| {
            if v == 0 {
                "-".to_owned()
            } else {
                v.to_string()
            }
        };
        let usd = |v: f64| {
            if v == 0.0 {
                "-".to_owned()
            } else {
                format!("{v:.2}")
            }
        };
        let cost = |c: &Consumption| format!("{}{:.4}", if c.unpriced { "≥" } else { "" }, c.cost);
        let header = [
            "USER".to_owned(),
            "MSGS/MIN".to_owned(),
            "TOKENS TODAY".to_owned(),
            "TOKENS MONTH".to_owned(),
            "USD TODAY".to_owned(),
            "USD MONTH".to_owned(),
        ];
        let rows: Vec<[String; 6]> = self
            .users
            .iter()
            .map(|u| {
                [
                    u.user_id.clone(),
                    n(u.limits.messages_per_minute),
                    of(u.day.tokens.to_string(), n(u.limits.tokens_per_day)),
                    of(u.month.tokens.to_string(), n(u.limits.tokens_per_month)),
                    of(cost(&u.day), usd(u.limits.cost_per_day)),
                    of(cost(&u.month), usd(u.limits.cost_per_month)),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..6)
            .map(|i| {
                rows.iter()
                    .chain([&header])
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or_default()
            })
            .collect();
        let mut out = format!(
            "limits, used / limit (UTC day {}, month {}; - = unlimited):\n",
            self.day, self.month
        );
        for row in std::iter::once(&header).chain(&rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out.push_str(&format!(
            "deployment today: {} USD / {}\n",
            cost(&self.all_day),
            usd(self.total_cost_per_day)
        ));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use nexus_common::config::Price;
    use nexus_proto::v1::UsageRow;

    use super::*;

    fn row(day: &str, user: &str, input: u64, output: u64) -> UsageRow {
        UsageRow {
            day: day.into(),
            user_id: user.into(),
            channel: "cli".into(),
            model: "m".into(),
            purpose: "turn".into(),
            calls: 1,
            input_tokens: input,
            output_tokens: output,
        }
    }

    #[test]
    fn settings_parse_numbers_unlimited_and_default_and_refuse_words() {
        assert_eq!("5".parse::<Setting<u64>>(), Ok(Setting::Value(5)));
        assert_eq!("unlimited".parse::<Setting<u64>>(), Ok(Setting::Value(0)));
        assert_eq!("default".parse::<Setting<f64>>(), Ok(Setting::Default));
        assert!("lots".parse::<Setting<u64>>().unwrap_err().contains("lots"));
        let mut stored = Some(3);
        apply(None, &mut stored);
        assert_eq!(stored, Some(3));
        apply(Some(Setting::Default), &mut stored);
        assert_eq!(stored, None);
    }

    #[test]
    fn the_report_puts_each_users_day_and_month_against_their_limits() {
        let mut config = Config::default();
        config.limits.user_tokens_per_day = 1000;
        config.limits.total_cost_per_day = 2.0;
        config.llm.prices.insert(
            "m".into(),
            Price {
                input: 1.0,
                output: 1.0,
            },
        );
        let stored = BTreeMap::from([(
            "bob".to_owned(),
            UserLimits {
                user_id: "bob".into(),
                tokens_per_day: Some(5000),
                messages_per_minute: Some(3),
                ..Default::default()
            },
        )]);
        let rows = [
            row("2026-12-01", "ada", 100, 10),
            row("2026-12-02", "ada", 200, 20),
            row("2026-12-02", "", 7, 0),
        ];
        let r = build("2026-12-02", "2026-12", &rows, &stored, &config);
        let users: Vec<_> = r.users.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(
            users,
            ["ada", "bob"],
            "users with usage or limits, no empty id"
        );
        let ada = &r.users[0];
        assert_eq!((ada.day.tokens, ada.month.tokens), (220, 330));
        assert_eq!(ada.limits.tokens_per_day, 1000);
        assert_eq!(r.users[1].limits.tokens_per_day, 5000);
        assert_eq!(r.all_day.tokens, 227);
        let text = r.to_text();
        assert!(text.contains("220 / 1000"), "{text}");
        assert!(text.contains("0 / 5000"), "{text}");
        assert!(
            text.contains("deployment today: 0.0002 USD / 2.00"),
            "{text}"
        );
        let v = r.to_json();
        assert_eq!(v["users"][1]["messages_per_minute"], 3);
        assert_eq!(v["users"][0]["today"]["tokens"], 220);
    }
}
