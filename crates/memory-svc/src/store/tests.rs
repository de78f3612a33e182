//! Store logic, run against both backends: a SQLite file in a temp directory
//! and the local PostgreSQL, each test in a schema of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{future::Future, panic::AssertUnwindSafe, str::FromStr, time::Duration};

use futures::FutureExt as _;
use nexus_common::domain::{ChannelName, SessionKey};
use sqlx::{
    Connection as _, Executor as _, Row as _, postgres::PgConnectOptions, postgres::PgConnection,
    sqlite::SqliteConnectOptions,
};

use super::{
    Answered, ChunkHit, ChunkQuery, Entry, IndexedFile, KeptChunks, ModelOverride,
    NewConsolidation, NewTurn, Role, SessionStore, TurnId, TurnQuery, TurnReads,
};
use crate::markdown::{Chunk, chunks};

/// Runs `body` on a fresh SQLite file.
async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(SessionStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: the store must create it.
    let options = SqliteConnectOptions::new().filename(dir.path().join(".nexus/nexus.db"));
    let store = SessionStore::open_sqlite(options).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    body(store.clone()).await;
    store.close().await;
}

/// Runs `body` in a fresh PostgreSQL schema, dropped afterwards even when `body` panics.
async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(SessionStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = nexus_testkit::postgres_url();
    let schema = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut admin = PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} must be running for tests: {e}"));
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap();
    let options = PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let outcome = AssertUnwindSafe(async {
        let store = SessionStore::open_postgres(options).await.unwrap();
        assert_eq!(store.backend(), "postgres");
        body(store.clone()).await;
        store.close().await;
    })
    .catch_unwind()
    .await;
    admin
        .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Each body becomes one test per backend: `sqlite::<body>` and `postgres::<body>`.
macro_rules! on_both_backends {
    ($($body:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $body() {
                    super::on_sqlite(super::$body).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $body() {
                    super::on_postgres(super::$body).await;
                }
            )*
        }
    };
}

on_both_backends!(
    history_is_the_entries_of_the_last_n_turns_oldest_first,
    appending_a_stored_turn_id_again_changes_nothing,
    answered_returns_the_stored_reply_or_nothing,
    entries_keep_their_order_and_fields,
    sessions_and_threads_keep_separate_histories,
    concurrent_appends_of_one_turn_store_it_once,
    a_reset_hides_earlier_turns_from_history_but_not_from_answered,
    a_second_reset_without_new_turns_archives_nothing,
    concurrent_resets_archive_each_turn_once,
    the_history_window_counts_only_turns_after_the_reset,
    a_turn_without_entries_is_answered_but_is_not_history,
    the_model_override_round_trips_and_survives_a_reconnect,
    chunks_are_found_by_any_of_their_words_best_first,
    a_search_sees_shared_chunks_and_only_its_own_users_chunks,
    replacing_a_files_chunks_drops_the_old_ones_from_search,
    an_update_keeps_the_rows_said_to_be_unchanged_only_when_their_count_agrees,
    a_touch_records_the_new_stat_only_while_the_content_is_the_indexed_one,
    concurrent_reindexes_of_one_file_leave_exactly_one_version_of_its_chunks,
    a_journal_section_is_found_only_by_the_users_its_marker_names,
    a_batch_is_claimed_committed_once_and_the_pointer_moves_past_it,
    an_expired_claim_is_taken_over_and_the_late_commit_changes_nothing,
    sessions_are_due_for_a_summary_by_count_idleness_or_reset,
    earlier_summaries_cover_turns_before_the_window_since_the_last_reset,
    stored_summaries_wait_until_they_are_marked_applied,
    the_usage_ledger_counts_each_event_once_and_sums_by_day_user_and_model,
    usage_batches_count_every_new_event_once_in_whatever_order_they_finish,
    a_turns_reads_in_one_call_equal_each_read_alone,
    an_append_counts_the_unsummarized_turns_and_a_long_turn_is_stored_whole,
    writes_in_and_outside_transactions_at_once_all_complete,
);

fn session(chat: &str, thread: &str) -> SessionKey {
    SessionKey::new(ChannelName::parse("cli").unwrap(), chat, thread).unwrap()
}

fn entry(role: Role, text: &str, at_ms: i64) -> Entry {
    Entry {
        role,
        text: text.to_owned(),
        tool_name: String::new(),
        tool_call_id: String::new(),
        at_ms,
    }
}

/// A user message and the assistant's answer.
fn turn(session: &SessionKey, id: &str, at_ms: i64) -> NewTurn {
    NewTurn {
        session: session.clone(),
        turn_id: TurnId::parse(id).unwrap(),
        user_id: "cli_alice".to_owned(),
        entries: vec![
            entry(Role::User, &format!("question {id}"), at_ms),
            entry(Role::Assistant, &format!("answer {id}"), at_ms + 1),
        ],
        reply: Some(format!("reply to {id}").into_bytes()),
        at_ms,
    }
}

fn texts(history: &[super::PastEntry]) -> Vec<String> {
    history.iter().map(|p| p.entry.text.clone()).collect()
}

async fn history_is_the_entries_of_the_last_n_turns_oldest_first(store: SessionStore) {
    let s = session("c1", "");
    for (i, id) in ["cli:1", "cli:2", "cli:3", "cli:4"].into_iter().enumerate() {
        // Clocks may disagree between replicas: order must not depend on them.
        let at_ms = 1_000 - i as i64;
        assert!(store.append(&turn(&s, id, at_ms)).await.unwrap());
    }

    let last_two = store.history(&s, 2).await.unwrap();
    assert_eq!(
        texts(&last_two),
        [
            "question cli:3",
            "answer cli:3",
            "question cli:4",
            "answer cli:4"
        ]
    );
    let turn_ids: Vec<&str> = last_two.iter().map(|p| p.turn_id.as_str()).collect();
    assert_eq!(turn_ids, ["cli:3", "cli:3", "cli:4", "cli:4"]);

    assert_eq!(store.history(&s, 10).await.unwrap().len(), 8);
    assert!(store.history(&s, 0).await.unwrap().is_empty());
    assert!(
        store
            .history(&session("never-seen", ""), 5)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn appending_a_stored_turn_id_again_changes_nothing(store: SessionStore) {
    let s = session("c1", "");
    assert!(store.append(&turn(&s, "cli:1", 10)).await.unwrap());

    let mut again = turn(&s, "cli:1", 20);
    again.entries.push(entry(Role::User, "sneaked in", 21));
    again.reply = Some(b"a second reply".to_vec());
    assert!(!store.append(&again).await.unwrap());

    assert_eq!(
        texts(&store.history(&s, 10).await.unwrap()),
        ["question cli:1", "answer cli:1"]
    );
    let answered = store
        .answered(&TurnId::parse("cli:1").unwrap())
        .await
        .unwrap();
    assert_eq!(
        answered,
        Some(Answered {
            reply: Some(b"reply to cli:1".to_vec())
        })
    );

    // The same id from another session is the same message: still a no-op.
    assert!(
        !store
            .append(&turn(&session("c2", ""), "cli:1", 30))
            .await
            .unwrap()
    );
    assert!(
        store
            .history(&session("c2", ""), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn answered_returns_the_stored_reply_or_nothing(store: SessionStore) {
    let s = session("c1", "");
    let unknown = TurnId::parse("cli:unknown").unwrap();
    assert_eq!(store.answered(&unknown).await.unwrap(), None);

    store.append(&turn(&s, "cli:1", 10)).await.unwrap();
    let mut no_reply = turn(&s, "cli:2", 20);
    no_reply.reply = None;
    store.append(&no_reply).await.unwrap();

    assert_eq!(
        store
            .answered(&TurnId::parse("cli:1").unwrap())
            .await
            .unwrap(),
        Some(Answered {
            reply: Some(b"reply to cli:1".to_vec())
        })
    );
    assert_eq!(
        store
            .answered(&TurnId::parse("cli:2").unwrap())
            .await
            .unwrap(),
        Some(Answered { reply: None })
    );
}

async fn entries_keep_their_order_and_fields(store: SessionStore) {
    let s = session("c1", "");
    let mut t = turn(&s, "cli:1", 100);
    t.entries = vec![
        entry(Role::System, "notice", 5),
        entry(Role::User, "read notes.txt", 4),
        Entry {
            role: Role::Tool,
            text: "The review is on Thursday. ünïcode ✓".to_owned(),
            tool_name: "read_file".to_owned(),
            tool_call_id: "call_1".to_owned(),
            at_ms: 3,
        },
        entry(Role::Assistant, "", 2),
        entry(Role::Assistant, "Thursday.", 1),
    ];
    store.append(&t).await.unwrap();

    let history = store.history(&s, 1).await.unwrap();
    let got: Vec<Entry> = history.into_iter().map(|p| p.entry).collect();
    assert_eq!(got, t.entries);
}

async fn sessions_and_threads_keep_separate_histories(store: SessionStore) {
    let main = session("c1", "");
    let thread = session("c1", "t1");
    store.append(&turn(&main, "cli:1", 1)).await.unwrap();
    store.append(&turn(&thread, "cli:2", 2)).await.unwrap();
    store.append(&turn(&main, "cli:3", 3)).await.unwrap();

    assert_eq!(
        texts(&store.history(&main, 10).await.unwrap()),
        [
            "question cli:1",
            "answer cli:1",
            "question cli:3",
            "answer cli:3"
        ]
    );
    assert_eq!(
        texts(&store.history(&thread, 10).await.unwrap()),
        ["question cli:2", "answer cli:2"]
    );
}

async fn concurrent_appends_of_one_turn_store_it_once(store: SessionStore) {
    let s = session("c1", "");
    let attempts = (0..8).map(|i| {
        let store = store.clone();
        let t = turn(&s, "cli:race", i);
        tokio::spawn(async move { store.append(&t).await.unwrap() })
    });
    let stored: Vec<bool> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored.iter().filter(|s| **s).count(), 1, "{stored:?}");
    assert_eq!(store.history(&s, 10).await.unwrap().len(), 2);
}

/// Closes `store` and opens its database again, as a restarted service would.
async fn reopen(store: SessionStore) -> SessionStore {
    store.close().await;
    match &store {
        SessionStore::Sqlite(s) => SessionStore::open_sqlite(s.options()).await.unwrap(),
        SessionStore::Postgres(s) => SessionStore::open_postgres(s.options()).await.unwrap(),
    }
}

fn turn_id(id: &str) -> TurnId {
    TurnId::parse(id).unwrap()
}

async fn a_reset_hides_earlier_turns_from_history_but_not_from_answered(store: SessionStore) {
    let s = session("c1", "");
    let other = session("c2", "");
    for id in ["cli:1", "cli:2", "cli:3"] {
        store.append(&turn(&s, id, 10)).await.unwrap();
    }
    store.append(&turn(&other, "cli:9", 10)).await.unwrap();

    assert_eq!(store.reset(&s).await.unwrap(), 3);
    assert!(store.history(&s, 10).await.unwrap().is_empty());
    for id in ["cli:1", "cli:2", "cli:3"] {
        assert_eq!(
            store.answered(&turn_id(id)).await.unwrap(),
            Some(Answered {
                reply: Some(format!("reply to {id}").into_bytes())
            }),
            "{id} must stay answered after a reset"
        );
    }
    assert!(
        !store.append(&turn(&s, "cli:2", 20)).await.unwrap(),
        "a redelivered archived turn is not stored again"
    );
    assert!(store.history(&s, 10).await.unwrap().is_empty());

    store.append(&turn(&s, "cli:4", 30)).await.unwrap();
    assert_eq!(
        texts(&store.history(&s, 10).await.unwrap()),
        ["question cli:4", "answer cli:4"]
    );
    // Another session keeps its history.
    assert_eq!(store.history(&other, 10).await.unwrap().len(), 2);
}

async fn a_second_reset_without_new_turns_archives_nothing(store: SessionStore) {
    let s = session("c1", "");
    // A session that was never seen can be reset: nothing to archive.
    assert_eq!(store.reset(&s).await.unwrap(), 0);

    store.append(&turn(&s, "cli:1", 10)).await.unwrap();
    assert_eq!(store.reset(&s).await.unwrap(), 1);
    assert_eq!(store.reset(&s).await.unwrap(), 0);

    store.append(&turn(&s, "cli:2", 20)).await.unwrap();
    store.append(&turn(&s, "cli:3", 30)).await.unwrap();
    assert_eq!(store.reset(&s).await.unwrap(), 2);
    assert_eq!(store.reset(&s).await.unwrap(), 0);
    assert!(store.history(&s, 10).await.unwrap().is_empty());
}

async fn concurrent_resets_archive_each_turn_once(store: SessionStore) {
    let s = session("c1", "");
    for id in ["cli:1", "cli:2", "cli:3"] {
        store.append(&turn(&s, id, 10)).await.unwrap();
    }
    let resets = (0..6).map(|_| {
        let store = store.clone();
        let s = s.clone();
        tokio::spawn(async move { store.reset(&s).await.unwrap() })
    });
    let mut archived: Vec<u32> = futures::future::join_all(resets)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    archived.sort_unstable();
    assert_eq!(archived, [0, 0, 0, 0, 0, 3]);
}

async fn the_history_window_counts_only_turns_after_the_reset(store: SessionStore) {
    let s = session("c1", "");
    for id in ["cli:1", "cli:2", "cli:3"] {
        store.append(&turn(&s, id, 10)).await.unwrap();
    }
    store.reset(&s).await.unwrap();
    store.append(&turn(&s, "cli:4", 20)).await.unwrap();
    store.append(&turn(&s, "cli:5", 30)).await.unwrap();

    // The window of 5 is not filled up with archived turns.
    let ids: Vec<String> = store
        .history(&s, 5)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.turn_id.as_str().to_owned())
        .collect();
    assert_eq!(ids, ["cli:4", "cli:4", "cli:5", "cli:5"]);
    assert_eq!(
        texts(&store.history(&s, 1).await.unwrap()),
        ["question cli:5", "answer cli:5"]
    );
}

async fn a_turn_without_entries_is_answered_but_is_not_history(store: SessionStore) {
    let s = session("c1", "");
    store.append(&turn(&s, "cli:1", 10)).await.unwrap();
    // A chat command such as /help: only its reply is stored.
    let mut command = turn(&s, "cli:2", 20);
    command.entries.clear();
    assert!(store.append(&command).await.unwrap());
    assert!(!store.append(&command).await.unwrap());

    assert_eq!(
        store.answered(&turn_id("cli:2")).await.unwrap(),
        Some(Answered {
            reply: Some(b"reply to cli:2".to_vec())
        })
    );
    assert_eq!(
        texts(&store.history(&s, 10).await.unwrap()),
        ["question cli:1", "answer cli:1"]
    );
    // Only turns with entries count as archived.
    assert_eq!(store.reset(&s).await.unwrap(), 1);
}

async fn the_model_override_round_trips_and_survives_a_reconnect(store: SessionStore) {
    let s = session("c1", "");
    let thread = session("c1", "t1");
    assert_eq!(store.model_override(&s).await.unwrap(), "");

    let model = ModelOverride::parse("  anthropic/claude-sonnet-4 ").unwrap();
    store.set_model(&s, &model).await.unwrap();
    assert_eq!(
        store.model_override(&s).await.unwrap(),
        "anthropic/claude-sonnet-4"
    );
    assert_eq!(store.model_override(&thread).await.unwrap(), "");

    // A session that has turns keeps them; a reset keeps the model.
    store.append(&turn(&s, "cli:1", 10)).await.unwrap();
    store.reset(&s).await.unwrap();
    let other = ModelOverride::parse("openai/gpt-4o").unwrap();
    store.set_model(&s, &other).await.unwrap();

    let store = reopen(store).await;
    assert_eq!(store.model_override(&s).await.unwrap(), "openai/gpt-4o");
    assert!(
        store.history(&s, 10).await.unwrap().is_empty(),
        "the reset survives too"
    );
    assert!(store.answered(&turn_id("cli:1")).await.unwrap().is_some());

    store
        .set_model(&s, &ModelOverride::default())
        .await
        .unwrap();
    assert_eq!(store.model_override(&s).await.unwrap(), "");
    store.close().await;
}

#[test]
fn a_model_override_is_trimmed_bounded_and_free_of_control_characters() {
    assert_eq!(
        ModelOverride::parse(" gpt-4o\n").unwrap().as_str(),
        "gpt-4o"
    );
    assert_eq!(
        ModelOverride::parse("   ").unwrap(),
        ModelOverride::default()
    );
    let longest = "é".repeat(ModelOverride::MAX_CHARS);
    assert_eq!(ModelOverride::parse(&longest).unwrap().as_str(), longest);
    assert!(ModelOverride::parse(&format!("{longest}x")).is_err());
    assert!(ModelOverride::parse("gpt\u{7}4o").is_err());
    assert!(ModelOverride::parse("gpt\n4o").is_err());
}

fn indexed(path: &str, owner: &str, sha: &str) -> IndexedFile {
    IndexedFile {
        path: path.to_owned(),
        owner: owner.to_owned(),
        size_bytes: 10,
        mtime_ns: 1_000,
        sha256: sha.to_owned(),
        indexed_at_ms: 2_000,
    }
}

fn words(terms: &[&str]) -> Vec<String> {
    terms.iter().map(|t| (*t).to_owned()).collect()
}

async fn search(store: &SessionStore, terms: &[&str], owner: &str) -> Vec<ChunkHit> {
    store
        .search_chunks(ChunkQuery {
            terms: &words(terms),
            owner,
            path: None,
            limit: 10,
        })
        .await
        .unwrap()
}

fn texts_of(hits: &[ChunkHit]) -> Vec<&str> {
    hits.iter().map(|h| h.text.as_str()).collect()
}

async fn chunks_are_found_by_any_of_their_words_best_first(store: SessionStore) {
    let text = "# Memory\n\n## Pets\n- Alice's dog is called Biscuit.\n- Bob has two cats.\n\n## Work\n- Alice works at Acme on the billing team.\n";
    store
        .replace_chunks(&indexed("MEMORY.md", "", "h1"), &chunks(text))
        .await
        .unwrap();

    let hits = search(&store, &["alice", "dogs"], "").await;
    assert_eq!(
        texts_of(&hits),
        [
            "- Alice's dog is called Biscuit.",
            "- Alice works at Acme on the billing team."
        ],
        "both words beat one, and stemming finds dog for dogs"
    );
    let best = &hits[0];
    assert_eq!(best.path, "MEMORY.md");
    assert_eq!(best.heading, "Memory > Pets");
    assert_eq!((best.line_start, best.line_end), (4, 4));
    assert!(best.score > hits[1].score, "{hits:?}");

    // A heading word finds the chunks under it.
    assert_eq!(
        texts_of(&search(&store, &["work"], "").await),
        ["- Alice works at Acme on the billing team."]
    );
    assert!(search(&store, &["giraffe"], "").await.is_empty());
    assert!(search(&store, &[], "").await.is_empty());

    let only_memory = store
        .search_chunks(ChunkQuery {
            terms: &words(&["alice"]),
            owner: "",
            path: Some("memories/2025-01-01.md"),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(only_memory.is_empty(), "the path filter holds");
    let one = store
        .search_chunks(ChunkQuery {
            terms: &words(&["alice"]),
            owner: "",
            path: Some("MEMORY.md"),
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
}

async fn a_search_sees_shared_chunks_and_only_its_own_users_chunks(store: SessionStore) {
    let shared = chunks("## Facts\n- The office wifi password rotates monthly.\n");
    let alice = chunks("## Facts\n- Alice's wifi at home is called Meadow.\n");
    let bob = chunks("## Facts\n- Bob's wifi at home is called Harbour.\n");
    store
        .replace_chunks(&indexed("MEMORY.md", "", "s"), &shared)
        .await
        .unwrap();
    store
        .replace_chunks(&indexed("USER_alice.md", "alice", "a"), &alice)
        .await
        .unwrap();
    store
        .replace_chunks(&indexed("USER_bob.md", "bob", "b"), &bob)
        .await
        .unwrap();

    let paths = |hits: Vec<ChunkHit>| {
        let mut paths: Vec<String> = hits.into_iter().map(|h| h.path).collect();
        paths.sort();
        paths
    };
    assert_eq!(
        paths(search(&store, &["wifi"], "alice").await),
        ["MEMORY.md", "USER_alice.md"]
    );
    assert_eq!(
        paths(search(&store, &["wifi"], "bob").await),
        ["MEMORY.md", "USER_bob.md"]
    );
    assert_eq!(paths(search(&store, &["wifi"], "").await), ["MEMORY.md"]);
    assert!(search(&store, &["harbour"], "alice").await.is_empty());

    let files: Vec<String> = store
        .indexed_files("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(files, ["MEMORY.md", "USER_alice.md"]);
}

async fn replacing_a_files_chunks_drops_the_old_ones_from_search(store: SessionStore) {
    let file = indexed("memories/2025-03-01.md", "", "v1");
    store
        .replace_chunks(
            &file,
            &chunks("# 1 March\n\nMet Carol about the roadmap.\n"),
        )
        .await
        .unwrap();
    assert_eq!(search(&store, &["roadmap"], "").await.len(), 1);

    let v2 = indexed("memories/2025-03-01.md", "", "v2");
    store
        .replace_chunks(&v2, &chunks("# 1 March\n\nMet Dave about hiring.\n"))
        .await
        .unwrap();
    assert!(search(&store, &["roadmap"], "").await.is_empty());
    assert_eq!(
        texts_of(&search(&store, &["hiring"], "").await),
        ["Met Dave about hiring."]
    );
    assert_eq!(
        store.indexed_file(&v2.path).await.unwrap(),
        Some(v2.clone())
    );

    store.forget_indexed_file(&v2.path).await.unwrap();
    assert!(search(&store, &["hiring"], "").await.is_empty());
    assert_eq!(store.indexed_file(&v2.path).await.unwrap(), None);
    assert!(store.indexed_files("").await.unwrap().is_empty());
}

async fn an_update_keeps_the_rows_said_to_be_unchanged_only_when_their_count_agrees(
    store: SessionStore,
) {
    let path = "memories/2025-03-02.md";
    let old = "- alpha roadmap\n- beta roadmap\n";
    let new = "- alpha hiring\n- beta hiring\n- gamma hiring\n";
    let found = |term: &'static str| {
        let store = store.clone();
        async move {
            let mut t: Vec<String> = search(&store, &[term], "")
                .await
                .into_iter()
                .map(|h| h.text)
                .collect();
            t.sort();
            t
        }
    };
    store
        .replace_chunks(&indexed(path, "", "v1"), &chunks(old))
        .await
        .unwrap();
    // Told (wrongly, to see it) that the first stored row is the new first chunk:
    // that row stays as stored, the second is replaced and the third added.
    store
        .update_chunks(
            &indexed(path, "", "v2"),
            &chunks(new),
            Some(KeptChunks { stored: 2, same: 1 }),
        )
        .await
        .unwrap();
    assert_eq!(found("roadmap").await, ["- alpha roadmap"]);
    assert_eq!(found("hiring").await, ["- beta hiring", "- gamma hiring"]);

    // A count that disagrees with the stored rows: nothing is trusted.
    store
        .update_chunks(
            &indexed(path, "", "v3"),
            &chunks(new),
            Some(KeptChunks { stored: 2, same: 3 }),
        )
        .await
        .unwrap();
    assert!(found("roadmap").await.is_empty());
    assert_eq!(
        found("hiring").await,
        ["- alpha hiring", "- beta hiring", "- gamma hiring"]
    );
    assert_eq!(
        store.indexed_file(path).await.unwrap(),
        Some(indexed(path, "", "v3"))
    );
}

async fn a_touch_records_the_new_stat_only_while_the_content_is_the_indexed_one(
    store: SessionStore,
) {
    let file = indexed("MEMORY.md", "", "same");
    store
        .replace_chunks(&file, &chunks("- a fact\n"))
        .await
        .unwrap();
    let touched = IndexedFile {
        mtime_ns: 5_000,
        indexed_at_ms: 9_000,
        ..file.clone()
    };
    store.touch_indexed_file(&touched).await.unwrap();
    assert_eq!(
        store.indexed_file("MEMORY.md").await.unwrap(),
        Some(touched.clone())
    );

    // Someone re-indexed other content meanwhile: a late touch must not claim it is fresh.
    let stale = IndexedFile {
        sha256: "other".into(),
        mtime_ns: 7_000,
        ..touched.clone()
    };
    store.touch_indexed_file(&stale).await.unwrap();
    assert_eq!(
        store.indexed_file("MEMORY.md").await.unwrap(),
        Some(touched)
    );
}

async fn concurrent_reindexes_of_one_file_leave_exactly_one_version_of_its_chunks(
    store: SessionStore,
) {
    let version = |v: usize| -> Vec<Chunk> {
        chunks(
            &(0..=v)
                .map(|i| format!("- version{v} line{i} shared\n"))
                .collect::<String>(),
        )
    };
    let writers = (0..8).map(|v| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .replace_chunks(&indexed("MEMORY.md", "", &format!("v{v}")), &version(v))
                .await
                .unwrap();
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.unwrap();
    }
    let row = store.indexed_file("MEMORY.md").await.unwrap().unwrap();
    let v: usize = row.sha256[1..].parse().unwrap();
    let hits = store
        .search_chunks(ChunkQuery {
            terms: &words(&["shared"]),
            owner: "",
            path: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(hits.len(), v + 1, "chunks of one version only: {hits:?}");
    assert!(
        hits.iter()
            .all(|h| h.text.starts_with(&format!("- version{v} "))),
        "the chunks match the recorded hash v{v}: {hits:?}"
    );
}

async fn a_journal_section_is_found_only_by_the_users_its_marker_names(store: SessionStore) {
    let text = "# Journal · Monday 23 November 2026\n\nNotes anyone may read about the budget.\n\n\
                ## 09:00 · cli:1 · alice, bob\n<!-- nexus:journal id=1 users=alice bob -->\n\n\
                - Alice and Bob went through the budget.\n\n\
                ## 10:00 · cli:2 · carol\n<!-- nexus:journal id=2 users=carol -->\n\n\
                - Carol asked about her salary budget.\n";
    store
        .replace_chunks(&indexed("memories/2026-11-23.md", "", "j"), &chunks(text))
        .await
        .unwrap();
    let found = |owner: &'static str| {
        let store = store.clone();
        async move {
            let mut t: Vec<String> = search(&store, &["budget"], owner)
                .await
                .into_iter()
                .map(|h| h.text)
                .collect();
            t.sort();
            t
        }
    };
    assert_eq!(
        found("alice").await,
        [
            "- Alice and Bob went through the budget.",
            "Notes anyone may read about the budget."
        ]
    );
    assert_eq!(found("bob").await, found("alice").await);
    assert_eq!(
        found("carol").await,
        [
            "- Carol asked about her salary budget.",
            "Notes anyone may read about the budget."
        ]
    );
    assert_eq!(found("").await, ["Notes anyone may read about the budget."]);
    // A reader id that is a part of another never matches it.
    assert_eq!(
        found("ali").await,
        ["Notes anyone may read about the budget."]
    );
}

/// `n` turns t0..t<n> in `session`, one millisecond apart from `at_ms`.
async fn turns(store: &SessionStore, session: &SessionKey, prefix: &str, n: usize, at_ms: i64) {
    for i in 0..n {
        let mut t = turn(session, &format!("{prefix}{i}"), at_ms + 10 * i as i64);
        t.user_id = if i % 2 == 0 { "cli_alice" } else { "cli_bob" }.to_owned();
        assert!(store.append(&t).await.unwrap());
    }
}

fn summary_of(
    session: &SessionKey,
    from_entry: i64,
    to_entry: i64,
    range: super::RangeFacts,
) -> NewConsolidation {
    NewConsolidation {
        session: session.clone(),
        from_entry,
        to_entry,
        range,
        day: "2026-11-24".into(),
        summary: format!("- entries {from_entry} to {to_entry}"),
        facts_json: "[]".into(),
        model: "cheap".into(),
        at_ms: 1,
    }
}

/// Commits a summary of `(from, to]`; whether the pointer moved.
async fn commit(store: &SessionStore, s: &SessionKey, from: i64, to: i64) -> bool {
    let range = store.range_facts(s, from, to).await.unwrap();
    store
        .commit_consolidation(&summary_of(s, from, to, range))
        .await
        .unwrap()
}

async fn a_batch_is_claimed_committed_once_and_the_pointer_moves_past_it(store: SessionStore) {
    let s = session("c", "");
    turns(&store, &s, "c", 5, 1_000).await;
    assert_eq!(store.pending_turns(&s).await.unwrap(), 5);

    let claim = store
        .claim(&s, "a", 2_000, 9_000, 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.from_entry, 0);
    assert_eq!(claim.pending_turns, 5);
    let turn_ids: Vec<&str> = claim.entries.iter().map(|e| e.turn_id.as_str()).collect();
    assert_eq!(turn_ids, ["c0", "c0", "c1", "c1", "c2", "c2"]);
    assert_eq!(claim.entries[1].user_id, "cli_alice");
    assert_eq!(claim.entries[2].user_id, "cli_bob");
    // Leased: another owner gets nothing until it expires.
    assert!(
        store
            .claim(&s, "b", 2_001, 9_001, 3)
            .await
            .unwrap()
            .is_none()
    );

    let to = claim.entries[5].id;
    let range = store.range_facts(&s, 0, to).await.unwrap();
    assert_eq!(range.turns, 3);
    assert_eq!(range.users, ["cli_alice", "cli_bob"]);
    assert_eq!((range.first_at_ms, range.last_at_ms), (1_000, 1_021));
    assert!(commit(&store, &s, 0, to).await);
    // The same range again (a retry, another replica): nothing moves, nothing is stored.
    assert!(!commit(&store, &s, 0, to).await);
    assert_eq!(store.unapplied_consolidations(10).await.unwrap().len(), 1);
    assert_eq!(store.pending_turns(&s).await.unwrap(), 2);

    // The lease went with the commit; the rest is next.
    let next = store
        .claim(&s, "b", 2_002, 9_002, 40)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.from_entry, to);
    let ids: Vec<&str> = next.entries.iter().map(|e| e.turn_id.as_str()).collect();
    assert_eq!(ids, ["c3", "c3", "c4", "c4"]);
    let last = next.entries[3].id;
    assert!(commit(&store, &s, to, last).await);
    assert_eq!(store.pending_turns(&s).await.unwrap(), 0);
    // Nothing left: no batch, and the lease is not kept.
    assert!(
        store
            .claim(&s, "b", 2_003, 9_003, 40)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .claim(&s, "c", 2_004, 9_004, 40)
            .await
            .unwrap()
            .is_none()
    );
    turns(&store, &s, "d", 1, 3_000).await;
    assert!(
        store
            .claim(&s, "c", 2_005, 9_005, 40)
            .await
            .unwrap()
            .is_some()
    );
}

async fn an_expired_claim_is_taken_over_and_the_late_commit_changes_nothing(store: SessionStore) {
    let s = session("e", "");
    turns(&store, &s, "e", 2, 1_000).await;
    let first = store
        .claim(&s, "a", 2_000, 2_100, 40)
        .await
        .unwrap()
        .unwrap();
    // "a" crashed; its lease runs out and "b" takes the same turns.
    assert!(
        store
            .claim(&s, "b", 2_050, 3_000, 40)
            .await
            .unwrap()
            .is_none()
    );
    let second = store
        .claim(&s, "b", 2_200, 3_000, 40)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.from_entry, second.from_entry);
    assert_eq!(first.entries, second.entries);
    let to = second.entries.last().unwrap().id;
    assert!(commit(&store, &s, 0, to).await);
    // "a" comes back and commits what it had: refused, nothing doubled.
    assert!(!commit(&store, &s, 0, to).await);
    assert_eq!(store.unapplied_consolidations(10).await.unwrap().len(), 1);
}

async fn sessions_are_due_for_a_summary_by_count_idleness_or_reset(store: SessionStore) {
    let few = session("few", "");
    let many = session("many", "");
    turns(&store, &few, "f", 2, 1_000).await;
    turns(&store, &many, "m", 4, 1_000).await;
    let now = nexus_common::now_ms();
    let chats = |due: Vec<SessionKey>| -> Vec<String> {
        due.iter().map(|s| s.chat_id().to_owned()).collect()
    };
    // With no idle cut only the count counts (turns were stored at 1 000 ms).
    assert_eq!(
        chats(store.due_sessions(now, 0, 4, 10).await.unwrap()),
        ["many"]
    );
    assert!(store.due_sessions(now, 0, 5, 10).await.unwrap().is_empty());
    // Quiet since before the idle cut: both.
    let mut both = chats(store.due_sessions(now, 5_000, 5, 10).await.unwrap());
    both.sort();
    assert_eq!(both, ["few", "many"]);
    // /new archives turns: due at once.
    store.reset(&few).await.unwrap();
    assert_eq!(
        chats(store.due_sessions(now, 0, 5, 10).await.unwrap()),
        ["few"]
    );
    // Leased: not listed. A failure backs off (a minute at least), then it is due again.
    let claim = store.claim(&few, "a", now, now + 60_000, 40).await.unwrap();
    assert!(claim.is_some());
    assert!(store.due_sessions(now, 0, 5, 10).await.unwrap().is_empty());
    store.release_claim(&few, "a", true, now).await.unwrap();
    assert!(
        store
            .due_sessions(now + 59_000, 0, 5, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        chats(store.due_sessions(now + 61_000, 0, 5, 10).await.unwrap()),
        ["few"]
    );
    // A release without failure frees it at once.
    store
        .claim(&few, "a", now + 61_000, now + 120_000, 40)
        .await
        .unwrap()
        .unwrap();
    store
        .release_claim(&few, "a", false, now + 61_000)
        .await
        .unwrap();
    assert_eq!(
        chats(store.due_sessions(now + 61_000, 0, 5, 10).await.unwrap()),
        ["few"]
    );
}

async fn earlier_summaries_cover_turns_before_the_window_since_the_last_reset(store: SessionStore) {
    let s = session("w", "");
    let from = six_turns_four_summarized(&store, &s, "w").await;
    let texts = |v: Vec<super::EarlierSummary>| -> Vec<String> {
        v.into_iter().map(|e| e.summary).collect()
    };
    // A window of 4 turns starts at w2: only the first batch lies (partly) before it.
    let four = texts(store.earlier_summaries(&s, 4, 8).await.unwrap());
    assert_eq!(four.len(), 1, "{four:?}");
    assert!(four[0].starts_with("- entries 0 to "), "{four:?}");
    // A window of 1 turn: both, oldest first.
    let one = texts(store.earlier_summaries(&s, 1, 8).await.unwrap());
    assert_eq!(one.len(), 2);
    assert!(one[0].starts_with("- entries 0 to "), "{one:?}");
    assert_eq!(one[1], format!("- entries {} to {}", one_to(&one[0]), from));
    // After /new the earlier conversation is not recalled.
    store.reset(&s).await.unwrap();
    assert!(store.earlier_summaries(&s, 1, 8).await.unwrap().is_empty());
}

/// Six turns, the first four summarized in two batches of two; the entry id the
/// second summary ends at.
async fn six_turns_four_summarized(store: &SessionStore, s: &SessionKey, prefix: &str) -> i64 {
    turns(store, s, prefix, 6, 1_000).await;
    let mut from = 0;
    for _ in 0..2 {
        let claim = store.claim(s, "a", 2_000, 9_000, 2).await.unwrap().unwrap();
        let to = claim.entries.last().unwrap().id;
        assert!(commit(store, s, from, to).await);
        from = to;
    }
    from
}

/// The `to` of a `summary_of` text.
fn one_to(summary: &str) -> String {
    summary.rsplit(' ').next().unwrap().to_owned()
}

async fn stored_summaries_wait_until_they_are_marked_applied(store: SessionStore) {
    let s = session("a", "");
    turns(&store, &s, "a", 1, 1_000).await;
    let claim = store
        .claim(&s, "a", 2_000, 9_000, 40)
        .await
        .unwrap()
        .unwrap();
    let to = claim.entries.last().unwrap().id;
    assert!(commit(&store, &s, 0, to).await);
    let pending = store.unapplied_consolidations(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].users, ["cli_alice"]);
    assert_eq!(pending[0].session_id, s.id());
    // Still pending after a reconnect (a crash before the files were written).
    let store = reopen(store).await;
    let pending = store.unapplied_consolidations(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    store.mark_applied(pending[0].id, 5).await.unwrap();
    assert!(store.unapplied_consolidations(10).await.unwrap().is_empty());
}

async fn the_usage_ledger_counts_each_event_once_and_sums_by_day_user_and_model(
    store: SessionStore,
) {
    let key = |day: &str, user: &str| super::UsageKey {
        day: day.into(),
        user_id: user.into(),
        channel: "slack".into(),
        model: "gpt-4.1-mini".into(),
        purpose: "turn".into(),
    };
    assert!(
        store
            .record_usage("c", 1, &key("2026-11-23", "alice"), 100, 10)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_usage("c", 2, &key("2026-11-24", "alice"), 200, 20)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_usage("c", 3, &key("2026-11-24", "alice"), 300, 30)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_usage("c", 4, &key("2026-11-24", "bob"), 5, 1)
            .await
            .unwrap()
    );
    // A redelivered event (same or older sequence) changes nothing.
    assert!(
        !store
            .record_usage("c", 3, &key("2026-11-24", "alice"), 300, 30)
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_usage("c", 1, &key("2026-11-24", "alice"), 1, 1)
            .await
            .unwrap()
    );

    let rows = store.usage("2026-11-24", "2026-11-24", None).await.unwrap();
    let view: Vec<(&str, u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r.key.user_id.as_str(),
                r.calls,
                r.input_tokens,
                r.output_tokens,
            )
        })
        .collect();
    assert_eq!(view, [("alice", 2, 500, 50), ("bob", 1, 5, 1)]);
    assert_eq!(
        store
            .usage("2026-11-01", "2026-11-30", None)
            .await
            .unwrap()
            .len(),
        3
    );
    let bobs = store
        .usage("2026-11-01", "2026-11-30", Some("bob"))
        .await
        .unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        (bobs[0].key.user_id.as_str(), bobs[0].input_tokens),
        ("bob", 5)
    );
    assert!(
        store
            .usage("2026-12-01", "2026-12-31", None)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A journal re-indexed after each new section: every count of chunks is a new
/// multi-row INSERT, and none may stay in the connection's statement cache.
#[tokio::test]
async fn reindexing_a_growing_file_caches_no_statement_per_chunk_count() {
    on_sqlite(|store| async move {
        let mut text = String::from("# 2026-12-03\n");
        for n in 1..=80 {
            text.push_str(&format!(
                "\n## 10:{n:02} · s · alice (1 turn)\n- said {n}\n"
            ));
            store
                .replace_chunks(
                    &indexed("memories/2026-12-03.md", "", &n.to_string()),
                    &chunks(&text),
                )
                .await
                .unwrap();
        }
        let SessionStore::Sqlite(s) = &store else {
            unreachable!("on_sqlite")
        };
        let mut held = Vec::new();
        let mut cached = 0;
        for _ in 0..s.pool().size() {
            let conn = s.pool().acquire().await.unwrap();
            cached += conn.cached_statements_size();
            held.push(conn);
        }
        assert!(
            cached < 20,
            "{cached} statements cached over {} connections after 80 re-indexes",
            held.len()
        );
    })
    .await;
}

/// Every pooled SQLite connection gets the small page cache, not SQLite's 2 MiB.
#[tokio::test]
async fn every_sqlite_connection_has_the_small_page_cache() {
    on_sqlite(|store| async move {
        let SessionStore::Sqlite(s) = &store else {
            unreachable!("on_sqlite opens SQLite")
        };
        // Held at once, so each is a connection of its own.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = s.pool().acquire().await.unwrap();
            let kib: i64 = sqlx::query_scalar("PRAGMA cache_size")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(kib, -256);
            held.push(conn);
        }
    })
    .await;
}

async fn a_turns_reads_in_one_call_equal_each_read_alone(store: SessionStore) {
    let s = session("r", "");
    // Two summaries, so that some lie before a short window.
    six_turns_four_summarized(&store, &s, "r").await;
    store
        .set_model(&s, &ModelOverride::parse("openai/gpt-4o").unwrap())
        .await
        .unwrap();
    store.link_identity("cli", "ada", "ada").await.unwrap();
    let answered_id = TurnId::parse("r1").unwrap();
    let unknown_id = TurnId::parse("r:unknown").unwrap();

    for (turns, turn_id, sender) in [
        (1, Some(&answered_id), Some(("cli", "ada"))),
        (4, Some(&unknown_id), Some(("cli", "bob"))),
        (10, None, None),
    ] {
        let reads = store
            .turn_reads(&TurnQuery {
                session: &s,
                turns,
                summaries: 8,
                turn_id,
                sender,
            })
            .await
            .unwrap();
        let alone = TurnReads {
            answered: match turn_id {
                Some(id) => store.answered(id).await.unwrap(),
                None => None,
            },
            identity: match sender {
                Some((channel, sender)) => store.identity(channel, sender).await.unwrap(),
                None => None,
            },
            history: store.history(&s, turns).await.unwrap(),
            model_override: store.model_override(&s).await.unwrap(),
            earlier: store.earlier_summaries(&s, turns, 8).await.unwrap(),
        };
        assert_eq!(reads, alone, "window of {turns} turns");
    }
    // The three cases above are not vacuous: each read found something in one of them.
    let full = store
        .turn_reads(&TurnQuery {
            session: &s,
            turns: 1,
            summaries: 8,
            turn_id: Some(&answered_id),
            sender: Some(("cli", "ada")),
        })
        .await
        .unwrap();
    assert!(full.answered.is_some());
    assert_eq!(full.identity.unwrap().user_id, "ada");
    assert_eq!(texts(&full.history), ["question r5", "answer r5"]);
    assert_eq!(full.model_override, "openai/gpt-4o");
    assert_eq!(full.earlier.len(), 2);

    // A session never seen reads as empty.
    let none = store
        .turn_reads(&TurnQuery {
            session: &session("never-seen", ""),
            turns: 5,
            summaries: 8,
            turn_id: None,
            sender: None,
        })
        .await
        .unwrap();
    assert_eq!(none, TurnReads::default());
}

/// `append_counting`'s answer, for tests that check many of them.
async fn appended(store: &SessionStore, turn: &NewTurn, count_pending: bool) -> Option<u32> {
    store.append_counting(turn, count_pending).await.unwrap()
}

async fn an_append_counts_the_unsummarized_turns_and_a_long_turn_is_stored_whole(
    store: SessionStore,
) {
    let s = session("p", "");
    assert_eq!(appended(&store, &turn(&s, "p1", 10), true).await, Some(1));
    assert_eq!(appended(&store, &turn(&s, "p2", 20), true).await, Some(2));
    // Not counted when not asked.
    assert_eq!(appended(&store, &turn(&s, "p3", 30), false).await, Some(0));
    // Already stored: nothing changes, with or without the count.
    assert_eq!(appended(&store, &turn(&s, "p3", 40), true).await, None);
    // A turn without entries (a chat command) is stored but is no history to summarize.
    let mut command = turn(&s, "p4", 50);
    command.entries.clear();
    assert_eq!(appended(&store, &command, true).await, Some(3));
    assert_eq!(appended(&store, &command, true).await, None);

    // Longer than one trip takes (64 entries): stored whole, in order, once.
    let mut long = turn(&s, "p5", 60);
    long.entries = (0..100)
        .map(|i| entry(Role::Tool, &format!("step {i}"), 60 + i))
        .collect();
    assert_eq!(appended(&store, &long, true).await, Some(4));
    assert_eq!(appended(&store, &long, true).await, None);
    let history = store.history(&s, 1).await.unwrap();
    assert_eq!(history.len(), 100);
    assert_eq!(history[0].entry.text, "step 0");
    assert_eq!(history[99].entry.text, "step 99");
    assert_eq!(store.history(&s, 10).await.unwrap().len(), 2 * 3 + 100);
}

#[test]
fn renumbered_renames_each_parameter_and_nothing_else() {
    assert_eq!(
        super::renumbered("a = $1 AND b = $2 OR c = $1 AND d = $12", &[5, 6]),
        "a = $5 AND b = $6 OR c = $5 AND d = $12"
    );
    assert_eq!(super::renumbered("no parameters", &[3]), "no parameters");
    assert_eq!(super::renumbered("x = $", &[3]), "x = $");
}

/// SQLite's writers queue in the process (`SqliteStore::writing`). A write outside a
/// transaction that took its place in the queue before its connection waited for one
/// while every pooled connection was in a transaction waiting for the queue: each
/// write failed after the pool's 5 s timeout (found by the bench's soak).
async fn writes_in_and_outside_transactions_at_once_all_complete(store: SessionStore) {
    let s = session("w", "");
    let appends = (0..24).map(|i| {
        let store = store.clone();
        let t = turn(&s, &format!("w{i}"), 1_000 + i);
        async move { store.append(&t).await }
    });
    let marks = (0..24).map(|i| {
        let store = store.clone();
        async move { store.mark_applied(i, 5).await }
    });
    let (appended, marked) = futures::future::join(
        futures::future::join_all(appends),
        futures::future::join_all(marks),
    )
    .await;
    for result in appended {
        assert!(result.unwrap());
    }
    for result in marked {
        result.unwrap();
    }
}

/// The rare writes (`/model`, linking an identity) queue with the turns' writes: one
/// that bypassed the queue met SQLite's busy handler while queued writers handed the
/// lock to each other, and under a steady load could fail after its 5 s timeout.
#[tokio::test]
async fn rare_writes_wait_in_the_writers_queue_on_sqlite() {
    on_sqlite(|store| async move {
        let SessionStore::Sqlite(s) = &store else {
            unreachable!("on_sqlite")
        };
        let s_key = session("m", "");
        let model = ModelOverride::parse("openai/gpt-4o").unwrap();
        let queued = s.writing().await;
        // While another writer holds the queue, neither write may go ahead.
        let set = store.set_model(&s_key, &model);
        let link = store.link_identity("cli", "ada", "ada");
        let (set, link) = tokio::join!(
            tokio::time::timeout(Duration::from_millis(300), set),
            tokio::time::timeout(Duration::from_millis(300), link),
        );
        assert!(set.is_err(), "set_model went around the queue: {set:?}");
        assert!(
            link.is_err(),
            "link_identity went around the queue: {link:?}"
        );
        drop(queued);
        store.set_model(&s_key, &model).await.unwrap();
        store.link_identity("cli", "ada", "ada").await.unwrap();
        assert_eq!(store.model_override(&s_key).await.unwrap(), "openai/gpt-4o");
        let linked = store.identity("cli", "ada").await.unwrap().unwrap();
        assert_eq!(linked.user_id, "ada");
    })
    .await;
}

/// Two replicas' batches may finish in either order: the later events first must
/// not hide the earlier ones (a high-water mark would have), and a redelivery,
/// inside a batch or across batches, counts nothing.
async fn usage_batches_count_every_new_event_once_in_whatever_order_they_finish(
    store: SessionStore,
) {
    let event = |seq: u64, user: &str, input: u64| super::UsageEvent {
        seq,
        key: super::UsageKey {
            day: "2026-12-05".into(),
            user_id: user.into(),
            channel: "cli".into(),
            model: "gpt-4.1-mini".into(),
            purpose: "turn".into(),
        },
        input_tokens: input,
        output_tokens: 1,
    };
    let calls = |rows: &[super::UsageSums]| -> Vec<(String, u64, u64)> {
        rows.iter()
            .map(|r| (r.key.user_id.clone(), r.calls, r.input_tokens))
            .collect()
    };
    let later = [
        event(11, "ann", 10),
        event(12, "bob", 20),
        event(14, "ann", 30),
    ];
    let earlier = [event(3, "ann", 1), event(5, "bob", 2), event(5, "bob", 2)];
    assert_eq!(store.record_usage_batch("u", &later).await.unwrap(), 3);
    assert_eq!(store.record_usage_batch("u", &earlier).await.unwrap(), 2);
    // Redelivered with one new event among them.
    let again = [
        event(12, "bob", 20),
        event(3, "ann", 1),
        event(13, "bob", 4),
    ];
    assert_eq!(store.record_usage_batch("u", &again).await.unwrap(), 1);
    // Another consumer's sequences are its own.
    assert_eq!(
        store
            .record_usage_batch("v", &[event(3, "cat", 7)])
            .await
            .unwrap(),
        1
    );
    let rows = store.usage("2026-12-05", "2026-12-05", None).await.unwrap();
    assert_eq!(
        calls(&rows),
        [
            ("ann".into(), 3, 41),
            ("bob".into(), 3, 26),
            ("cat".into(), 1, 7)
        ]
    );

    // Events up to 12 expired from the stream: settled, their sequences forgotten;
    // one at or below the floor counts nothing, one above it still does.
    store.settle_usage_below("u", 12).await.unwrap();
    let kept: i64 = on_pool!(&store, pool => {
        sqlx::query("SELECT COUNT(*) AS n FROM usage_counted WHERE consumer = 'u'")
            .fetch_one(pool)
            .await
            .unwrap()
            .try_get::<i64, _>("n")
            .unwrap()
    });
    assert_eq!(kept, 2, "13 and 14 stay recorded");
    assert_eq!(
        store
            .record_usage_batch("u", &[event(7, "ann", 100)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .record_usage_batch("u", &[event(14, "ann", 100)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .record_usage_batch("u", &[event(15, "ann", 100)])
            .await
            .unwrap(),
        1
    );
    // The floor never goes down.
    store.settle_usage_below("u", 2).await.unwrap();
    assert_eq!(
        store
            .record_usage_batch("u", &[event(9, "ann", 100)])
            .await
            .unwrap(),
        0
    );
}
