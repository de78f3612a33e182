//! Property tests of the domain parsers: whatever a message carries, parsing
//! returns a valid value or an `InvalidValue`, never a panic, and a value that
//! parsed keeps the promises its type makes. `PROPTEST_CASES` sets the count.

use proptest::prelude::*;

use super::*;

fn config() -> ProptestConfig {
    // `default()` reads PROPTEST_CASES; failures are kept as regular tests, not files.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text as senders and peers write it: any Unicode, and the characters subjects care about.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9_\\-.*> \u{0}\n\u{fc}]{0,80}",
        "[a-z]{1,70}",
    ]
}

fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_tokens_parse_only_subject_safe_text(s in hostile()) {
        for (parsed, max) in [
            (Namespace::parse(&s).map(|v| v.as_str().to_owned()), 64),
            (ChannelName::parse(&s).map(|v| v.as_str().to_owned()), 32),
            (ToolName::parse(&s).map(|v| v.as_str().to_owned()), 64),
        ] {
            match parsed {
                Ok(v) => {
                    prop_assert_eq!(&v, &s);
                    prop_assert!(is_token(&v, max));
                }
                Err(e) => {
                    prop_assert!(!is_token(&s, max));
                    // The error quotes at most 80 characters of what was refused.
                    prop_assert!(e.value.chars().count() <= 80);
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    #[test]
    fn fuzz_session_keys_hold_no_control_characters(
        channel in hostile(),
        chat in hostile(),
        thread in hostile(),
    ) {
        let Ok(channel) = ChannelName::parse(&channel) else {
            return Ok(());
        };
        match SessionKey::new(channel.clone(), &chat, &thread) {
            Ok(key) => {
                prop_assert!(!key.chat_id().is_empty());
                for part in [key.chat_id(), key.thread_id()] {
                    prop_assert!(part.len() <= 256);
                    prop_assert!(!part.chars().any(char::is_control));
                }
                let want = if thread.is_empty() {
                    format!("{channel}:{chat}")
                } else {
                    format!("{channel}:{chat}:{thread}")
                };
                prop_assert_eq!(key.id(), want);
            }
            Err(e) => prop_assert!(e.value.chars().count() <= 80),
        }
    }

    #[test]
    fn fuzz_default_user_ids_are_always_file_safe(sender in hostile()) {
        let channel = ChannelName::parse("telegram").unwrap();
        let id = default_user_id(&channel, &sender);
        let safe = id.strip_prefix("telegram_").unwrap();
        prop_assert!(safe.chars().count() <= 96);
        prop_assert!(safe.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    }
}
