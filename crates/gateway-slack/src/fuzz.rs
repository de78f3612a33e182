//! Property tests of what Slack sends: signature checks on random headers and
//! bodies, Events API bodies (random JSON, and mutated real envelopes) parsed and
//! taken as far as intake goes before NATS (which events start a turn, the text
//! the agent reads, the timestamp), never with a panic. `PROPTEST_CASES` sets the count.

use nexus_testkit::fuzz::{self, config, edit};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::{
    api::BotIdentity,
    intake::{Envelope, ignore_reason, ts_to_ms},
    mrkdwn,
    signature::{self, MAX_SKEW_SECS, SignatureError},
};

/// Any JSON value, nested a few levels.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    fuzz::json_value("[a-z_<>@#!|:.0-9]{0,24}", 3, 6)
}

/// Edits of a JSON document ([`fuzz::edit`]).
pub(crate) fn edits() -> impl Strategy<Value = Vec<(usize, Option<Value>)>> {
    fuzz::edits(json_value())
}

/// Envelopes as Slack sends them, to be mutated.
pub(crate) fn seeds() -> Vec<Value> {
    vec![
        json!({"type": "url_verification", "challenge": "abc", "token": "x"}),
        json!({"type": "app_rate_limited", "minute_rate_limited": 1}),
        json!({
            "type": "event_callback", "event_id": "Ev1", "team_id": "T1",
            "authorizations": [{"user_id": "UBOT", "is_bot": true}],
            "event": {
                "type": "message", "channel_type": "im", "user": "U1", "channel": "D1",
                "ts": "1700000000.000100", "thread_ts": "1699999999.000200",
                "text": "hi <@UBOT> see <https://x.io|x> &amp; <#C1|general> <!here>",
                "user_profile": {"display_name": "ada", "real_name": "Ada"},
                "files": [{"id": "F1", "name": "a.png", "mimetype": "image/png", "size": 3,
                           "url_private_download": "https://files.slack.com/a.png"}]
            }
        }),
        json!({
            "type": "event_callback", "event_id": "Ev2",
            "event": {"type": "app_mention", "user": "U2", "channel": "C1", "ts": "1.5",
                      "text": "<@UBOT> hello", "subtype": "thread_broadcast",
                      "edited": {"user": "U2", "ts": "1.6"}, "bot_id": "B1"}
        }),
    ]
}

/// What the gateway does with an envelope before anything reaches NATS.
pub(crate) fn take(envelope: &Envelope) {
    let Envelope::EventCallback(cb) = envelope else {
        return;
    };
    let ev = &cb.event;
    for bot in [
        BotIdentity {
            user_id: String::new(),
            bot_id: String::new(),
        },
        BotIdentity {
            user_id: "UBOT".into(),
            bot_id: "B1".into(),
        },
    ] {
        for mention_only in [true, false] {
            if ignore_reason(ev, &bot, mention_only).is_none() {
                // A turn starts only for a person's message with a sender, a chat and a ts.
                assert!(!ev.user.is_empty() && !ev.channel.is_empty() && !ev.ts.is_empty());
                assert!(ev.bot_id.is_none() && ev.edited.is_none());
            }
        }
        let text = mrkdwn::from_slack(
            &ev.text,
            Some(bot.user_id.as_str()).filter(|u| !u.is_empty()),
        );
        assert!(!text.contains("<@UBOT>") || bot.user_id.is_empty());
    }
    let _ = ts_to_ms(&ev.ts);
}

#[test]
fn huge_slack_timestamps_do_not_overflow() {
    // Found by fuzz_slack_text_and_timestamps_never_panic (minimal input "10000000000000000"):
    // `secs * 1000` overflowed, a panic in debug builds and a wrapped time in release.
    assert_eq!(ts_to_ms("10000000000000000"), i64::MAX);
    assert_eq!(ts_to_ms("9223372036854775807.999"), i64::MAX);
    assert_eq!(ts_to_ms("-9223372036854775808"), i64::MIN);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_signatures_accept_only_the_signed_body_and_timestamp(
        secret in any::<String>(),
        body in prop::collection::vec(any::<u8>(), 0..512),
        ts in any::<i64>(),
        skew in -2 * MAX_SKEW_SECS..2 * MAX_SKEW_SECS,
        flip in any::<usize>(),
    ) {
        let now = ts.saturating_add(skew);
        let timestamp = ts.to_string();
        let sig = signature::sign(&secret, &timestamp, &body);
        let fresh = now.abs_diff(ts) <= MAX_SKEW_SECS as u64;
        let verdict = signature::verify(&secret, Some(&timestamp), Some(&sig), &body, now);
        prop_assert_eq!(verdict.is_ok(), fresh, "{:?}", verdict);
        if fresh && !body.is_empty() {
            let mut tampered = body.clone();
            tampered[flip % body.len()] ^= 1 << (flip % 8);
            prop_assert_eq!(
                signature::verify(&secret, Some(&timestamp), Some(&sig), &tampered, now),
                Err(SignatureError::Mismatch)
            );
        }
    }

    #[test]
    fn fuzz_random_signature_headers_are_refused_cleanly(
        ts in prop::option::of(prop_oneof![any::<String>(), "[ 0-9+-]{0,24}"]),
        sig in prop::option::of(prop_oneof![any::<String>(), " ?v0=[0-9a-fA-F]{0,70}"]),
        body in prop::collection::vec(any::<u8>(), 0..256),
        now in any::<i64>(),
    ) {
        // No signing secret can have produced a random header value.
        let verdict = signature::verify("8f742231b10e8888abcd99yyyzzz85a5", ts.as_deref(), sig.as_deref(), &body, now);
        prop_assert!(verdict.is_err());
    }

    #[test]
    fn fuzz_random_bodies_parse_or_are_refused(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(envelope) = serde_json::from_slice::<Envelope>(&body) {
            take(&envelope);
        }
    }

    #[test]
    fn fuzz_event_callbacks_parse_or_are_refused(
        seed in prop::sample::select(seeds()),
        edits in edits(),
    ) {
        let mut doc = seed;
        for (pick, new) in edits {
            edit(&mut doc, pick, new);
        }
        let body = doc.to_string();
        if let Ok(envelope) = serde_json::from_str::<Envelope>(&body) {
            take(&envelope);
        }
    }

    #[test]
    fn fuzz_slack_text_and_timestamps_never_panic(
        text in prop_oneof![any::<String>(), "[<>@#!|a-zA-Z:/. &;]{0,80}"],
        bot in prop::option::of("[A-Z0-9]{0,6}"),
        ts in prop_oneof![any::<String>(), "-?[0-9]{0,22}(\\.[0-9+-]{0,8})?"],
    ) {
        let plain = mrkdwn::from_slack(&text, bot.as_deref());
        prop_assert!(plain.len() <= text.len() + text.matches('|').count() * 3 + 1);
        let _ = ts_to_ms(&ts);
    }
}
