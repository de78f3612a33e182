//! gateway-whatsapp against a fake bridge (a real WebSocket server speaking
//! bridge/PROTOCOL.md, `fake_bridge.rs`) over real NATS, with `run_with` in-process;
//! and end to end (`e2e.rs`): the real Node.js bridge in fake-socket mode, the built
//! gateway binary, agent-core, memory-svc, tool-runner and a fake OpenAI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;
mod fake_bridge;
mod pairing;

use std::{path::PathBuf, time::Duration};

use async_nats::jetstream;
use base64::Engine as _;
use fake_bridge::{FakeBridge, connected, dm};
use gateway_whatsapp::{
    WhatsAppSettings,
    protocol::{BridgeEvent, GatewayCommand},
};
use nexus_bus::{Bus, TraceContext, gateway_op};
use nexus_common::{config::ChannelConfig, domain::ChannelName};
use nexus_proto::v1::{
    ChatRef, Event, GatewayCommandRequest, GatewayCommandResponse, InboundMessage, OutboundKind,
    OutboundMessage, ServiceNotice, event, media_ref,
};
use nexus_testkit::{TestEnv, eventually, stream_messages};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "whatsapp-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);
const PHONE: &str = "491511234567@s.whatsapp.net";
const LID: &str = "251100000000001@lid";

/// A 1×1 PNG.
const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";

fn settings(url: &str) -> WhatsAppSettings {
    let url = url.to_owned();
    let mut s = WhatsAppSettings::from_sources(
        move |k| match k {
            "WHATSAPP_BRIDGE_TOKEN" => Some(TOKEN.to_owned()),
            "WHATSAPP_BRIDGE_URL" => Some(url.clone()),
            _ => None,
        },
        &ChannelConfig::default(),
    )
    .unwrap();
    s.reconnect_initial = Duration::from_millis(50);
    s.reconnect_max = Duration::from_millis(500);
    s.send_timeout = Duration::from_secs(10);
    s
}

/// The gateway running in-process.
struct Gw {
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Gw {
    fn spawn(test: &TestEnv, allow_from: &[&str], settings: WhatsAppSettings) -> Self {
        let mut config = test.config.clone();
        config.channels.insert(
            "whatsapp".into(),
            ChannelConfig {
                allow_from: allow_from.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            },
        );
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(gateway_whatsapp::run_with(
            config,
            settings,
            shutdown.clone(),
        ));
        Self { shutdown, handle }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("the gateway stops on shutdown")
            .unwrap()
            .unwrap();
    }

    /// Waits for the gateway to end on its own and returns its error.
    async fn error(self) -> String {
        let result = tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("the gateway gives up")
            .unwrap();
        format!("{:#}", result.expect_err("the gateway must fail"))
    }
}

async fn wait_connected(bridge: &FakeBridge, n: usize) {
    eventually(&format!("{n} gateway connection(s)"), WAIT, || async {
        (bridge.connections() >= n).then_some(())
    })
    .await;
}

async fn wait_ack(bridge: &FakeBridge, id: &str, n: usize) {
    eventually(&format!("{n} ack(s) of {id}"), WAIT, || async {
        (bridge.acks().iter().filter(|a| *a == id).count() >= n).then_some(())
    })
    .await;
}

async fn inbound(bus: &Bus) -> Vec<InboundMessage> {
    let s = bus.subjects();
    stream_messages(bus, &s.inbound_stream(), s.inbound_all()).await
}

async fn service_notices(bus: &Bus) -> Vec<ServiceNotice> {
    let s = bus.subjects();
    stream_messages::<Event>(
        bus,
        &s.events_stream(),
        s.event(nexus_bus::event_kind::SERVICE),
    )
    .await
    .into_iter()
    .filter_map(|e| match e.kind {
        Some(event::Kind::Service(n)) if n.service == "gateway-whatsapp" => Some(n),
        _ => None,
    })
    .collect()
}

fn reply_to(chat_id: &str, id: &str, text: &str) -> OutboundMessage {
    OutboundMessage {
        id: format!("reply:whatsapp:{id}"),
        in_reply_to: format!("whatsapp:{id}"),
        channel: "whatsapp".into(),
        chat: Some(ChatRef {
            chat_id: chat_id.into(),
            ..Default::default()
        }),
        text: text.into(),
        reply_to_upstream_id: id.into(),
        kind: OutboundKind::Reply as i32,
        ..Default::default()
    }
}

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bridge/protocol/examples")
}

#[test]
fn every_protocol_example_deserializes_with_the_serde_types() {
    let mut seen = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
        let tag = name.split('.').nth(1).unwrap();
        assert_eq!(raw["type"], tag, "{name}: the file name names the type");
        if name.starts_with("to-gateway.") {
            let event: BridgeEvent = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} does not deserialize: {e}"));
            // What we read, written back, is read the same way.
            let again: BridgeEvent =
                serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
            assert_eq!(event, again, "{name}");
        } else if name.starts_with("to-bridge.") {
            let cmd: GatewayCommand = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} does not deserialize: {e}"));
            let again: serde_json::Value = serde_json::from_str(&cmd.to_json()).unwrap();
            assert_eq!(again["type"], raw["type"], "{name}");
        } else {
            panic!("{name} must start with to-gateway. or to-bridge.");
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} examples found");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_message_is_auth_with_the_token_and_protocol_version() {
    let test = TestEnv::new();
    let bridge = FakeBridge::start(TOKEN).await;
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    wait_connected(&bridge, 1).await;
    assert_eq!(
        bridge.auths()[0],
        json!({"type": "auth", "token": TOKEN, "protocol_version": 1})
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_stops_the_gateway_with_an_error_that_names_the_variable() {
    let test = TestEnv::new();
    let bridge = FakeBridge::start("another-token-0123456789").await;
    let error = Gw::spawn(&test, &["*"], settings(&bridge.url()))
        .error()
        .await;
    assert!(error.contains("WHATSAPP_BRIDGE_TOKEN"), "{error}");
    assert!(!error.contains(TOKEN), "the token leaked: {error}");
    assert_eq!(bridge.auths().len(), 1, "no retry loop with a wrong token");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_of_another_protocol_version_is_refused_with_a_clear_error() {
    let test = TestEnv::new();
    let bridge = FakeBridge::start_with(TOKEN, 2, 0, vec![connected()]).await;
    let error = Gw::spawn(&test, &["*"], settings(&bridge.url()))
        .error()
        .await;
    assert!(
        error.contains("protocol version 2") && error.contains("speaks 1"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_is_stored_then_acked_and_phone_and_lid_share_one_user() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start(TOKEN).await;
    let gw = Gw::spawn(&test, &["+491511234567"], settings(&bridge.url()));
    wait_connected(&bridge, 1).await;

    bridge.push(dm("T1", Some(PHONE), Some(LID), "hello"));
    bridge.push(dm("T2", Some(PHONE), None, "same person, no LID"));
    bridge.push(dm("T3", None, Some(LID), "by LID only"));
    bridge.push(dm(
        "T4",
        Some("491599999999@s.whatsapp.net"),
        None,
        "a stranger",
    ));
    for id in ["T1", "T2", "T3", "T4"] {
        wait_ack(&bridge, id, 1).await;
    }
    let stored = inbound(&bus).await;
    let ids: Vec<&str> = stored.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        ["whatsapp:T1", "whatsapp:T2"],
        "the stranger is not stored, and LID-only is not the allowed number"
    );
    let first = &stored[0];
    assert_eq!(first.upstream_id, "T1");
    assert_eq!(first.text, "hello");
    assert_eq!(first.channel, "whatsapp");
    let sender = first.sender.as_ref().unwrap();
    assert_eq!(sender.id, "+491511234567");
    assert_eq!(sender.display_name, "Alice");
    assert_eq!(sender.user_id, "whatsapp_491511234567");
    assert_eq!(
        stored[1].sender.as_ref().unwrap().user_id,
        sender.user_id,
        "with or without the LID, one user"
    );
    let chat = first.chat.as_ref().unwrap();
    assert_eq!(
        chat.chat_id, PHONE,
        "direct chats are keyed by the phone number"
    );
    assert!(!chat.is_group);
    assert_eq!(first.metadata["whatsapp.lid_jid"], LID);
    assert_eq!(first.metadata["whatsapp.chat_jid"], LID);
    assert_eq!(first.sent_at_ms, 1_760_000_000_000);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_listed_lid_is_accepted_in_a_group_and_two_numbers_are_two_users() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start(TOKEN).await;
    let gw = Gw::spawn(
        &test,
        &["251100000000002@lid", "491522222222"],
        settings(&bridge.url()),
    );
    wait_connected(&bridge, 1).await;
    bridge.push(json!({
        "type": "message", "id": "G1", "chat_id": "120363012345678901@g.us", "is_group": true,
        "sender": {"lid_jid": "251100000000002@lid", "name": "Bob"},
        "text": "@Nexus summarise", "timestamp_ms": 1, "mentions_me": true,
        "reply_to": {"id": "BOT1", "sender_jid": "170000000000001@lid", "from_me": true}
    }));
    bridge.push(dm(
        "P2",
        Some("491522222222@s.whatsapp.net"),
        None,
        "second user",
    ));
    wait_ack(&bridge, "G1", 1).await;
    wait_ack(&bridge, "P2", 1).await;
    let stored = inbound(&bus).await;
    assert_eq!(stored.len(), 2);
    let group = &stored[0];
    let chat = group.chat.as_ref().unwrap();
    assert_eq!(chat.chat_id, "120363012345678901@g.us");
    assert!(chat.is_group);
    assert_eq!(group.sender.as_ref().unwrap().id, "251100000000002@lid");
    assert_eq!(
        group.sender.as_ref().unwrap().user_id,
        "whatsapp_251100000000002_lid"
    );
    assert_eq!(group.reply_to_upstream_id, "BOT1");
    assert_eq!(group.metadata["whatsapp.mentions_me"], "true");
    assert_eq!(group.metadata["whatsapp.reply_to_me"], "true");
    assert_eq!(
        stored[1].sender.as_ref().unwrap().user_id,
        "whatsapp_491522222222"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_message_is_stored_once_and_acked_both_times() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start(TOKEN).await;
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    wait_connected(&bridge, 1).await;
    bridge.push(dm("DUP", Some(PHONE), Some(LID), "once"));
    wait_ack(&bridge, "DUP", 1).await;
    // The bridge sends it again (as after a reconnect before it saw the ack).
    bridge.push(dm("DUP", Some(PHONE), Some(LID), "once"));
    wait_ack(&bridge, "DUP", 2).await;
    let stored = inbound(&bus).await;
    assert_eq!(stored.len(), 1, "the replay must not start a second turn");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_acked_only_after_jetstream_stored_it() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start(TOKEN).await;
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    wait_connected(&bridge, 1).await;

    // JetStream cannot store it: the gateway must not ack, and reconnects so the
    // bridge sends the message again.
    bus.jetstream()
        .delete_stream(bus.subjects().inbound_stream())
        .await
        .unwrap();
    bridge.push(dm("LATE", Some(PHONE), None, "store me"));
    wait_connected(&bridge, 2).await;
    assert!(bridge.acks().is_empty(), "acked before it was stored");
    assert_eq!(bridge.pending(), 1);

    bus.ensure_streams().await.unwrap();
    wait_ack(&bridge, "LATE", 1).await;
    let stored = inbound(&bus).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, "whatsapp:LATE");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_reconnects_after_the_bridge_restarts() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start(TOKEN).await;
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    wait_connected(&bridge, 1).await;
    bridge.push(dm("BEFORE", Some(PHONE), None, "before"));
    wait_ack(&bridge, "BEFORE", 1).await;

    let bridge = bridge.restart().await;
    wait_connected(&bridge, 1).await;
    assert_eq!(
        bridge.auths()[0]["token"],
        TOKEN,
        "authenticated again after the restart"
    );
    bridge.push(dm("AFTER", Some(PHONE), None, "after"));
    wait_ack(&bridge, "AFTER", 1).await;

    // Replies flow again too.
    bus.publish_outbound(
        &reply_to(PHONE, "AFTER", "welcome back"),
        &TraceContext::new_root(),
    )
    .await
    .unwrap();
    eventually("the reply after the restart", WAIT, || async {
        bridge.sends().first().cloned()
    })
    .await;
    assert_eq!(inbound(&bus).await.len(), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn media_round_trips_through_the_object_store() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start(TOKEN).await;
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    wait_connected(&bridge, 1).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG_B64)
        .unwrap();

    let mut msg = dm("IMG1", Some(PHONE), None, "what is this?");
    msg["media"] = json!({"kind": "image", "mime_type": "image/png", "file_name": "IMG1.png",
                          "caption": "what is this?", "size_bytes": png.len(), "data_base64": PNG_B64});
    bridge.push(msg);
    wait_ack(&bridge, "IMG1", 1).await;
    let stored = inbound(&bus).await;
    let media = &stored[0].media;
    assert_eq!(media.len(), 1);
    let m = &media[0];
    assert_eq!(m.kind, media_ref::Kind::Image as i32);
    assert_eq!(m.mime_type, "image/png");
    assert_eq!(m.file_name, "IMG1.png");
    assert_eq!(m.caption, "what is this?");
    assert_eq!(m.size_bytes, png.len() as u64);
    assert_eq!(bus.get_media(m, 1 << 20).await.unwrap(), png);

    // The same object goes back out as an attachment of a reply.
    let mut reply = reply_to(PHONE, "IMG1", "here it is back");
    reply.media.push(m.clone());
    bus.publish_outbound(&reply, &TraceContext::new_root())
        .await
        .unwrap();
    let send = eventually("the reply with the image", WAIT, || async {
        bridge.sends().first().cloned()
    })
    .await;
    assert_eq!(send["id"], "reply:whatsapp:IMG1");
    assert_eq!(send["chat_id"], PHONE);
    assert_eq!(send["text"], "here it is back");
    assert_eq!(send["reply_to"], "IMG1");
    assert_eq!(send["media"][0]["kind"], "image");
    assert_eq!(send["media"][0]["mime_type"], "image/png");
    assert_eq!(send["media"][0]["file_name"], "IMG1.png");
    assert_eq!(send["media"][0]["data_base64"], PNG_B64);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_wait_in_n_outbound_while_the_gateway_is_down_and_are_delivered_when_it_returns() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start(TOKEN).await;
    bus.publish_outbound(
        &reply_to(PHONE, "EARLY", "sent while you were away"),
        &TraceContext::new_root(),
    )
    .await
    .unwrap();
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    let send = eventually("the waiting reply", WAIT, || async {
        bridge.sends().first().cloned()
    })
    .await;
    assert_eq!(send["text"], "sent while you were away");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_are_not_pulled_while_whatsapp_is_disconnected() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let reconnecting = json!({"type": "status", "state": "reconnecting", "reason": "connection closed (428)", "retry_in_ms": 1000});
    let bridge = FakeBridge::start_with(TOKEN, 1, 0, vec![reconnecting]).await;
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    wait_connected(&bridge, 1).await;
    bus.publish_outbound(
        &reply_to(PHONE, "HOLD", "wait for me"),
        &TraceContext::new_root(),
    )
    .await
    .unwrap();
    eventually("the reconnecting status event", WAIT, || async {
        service_notices(&bus)
            .await
            .iter()
            .any(|n| n.status == "reconnecting")
            .then_some(())
    })
    .await;
    // Not pulled at all: no delivery attempt could be burnt into a dead letter.
    let consumer = bus
        .jetstream()
        .get_stream(bus.subjects().outbound_stream())
        .await
        .unwrap()
        .get_consumer::<jetstream::consumer::pull::Config>(
            &bus.subjects()
                .gateway_consumer(&ChannelName::parse("whatsapp").unwrap()),
        )
        .await;
    assert!(
        consumer.is_err(),
        "replies were pulled before WhatsApp was connected"
    );
    assert!(bridge.sends().is_empty());

    bridge.event(connected());
    let send = eventually("the reply once connected", WAIT, || async {
        bridge.sends().first().cloned()
    })
    .await;
    assert_eq!(send["text"], "wait for me");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retryable_send_failure_is_retried_and_the_reply_goes_out_once() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start(TOKEN).await;
    bridge.fail_next_send("WhatsApp is not connected (reconnecting)", true);
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    wait_connected(&bridge, 1).await;
    bus.publish_outbound(
        &reply_to(PHONE, "RETRY", "second time lucky"),
        &TraceContext::new_root(),
    )
    .await
    .unwrap();
    eventually("the retried send", WAIT, || async {
        (bridge.sends().len() >= 2).then_some(())
    })
    .await;
    let sends = bridge.sends();
    assert_eq!(
        sends[0]["id"], sends[1]["id"],
        "the same id, so the bridge dedupes"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_qr_code_and_status_changes_are_published_as_service_events() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start_with(
        TOKEN,
        1,
        0,
        vec![
            json!({"type": "status", "state": "connecting"}),
            json!({"type": "qr", "data": "2@QRDATA,abc=="}),
        ],
    )
    .await;
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    wait_connected(&bridge, 1).await;
    bridge.event(connected());
    bridge.event(json!({"type": "status", "state": "logged_out", "reason": "logged out from the phone (401)"}));
    let notices = eventually("four service events", WAIT, || async {
        let n = service_notices(&bus).await;
        (n.len() >= 4).then_some(n)
    })
    .await;
    let seen: Vec<(&str, &str)> = notices
        .iter()
        .map(|n| (n.status.as_str(), n.detail.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("connecting", ""),
            ("qr", "2@QRDATA,abc=="),
            ("connected", "+491700000001"),
            ("logged_out", "logged out from the phone (401)"),
        ]
    );
    assert_eq!(bridge.logins(), 0, "no login unless configured");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn login_on_start_asks_for_pairing_once_not_in_a_loop() {
    let test = TestEnv::new();
    let logged_out = json!({"type": "status", "state": "logged_out", "reason": "401"});
    let bridge = FakeBridge::start_with(TOKEN, 1, 0, vec![logged_out.clone()]).await;
    let mut s = settings(&bridge.url());
    s.login_on_start = true;
    let gw = Gw::spawn(&test, &["*"], s);
    eventually("a login", WAIT, || async {
        (bridge.logins() == 1).then_some(())
    })
    .await;
    bridge.event(logged_out.clone());
    // A reconnect re-sends the status too; still only one login.
    let bridge = bridge.restart().await;
    wait_connected(&bridge, 1).await;
    bridge.push(dm("SYNC", Some(PHONE), None, "x"));
    wait_ack(&bridge, "SYNC", 1).await;
    assert_eq!(
        bridge.logins(),
        0,
        "the restarted bridge got no second login"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_sender_gets_one_notice_with_their_id_and_nothing_is_stored() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start(TOKEN).await;
    let gw = Gw::spawn(&test, &[], settings(&bridge.url()));
    wait_connected(&bridge, 1).await;
    let group_msg = json!({
        "type": "message", "id": "N1", "chat_id": "120363012345678901@g.us", "is_group": true,
        "sender": {"phone_jid": PHONE, "lid_jid": LID, "name": "Alice"},
        "text": "@Nexus hi", "timestamp_ms": 1, "mentions_me": true
    });
    bridge.push(group_msg);
    wait_ack(&bridge, "N1", 1).await;
    let notice = eventually("the access notice", WAIT, || async {
        bridge.sends().first().cloned()
    })
    .await;
    assert_eq!(
        notice["chat_id"], PHONE,
        "told privately, never in the group"
    );
    let text = notice["text"].as_str().unwrap();
    assert!(
        text.contains("+491511234567") && text.contains("allow_from"),
        "{text}"
    );

    bridge.push(dm("N2", Some(PHONE), Some(LID), "hello?"));
    wait_ack(&bridge, "N2", 1).await;
    bridge.push(dm("N3", Some(PHONE), Some(LID), "anyone?"));
    wait_ack(&bridge, "N3", 1).await;
    assert_eq!(bridge.sends().len(), 1, "the notice is sent once");
    assert!(inbound(&bus).await.is_empty());
    gw.stop().await;
}

/// Sends `nexus whatsapp login`'s request to the gateway.
async fn request_login(bus: &Bus) -> Result<GatewayCommandResponse, nexus_bus::BusError> {
    let whatsapp = ChannelName::parse("whatsapp").unwrap();
    bus.request(
        bus.subjects().gateway_command(&whatsapp, gateway_op::LOGIN),
        &GatewayCommandRequest {},
        &TraceContext::new_root(),
        Some(WAIT),
    )
    .await
}

async fn wait_notice(bus: &Bus, status: &str) {
    eventually(&format!("a {status:?} service event"), WAIT, || async {
        service_notices(bus)
            .await
            .iter()
            .any(|n| n.status == status)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_login_command_reaches_the_bridge_when_whatsapp_is_logged_out_and_reports_the_paired_account()
 {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let logged_out = json!({"type": "status", "state": "logged_out", "reason": "logged out from the phone (401)"});
    let bridge = FakeBridge::start_with(TOKEN, 1, 0, vec![logged_out]).await;
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    wait_notice(&bus, "logged_out").await;
    assert_eq!(bridge.logins(), 0, "no login before an operator asks");

    let reply = request_login(&bus).await.unwrap();
    assert_eq!(reply.status, "login_requested", "{reply:?}");
    eventually("the login at the bridge", WAIT, || async {
        (bridge.logins() == 1).then_some(())
    })
    .await;
    assert!(
        bridge.commands().contains(&json!({"type": "login"})),
        "{:?}",
        bridge.commands()
    );

    // The phone scanned the code.
    bridge.event(json!({"type": "status", "state": "connecting"}));
    bridge.event(connected());
    wait_notice(&bus, "connected").await;
    let reply = request_login(&bus).await.unwrap();
    assert_eq!(
        (reply.status.as_str(), reply.detail.as_str()),
        ("connected", "+491700000001")
    );
    assert_eq!(bridge.logins(), 1, "no login while connected");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_login_command_does_not_restart_a_pairing_in_progress() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let bridge = FakeBridge::start_with(
        TOKEN,
        1,
        0,
        vec![
            json!({"type": "status", "state": "connecting"}),
            json!({"type": "qr", "data": "2@WAITING,abc=="}),
        ],
    )
    .await;
    let gw = Gw::spawn(&test, &["*"], settings(&bridge.url()));
    wait_notice(&bus, "qr").await;
    let reply = request_login(&bus).await.unwrap();
    assert_eq!(reply.status, "in_progress", "{reply:?}");
    assert_eq!(bridge.logins(), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_login_command_says_when_the_bridge_is_unreachable_and_refuses_a_bad_payload() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}");
    let gw = Gw::spawn(&test, &["*"], settings(&url));
    let reply = eventually("the login endpoint", WAIT, || async {
        request_login(&bus).await.ok()
    })
    .await;
    assert_eq!(reply.status, "bridge_unavailable", "{reply:?}");
    assert!(
        reply.detail.contains(&url) && reply.detail.contains("WHATSAPP_BRIDGE_URL"),
        "{}",
        reply.detail
    );

    let whatsapp = ChannelName::parse("whatsapp").unwrap();
    let garbage = bus
        .client()
        .request(
            bus.subjects().gateway_command(&whatsapp, gateway_op::LOGIN),
            vec![0xff, 0xff, 0xff].into(),
        )
        .await
        .unwrap();
    let headers = garbage.headers.expect("error headers");
    assert_eq!(
        headers
            .get(async_nats::service::NATS_SERVICE_ERROR_CODE)
            .map(|v| v.as_str()),
        Some("400")
    );
    gw.stop().await;
}
