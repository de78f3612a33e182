//! The bus against real NATS: idempotent publishes, dead letters, media, KV.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nexus_bus::TraceContext;
use nexus_proto::v1::{InboundMessage, media_ref};
use nexus_testkit::TestEnv;

mod names;

#[tokio::test]
async fn publishing_the_same_id_twice_stores_one_message() {
    let test = TestEnv::new();
    let bus = test.bus("test").await;
    let msg = InboundMessage {
        id: "cli:1".into(),
        channel: "cli".into(),
        ..Default::default()
    };
    let first = bus
        .publish_inbound(&msg, &TraceContext::new_root())
        .await
        .unwrap();
    let second = bus
        .publish_inbound(&msg, &TraceContext::new_root())
        .await
        .unwrap();
    assert!(!first.duplicate && second.duplicate);
    assert_eq!(first.sequence, second.sequence);
    let mut stream = bus
        .jetstream()
        .get_stream(bus.subjects().inbound_stream())
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 1);
    assert_eq!(info.config.duplicate_window, nexus_bus::DUPLICATE_WINDOW);
}

/// A durable consumer of every inbound message, on streams made for the test.
async fn inbound_consumer(
    bus: &nexus_bus::Bus,
    name: &str,
    max_ack_pending: i64,
) -> async_nats::jetstream::consumer::PullConsumer {
    bus.ensure_streams().await.unwrap();
    let subjects = bus.subjects();
    bus.durable_consumer(
        &subjects.inbound_stream(),
        name,
        subjects.inbound_all(),
        Duration::from_secs(5),
        5,
        max_ack_pending,
    )
    .await
    .unwrap()
}

/// Stores inbound message `cli:<i>`.
async fn publish_cli(bus: &nexus_bus::Bus, i: usize) {
    let msg = InboundMessage {
        id: format!("cli:{i}"),
        channel: "cli".into(),
        ..Default::default()
    };
    bus.publish_inbound(&msg, &TraceContext::new_root())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_puller_pulls_again_when_its_pulls_expire_and_delivers_in_order() {
    let test = TestEnv::new();
    let bus = test.bus("test").await;
    let consumer = inbound_consumer(&bus, "puller-test", 1).await;
    let mut puller = nexus_bus::Puller::new(&bus, &consumer)
        .await
        .unwrap()
        .expiring_after(Duration::from_millis(50));
    let shutdown = nexus_common::shutdown::CancellationToken::new();
    // Nothing to deliver: about twenty pulls expire, each made again.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), puller.next(&shutdown))
            .await
            .is_err()
    );
    let mut consumer = consumer;
    let waiting = consumer.info().await.unwrap().num_waiting;
    assert!(
        waiting <= 1,
        "{waiting} pulls waiting: expired pulls piled up"
    );
    for i in 1..=5 {
        publish_cli(&bus, i).await;
    }
    for i in 1..=5 {
        let got = tokio::time::timeout(Duration::from_secs(10), puller.next(&shutdown))
            .await
            .expect("a message within 10 s")
            .expect("not shut down");
        let decoded: InboundMessage = nexus_bus::decode(&got.payload).unwrap();
        assert_eq!(decoded.id, format!("cli:{i}"));
        got.ack().await.unwrap();
    }
    shutdown.cancel();
    assert!(puller.next(&shutdown).await.is_none());
}

/// A batch is the next message and those already there, at most `max`, in order;
/// an empty stream is waited for as by `next`.
#[tokio::test]
async fn a_batch_holds_what_is_there_up_to_its_size_in_order() {
    let test = TestEnv::new();
    let bus = test.bus("test").await;
    let consumer = inbound_consumer(&bus, "batch-test", 16).await;
    let mut puller = nexus_bus::Puller::new(&bus, &consumer).await.unwrap();
    let shutdown = nexus_common::shutdown::CancellationToken::new();
    let ids = |batch: &[async_nats::jetstream::Message]| -> Vec<String> {
        batch
            .iter()
            .map(|m| nexus_bus::decode::<InboundMessage>(&m.payload).unwrap().id)
            .collect()
    };
    for i in 1..=6 {
        publish_cli(&bus, i).await;
    }
    let first = puller.next_batch(4, &shutdown).await.unwrap();
    assert_eq!(ids(&first), ["cli:1", "cli:2", "cli:3", "cli:4"]);
    let rest = puller.next_batch(4, &shutdown).await.unwrap();
    assert_eq!(
        ids(&rest),
        ["cli:5", "cli:6"],
        "fewer than asked: what is there"
    );
    for m in first.iter().chain(&rest) {
        m.double_ack().await.unwrap();
    }
    // Nothing there: the batch waits for the next message.
    let waiting = tokio::spawn(async move {
        let batch = puller.next_batch(4, &shutdown).await.unwrap();
        ids(&batch)
    });
    publish_cli(&bus, 7).await;
    let got = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("a batch within 10 s")
        .unwrap();
    assert_eq!(got.first().map(String::as_str), Some("cli:7"));
}

#[tokio::test]
async fn ensuring_streams_twice_is_harmless() {
    let test = TestEnv::new();
    let bus = test.bus("test").await;
    bus.ensure_streams().await.unwrap();
    bus.ensure_streams().await.unwrap();
}

#[tokio::test]
async fn media_round_trips_through_the_object_store_and_respects_the_cap() {
    let test = TestEnv::new();
    let bus = test.bus("test").await;
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let r = bus
        .put_media(
            "telegram/42/photo",
            media_ref::Kind::Image,
            "image/jpeg",
            "p.jpg",
            "hi",
            &bytes,
        )
        .await
        .unwrap();
    assert_eq!(r.size_bytes, bytes.len() as u64);
    assert_eq!(bus.get_media(&r, 1 << 20).await.unwrap(), bytes);
    assert!(bus.get_media(&r, 1000).await.is_err());
}

#[tokio::test]
async fn a_request_nobody_serves_names_the_missing_service() {
    let test = TestEnv::new();
    let bus = test.bus("test").await;
    let err = bus
        .request::<InboundMessage, InboundMessage>(
            bus.subjects().memory(nexus_bus::MemoryOp::Context),
            &InboundMessage::default(),
            &TraceContext::new_root(),
            Some(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("memory-svc"), "{err}");
}

#[tokio::test]
async fn kv_buckets_are_created_once_and_shared() {
    let test = TestEnv::new();
    let bus = test.bus("test").await;
    let name = format!("{}_probe", test.namespace);
    let a = bus.ensure_kv_bucket(&name, 1, None, "probe").await.unwrap();
    a.put("k", "v".into()).await.unwrap();
    let b = bus.ensure_kv_bucket(&name, 1, None, "probe").await.unwrap();
    assert_eq!(b.get("k").await.unwrap().unwrap().as_ref(), b"v");
}

/// `GET <path>` on `addr`: the status, or `None` if nothing answers.
async fn probe(addr: &str, path: &str) -> Option<u16> {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_answers_only_while_registered_and_connected() {
    let mut nats = nexus_testkit::NatsServer::start().await;
    let test = TestEnv::with_nats(nats.url());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut config = test.config.clone();
    config
        .health
        .listen
        .insert("memory_svc".into(), addr.clone());
    let bus = nexus_bus::Bus::connect(&config, "memory-svc")
        .await
        .unwrap();

    // Alive from the start; ready once registered on the service API.
    assert_eq!(probe(&addr, "/healthz").await, Some(200));
    assert_eq!(probe(&addr, "/readyz").await, Some(503));
    let _service = bus.register_service("memory-svc", "test").await.unwrap();
    assert_eq!(probe(&addr, "/readyz").await, Some(200));

    // Not ready while NATS is gone; ready again once the client reconnected.
    let before = bus.link().state();
    nats.kill();
    tokio::time::timeout(Duration::from_secs(30), bus.link().changed_from(before))
        .await
        .unwrap();
    assert_eq!(probe(&addr, "/readyz").await, Some(503));
    assert_eq!(probe(&addr, "/healthz").await, Some(200));
    nats.restart().await;
    assert!(bus.link().connected(Duration::from_secs(30)).await);
    assert_eq!(probe(&addr, "/readyz").await, Some(200));

    // Draining for shutdown: supervisors stop sending work here.
    bus.drain().await;
    assert_eq!(probe(&addr, "/readyz").await, Some(503));

    // A second process on a taken port does not start half-alive.
    let err = nexus_bus::Bus::connect(&config, "memory-svc")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("[health.listen]"), "{err}");
}
