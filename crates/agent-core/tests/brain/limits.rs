//! Budgets and message rates across replicas: the state is in NATS KV and the usage
//! ledger, so what one replica counted, another sees. The fake LLM counts the model
//! calls that were made; none may be made for a message over a limit.

use std::time::Duration;

use futures::StreamExt;
use nexus_bus::{Bus, MemoryOp, TraceContext};
use nexus_proto::v1::{Event, LimitReached, OutboundKind, UsageRequest, UsageResponse, event};
use nexus_testkit::{
    Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
    nexus,
};
use prost::Message;
use sqlx::Connection as _;

use super::{llm_env, refs, replies, send_as};

/// Follows `N.events.>` until every turn in `ids` finished; returns the limit events
/// seen by then (agent-core emits a turn's limit event before its `turn_finished`).
async fn until_finished(events: &mut async_nats::Subscriber, ids: &[String]) -> Vec<LimitReached> {
    let mut left: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let mut reached = Vec::new();
    while !left.is_empty() {
        let msg = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .unwrap_or_else(|_| panic!("turns {left:?} did not finish"))
            .unwrap();
        match Event::decode(msg.payload).unwrap().kind {
            Some(event::Kind::TurnFinished(f)) => {
                left.remove(f.turn_id.as_str());
            }
            Some(event::Kind::LimitReached(l)) => reached.push(l),
            _ => {}
        }
    }
    reached
}

async fn replicas(bus: &Bus, n: usize) {
    eventually(
        &format!("{n} agent-core replicas"),
        Duration::from_secs(30),
        || {
            let bus = bus.clone();
            async move {
                let s = bus
                    .discover_services(Duration::from_millis(200))
                    .await
                    .ok()?;
                (s.iter().filter(|s| s.name == "agent-core").count() == n).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_over_their_message_rate_on_two_replicas_is_told_once_and_no_model_call_is_made() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("answered".into())).await;
    let mut env = llm_env(&fake);
    env.push(("NEXUS__LIMITS__USER_MESSAGES_PER_MINUTE", "3".into()));
    let stack = Stack::start(&test, &refs(&env)).await;
    let _second = stack.spawn("agent-core");
    let bus = test.bus("test").await;
    replicas(&bus, 2).await;
    let mut events = bus
        .client()
        .subscribe(bus.subjects().events_all())
        .await
        .unwrap();

    // Ten chats of one sender land on ten partitions, which both replicas take at
    // once: a count kept in either replica's memory would let up to six through.
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(send_as(&bus, &format!("chat{i}"), 0, &format!("message {i}"), "ada").await);
    }
    let reached = until_finished(&mut events, &ids).await;

    let out = replies(&bus, 4, Duration::from_secs(60)).await;
    assert_eq!(out.len(), 4, "three answers and one notice: {out:#?}");
    let answers = out
        .iter()
        .filter(|r| r.kind == OutboundKind::Reply as i32)
        .count();
    assert_eq!(answers, 3, "{out:#?}");
    let notices: Vec<_> = out
        .iter()
        .filter(|r| r.kind == OutboundKind::Notice as i32)
        .collect();
    assert_eq!(notices.len(), 1, "{out:#?}");
    let notice = &notices[0].text;
    assert!(
        notice.contains("more than 3 messages") && notice.contains("continue at"),
        "{notice}"
    );
    assert_eq!(
        fake.requests().len(),
        3,
        "the model was called for a message over the limit"
    );
    assert_eq!(reached.len(), 1, "one admin event: {reached:?}");
    assert_eq!(reached[0].limit, "user_messages_per_minute");
    assert_eq!(reached[0].user_id, "test_ada");
    assert_eq!(reached[0].turn_id, notices[0].in_reply_to);

    // Commands never call the model, so they still work.
    let help = send_as(&bus, "chat0", 1, "/help", "ada").await;
    until_finished(&mut events, std::slice::from_ref(&help)).await;
    let out = replies(&bus, 5, Duration::from_secs(60)).await;
    assert_eq!(out.len(), 5);
    assert_eq!(out[4].in_reply_to, help);
    assert!(out[4].text.starts_with("Commands:"), "{}", out[4].text);
    assert_eq!(fake.requests().len(), 3);
}

/// Tokens of `user` in the ledger, today and before.
async fn ledger_tokens(bus: &Bus, user: &str) -> u64 {
    let resp: UsageResponse = bus
        .request(
            bus.subjects().memory(MemoryOp::Usage),
            &UsageRequest {
                user_id: user.into(),
                ..Default::default()
            },
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap();
    resp.rows
        .iter()
        .map(|r| r.input_tokens + r.output_tokens)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_budget_an_admin_set_stops_turns_for_the_rest_of_the_day_and_the_next_day_allows_them()
 {
    let test = TestEnv::new();
    // Each call of the fake reports 42 + 7 tokens.
    let fake = FakeOpenAi::start(Reply::Text("answered".into())).await;
    let env = llm_env(&fake);
    let stack = Stack::start(&test, &refs(&env)).await;
    let out = nexus(
        stack.env(),
        &["users", "limit", "test_ada", "--tokens-per-day", "40"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tokens_per_day       40"), "{stdout}");

    let bus = test.bus("test").await;
    let mut events = bus
        .client()
        .subscribe(bus.subjects().events_all())
        .await
        .unwrap();
    let first = send_as(&bus, "c1", 0, "hello", "ada").await;
    until_finished(&mut events, std::slice::from_ref(&first)).await;
    // The ledger counts the call from its event; the next turn reads the ledger.
    eventually("the call in the ledger", Duration::from_secs(30), || {
        let bus = bus.clone();
        async move { (ledger_tokens(&bus, "test_ada").await == 49).then_some(()) }
    })
    .await;

    let second = send_as(&bus, "c1", 1, "again", "ada").await;
    let third = send_as(&bus, "c1", 2, "and again", "ada").await;
    let reached = until_finished(&mut events, &[second.clone(), third]).await;
    let out = replies(&bus, 2, Duration::from_secs(60)).await;
    assert_eq!(
        out.len(),
        2,
        "one answer, one notice, nothing more: {out:#?}"
    );
    assert_eq!(out[0].kind, OutboundKind::Reply as i32);
    assert_eq!(out[1].kind, OutboundKind::Notice as i32);
    assert_eq!(out[1].in_reply_to, second);
    let today = nexus_common::limits::windows(nexus_common::now_ms()).day;
    assert!(
        out[1]
            .text
            .contains(&format!("40 tokens for today ({today}, UTC)")),
        "{}",
        out[1].text
    );
    assert_eq!(fake.requests().len(), 1, "the model was called over budget");
    assert_eq!(reached.len(), 1, "{reached:?}");
    assert_eq!(
        (reached[0].limit.as_str(), reached[0].window.as_str()),
        ("user_tokens_per_day", today.as_str())
    );

    // The next day, honestly: the ledger's day is what a budget counts, so the test
    // moves its own rows (in the SQLite file of its own workspace) to yesterday.
    let yesterday = today
        .parse::<jiff::civil::Date>()
        .unwrap()
        .yesterday()
        .unwrap()
        .to_string();
    let db = test.workspace_path().join(".nexus/nexus.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let moved = sqlx::query("UPDATE usage_daily SET day = $1 WHERE user_id = $2 AND day = $3")
        .bind(&yesterday)
        .bind("test_ada")
        .bind(&today)
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(moved, 1);
    conn.close().await.unwrap();

    let fourth = send_as(&bus, "c1", 3, "a new day", "ada").await;
    until_finished(&mut events, std::slice::from_ref(&fourth)).await;
    let out = replies(&bus, 3, Duration::from_secs(60)).await;
    assert_eq!(out.len(), 3);
    assert_eq!(out[2].in_reply_to, fourth);
    assert_eq!(out[2].kind, OutboundKind::Reply as i32, "{}", out[2].text);
    assert_eq!(fake.requests().len(), 2);
}
