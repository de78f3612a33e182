//! Property tests of schedules as the `cron` tool and `N.scheduler.add` receive them:
//! any cron expression, `at` text, interval and time zone is accepted or refused with a
//! reason, never with a panic; an accepted expression never fires at or before the
//! instant it follows. `PROPTEST_CASES` sets the count.

use std::{sync::OnceLock, time::Duration};

use jiff::{Timestamp, tz::TimeZone};
use nexus_common::config::SchedulerConfig;
use nexus_testkit::fuzz::config;
use proptest::prelude::*;

use super::*;
use crate::{
    job::Origin,
    jobs::{Jobs, NewJob},
    schedule::{MissedPolicy, Schedule, local_time, parse_at, plan},
    store::Store,
    tool::CronArgs,
};

/// One field of a cron expression: lists, ranges, steps, names, and numbers out of range.
fn field() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        (0u64..64).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "jan",
            "DEC",
            "mon",
            "Sun",
            "xyz",
            "",
            "-1",
            "4294967296"
        ])
        .prop_map(str::to_owned),
    ];
    let step = prop_oneof![
        (0u64..70).prop_map(|n| n.to_string()),
        Just(u32::MAX.to_string()),
        Just((u32::MAX - 1).to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
        Just("x".to_owned()),
    ];
    let item = (
        prop_oneof![
            Just("*".to_owned()),
            value.clone(),
            (value.clone(), value).prop_map(|(a, b)| format!("{a}-{b}")),
        ],
        prop::option::of(step),
    )
        .prop_map(|(range, step)| match step {
            Some(s) => format!("{range}/{s}"),
            None => range,
        });
    prop::collection::vec(item, 1..4).prop_map(|items| items.join(","))
}

fn cron_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(field(), 5).prop_map(|f| f.join(" ")),
        1 => prop::collection::vec(field(), 0..8).prop_map(|f| f.join("  ")),
        1 => prop::sample::select(vec!["@daily", "@Hourly", "@weekly", "@yearly", "@reboot", "@"])
            .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Zones with DST gaps and folds, half-hour offsets and a 30-minute DST (Lord Howe).
fn zone() -> impl Strategy<Value = TimeZone> {
    prop::sample::select(vec![
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kathmandu",
        "America/St_Johns",
    ])
    .prop_map(|name| TimeZone::get(name).unwrap())
}

fn instant() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        4 => (0i64..4_102_444_800).prop_map(|s| Timestamp::from_second(s).unwrap()),
        1 => (Timestamp::MIN.as_second()..=Timestamp::MAX.as_second())
            .prop_map(|s| Timestamp::from_second(s).unwrap()),
        1 => Just(Timestamp::MAX),
        1 => Just(Timestamp::MIN),
    ]
}

/// Jobs over a store that `check` never touches.
fn jobs() -> &'static Jobs {
    static JOBS: OnceLock<Jobs> = OnceLock::new();
    JOBS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = runtime.block_on(Store::connect("sqlite::memory:")).unwrap();
        Jobs::new(
            store,
            None,
            SchedulerConfig::default(),
            "Europe/Berlin".into(),
        )
    })
}

#[test]
fn a_step_near_u32_max_neither_overflows_nor_wraps() {
    // Found by fuzz_cron_expressions_parse_or_say_why ("* * */4294967295 * *"): `v += step`
    // overflowed, a panic in debug builds; in release it wrapped, and "1/4294967295" fired
    // at minute 0 too.
    let expr: CronExpr = "1/4294967295 * * * *".parse().unwrap();
    assert_eq!(expr.minutes, 1 << 1);
    let expr: CronExpr = "* * */4294967295 * *".parse().unwrap();
    assert_eq!(expr.days, 1 << 1);
}

#[test]
fn intervals_at_the_ends_of_time_have_no_next_due_time() {
    // Found by fuzz_intervals_and_plans_never_overflow: `anchor_ms + step` and
    // `after_ms - anchor_ms` overflowed (a panic in debug builds).
    let utc = TimeZone::UTC;
    let every = |anchor_ms| Schedule::Every {
        every: Duration::from_secs(1),
        anchor_ms,
    };
    assert_eq!(every(i64::MAX).next_after(0, &utc), None);
    assert_eq!(every(i64::MIN).next_after(i64::MAX, &utc), None);
    assert_eq!(every(0).next_after(-1, &utc), Some(1000));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_cron_expressions_parse_or_say_why(text in cron_text()) {
        match text.parse::<CronExpr>() {
            Ok(expr) => {
                // The normalised text parses to the same expression.
                prop_assert_eq!(expr.as_str().parse::<CronExpr>(), Ok(expr.clone()));
                prop_assert!(expr.min_gap() <= Duration::from_secs(24 * 3600));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn fuzz_cron_fires_only_after_the_instant_it_follows(
        text in prop::collection::vec(field(), 5).prop_map(|f| f.join(" ")),
        after in instant(),
        tz in zone(),
    ) {
        let Ok(expr) = text.parse::<CronExpr>() else {
            return Ok(());
        };
        if let Some(next) = expr.next_after(after, &tz) {
            prop_assert!(next > after, "{expr} after {after} in {tz:?} gave {next}");
        }
    }

    #[test]
    fn fuzz_at_times_and_local_times_parse_or_say_why(
        text in prop_oneof![
            any::<String>(),
            "-?[0-9]{4,6}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2})?)?(Z|[+-][0-9]{2}:[0-9]{2})?(\\[[A-Za-z/_]{1,20}\\])?",
        ],
        tz in zone(),
        ms in any::<i64>(),
        tz_name in prop_oneof![Just("Europe/Berlin".to_owned()), any::<String>()],
    ) {
        if let Err(e) = parse_at(&text, &tz) {
            prop_assert!(!e.is_empty());
        }
        prop_assert!(!local_time(ms, &tz_name).is_empty());
    }

    #[test]
    fn fuzz_intervals_and_plans_never_overflow(
        every_secs in prop_oneof![any::<u64>(), 1u64..100_000, Just(0u64)],
        anchor_ms in prop_oneof![any::<i64>(), Just(i64::MAX), Just(i64::MIN)],
        after_ms in prop_oneof![any::<i64>(), Just(i64::MAX), Just(i64::MIN)],
        now_ms in any::<i64>(),
        at_ms in any::<i64>(),
        grace in any::<u64>(),
        skip in any::<bool>(),
    ) {
        let utc = TimeZone::UTC;
        let every = Schedule::Every { every: Duration::from_secs(every_secs), anchor_ms };
        if let Some(next) = every.next_after(after_ms, &utc) {
            prop_assert!(next > after_ms);
        }
        let policy = if skip { MissedPolicy::Skip } else { MissedPolicy::RunOnceLate };
        for schedule in [every, Schedule::At { at_ms }] {
            let p = plan(&schedule, &utc, policy, after_ms, now_ms, Duration::from_millis(grace));
            prop_assert_eq!(p.due_ms, after_ms);
            let _ = schedule.describe("Europe/Berlin");
        }
    }

    #[test]
    fn fuzz_new_jobs_are_checked_not_trusted(
        message in prop_oneof![Just("remind me".to_owned()), any::<String>()],
        owner in prop_oneof![Just("alice".to_owned()), any::<String>()],
        channel in prop_oneof![Just("telegram".to_owned()), any::<String>()],
        chat_id in prop_oneof![Just("42".to_owned()), any::<String>()],
        cron_expr in prop::option::of(cron_text()),
        every_seconds in prop::option::of(any::<u64>()),
        at in prop::option::of(prop_oneof![any::<String>(), "2[0-9]{3}-[01][0-9]-[0-3][0-9]T[0-9]{2}:[0-9]{2}"]),
        at_ms in prop::option::of(any::<i64>()),
        tz in prop::option::of(prop_oneof![Just("Europe/Berlin".to_owned()), any::<String>()]),
        now in 0i64..4_102_444_800_000,
    ) {
        let new = NewJob {
            owner,
            origin: Some(Origin { channel, chat_id, thread_id: String::new() }),
            message,
            cron_expr,
            every_seconds,
            at,
            at_ms,
            tz,
            missed: None,
        };
        match jobs().check(new, now) {
            Ok(job) => {
                if let Some(next) = job.next_run_ms {
                    prop_assert!(next >= now);
                }
                let _ = (job.describe(), job.to_proto());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn fuzz_cron_tool_arguments_parse_or_are_invalid(args in prop_oneof![
        any::<String>().prop_map(serde_json::Value::from),
        (
            prop::sample::select(vec!["add", "list", "remove", "pause", "resume", "nope"]),
            cron_text(),
            any::<i64>(),
        )
            .prop_map(|(action, expr, n)| serde_json::json!({
                "action": action, "cron_expr": expr, "every_seconds": n, "message": "m", "id": n,
            })),
    ]) {
        if let Err(failure) = nexus_tools::parse_args::<CronArgs>(args) {
            prop_assert_eq!(failure.kind, nexus_tools::ToolErrorKind::InvalidArgs);
        }
    }
}
