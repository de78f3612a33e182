//! The pairing store against real NATS, with the clock in the test's hands:
//! codes expire, are single-use, a sender holds one at a time, and a channel
//! hands out no more than its bound. (Approval end to end, with memory-svc and a
//! gateway, is in gateway-telegram's suite.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nexus_bus::{Bus, event_kind};
use nexus_common::domain::ChannelName;
use nexus_gateway::pairing::{CodeState, Pairing, PairingCode, PairingError, Requested, Stranger};
use nexus_proto::v1::{Event, PairingNotice, event};
use nexus_testkit::{TestEnv, stream_messages};

const T0: i64 = 1_800_000_000_000;
const TTL_SECS: u64 = 3600;
const HOUR_MS: i64 = 3_600_000;

fn telegram() -> ChannelName {
    ChannelName::parse("telegram").unwrap()
}

fn stranger(id: &str) -> Stranger<'_> {
    Stranger {
        sender_id: id,
        display_name: "Eve",
        chat_id: id,
        thread_id: "",
    }
}

async fn setup() -> (TestEnv, Bus, Pairing) {
    let test = TestEnv::new();
    let bus = test.bus("pairing-test").await;
    let pairing = Pairing::open(&bus).await.unwrap();
    (test, bus, pairing)
}

async fn issue(pairing: &Pairing, sender: &str, max_pending: u64, now: i64) -> PairingCode {
    match pairing
        .request(&telegram(), stranger(sender), TTL_SECS, max_pending, now)
        .await
        .unwrap()
    {
        Requested::Issued(code) => *code,
        other => panic!("{sender} got no code: {other:?}"),
    }
}

/// The pairing events in `N_EVENTS`.
async fn pairing_events(bus: &Bus) -> Vec<PairingNotice> {
    let s = bus.subjects();
    stream_messages::<Event>(bus, &s.events_stream(), s.event(event_kind::PAIRING))
        .await
        .into_iter()
        .filter_map(|e| match e.kind {
            Some(event::Kind::Pairing(p)) => Some(p),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_gets_one_code_which_is_listed_and_announced_to_the_admins() {
    let (_test, bus, pairing) = setup().await;
    let code = issue(&pairing, "99", 50, T0).await;
    assert_eq!(code.state, CodeState::Pending);
    assert_eq!(code.expires_at_ms, T0 + HOUR_MS);
    assert_eq!(code.code.len(), 8);

    // Writing again while the code is live gives no second code.
    let again = pairing
        .request(&telegram(), stranger("99"), TTL_SECS, 50, T0 + 1000)
        .await
        .unwrap();
    assert_eq!(again, Requested::Waiting);

    let pending = pairing.pending(T0 + 1000).await.unwrap();
    assert_eq!(pending, vec![code.clone()]);

    let events = pairing_events(&bus).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].status, "requested");
    assert_eq!(events[0].code, code.code);
    assert_eq!(events[0].sender_id, "99");
    assert_eq!(events[0].channel, "telegram");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_code_is_refused_and_the_sender_gets_a_new_one() {
    let (_test, _bus, pairing) = setup().await;
    let old = issue(&pairing, "99", 50, T0).await;
    let expired = T0 + HOUR_MS;

    let err = pairing
        .approve(&old.code, None, "cli", expired)
        .await
        .unwrap_err();
    assert!(matches!(err, PairingError::Expired(_)), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(pairing.pending(expired).await.unwrap().is_empty());
    assert!(pairing.approval(&telegram(), "99").await.unwrap().is_none());

    let new = issue(&pairing, "99", 50, expired + 1).await;
    assert_ne!(new.code, old.code);
    assert_eq!(pairing.pending(expired + 1).await.unwrap(), vec![new]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_code_cannot_be_used_again_and_its_sender_gets_nothing_further() {
    let (_test, bus, pairing) = setup().await;
    let code = issue(&pairing, "99", 50, T0).await;

    let rejected = pairing
        .reject(&code.code.to_lowercase(), "cli", T0 + 1)
        .await
        .unwrap();
    assert_eq!(rejected.state, CodeState::Rejected);

    let err = pairing
        .approve(&code.code, None, "cli", T0 + 2)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PairingError::Used {
                state: "rejected",
                ..
            }
        ),
        "{err}"
    );
    let err = pairing.reject(&code.code, "cli", T0 + 2).await.unwrap_err();
    assert!(matches!(err, PairingError::Used { .. }), "{err}");

    // Even after the code would have expired: no new code, no answer.
    for now in [T0 + 3, T0 + 2 * HOUR_MS] {
        let r = pairing
            .request(&telegram(), stranger("99"), TTL_SECS, 50, now)
            .await
            .unwrap();
        assert_eq!(r, Requested::Rejected);
    }
    assert!(pairing.pending(T0 + 3).await.unwrap().is_empty());
    let statuses: Vec<String> = pairing_events(&bus)
        .await
        .into_iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(statuses, ["requested", "rejected"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_hands_out_no_more_codes_than_its_bound_and_tells_the_admins_once() {
    let (_test, bus, pairing) = setup().await;
    let first = issue(&pairing, "1", 2, T0).await;
    issue(&pairing, "2", 2, T0 + 1).await;

    for now in [T0 + 2, T0 + 3] {
        let r = pairing
            .request(&telegram(), stranger("3"), TTL_SECS, 2, now)
            .await
            .unwrap();
        assert_eq!(r, Requested::Full);
    }
    let full: Vec<PairingNotice> = pairing_events(&bus)
        .await
        .into_iter()
        .filter(|e| e.status == "full")
        .collect();
    assert_eq!(full.len(), 1, "one admin event per sender: {full:?}");
    assert_eq!(full[0].sender_id, "3");

    // Another channel has a bound of its own.
    let slack = ChannelName::parse("slack").unwrap();
    assert!(matches!(
        pairing
            .request(&slack, stranger("U3"), TTL_SECS, 2, T0 + 4)
            .await
            .unwrap(),
        Requested::Issued(_)
    ));

    // Once the first code expired there is room again.
    let later = first.expires_at_ms;
    issue(&pairing, "3", 2, later).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_unknown_codes_are_refused_with_a_clear_reason() {
    let (_test, _bus, pairing) = setup().await;
    let err = pairing.approve("hello", None, "cli", T0).await.unwrap_err();
    assert!(matches!(err, PairingError::Malformed(_)), "{err}");
    assert!(err.to_string().contains("is not a pairing code"), "{err}");
    // 0 and O, 1 and I are not in the alphabet.
    let err = pairing.reject("ABCDEF01", "cli", T0).await.unwrap_err();
    assert!(matches!(err, PairingError::Malformed(_)), "{err}");
    let err = pairing
        .approve("ABCD-EFGH", None, "cli", T0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PairingError::Unknown(ref c) if c == "ABCDEFGH"),
        "{err}"
    );
}
