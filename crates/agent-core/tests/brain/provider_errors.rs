//! Provider failures with streaming on (the default): a streamed 429 or 5xx is
//! retried like a plain one, and the user is told whether the provider is failing,
//! rate limiting, or unreachable.

use std::time::Duration;

use nexus_proto::v1::{OutboundKind, OutboundMessage};
use nexus_testkit::{
    Stack, TestEnv,
    fake_openai::{FakeOpenAi, Reply},
};

use super::{refs, replies, send};

const KEY: &str = "sk-test-key-000000";

const FAILING: &str = "provider is failing";
const RATE_LIMITED: &str = "rate limiting";
const UNREACHABLE: &str = "could not reach";

/// Streaming on, quick backoff, two retries.
fn streamed_env(base_url: String) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_API_KEY", KEY.into()),
        ("OPENAI_BASE_URL", base_url),
        ("NEXUS__LLM__MODEL", "gpt-4.1-mini".into()),
        ("NEXUS__LLM__STREAM", "true".into()),
        ("NEXUS__LLM__RETRY_BASE_MS", "20".into()),
        ("NEXUS__LLM__MAX_RETRIES", "2".into()),
    ]
}

/// Starts the stack, sends one message and returns its reply.
async fn reply_to_hello(test: &TestEnv, env: &[(&'static str, String)]) -> OutboundMessage {
    let _stack = Stack::start(test, &refs(env)).await;
    let bus = test.bus("test").await;
    send(&bus, "c1", 0, "hello").await;
    replies(&bus, 1, Duration::from_secs(60)).await.remove(0)
}

/// The reply is an error that says `what` (and neither of the other two) and no secret.
fn assert_told(reply: &OutboundMessage, what: &str) {
    assert_eq!(reply.kind, OutboundKind::Error as i32, "{}", reply.text);
    assert!(reply.text.contains(what), "{}", reply.text);
    for other in [FAILING, RATE_LIMITED, UNREACHABLE] {
        assert!(
            other == what || !reply.text.contains(other),
            "{}",
            reply.text
        );
    }
    assert!(!reply.text.contains(KEY), "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_rate_limit_waits_out_its_retry_after_and_the_answer_arrives() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("unexpected".into())).await;
    fake.push([
        Reply::StatusRetryAfter(429, "1".into()),
        Reply::Text("worth the wait".into()),
    ]);
    let reply = reply_to_hello(&test, &streamed_env(fake.base_url())).await;

    assert_eq!(reply.kind, OutboundKind::Reply as i32, "{}", reply.text);
    assert_eq!(reply.text, "worth the wait");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "one 429, one retry");
    assert!(requests.iter().all(|r| r["stream"] == true));
    // The backoff alone is 20 ms; the provider asked for a second.
    let arrivals = fake.arrivals();
    let waited = arrivals[1] - arrivals[0];
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_keeps_rate_limiting_a_streamed_call_tells_the_user_so() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Status(429)).await;
    let reply = reply_to_hello(&test, &streamed_env(fake.base_url())).await;

    assert_told(&reply, RATE_LIMITED);
    assert_eq!(fake.requests().len(), 3, "one call and two retries");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_keeps_failing_a_streamed_call_tells_the_user_it_is_failing() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Status(500)).await;
    let reply = reply_to_hello(&test, &streamed_env(fake.base_url())).await;

    assert_told(&reply, FAILING);
    assert_eq!(fake.requests().len(), 3, "one call and two retries");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_nobody_listens_for_tells_the_user_it_is_unreachable() {
    let test = TestEnv::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let reply = reply_to_hello(&test, &streamed_env(closed)).await;

    assert_told(&reply, UNREACHABLE);
}
