//! Five-field cron expressions (minute, hour, day of month, month, day of week)
//! evaluated over civil time in an IANA time zone, with jiff's bundled database.
//!
//! Daylight saving: a civil time in a spring-forward gap fires once, at the first
//! valid instant after it (the end of the gap); a civil time that occurs twice in a
//! fall-back fold fires once, at its first occurrence. So a job is neither skipped
//! nor doubled on those days. Fixed intervals that must not bend around DST are
//! `every_seconds` jobs, not cron.
//!
//! It must never return an instant at or before the one it was asked to follow.

use std::{fmt, str::FromStr, time::Duration};

use jiff::{
    Timestamp, ToSpan as _,
    civil::{Date, DateTime},
    tz::{AmbiguousOffset, TimeZone},
};

/// How far ahead a match is looked for: a leap day on a given weekday can be 28 years away.
const MAX_DAYS: u32 = 366 * 29;

/// A parsed five-field cron expression.
#[derive(Clone, PartialEq, Eq)]
pub struct CronExpr {
    text: String,
    /// Bit n set: minute n matches.
    minutes: u64,
    hours: u32,
    /// Bit n set: day n (1–31) matches.
    days: u32,
    /// Bit n set: month n (1–12) matches.
    months: u16,
    /// Bit n set: weekday n matches, 0 = Sunday.
    weekdays: u8,
    /// Day of month or day of week was `*`: then a day must match both fields,
    /// otherwise either (classic cron).
    day_star: bool,
}

/// Why an expression was refused, in words the model can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronExpr({:?})", self.text)
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
// 7 is Sunday too, as in most crons.
const WEEKDAY: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

const HELP: &str = "use five fields: minute hour day-of-month month day-of-week, e.g. \"0 9 * * 1\" for Mondays at 09:00";

impl FromStr for CronExpr {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Self, CronError> {
        let text = s.split_whitespace().collect::<Vec<_>>().join(" ");
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => {
                return Err(CronError(format!(
                    "cron expression \"{text}\": unknown shorthand; {HELP}"
                )));
            }
            _ => text.as_str(),
        }
        .to_owned();
        let fields: Vec<&str> = expanded.split(' ').filter(|f| !f.is_empty()).collect();
        if fields.len() != 5 {
            return Err(CronError(format!(
                "cron expression \"{text}\" has {} field(s); {HELP} (no seconds field)",
                fields.len()
            )));
        }
        let context = |e: String| CronError(format!("cron expression \"{text}\": {e}; {HELP}"));
        let minutes = parse_field(fields[0], &MINUTE).map_err(context)?;
        let hours = parse_field(fields[1], &HOUR).map_err(context)?;
        let days = parse_field(fields[2], &DAY).map_err(context)?;
        let months = parse_field(fields[3], &MONTH).map_err(context)?;
        let mut weekdays = parse_field(fields[4], &WEEKDAY).map_err(context)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        let expr = Self {
            text,
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            day_star: fields[2].starts_with('*') || fields[4].starts_with('*'),
        };
        // "0 0 30 2 *" parses but never fires: say so now, not never.
        if expr
            .next_civil_match(DateTime::constant(2000, 1, 1, 0, 0, 0, 0))
            .is_none()
        {
            return Err(CronError(format!(
                "cron expression \"{}\" never matches a real date (e.g. 30 February)",
                expr.text
            )));
        }
        Ok(expr)
    }
}

/// One field as a bit set; `Err` says what is wrong with it.
fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let bad = |why: &str| format!("{} field \"{text}\": {why}", field.name);
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| bad(&format!("step \"{s}\" is not a number")))?;
                if step == 0 {
                    return Err(bad("a step of 0 never advances"));
                }
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (
                value(a, field).map_err(|e| bad(&e))?,
                value(b, field).map_err(|e| bad(&e))?,
            );
            if a > b {
                return Err(bad(&format!("range {a}-{b} runs backwards")));
            }
            (a, b)
        } else {
            let a = value(range, field).map_err(|e| bad(&e))?;
            // "5/15" means from 5 to the end, every 15.
            (a, if item.contains('/') { field.max } else { a })
        };
        // `step_by`, not `v += step`: a step near u32::MAX would overflow.
        for v in (lo..=hi).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

fn value(text: &str, field: &Field) -> Result<u32, String> {
    if let Some(i) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        // Months are numbered from 1, weekdays from 0 (Sunday).
        return Ok(i as u32 + u32::from(field.min == 1));
    }
    let v: u32 = text.parse().map_err(|_| {
        if text.is_empty() {
            "an empty value".to_owned()
        } else {
            format!("\"{text}\" is not a number or name")
        }
    })?;
    if v < field.min || v > field.max {
        return Err(format!("{v} is out of range {}-{}", field.min, field.max));
    }
    Ok(v)
}

impl CronExpr {
    /// The expression as given (whitespace normalised).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.day_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first matching civil minute at or after `from` (seconds ignored).
    fn next_civil_match(&self, from: DateTime) -> Option<DateTime> {
        let mut date = from.date();
        let (mut h0, mut m0) = (from.hour(), from.minute());
        for _ in 0..MAX_DAYS {
            if self.day_matches(date) {
                for h in h0..24 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let start = if h == h0 { m0 } else { 0 };
                    for m in start..60 {
                        if self.minutes & (1 << m) != 0 {
                            return Some(date.at(h, m, 0, 0));
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
            (h0, m0) = (0, 0);
        }
        None
    }

    /// The first fire strictly after `after`, in `tz`; `None` if there is none
    /// (only at the end of jiff's range).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = tz.to_datetime(after);
        let mut from = local
            .date()
            .at(local.hour(), local.minute(), 0, 0)
            .checked_add(1.minute())
            .ok()?;
        // Candidates at or before `after` can only come from a fold (already fired
        // in its first pass) or a gap (collapsed onto its end): a day's worth at most.
        for _ in 0..(2 * 24 * 60) {
            let civil = self.next_civil_match(from)?;
            let at = resolve(civil, tz)?;
            if at > after {
                return Some(at);
            }
            from = civil.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// A lower bound of the time between two fires: the shortest gap between the
    /// day's matching times, or across midnight.
    pub fn min_gap(&self) -> Duration {
        let times: Vec<u32> = (0..24)
            .filter(|h| self.hours & (1 << h) != 0)
            .flat_map(|h| {
                (0..60)
                    .filter(|m| self.minutes & (1u64 << m) != 0)
                    .map(move |m| h * 60 + m)
            })
            .collect();
        let (Some(first), Some(last)) = (times.first(), times.last()) else {
            return Duration::from_secs(24 * 3600);
        };
        let across_midnight = first + 24 * 60 - last;
        let within = times.windows(2).map(|w| w[1] - w[0]).min();
        let minutes = within.map_or(across_midnight, |w| w.min(across_midnight));
        Duration::from_secs(u64::from(minutes) * 60)
    }
}

/// The instant a civil time of `tz` stands for: its only one, the first of a fold,
/// or, inside a gap, the end of the gap (the first valid instant after it).
pub fn resolve(civil: DateTime, tz: &TimeZone) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(civil).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(civil).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(civil).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the later offset, a gap time lands before the transition;
            // the transition that follows is where the gap ends.
            let early = after.to_timestamp(civil).ok()?;
            tz.following(early).next().map(|t| t.timestamp())
        }
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn fires(expr: &str, tz: &str, from: &str, until: &str) -> Vec<String> {
        let expr: CronExpr = expr.parse().unwrap();
        let tz = TimeZone::get(tz).unwrap();
        let (mut at, until) = (ts(from), ts(until));
        let mut out = Vec::new();
        while let Some(next) = expr.next_after(at, &tz) {
            if next > until {
                break;
            }
            assert!(next > at, "{next} does not follow {at}");
            out.push(next.to_string());
            at = next;
        }
        out
    }

    #[test]
    fn every_monday_at_nine_fires_at_nine_local_time_on_mondays_only() {
        let got = fires(
            "0 9 * * 1",
            "Europe/Berlin",
            "2026-03-01T00:00:00Z",
            "2026-04-07T00:00:00Z",
        );
        // 09:00 CET is 08:00Z until the clocks change on 29 March; then 07:00Z.
        assert_eq!(
            got,
            [
                "2026-03-02T08:00:00Z",
                "2026-03-09T08:00:00Z",
                "2026-03-16T08:00:00Z",
                "2026-03-23T08:00:00Z",
                "2026-03-30T07:00:00Z",
                "2026-04-06T07:00:00Z",
            ]
        );
    }

    #[test]
    fn a_time_in_the_spring_forward_gap_fires_once_at_the_end_of_the_gap() {
        // Europe/Berlin, 29 March 2026: 02:00 CET jumps to 03:00 CEST (01:00Z).
        let got = fires(
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-28T00:00:00Z",
            "2026-03-31T00:00:00Z",
        );
        assert_eq!(
            got,
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
            ]
        );
    }

    #[test]
    fn a_time_in_the_fall_back_fold_fires_once_at_its_first_occurrence() {
        // Europe/Berlin, 25 October 2026: 03:00 CEST falls back to 02:00 CET (01:00Z),
        // so 02:30 happens at 00:30Z and again at 01:30Z.
        let got = fires(
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24T00:00:00Z",
            "2026-10-27T00:00:00Z",
        );
        assert_eq!(
            got,
            [
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z",
            ]
        );
    }

    #[test]
    fn hourly_jobs_across_both_berlin_transitions_are_neither_skipped_nor_doubled() {
        // Spring: 01:00 CET, then 03:00 CEST (the 02:00 that does not exist) at the gap's end.
        let spring = fires(
            "0 * * * *",
            "Europe/Berlin",
            "2026-03-28T23:30:00Z",
            "2026-03-29T03:00:00Z",
        );
        assert_eq!(
            spring,
            [
                "2026-03-29T00:00:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T02:00:00Z",
                "2026-03-29T03:00:00Z",
            ]
        );
        // Autumn: 02:00 fires at its first occurrence (00:00Z), the repeat hour is not doubled.
        let autumn = fires(
            "0 * * * *",
            "Europe/Berlin",
            "2026-10-24T22:30:00Z",
            "2026-10-25T03:00:00Z",
        );
        assert_eq!(
            autumn,
            [
                "2026-10-24T23:00:00Z",
                "2026-10-25T00:00:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T03:00:00Z",
            ]
        );
        let local: Vec<String> = autumn
            .iter()
            .map(|t| {
                let z = ts(t).to_zoned_datetime(TimeZone::get("Europe/Berlin").unwrap());
                z.strftime("%H:%M").to_string()
            })
            .collect();
        assert_eq!(local, ["01:00", "02:00", "03:00", "04:00"]);
    }

    #[test]
    fn new_york_transitions_in_2026_keep_a_daily_job_at_one_fire_a_day() {
        // 8 March 2026: 02:00 EST → 03:00 EDT; 1 November 2026: 02:00 EDT → 01:00 EST.
        let spring = fires(
            "15 2 * * *",
            "America/New_York",
            "2026-03-07T00:00:00Z",
            "2026-03-10T00:00:00Z",
        );
        assert_eq!(
            spring,
            [
                "2026-03-07T07:15:00Z",
                // The gap's end, 03:00 EDT.
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:15:00Z",
            ]
        );
        let autumn = fires(
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T00:00:00Z",
            "2026-11-03T00:00:00Z",
        );
        assert_eq!(
            autumn,
            [
                "2026-10-31T05:30:00Z",
                // 01:30 EDT, the first of the two 01:30s.
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z",
            ]
        );
    }

    #[test]
    fn asking_from_inside_the_repeated_hour_does_not_fire_its_times_again() {
        let expr: CronExpr = "*/20 * * * *".parse().unwrap();
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        // 02:10 CET, the second pass through 02:xx on 25 October 2026.
        let next = expr.next_after(ts("2026-10-25T01:10:00Z"), &tz).unwrap();
        assert_eq!(next.to_string(), "2026-10-25T02:00:00Z");
    }

    #[test]
    fn weekday_ranges_names_steps_and_lists_parse_like_cron() {
        let got = fires(
            "0 18 * * MON-FRI",
            "UTC",
            "2026-05-01T00:00:00Z",
            "2026-05-06T00:00:00Z",
        );
        // 1 May 2026 is a Friday.
        assert_eq!(
            got,
            [
                "2026-05-01T18:00:00Z",
                "2026-05-04T18:00:00Z",
                "2026-05-05T18:00:00Z",
            ]
        );
        let got = fires(
            "*/20 9-10 1 jan,Jul *",
            "UTC",
            "2026-07-01T00:00:00Z",
            "2026-07-02T00:00:00Z",
        );
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], "2026-07-01T09:00:00Z");
        assert_eq!(got[5], "2026-07-01T10:40:00Z");
        // 7 is Sunday, as is 0.
        let sunday: CronExpr = "0 0 * * 7".parse().unwrap();
        let zero: CronExpr = "0 0 * * 0".parse().unwrap();
        let tz = TimeZone::UTC;
        let from = ts("2026-05-01T00:00:00Z");
        assert_eq!(sunday.next_after(from, &tz), zero.next_after(from, &tz));
        assert_eq!(
            "@daily".parse::<CronExpr>().unwrap().next_after(from, &tz),
            Some(ts("2026-05-02T00:00:00Z"))
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_together_match_either_as_in_classic_cron() {
        // The 13th, or any Friday.
        let got = fires(
            "0 12 13 * FRI",
            "UTC",
            "2026-02-01T00:00:00Z",
            "2026-02-14T00:00:00Z",
        );
        assert_eq!(got, ["2026-02-06T12:00:00Z", "2026-02-13T12:00:00Z",]);
        let got = fires(
            "0 12 12 * FRI",
            "UTC",
            "2026-02-01T00:00:00Z",
            "2026-02-14T00:00:00Z",
        );
        assert_eq!(
            got,
            [
                "2026-02-06T12:00:00Z",
                "2026-02-12T12:00:00Z",
                "2026-02-13T12:00:00Z",
            ]
        );
    }

    #[test]
    fn a_leap_day_job_waits_for_the_next_leap_year() {
        let got = fires(
            "0 0 29 2 *",
            "UTC",
            "2026-01-01T00:00:00Z",
            "2029-01-01T00:00:00Z",
        );
        assert_eq!(got, ["2028-02-29T00:00:00Z"]);
    }

    #[test]
    fn bad_expressions_are_refused_with_a_reason_the_model_can_act_on() {
        for (expr, says) in [
            ("0 9 * *", "has 4 field(s)"),
            ("0 0 9 * * 1", "no seconds field"),
            ("61 * * * *", "minute field \"61\": 61 is out of range 0-59"),
            ("0 24 * * *", "hour field"),
            ("0 9 * * MOON", "\"MOON\" is not a number or name"),
            ("*/0 * * * *", "step of 0"),
            ("0 9 5-1 * *", "runs backwards"),
            ("0 0 30 2 *", "never matches"),
            ("@reboot", "unknown shorthand"),
            ("every monday", "has 2 field(s)"),
        ] {
            let e = expr.parse::<CronExpr>().unwrap_err().to_string();
            assert!(e.contains(says), "{expr}: {e}");
        }
    }

    #[test]
    fn the_shortest_gap_between_fires_is_known_for_the_interval_limit() {
        let gap = |e: &str| e.parse::<CronExpr>().unwrap().min_gap().as_secs();
        assert_eq!(gap("* * * * *"), 60);
        assert_eq!(gap("*/5 * * * *"), 300);
        assert_eq!(gap("0,50 * * * *"), 600);
        assert_eq!(gap("0 9 * * 1"), 24 * 3600);
        assert_eq!(gap("0 9,17 * * *"), 8 * 3600);
        assert_eq!(gap("0 23 * * *"), 24 * 3600);
    }
}
