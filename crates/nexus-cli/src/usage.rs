//! `nexus usage`: model calls, tokens and cost from memory-svc's usage ledger,
//! summed over a range of UTC days and grouped by user, model, channel, day or
//! purpose. Costs come from `[llm.prices]` (USD per million tokens); models
//! without a price are named, not guessed. Below it, each user's consumption of
//! the current UTC day and month against their limits (`crate::limits`).

use std::{collections::BTreeMap, process::ExitCode};

use clap::{Args, ValueEnum};
use nexus_bus::{Bus, MemoryOp};
use nexus_common::{Config, config::Price};
use nexus_proto::v1::{UsageRequest, UsageResponse, UsageRow};
use serde_json::json;

use crate::users::ask_memory;

#[derive(Args)]
pub struct UsageArgs {
    /// First day, YYYY-MM-DD (UTC); default: 30 days before --to.
    #[arg(long)]
    from: Option<String>,
    /// Last day, YYYY-MM-DD (UTC); default: today.
    #[arg(long)]
    to: Option<String>,
    /// What each line sums.
    #[arg(long, value_enum, default_value_t = By::User)]
    by: By,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum By {
    User,
    Model,
    Channel,
    Day,
    Purpose,
}

impl By {
    fn header(self) -> &'static str {
        match self {
            By::User => "USER",
            By::Model => "MODEL",
            By::Channel => "CHANNEL",
            By::Day => "DAY",
            By::Purpose => "PURPOSE",
        }
    }

    fn key(self, row: &UsageRow) -> String {
        let key = match self {
            By::User => &row.user_id,
            By::Model => &row.model,
            By::Channel => &row.channel,
            By::Day => &row.day,
            By::Purpose => &row.purpose,
        };
        if key.is_empty() {
            "(none)".to_owned()
        } else {
            key.clone()
        }
    }
}

/// One line of the report.
#[derive(Default, Debug, PartialEq)]
struct Line {
    calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    /// USD, over the rows whose model has a price.
    cost: f64,
    /// Some rows had a model without a price: the cost is a lower bound.
    unpriced: bool,
}

pub async fn run(config: Config, args: UsageArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&config, "nexus-usage").await?;
    let reply: UsageResponse = ask_memory(
        &bus,
        &config,
        MemoryOp::Usage,
        &UsageRequest {
            from_day: args.from.unwrap_or_default(),
            to_day: args.to.unwrap_or_default(),
            user_id: String::new(),
        },
    )
    .await?;
    let limits = crate::limits::report(&bus, &config).await?;
    let (lines, unpriced) = report(&reply.rows, args.by, &config.llm.prices);
    let total = lines.values().fold(Line::default(), |mut t, l| {
        t.calls += l.calls;
        t.input_tokens += l.input_tokens;
        t.output_tokens += l.output_tokens;
        t.cost += l.cost;
        t.unpriced |= l.unpriced;
        t
    });
    if args.json {
        let line = |l: &Line| {
            json!({"calls": l.calls, "input_tokens": l.input_tokens, "output_tokens": l.output_tokens,
                   "cost_usd": l.cost, "cost_is_lower_bound": l.unpriced})
        };
        let out = json!({
            "by": args.by.header().to_lowercase(),
            "lines": lines.iter().map(|(k, l)| { let mut v = line(l); v["key"] = json!(k); v }).collect::<Vec<_>>(),
            "total": line(&total),
            "models_without_price": unpriced,
            "limits": limits.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if lines.is_empty() {
        println!("no model calls recorded in that range");
        println!();
        print!("{}", limits.to_text());
        return Ok(ExitCode::SUCCESS);
    }
    let width = lines
        .keys()
        .map(|k| k.chars().count())
        .chain([args.by.header().len(), "TOTAL".len()])
        .max()
        .unwrap_or_default();
    println!(
        "{:width$}  {:>8}  {:>14}  {:>14}  {:>12}",
        args.by.header(),
        "CALLS",
        "INPUT TOKENS",
        "OUTPUT TOKENS",
        "COST (USD)"
    );
    for (key, line) in lines.iter().chain([(&"TOTAL".to_owned(), &total)]) {
        let cost = format!("{}{:.4}", if line.unpriced { "≥" } else { "" }, line.cost);
        println!(
            "{key:width$}  {:>8}  {:>14}  {:>14}  {cost:>12}",
            line.calls, line.input_tokens, line.output_tokens
        );
    }
    if !unpriced.is_empty() {
        println!();
        println!(
            "no price in [llm.prices] for: {} (their tokens are counted, not costed)",
            unpriced.join(", ")
        );
    }
    println!();
    print!("{}", limits.to_text());
    Ok(ExitCode::SUCCESS)
}

/// Sums `rows` by `by`, with costs from `prices`; also the models that have no price.
fn report(
    rows: &[UsageRow],
    by: By,
    prices: &BTreeMap<String, Price>,
) -> (BTreeMap<String, Line>, Vec<String>) {
    let mut lines: BTreeMap<String, Line> = BTreeMap::new();
    let mut unpriced: Vec<String> = Vec::new();
    for row in rows {
        let line = lines.entry(by.key(row)).or_default();
        line.calls += row.calls;
        line.input_tokens += row.input_tokens;
        line.output_tokens += row.output_tokens;
        match prices.get(&row.model) {
            Some(p) => {
                line.cost += (row.input_tokens as f64 * p.input
                    + row.output_tokens as f64 * p.output)
                    / 1_000_000.0;
            }
            None => {
                line.unpriced = true;
                if !unpriced.contains(&row.model) {
                    unpriced.push(row.model.clone());
                }
            }
        }
    }
    unpriced.sort();
    (lines, unpriced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: &str, user: &str, model: &str, input: u64, output: u64) -> UsageRow {
        UsageRow {
            day: day.into(),
            user_id: user.into(),
            channel: "slack".into(),
            model: model.into(),
            purpose: "turn".into(),
            calls: 1,
            input_tokens: input,
            output_tokens: output,
        }
    }

    #[test]
    fn lines_sum_by_key_and_cost_only_priced_models() {
        let rows = [
            row("2026-11-23", "alice", "gpt-4.1-mini", 1_000_000, 100_000),
            row("2026-11-24", "alice", "gpt-4.1-mini", 1_000_000, 0),
            row("2026-11-24", "bob", "local", 500, 50),
            row("2026-11-24", "", "gpt-4.1-mini", 0, 0),
        ];
        let prices = BTreeMap::from([(
            "gpt-4.1-mini".to_owned(),
            Price {
                input: 0.4,
                output: 1.6,
            },
        )]);
        let (lines, unpriced) = report(&rows, By::User, &prices);
        let alice = &lines["alice"];
        assert_eq!(
            (alice.calls, alice.input_tokens, alice.output_tokens),
            (2, 2_000_000, 100_000)
        );
        assert!((alice.cost - (0.8 + 0.16)).abs() < 1e-9, "{}", alice.cost);
        assert!(!alice.unpriced);
        assert!(lines["bob"].unpriced);
        assert_eq!(lines["(none)"].calls, 1);
        assert_eq!(unpriced, ["local"]);

        let (by_day, _) = report(&rows, By::Day, &prices);
        assert_eq!(
            by_day.keys().collect::<Vec<_>>(),
            ["2026-11-23", "2026-11-24"]
        );
        assert_eq!(by_day["2026-11-24"].calls, 3);
    }
}
