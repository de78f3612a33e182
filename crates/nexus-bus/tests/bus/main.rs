//! The bus against real NATS: idempotent publishes, dead letters, media, KV.

use std::time::Duration;

use nexus_bus::TraceContext;
use nexus_proto::v1::{InboundMessage, media_ref};
use nexus_testkit::TestEnv;

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
            bus.subjects().memory("context"),
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
