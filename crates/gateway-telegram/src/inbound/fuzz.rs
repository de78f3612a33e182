//! Property tests of what Telegram sends: any webhook or `getUpdates` body parses
//! into an [`Update`] or is refused, and an update goes through what intake does
//! before NATS (is it for the bot, which command, which file, the ids and times of
//! the `InboundMessage`) without a panic. Entities with offsets and lengths that do
//! not fit the text are the interesting case. `PROPTEST_CASES` sets the count.

use nexus_testkit::fuzz::{self, config, edit};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    fuzz::json_value("[a-z_@/ 0-9]{0,24}", 3, 6)
}

const BOT: UserId = UserId(777);
const BOT_NAME: &str = "nexus_bot";

fn chat() -> Value {
    json!({"id": -100200, "type": "supergroup", "title": "team", "is_forum": true})
}

/// Updates as Telegram sends them, to be mutated.
fn seeds() -> Vec<Value> {
    let from = json!({"id": 42, "is_bot": false, "first_name": "Ada", "last_name": "L", "username": "ada"});
    vec![
        json!({"update_id": 1, "message": {
            "message_id": 5, "date": 1_700_000_000, "chat": chat(), "from": from,
            "is_topic_message": true, "message_thread_id": 9,
            "text": "/help@nexus_bot hi @nexus_bot 👋",
            "entities": [{"type": "bot_command", "offset": 0, "length": 15},
                         {"type": "mention", "offset": 19, "length": 10},
                         {"type": "text_mention", "offset": 0, "length": 3,
                          "user": {"id": 777, "is_bot": true, "first_name": "Bot"}}],
            "reply_to_message": {"message_id": 4, "date": 1_700_000_000, "chat": chat(),
                "from": {"id": 777, "is_bot": true, "first_name": "Bot", "username": BOT_NAME},
                "text": "earlier"}
        }}),
        json!({"update_id": 2, "message": {
            "message_id": 6, "date": 1_700_000_001,
            "chat": {"id": 42, "type": "private", "first_name": "Ada"}, "from": from,
            "caption": "look @nexus_bot", "caption_entities": [{"type": "mention", "offset": 5, "length": 10}],
            "photo": [{"file_id": "a", "file_unique_id": "ua", "width": 90, "height": 90, "file_size": 10},
                      {"file_id": "b", "file_unique_id": "ub", "width": 800, "height": 600, "file_size": 900}]
        }}),
        json!({"update_id": 3, "message": {
            "message_id": 7, "date": 1_700_000_002,
            "chat": {"id": 42, "type": "private", "first_name": "Ada"}, "from": from,
            "document": {"file_id": "d", "file_unique_id": "ud", "file_name": "a.pdf",
                         "mime_type": "application/pdf", "file_size": 1234}
        }}),
        json!({"update_id": 4, "message": {
            "message_id": 8, "date": 1_700_000_003,
            "chat": {"id": 42, "type": "private", "first_name": "Ada"}, "from": from,
            "voice": {"file_id": "v", "file_unique_id": "uv", "duration": 3, "mime_type": "audio/ogg"}
        }}),
        json!({"update_id": 5, "edited_message": {
            "message_id": 8, "date": 1_700_000_003, "edit_date": 1_700_000_004,
            "chat": {"id": 42, "type": "private", "first_name": "Ada"}, "from": from, "text": "x"
        }}),
    ]
}

/// What `handle_update` and `inbound_message` do with an update before anything reaches NATS.
fn take(update: &Update) {
    let UpdateKind::Message(msg) = &update.kind else {
        return;
    };
    let _ = msg.chat.is_group() || msg.chat.is_supergroup() || msg.chat.is_private();
    for name in [BOT_NAME, ""] {
        let _ = addressed_to_bot(msg, BOT, name);
    }
    let text = msg.text().or_else(|| msg.caption()).unwrap_or_default();
    if let Some((name, _)) = command(text, BOT_NAME) {
        assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }
    if let Some(file) = media_of(msg) {
        assert!(!file.name.is_empty() && !file.mime.is_empty());
        let _ = (file.meta, file.kind);
    }
    let _ = topic(msg).map(|t| t.0.0.to_string());
    let _ = upstream_id(msg.chat.id, msg.id.0);
    let _ = msg
        .reply_to_message()
        .map(|r| upstream_id(msg.chat.id, r.id.0));
    let _ = msg.date.timestamp_millis();
    if let Some(from) = &msg.from {
        let _ = (from.full_name(), from.id.0.to_string());
    }
}

/// A message whose entities point anywhere, in and beyond its text.
fn entity_message() -> impl Strategy<Value = Value> {
    let kind = prop::sample::select(vec![
        "mention",
        "bot_command",
        "hashtag",
        "url",
        "bold",
        "text_link",
        "pre",
        "code",
    ]);
    let entity = (kind, 0u64..80, 0u64..80, any::<u64>(), any::<bool>()).prop_map(
        |(kind, offset, length, huge, use_huge)| {
            let (offset, length) = if use_huge {
                (huge % (1 << 40), huge >> 40)
            } else {
                (offset, length)
            };
            json!({"type": kind, "offset": offset, "length": length, "url": "https://x.io"})
        },
    );
    (
        prop_oneof![any::<String>(), "[@/a-z_ 👋é\u{10348}]{0,40}"],
        prop::collection::vec(entity, 0..5),
        any::<bool>(),
    )
        .prop_map(|(text, entities, caption)| {
            let mut m = json!({
                "message_id": 5, "date": 1_700_000_000, "chat": chat(),
                "from": {"id": 42, "is_bot": false, "first_name": "Ada"},
            });
            if caption {
                m["caption"] = text.into();
                m["caption_entities"] = entities.into();
                m["photo"] = json!([]);
            } else {
                m["text"] = text.into();
                m["entities"] = entities.into();
            }
            json!({"update_id": 7, "message": m})
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_random_update_bodies_parse_or_are_refused(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(update) = serde_json::from_slice::<Update>(&body) {
            take(&update);
        }
    }

    #[test]
    fn fuzz_mutated_updates_parse_or_are_refused(
        seed in prop::sample::select(seeds()),
        edits in prop::collection::vec((any::<usize>(), prop::option::of(json_value())), 1..4),
    ) {
        let mut doc = seed;
        for (pick, new) in edits {
            edit(&mut doc, pick, new);
        }
        if let Ok(update) = serde_json::from_value::<Update>(doc) {
            take(&update);
        }
    }

    #[test]
    fn fuzz_entities_anywhere_in_the_text_never_panic(doc in entity_message()) {
        let update: Update = serde_json::from_value(doc).unwrap();
        take(&update);
    }

    #[test]
    fn fuzz_commands_are_read_from_any_text(
        text in prop_oneof![any::<String>(), "/[a-zA-Z_é]{0,8}(@[a-zA-Z_]{0,10})?( .*)?"],
        bot in prop_oneof![Just(String::new()), "[a-zA-Z_]{1,10}"],
    ) {
        if let Some((name, for_us)) = command(&text, &bot) {
            prop_assert!(text.trim_start().starts_with('/'));
            prop_assert_eq!(name.to_ascii_lowercase(), name.clone());
            if !text.contains('@') {
                prop_assert!(for_us);
            }
        }
    }
}
