//! Property tests of announcements as providers send them: any announcement is
//! recorded or ignored, and the directory answers afterwards, never with a panic.
//! `PROPTEST_CASES` sets the count.

use proptest::prelude::*;

use super::*;
use nexus_testkit::fuzz::config;

fn announcement() -> impl Strategy<Value = ToolAnnouncement> {
    let spec = (
        prop_oneof![any::<String>(), "[a-z_]{1,12}"],
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(name, timeout_ms, requires_approval)| ToolSpec {
            name,
            timeout_ms,
            requires_approval,
            ..Default::default()
        });
    (
        0u32..3,
        prop_oneof![Just(String::new()), "[a-z]{1,4}"],
        prop::collection::vec(spec, 0..4),
        prop_oneof![any::<u64>(), Just(u64::MAX), 0u64..10_000],
        any::<bool>(),
    )
        .prop_map(
            |(protocol, instance, specs, ttl_ms, withdrawn)| ToolAnnouncement {
                protocol,
                provider: "p".into(),
                instance,
                specs,
                ttl_ms,
                withdrawn,
                ..Default::default()
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_any_announcements_are_recorded_or_ignored(
        announcements in prop::collection::vec(announcement(), 1..6),
    ) {
        let d = ToolDirectory { known: Arc::default() };
        for a in announcements {
            d.record(a);
        }
        for (name, _) in d.specs() {
            prop_assert!(ToolName::parse(&name).is_ok());
        }
        let _ = d.providers();
    }
}
