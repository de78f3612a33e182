//! The model provider failing half of its calls — 429s, 500s, calls that hang
//! past the timeout, streams cut off in the middle — under a load of 20 sessions:
//! every turn ends once, with the answer or a message that says what failed, and
//! no half-streamed answer leaks into a reply.

use nexus_testkit::{Stack, fake_openai::Reply};

use super::*;

/// What agent-core tells the user when the provider keeps failing (`LlmError::user_message`).
const CLEAR_FAILURES: [&str; 5] = [
    "is rate limiting us",
    "is failing right now",
    "did not answer within",
    "could not reach the language model provider",
    "could not understand",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_failing_half_its_calls_still_ends_every_turn_once() {
    let test = TestEnv::new();
    let good = Reply::EchoLastUser("re: ".into());
    let fake = FakeOpenAi::start(Reply::Cycle(vec![
        Reply::Status(429),
        good.clone(),
        Reply::Status(500),
        good.clone(),
        Reply::Hang,
        good.clone(),
        Reply::CutStream("re: a half-sent answer that must never be delivered".into()),
        good,
    ]))
    .await;
    let mut env = llm_env(&fake);
    env.extend(
        [
            ("NEXUS__LLM__STREAM", "true"),
            ("NEXUS__LLM__REQUEST_TIMEOUT_SECS", "2"),
            ("NEXUS__LLM__MAX_RETRIES", "2"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let _stack = Stack::start(&test, &refs(&env)).await;
    let bus = test.bus("test").await;

    let per_session = 4 * scale();
    let total = SESSIONS * per_session;
    let mut senders = load(&bus, SESSIONS, per_session, Duration::from_millis(50));
    while let Some(sent) = senders.join_next().await {
        sent.unwrap();
    }
    wait_outbound(&bus, total, within(240)).await;
    settled(&bus, within(120)).await;
    let all = replies(&bus, within(60)).await;
    assert_eq!(all.len(), total, "a turn ended twice, or never");
    let sent: BTreeMap<String, usize> = (0..SESSIONS)
        .map(|s| (format!("s{s}"), per_session))
        .collect();
    let by_chat = assert_once_and_in_order(&all, &sent);

    let (mut answered, mut failed) = (0, 0);
    for (chat, replies) in &by_chat {
        for (i, r) in replies.iter().enumerate() {
            if r.kind == OutboundKind::Reply as i32 {
                assert_eq!(r.text, format!("re: {}", load_text(chat, i)));
                answered += 1;
            } else {
                assert_eq!(r.kind, OutboundKind::Error as i32, "{r:?}");
                assert!(
                    CLEAR_FAILURES.iter().any(|c| r.text.contains(c)),
                    "not a clear failure: {}",
                    r.text
                );
                failed += 1;
            }
        }
    }
    // The premise: the failures happened, and retries got most turns through.
    let asked = fake.requests().len();
    tracing::info!(total, answered, failed, asked, "provider chaos");
    assert!(
        asked >= total * 3 / 2,
        "{asked} calls for {total} turns: the failures hardly happened"
    );
    assert!(
        answered > failed,
        "{answered} answered, {failed} failed: retries did not help"
    );
}
