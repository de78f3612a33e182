//! Property tests of journals as people may have edited them: sections and their
//! readers, summaries turned into bullets, and the days a question names never panic,
//! and a summary can never file itself under other readers. `PROPTEST_CASES` sets the count.

use jiff::civil::Date;
use nexus_testkit::fuzz::config;
use proptest::prelude::*;

use super::*;
use crate::files::is_file_safe;

fn date() -> impl Strategy<Value = Date> {
    (-9999i16..=9999, 1i8..=12, 1i8..=28).prop_map(|(y, m, d)| Date::new(y, m, d).unwrap())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_journal_sections_and_readers_never_panic(
        text in crate::markdown::fuzz::markdown(),
    ) {
        for section in sections(&text) {
            if let Some(readers) = section.readers {
                prop_assert!(readers.iter().all(|u| is_file_safe(u)));
            }
            prop_assert!(!section.text.starts_with("# Journal"));
        }
    }

    #[test]
    fn fuzz_summaries_become_bullets_that_file_nothing(
        summary in crate::markdown::fuzz::markdown(),
    ) {
        let out = bullets(&summary);
        prop_assert!(out.len() <= MAX_SUMMARY_BYTES + "- …\n".len());
        for line in out.lines() {
            prop_assert!(line.trim_start().starts_with("- ") || line.trim_start().starts_with("* ") || line.trim_start() == "-" , "{line:?}");
            prop_assert!(!line.contains("<!--"));
            prop_assert!(crate::markdown::journal_marker_users(line).is_none());
        }
        // Under a heading, the summary's own lines never set the readers.
        let journal = format!("## 09:00 · s\n<!-- nexus:journal id=1 users=alice -->\n\n{out}");
        for section in sections(&journal) {
            prop_assert_eq!(section.readers, Some(vec!["alice".to_owned()]));
        }
    }

    #[test]
    fn fuzz_days_named_in_any_question(
        query in prop_oneof![
            any::<String>(),
            "((today|yesterday|monday|Sunday|FRIDAY|[0-9]{4}-[0-9]{2}-[0-9]{2}|-?[0-9]{6}-[0-9]{2}-[0-9]{2})[ ,.?]){0,6}",
        ],
        today in prop_oneof![date(), Just(Date::MIN), Just(Date::MAX)],
        at_ms in any::<i64>(),
    ) {
        let days = days_named(&query, today);
        prop_assert!(days.len() <= 3);
        let _ = local_day(&TimeZone::UTC, at_ms);
        for day in days {
            let _ = day_header(&day.to_string());
        }
    }
}
