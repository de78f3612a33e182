//! `dm_policy = "pairing"` on WhatsApp: the code goes to the stranger's direct chat
//! (phone JID), nothing of theirs is stored, and once approved (as a user of the
//! admin's choosing, linked in the real memory-svc) their next message is taken in.

use std::time::Duration;

use nexus_common::{
    config::{ChannelConfig, DmPolicy},
    now_ms,
};
use nexus_gateway::pairing::Pairing;
use nexus_testkit::{ServiceProcess, TestEnv, eventually};
use tokio_util::sync::CancellationToken;

use super::{
    FakeBridge, Gw, LID, PHONE, TOKEN, WAIT, dm, inbound, settings, wait_ack, wait_connected,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_on_whatsapp_gets_a_code_in_their_direct_chat_and_is_taken_in_once_approved() {
    let test = TestEnv::new();
    let bus = test.bus("whatsapp-test").await;
    let _memory = ServiceProcess::spawn("memory-svc", &[], &test.process_env());
    eventually("memory-svc to register", WAIT, || async {
        let seen = bus
            .discover_services(Duration::from_millis(200))
            .await
            .ok()?;
        seen.iter().any(|s| s.name == "memory-svc").then_some(())
    })
    .await;
    let bridge = FakeBridge::start(TOKEN).await;
    let mut config = test.config.clone();
    config.channels.insert(
        "whatsapp".into(),
        ChannelConfig {
            dm_policy: DmPolicy::Pairing,
            ..Default::default()
        },
    );
    let shutdown = CancellationToken::new();
    let gw = Gw {
        handle: tokio::spawn(gateway_whatsapp::run_with(
            config,
            settings(&bridge.url()),
            shutdown.clone(),
        )),
        shutdown,
    };
    wait_connected(&bridge, 1).await;

    for (id, text) in [("P1", "hello?"), ("P2", "anyone?")] {
        bridge.push(dm(id, Some(PHONE), Some(LID), text));
        wait_ack(&bridge, id, 1).await;
    }
    let sends = bridge.sends();
    assert_eq!(sends.len(), 1, "one code for two messages: {sends:?}");
    assert_eq!(sends[0]["chat_id"], PHONE);
    let text = sends[0]["text"].as_str().unwrap();
    let code = text
        .split("pairing code is ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no code in {text:?}"));
    assert!(inbound(&bus).await.is_empty());

    let pairing = Pairing::open(&bus).await.unwrap();
    let approved = pairing
        .approve(code, Some("alice"), "test", now_ms())
        .await
        .unwrap();
    assert_eq!(
        (approved.sender_id.as_str(), approved.user_id.as_str()),
        ("+491511234567", "alice")
    );
    eventually("the stranger to be told they are in", WAIT, || async {
        bridge
            .sends()
            .iter()
            .any(|s| s["text"].as_str().unwrap_or("").contains("You're in"))
            .then_some(())
    })
    .await;

    bridge.push(dm("P3", Some(PHONE), Some(LID), "hi again"));
    wait_ack(&bridge, "P3", 1).await;
    let stored = inbound(&bus).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].text, "hi again");
    assert_eq!(stored[0].sender.as_ref().unwrap().user_id, "alice");
    gw.stop().await;
}
