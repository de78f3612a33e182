//! The usage ledger through `N.memory.usage`, fed by `llm_usage` events.

use nexus_bus::{Bus, MemoryOp, TraceContext};
use nexus_testkit::TestEnv;

use super::spawn_memory_svc;

/// The whole ledger, through the `usage` op; `None` while memory-svc does not answer.
async fn ledger(bus: &Bus) -> Option<Vec<nexus_proto::v1::UsageRow>> {
    let resp: nexus_proto::v1::UsageResponse = bus
        .request(
            bus.subjects().memory(MemoryOp::Usage),
            &nexus_proto::v1::UsageRequest::default(),
            &TraceContext::new_root(),
            None,
        )
        .await
        .ok()?;
    Some(resp.rows)
}

#[tokio::test]
async fn usage_events_are_summed_in_the_ledger_once_even_across_a_restart() {
    use nexus_proto::v1::{LlmUsage, UsageRequest, UsageResponse, event};
    let test = TestEnv::new();
    let bus = test.bus("agent-core").await;
    let usage_event = |user: &str, input: u32| {
        event::Kind::LlmUsage(LlmUsage {
            turn_id: "t".into(),
            model: "gpt-4.1-mini".into(),
            provider: "openai".into(),
            input_tokens: input,
            output_tokens: 7,
            duration_ms: 1,
            attempts: 1,
            user_id: user.into(),
            session_id: "cli:default".into(),
            channel: "cli".into(),
            purpose: "turn".into(),
        })
    };
    let ledger = |bus: Bus| async move {
        let resp: UsageResponse = bus
            .request(
                bus.subjects().memory(MemoryOp::Usage),
                &UsageRequest::default(),
                &TraceContext::new_root(),
                None,
            )
            .await
            .unwrap();
        resp.rows
            .into_iter()
            .map(|r| (r.user_id, r.calls, r.input_tokens, r.output_tokens))
            .collect::<Vec<_>>()
    };
    // Events that came before memory-svc started are counted too.
    bus.emit(usage_event("cli_alice", 100)).await;
    let svc = spawn_memory_svc(test.config.clone(), &bus).await;
    bus.emit(usage_event("cli_alice", 50)).await;
    bus.emit(usage_event("cli_bob", 1)).await;
    let expected = vec![
        ("cli_alice".to_owned(), 2, 150, 14),
        ("cli_bob".to_owned(), 1, 1, 7),
    ];
    nexus_testkit::eventually(
        "the ledger to count 3 events",
        std::time::Duration::from_secs(20),
        || {
            let (bus, expected) = (bus.clone(), expected.clone());
            async move { (ledger(bus).await == expected).then_some(()) }
        },
    )
    .await;
    svc.stop().await;

    // After a restart nothing is counted twice, and new events still are.
    let svc = spawn_memory_svc(test.config.clone(), &bus).await;
    bus.emit(usage_event("cli_bob", 2)).await;
    let expected = vec![
        ("cli_alice".to_owned(), 2, 150, 14),
        ("cli_bob".to_owned(), 2, 3, 14),
    ];
    nexus_testkit::eventually(
        "the ledger to count the 4th event",
        std::time::Duration::from_secs(20),
        || {
            let (bus, expected) = (bus.clone(), expected.clone());
            async move { (ledger(bus).await == expected).then_some(()) }
        },
    )
    .await;
    // One user's rows alone, for a budget check.
    let bobs: UsageResponse = bus
        .request(
            bus.subjects().memory(MemoryOp::Usage),
            &UsageRequest {
                user_id: "cli_bob".into(),
                ..Default::default()
            },
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap();
    let users: Vec<&str> = bobs.rows.iter().map(|r| r.user_id.as_str()).collect();
    assert_eq!(users, ["cli_bob"]);
    // A bad range is a clear 400.
    let err = bus
        .request::<_, UsageResponse>(
            bus.subjects().memory(MemoryOp::Usage),
            &UsageRequest {
                from_day: "2026-11-30".into(),
                to_day: "2026-11-01".into(),
                user_id: String::new(),
            },
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("after"), "{err}");
    svc.stop().await;
}

#[tokio::test]
async fn the_ledger_waits_for_the_events_stream_when_memory_svc_starts_first() {
    use nexus_proto::v1::{LlmUsage, event};
    let test = TestEnv::new();
    // No streams yet: memory-svc is the first service up.
    let bus = Bus::connect(&test.config, "agent-core").await.unwrap();
    let svc = spawn_memory_svc(test.config.clone(), &bus).await;
    bus.ensure_streams().await.unwrap();
    bus.emit(event::Kind::LlmUsage(LlmUsage {
        model: "m".into(),
        input_tokens: 3,
        output_tokens: 4,
        user_id: "cli_alice".into(),
        ..Default::default()
    }))
    .await;
    nexus_testkit::eventually(
        "the event counted",
        std::time::Duration::from_secs(20),
        || {
            let bus = bus.clone();
            async move {
                let rows = ledger(&bus).await?;
                (rows.len() == 1 && rows[0].input_tokens == 3).then_some(())
            }
        },
    )
    .await;
    svc.stop().await;
}

/// Two replicas share the ledger's consumer and take batches of the same backlog at
/// once, finishing in either order: every event is counted, none twice.
#[tokio::test]
async fn two_replicas_count_a_backlog_of_usage_events_exactly_once() {
    use nexus_proto::v1::{LlmUsage, event};
    let test = TestEnv::new();
    let bus = test.bus("agent-core").await;
    let emit = |i: u32| {
        let bus = bus.clone();
        async move {
            bus.emit(event::Kind::LlmUsage(LlmUsage {
                model: "m".into(),
                input_tokens: i,
                output_tokens: 1,
                user_id: format!("cli_{}", i % 3),
                channel: "cli".into(),
                ..Default::default()
            }))
            .await;
        }
    };
    // A backlog both replicas find when they start, then more while they run.
    futures::future::join_all((1..=400).map(emit)).await;
    let a = spawn_memory_svc(test.config.clone(), &bus).await;
    let b = spawn_memory_svc(test.config.clone(), &bus).await;
    futures::future::join_all((401..=600).map(emit)).await;
    let expected: Vec<(String, u64, u64)> = (0..3)
        .map(|u| {
            let mine = (1..=600u64).filter(|i| i % 3 == u);
            (format!("cli_{u}"), mine.clone().count() as u64, mine.sum())
        })
        .collect();
    nexus_testkit::eventually(
        "the ledger to count 600 events",
        std::time::Duration::from_secs(30),
        || {
            let (bus, expected) = (bus.clone(), expected.clone());
            async move {
                let rows: Vec<(String, u64, u64)> = ledger(&bus)
                    .await?
                    .into_iter()
                    .map(|r| (r.user_id, r.calls, r.input_tokens))
                    .collect();
                // Never more than expected on the way: that would be a double count.
                assert!(
                    rows.iter().map(|r| r.1).sum::<u64>() <= 600,
                    "counted twice: {rows:?}"
                );
                (rows == expected).then_some(())
            }
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
}
