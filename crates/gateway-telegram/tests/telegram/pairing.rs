//! `dm_policy = "pairing"` through Telegram: a stranger gets a code instead of
//! silence, nothing of theirs reaches the model, and an admin's approval (from the
//! `nexus` CLI or from their own chat) lets their next message through.

use nexus_bus::event_kind;
use nexus_proto::v1::{Event, event};
use nexus_testkit::{
    Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
    nexus,
};

use super::{ADA, FakeTelegram, TOKEN, WAIT, World, inbound, stream_messages, user_messages};

const EVE: i64 = 99;
const BOB: i64 = 5555;
const PAIRING: (&str, &str) = ("NEXUS__CHANNELS__TELEGRAM__DM_POLICY", "pairing");

/// A world whose agent-core counts Ada (`telegram_4242`) as its admin.
async fn world(allow_from: &str) -> World {
    let test = TestEnv::new();
    let llm = FakeOpenAi::start(Reply::Text("welcome aboard".into())).await;
    let tg = FakeTelegram::start(TOKEN).await;
    let mut env = llm.env();
    env.push(("NEXUS__AGENT__ADMINS", format!("telegram_{ADA}")));
    let env: Vec<_> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stack = Stack::start(&test, &env).await;
    World {
        test,
        llm,
        tg,
        stack: Some(stack),
        allow_from: allow_from.to_owned(),
    }
}

/// The code in a pairing notice.
fn code_in(text: &str) -> String {
    text.split("pairing code is ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pairing code in {text:?}"))
        .to_owned()
}

/// Sends `texts` from `from` and waits until the gateway has handled them all.
async fn write(w: &World, from: i64, name: &str, texts: &[&str]) {
    let mut last = 0;
    for text in texts {
        last = w.tg.push_text(from, name, text).0;
    }
    eventually("the messages to be handled", WAIT, || async {
        (w.tg.confirmed_offset() > last).then_some(())
    })
    .await;
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_gets_one_code_and_is_answered_only_after_an_admin_approves_it() {
    let w = world(&ADA.to_string()).await;
    let bus = w.bus().await;
    let _gw = w.gateway(&[PAIRING]).await;
    let env = w.env(&[]);

    write(&w, EVE, "eve", &["hello?", "anyone there?", "please"]).await;
    let notices = w.tg.sent_to(EVE);
    assert_eq!(
        notices.len(),
        1,
        "one code, not one per message: {notices:?}"
    );
    let code = code_in(&notices[0].text);
    assert!(
        notices[0].text.contains("nexus pair approve"),
        "{}",
        notices[0].text
    );
    assert!(
        inbound(&bus).await.is_empty(),
        "a stranger's message was stored"
    );
    assert!(
        w.llm.requests().is_empty(),
        "a stranger's message reached the model"
    );

    let s = bus.subjects();
    let events: Vec<Event> =
        stream_messages(&bus, &s.events_stream(), s.event(event_kind::PAIRING)).await;
    let requested: Vec<_> = events
        .into_iter()
        .filter_map(|e| match e.kind {
            Some(event::Kind::Pairing(p)) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(requested.len(), 1, "{requested:?}");
    assert_eq!(
        (
            requested[0].status.as_str(),
            requested[0].code.as_str(),
            requested[0].sender_id.as_str()
        ),
        ("requested", code.as_str(), "99")
    );

    let list = nexus(&env, &["pair", "list"]).await;
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        stdout(&list).contains(&code) && stdout(&list).contains("telegram"),
        "{}",
        stdout(&list)
    );

    // Typed as people type it.
    let approve = nexus(&env, &["pair", "approve", &code.to_lowercase()]).await;
    assert!(approve.status.success(), "{}", stderr(&approve));
    assert!(
        stdout(&approve).contains("telegram_99"),
        "{}",
        stdout(&approve)
    );
    let sent = w.replies(EVE, 2).await;
    assert!(sent[1].text.contains("You're in"), "{}", sent[1].text);

    let (_, message_id) = w.tg.push_text(EVE, "eve", "hello again");
    let sent = w.replies(EVE, 3).await;
    assert_eq!(sent[2].reply_to, Some(message_id));
    assert_eq!(sent[2].text, "welcome aboard");
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 1);
    let said = user_messages(&requests[0]);
    assert!(said.iter().any(|m| m.contains("hello again")), "{said:?}");
    assert!(
        !said.iter().any(|m| m.contains("anyone there?")),
        "messages from before the approval reached the model: {said:?}"
    );
    let stored = inbound(&bus).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].sender.as_ref().unwrap().user_id, "telegram_99");

    // Single use.
    let again = nexus(&env, &["pair", "approve", &code]).await;
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already approved"),
        "{}",
        stderr(&again)
    );
    let bad = nexus(&env, &["pair", "reject", "not-a-code"]).await;
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("is not a pairing code"),
        "{}",
        stderr(&bad)
    );
    let list = nexus(&env, &["pair", "list"]).await;
    assert_eq!(stdout(&list), "no pairing codes waiting\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_admin_may_approve_a_pairing_code_from_the_chat() {
    let w = world(&format!("{ADA},{BOB}")).await;
    let bus = w.bus().await;
    let _gw = w.gateway(&[PAIRING]).await;
    let env = w.env(&[]);

    write(&w, EVE, "eve", &["hi, let me in"]).await;
    let code = code_in(&w.tg.sent_to(EVE)[0].text);

    let (_, bob_asks) = w.tg.push_text(BOB, "bob", &format!("/pair approve {code}"));
    let to_bob = w.replies(BOB, 1).await;
    assert_eq!(to_bob[0].reply_to, Some(bob_asks));
    assert!(
        to_bob[0].text.contains("for admins only"),
        "{}",
        to_bob[0].text
    );
    let list = nexus(&env, &["pair", "list"]).await;
    assert!(
        stdout(&list).contains(&code),
        "the code must still wait: {}",
        stdout(&list)
    );

    w.tg.push_text(ADA, "ada", "/pair list");
    let to_ada = w.replies(ADA, 1).await;
    assert!(to_ada[0].text.contains(&code), "{}", to_ada[0].text);
    // Approved as a user of the admin's choosing.
    w.tg.push_text(ADA, "ada", &format!("/pair approve {code} eve"));
    let to_ada = w.replies(ADA, 2).await;
    assert!(to_ada[1].text.contains("Approved"), "{}", to_ada[1].text);
    assert!(to_ada[1].text.contains("as user eve"), "{}", to_ada[1].text);
    let to_eve = w.replies(EVE, 2).await;
    assert!(to_eve[1].text.contains("You're in"), "{}", to_eve[1].text);

    let (_, message_id) = w.tg.push_text(EVE, "eve", "thanks!");
    let to_eve = w.replies(EVE, 3).await;
    assert_eq!(to_eve[2].reply_to, Some(message_id));
    assert_eq!(w.llm.requests().len(), 1, "commands never call the model");
    let stored = inbound(&bus).await;
    let from_eve: Vec<_> = stored
        .iter()
        .filter_map(|m| m.sender.as_ref().filter(|s| s.id == EVE.to_string()))
        .collect();
    assert_eq!(from_eve.len(), 1);
    assert_eq!(from_eve[0].user_id, "eve");
    let links = nexus(&env, &["users", "list", "--user", "eve"]).await;
    assert!(
        stdout(&links).contains("telegram  99"),
        "{}",
        stdout(&links)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn strangers_beyond_the_channels_bound_get_no_code_and_the_admins_hear_of_it() {
    let w = World::new(Reply::Text("unused".into()), false).await;
    let bus = w.bus().await;
    let _gw = w
        .gateway(&[
            PAIRING,
            ("NEXUS__CHANNELS__TELEGRAM__PAIRING_MAX_PENDING", "1"),
        ])
        .await;

    write(&w, EVE, "eve", &["first"]).await;
    write(&w, 98, "mallory", &["second", "third"]).await;
    assert_eq!(w.tg.sent_to(EVE).len(), 1);
    assert!(w.tg.sent_to(98).is_empty(), "{:?}", w.tg.sent_to(98));
    assert!(inbound(&bus).await.is_empty());

    let s = bus.subjects();
    let events: Vec<Event> =
        stream_messages(&bus, &s.events_stream(), s.event(event_kind::PAIRING)).await;
    let full: Vec<_> = events
        .into_iter()
        .filter_map(|e| match e.kind {
            Some(event::Kind::Pairing(p)) if p.status == "full" => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(full.len(), 1, "{full:?}");
    assert_eq!(full[0].sender_id, "98");
}
