//! Property tests of what the bridge sends: any text frame parses into a
//! [`BridgeEvent`] or fails with a serde error, never a panic, and a parsed message
//! goes through what intake does before NATS (sender ids, attachment base64) without
//! one. The examples of `bridge/protocol/examples/` are the seeds that get mutated.
//! `PROPTEST_CASES` sets the count.

use base64::Engine as _;
use nexus_testkit::fuzz::{self, config, edit};
use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::inbound::Who;

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    fuzz::json_value("[a-z_@.:0-9+/=]{0,24}", 3, 6)
}

/// Edits of a JSON document ([`fuzz::edit`]).
fn edits() -> impl Strategy<Value = Vec<(usize, Option<Value>)>> {
    fuzz::edits(json())
}

/// Every `to-gateway.*` example, read at run time: embedding them would make the
/// release build (which copies no `bridge/`) depend on test data.
fn examples() -> Vec<String> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bridge/protocol/examples"
    );
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("to-gateway."))
        })
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    out.sort();
    out
}

/// What the gateway does with an event before anything reaches NATS.
fn take(event: &BridgeEvent) {
    match event {
        BridgeEvent::Message(msg) => {
            if let Some(who) = Who::of(&msg.sender) {
                assert!(who.phone.is_some() || who.lid.is_some());
                if let Some(p) = &who.phone {
                    assert!(!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                }
                assert!(!who.sender_id().is_empty());
                assert!(!who.user_key().is_empty());
                assert!(!who.aliases().is_empty());
                assert!(!who.direct_chat().is_empty());
            }
            if let Some(media) = &msg.media {
                let _ = base64::engine::general_purpose::STANDARD.decode(&media.data_base64);
                let _ = format!("{media:?}");
            }
        }
        BridgeEvent::Status(status) => {
            let _ = (status.state.as_str(), status.state.needs_login());
        }
        _ => {}
    }
}

#[test]
fn every_example_parses() {
    let examples = examples();
    assert!(
        examples.len() >= 10,
        "the seeds are missing: {}",
        examples.len()
    );
    for example in &examples {
        serde_json::from_str::<BridgeEvent>(example).unwrap();
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_any_text_frame_parses_or_is_refused(frame in prop_oneof![
        any::<String>(),
        "\\{\"type\":\"(message|status|qr|ready|send_result|error)\"[ -~]{0,60}\\}",
    ]) {
        if let Ok(event) = serde_json::from_str::<BridgeEvent>(&frame) {
            take(&event);
        }
    }

    #[test]
    fn fuzz_mutated_examples_parse_or_are_refused(
        example in prop::sample::select(examples()),
        edits in edits(),
    ) {
        let mut doc: Value = serde_json::from_str(&example).unwrap();
        for (pick, new) in edits {
            edit(&mut doc, pick, new);
        }
        let frame = doc.to_string();
        if let Ok(event) = serde_json::from_str::<BridgeEvent>(&frame) {
            take(&event);
            // What parsed serializes back into something that parses the same.
            let again: BridgeEvent = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
            prop_assert_eq!(again, event);
        }
    }

    #[test]
    fn fuzz_sender_ids_are_read_without_panics(
        phone in prop::option::of(prop_oneof![any::<String>(), "[0-9:]{0,16}@s\\.whatsapp\\.net", "[0-9]{0,4}"]),
        lid in prop::option::of(prop_oneof![any::<String>(), "[0-9:]{0,16}@lid"]),
    ) {
        let sender = Identity { phone_jid: phone, lid_jid: lid, name: None };
        if let Some(who) = Who::of(&sender) {
            if let Some(l) = &who.lid {
                prop_assert!(l.ends_with("@lid") && l.len() > "@lid".len());
            }
            prop_assert!(who.aliases().contains(&who.sender_id()));
        }
    }
}
