//! When a job fires: a cron expression, a fixed interval or one instant, in a
//! time zone; what happens to fires that were missed; and the plan for a due
//! time, decided from the clock the caller passes in (no I/O, no clock of its own).

use std::{fmt, time::Duration};

use jiff::{Timestamp, civil::DateTime, tz::TimeZone};

use crate::cron::{self, CronExpr};

/// How a job repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Five-field cron in the job's time zone.
    Cron(CronExpr),
    /// Every `every`, counted from `anchor_ms` (the moment the job was made), so
    /// due times stay on one grid whatever happens to the scheduler.
    Every { every: Duration, anchor_ms: i64 },
    /// Once, at this instant.
    At { at_ms: i64 },
}

impl Schedule {
    /// The first due time strictly after `after_ms`; `None` when the job is done.
    pub fn next_after(&self, after_ms: i64, tz: &TimeZone) -> Option<i64> {
        match self {
            Self::Cron(expr) => expr
                .next_after(Timestamp::from_millisecond(after_ms).ok()?, tz)
                .map(|t| t.as_millisecond()),
            Self::Every { every, anchor_ms } => {
                let step = i64::try_from(every.as_millis()).ok()?.max(1);
                // Checked: times near the ends of i64 must give `None`, not overflow.
                if after_ms < *anchor_ms {
                    return anchor_ms.checked_add(step);
                }
                let steps = after_ms.checked_sub(*anchor_ms)? / step + 1;
                anchor_ms.checked_add(steps.checked_mul(step)?)
            }
            Self::At { at_ms } => (*at_ms > after_ms).then_some(*at_ms),
        }
    }

    /// The schedule in words, e.g. `cron "0 9 * * 1" (Europe/Berlin)`.
    pub fn describe(&self, tz: &str) -> String {
        match self {
            Self::Cron(expr) => format!("cron \"{expr}\" ({tz})"),
            Self::Every { every, .. } => format!("every {}", words(*every)),
            Self::At { at_ms } => format!("once at {}", local_time(*at_ms, tz)),
        }
    }

    /// `true` for a job that fires once.
    pub fn is_one_shot(&self) -> bool {
        matches!(self, Self::At { .. })
    }
}

/// What a job does about due times that passed while no scheduler ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MissedPolicy {
    /// Fire once, late, for all the missed due times together; then carry on.
    #[default]
    RunOnceLate,
    /// Fire none of them; carry on with the next due time.
    Skip,
}

impl MissedPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunOnceLate => "run_once_late",
            Self::Skip => "skip",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "run_once_late" => Some(Self::RunOnceLate),
            "skip" => Some(Self::Skip),
            _ => None,
        }
    }
}

impl fmt::Display for MissedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do about a job whose due time has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The due time being settled (the claim key with the job id).
    pub due_ms: i64,
    /// Publish a fire for it. `false`: skipped under the `skip` policy.
    pub fire: bool,
    /// The due time was missed (seen later than the grace allows).
    pub late: bool,
    /// The job's next due time after this one; `None`: it is done.
    pub next_ms: Option<i64>,
}

/// The plan for `due_ms` seen at `now_ms`. A due time seen within `grace` is on
/// time and fired, and the next one follows it on the schedule (so a short stall
/// catches up every fire). Seen later, it was missed: the policy decides whether
/// one late fire stands for all the missed ones, and the next due time is the
/// first one after now.
pub fn plan(
    schedule: &Schedule,
    tz: &TimeZone,
    policy: MissedPolicy,
    due_ms: i64,
    now_ms: i64,
    grace: Duration,
) -> Plan {
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    if now_ms.saturating_sub(due_ms) <= grace_ms {
        return Plan {
            due_ms,
            fire: true,
            late: false,
            next_ms: schedule.next_after(due_ms, tz),
        };
    }
    Plan {
        due_ms,
        fire: policy == MissedPolicy::RunOnceLate,
        late: true,
        next_ms: schedule.next_after(now_ms.max(due_ms), tz),
    }
}

/// Parses the `at` of a one-shot job: ISO 8601 with an offset (`…Z`, `…+02:00`,
/// or with a `[Zone]` too) is that instant; without one it is civil time in `tz`
/// (a time in a DST gap means the end of the gap, one in a fold its first occurrence).
pub fn parse_at(text: &str, tz: &TimeZone) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Ok(ts);
    }
    if let Ok(zoned) = text.parse::<jiff::ZonedDateTime>() {
        return Ok(zoned.timestamp());
    }
    let civil: DateTime = text.parse().map_err(|_| {
        format!(
            "at \"{text}\" is not an ISO 8601 date and time; write e.g. \"2026-03-01T12:00\" \
             (in the job's time zone) or \"2026-03-01T12:00:00+01:00\""
        )
    })?;
    cron::resolve(civil, tz).ok_or_else(|| format!("at \"{text}\" is out of range"))
}

/// An instant as local time in `tz`, e.g. `Mon 2026-03-02 09:00 CET`.
pub fn local_time(ms: i64, tz: &str) -> String {
    let Ok(ts) = Timestamp::from_millisecond(ms) else {
        return ms.to_string();
    };
    match TimeZone::get(tz) {
        Ok(zone) => ts
            .to_zoned_datetime(zone)
            .strftime("%a %Y-%m-%d %H:%M:%S %Z")
            .to_string()
            .replace(":00 ", " "),
        Err(_) => ts.to_string(),
    }
}

/// A duration in words: `90 s`, `5 min`, `2 h`, `1 d 6 h`.
pub fn words(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s >= 86_400 => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn intervals_stay_on_the_grid_of_their_anchor() {
        let every = Schedule::Every {
            every: Duration::from_secs(10),
            anchor_ms: 1_000,
        };
        let utc = TimeZone::UTC;
        assert_eq!(every.next_after(0, &utc), Some(11_000));
        assert_eq!(every.next_after(1_000, &utc), Some(11_000));
        assert_eq!(every.next_after(10_999, &utc), Some(11_000));
        assert_eq!(every.next_after(11_000, &utc), Some(21_000));
        assert_eq!(every.next_after(55_500, &utc), Some(61_000));
    }

    #[test]
    fn a_one_shot_has_no_due_time_after_its_own() {
        let at = Schedule::At { at_ms: 5_000 };
        assert_eq!(at.next_after(4_999, &TimeZone::UTC), Some(5_000));
        assert_eq!(at.next_after(5_000, &TimeZone::UTC), None);
    }

    #[test]
    fn a_due_time_seen_within_the_grace_fires_and_the_next_follows_on_the_schedule() {
        let every = Schedule::Every {
            every: Duration::from_secs(2),
            anchor_ms: 0,
        };
        let p = plan(
            &every,
            &TimeZone::UTC,
            MissedPolicy::Skip,
            10_000,
            15_000,
            GRACE,
        );
        assert_eq!(
            p,
            Plan {
                due_ms: 10_000,
                fire: true,
                late: false,
                // Still in the past: the next pass fires it too, so a stall skips nothing.
                next_ms: Some(12_000),
            }
        );
    }

    #[test]
    fn a_missed_due_time_fires_once_late_or_is_skipped_as_the_job_says() {
        let hourly = Schedule::Every {
            every: Duration::from_secs(3600),
            anchor_ms: 0,
        };
        let due = 3_600_000;
        // Down for five hours: five due times passed.
        let now = 5 * 3_600_000 + 1_000;
        let late = plan(
            &hourly,
            &TimeZone::UTC,
            MissedPolicy::RunOnceLate,
            due,
            now,
            GRACE,
        );
        assert_eq!(
            late,
            Plan {
                due_ms: due,
                fire: true,
                late: true,
                next_ms: Some(6 * 3_600_000),
            }
        );
        let skipped = plan(&hourly, &TimeZone::UTC, MissedPolicy::Skip, due, now, GRACE);
        assert_eq!(
            skipped,
            Plan {
                fire: false,
                ..late
            }
        );
        let once = Schedule::At { at_ms: due };
        let p = plan(&once, &TimeZone::UTC, MissedPolicy::Skip, due, now, GRACE);
        assert!(!p.fire && p.next_ms.is_none(), "{p:?}");
        let p = plan(
            &once,
            &TimeZone::UTC,
            MissedPolicy::RunOnceLate,
            due,
            now,
            GRACE,
        );
        assert!(p.fire && p.late && p.next_ms.is_none(), "{p:?}");
    }

    #[test]
    fn at_without_an_offset_is_local_to_the_job_time_zone() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(
            parse_at("2026-03-01T12:00", &berlin)
                .unwrap()
                .as_millisecond(),
            ms("2026-03-01T11:00:00Z")
        );
        assert_eq!(
            parse_at("2026-03-01 12:00:00", &berlin)
                .unwrap()
                .as_millisecond(),
            ms("2026-03-01T11:00:00Z")
        );
        assert_eq!(
            parse_at("2026-07-01T12:00:00+05:00", &berlin)
                .unwrap()
                .as_millisecond(),
            ms("2026-07-01T07:00:00Z")
        );
        assert_eq!(
            parse_at("2026-07-01T12:00:00Z", &berlin)
                .unwrap()
                .as_millisecond(),
            ms("2026-07-01T12:00:00Z")
        );
        // In the spring-forward gap: the end of the gap.
        assert_eq!(
            parse_at("2026-03-29T02:30", &berlin)
                .unwrap()
                .as_millisecond(),
            ms("2026-03-29T01:00:00Z")
        );
        let e = parse_at("next tuesday", &berlin).unwrap_err();
        assert!(e.contains("ISO 8601"), "{e}");
    }

    #[test]
    fn schedules_describe_themselves_in_words() {
        let expr: CronExpr = "0 9 * * 1".parse().unwrap();
        assert_eq!(
            Schedule::Cron(expr).describe("Europe/Berlin"),
            "cron \"0 9 * * 1\" (Europe/Berlin)"
        );
        let every = Schedule::Every {
            every: Duration::from_secs(1800),
            anchor_ms: 0,
        };
        assert_eq!(every.describe("UTC"), "every 30 min");
        let at = Schedule::At {
            at_ms: ms("2026-03-02T08:00:00Z"),
        };
        assert_eq!(
            at.describe("Europe/Berlin"),
            "once at Mon 2026-03-02 09:00 CET"
        );
    }
}
