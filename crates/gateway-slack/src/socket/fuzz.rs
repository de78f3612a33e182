//! Property tests of Socket Mode frames: any text frame parses into a [`Frame`]
//! or is ignored, and an `events_api` payload parses into an [`Envelope`] or is
//! dropped, never with a panic. `PROPTEST_CASES` sets the count.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::fuzz::{edits, seeds, take};
use nexus_testkit::fuzz::{config, edit};

/// What `session` and `handle_events_api` do with a frame before intake.
fn read(text: &str) {
    let Ok(frame) = serde_json::from_str::<Frame>(text) else {
        return;
    };
    let _ = (
        &frame.kind,
        &frame.envelope_id,
        &frame.reason,
        frame.retry_attempt,
    );
    if let Some(payload) = frame.payload.clone()
        && let Ok(envelope) = serde_json::from_value::<Envelope>(payload)
    {
        take(&envelope);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_socket_mode_frames_parse_or_are_ignored(text in prop_oneof![
        any::<String>(),
        "\\{\"type\":\"(hello|disconnect|events_api|slash_commands)\"[ -~]{0,60}\\}",
    ]) {
        read(&text);
    }

    #[test]
    fn fuzz_mutated_events_api_envelopes_parse_or_are_dropped(
        seed in prop::sample::select(seeds()),
        edits in edits(),
    ) {
        let mut frame = json!({
            "type": "events_api", "envelope_id": "e1", "retry_attempt": 0,
            "retry_reason": "", "accepts_response_payload": false, "payload": seed,
        });
        for (pick, new) in edits {
            edit(&mut frame, pick, new);
        }
        let text = Value::to_string(&frame);
        read(&text);
    }
}
