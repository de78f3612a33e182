//! Identities: resolving a sender to a user, linking senders of several
//! channels to one user, and the profile that user gets on first contact.

use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;
use nexus_bus::{Bus, BusError, MemoryOp, TraceContext};
use nexus_proto::v1::{
    ContextRequest, ContextResponse, IdentityRequest, IdentityResponse, LinkIdentity,
    ListIdentities, ResolveIdentity, SessionRef, identity_request::Op,
};
use nexus_testkit::TestEnv;
use sqlx::{Connection as _, Executor as _, postgres::PgConnection};

use crate::spawn_memory_svc;

async fn identity(bus: &Bus, op: Op) -> Result<IdentityResponse, BusError> {
    bus.request(
        bus.subjects().memory(MemoryOp::Identity),
        &IdentityRequest { op: Some(op) },
        &TraceContext::new_root(),
        None,
    )
    .await
}

async fn resolve(bus: &Bus, channel: &str, sender_id: &str) -> String {
    let op = Op::Resolve(ResolveIdentity {
        channel: channel.into(),
        sender_id: sender_id.into(),
    });
    identity(bus, op).await.unwrap().user_id
}

async fn link(
    bus: &Bus,
    channel: &str,
    sender_id: &str,
    user_id: &str,
) -> Result<IdentityResponse, BusError> {
    let op = Op::Link(LinkIdentity {
        channel: channel.into(),
        sender_id: sender_id.into(),
        user_id: user_id.into(),
    });
    identity(bus, op).await
}

/// `(channel, sender, user)` of each link, in the listed order.
async fn list(bus: &Bus, user_id: &str) -> Vec<(String, String, String)> {
    let op = Op::List(ListIdentities {
        user_id: user_id.into(),
    });
    identity(bus, op)
        .await
        .unwrap()
        .identities
        .into_iter()
        .map(|i| (i.channel, i.sender_id, i.user_id))
        .collect()
}

fn triple(channel: &str, sender: &str, user: &str) -> (String, String, String) {
    (channel.into(), sender.into(), user.into())
}

/// A context for a message from `sender_id` in a chat of `channel`.
async fn context_from(bus: &Bus, channel: &str, sender_id: &str) -> ContextResponse {
    // What gateways name: the sender's default user; a link wins over it.
    context_named(bus, channel, sender_id, &format!("{channel}_{sender_id}")).await
}

async fn context_named(bus: &Bus, channel: &str, sender_id: &str, named: &str) -> ContextResponse {
    let req = ContextRequest {
        session: Some(SessionRef {
            channel: channel.into(),
            chat_id: format!("chat-{sender_id}"),
            thread_id: String::new(),
        }),
        user_id: named.into(),
        query: "hello".into(),
        history_turns: 0,
        channel_sender_id: sender_id.into(),
        ..Default::default()
    };
    bus.request(
        bus.subjects().memory(MemoryOp::Context),
        &req,
        &TraceContext::new_root(),
        None,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_sender_is_its_default_user_until_linked_and_a_new_link_replaces_the_old() {
    let env = TestEnv::new();
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;

    assert_eq!(resolve(&bus, "telegram", "42").await, "telegram_42");
    assert_eq!(
        resolve(&bus, "whatsapp", "+49 151").await,
        "whatsapp__49_151"
    );
    assert!(list(&bus, "").await.is_empty());

    let linked = link(&bus, "telegram", "42", "ada").await.unwrap();
    assert_eq!(linked.user_id, "ada");
    assert_eq!(linked.identities.len(), 1);
    assert!(linked.identities[0].linked_at_ms > 0);
    link(&bus, "slack", "U7", "ada").await.unwrap();
    link(&bus, "cli", "bob", "bob-1").await.unwrap();
    assert_eq!(resolve(&bus, "telegram", "42").await, "ada");
    assert_eq!(resolve(&bus, "slack", "U7").await, "ada");
    assert_eq!(resolve(&bus, "slack", "U8").await, "slack_U8");

    assert_eq!(
        list(&bus, "ada").await,
        [
            triple("slack", "U7", "ada"),
            triple("telegram", "42", "ada")
        ]
    );
    assert_eq!(list(&bus, "").await.len(), 3);

    link(&bus, "telegram", "42", "grace").await.unwrap();
    assert_eq!(resolve(&bus, "telegram", "42").await, "grace");
    assert_eq!(list(&bus, "ada").await, [triple("slack", "U7", "ada")]);
    svc.stop().await;
}

#[tokio::test]
async fn a_link_to_an_unsafe_user_id_or_from_a_bad_sender_is_a_400_and_changes_nothing() {
    let env = TestEnv::new();
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;

    let too_long = "a".repeat(97);
    let cases = [
        ("telegram", "42", "../ada"),
        ("telegram", "42", "a da"),
        ("telegram", "42", ""),
        ("telegram", "42", too_long.as_str()),
        ("telegram", "", "ada"),
        ("telegram", "4\n2", "ada"),
        ("Tele gram", "42", "ada"),
    ];
    for (channel, sender, user) in cases {
        let err = link(&bus, channel, sender, user).await.unwrap_err();
        assert!(
            matches!(err, BusError::Remote { code: 400, .. }),
            "{channel:?} {sender:?} {user:?}: {err}"
        );
    }
    assert!(list(&bus, "").await.is_empty());
    let missing = bus
        .request::<_, IdentityResponse>(
            bus.subjects().memory(MemoryOp::Identity),
            &IdentityRequest { op: None },
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(missing, BusError::Remote { code: 400, .. }),
        "{missing}"
    );

    // The longest id allowed is fine.
    let longest = "a".repeat(96);
    link(&bus, "telegram", "42", &longest).await.unwrap();
    assert_eq!(resolve(&bus, "telegram", "42").await, longest);
    svc.stop().await;
}

#[tokio::test]
async fn two_linked_senders_share_one_profile_created_on_first_contact_and_never_overwritten() {
    let env = TestEnv::new();
    env.write("USER_telegram_9.md", "# Nine\nWrote this myself.\n");
    let bus = env.bus("test").await;
    let svc = spawn_memory_svc(env.config.clone(), &bus).await;
    link(&bus, "telegram", "42", "ada").await.unwrap();
    link(&bus, "slack", "U7", "ada").await.unwrap();
    let profile = env.workspace_path().join("USER_ada.md");
    assert!(!profile.exists());

    let first = context_from(&bus, "telegram", "42").await;
    assert_eq!(first.user_id, "ada");
    let created = std::fs::read_to_string(&profile).unwrap();
    assert!(
        created.starts_with("# USER_ada.md — profile of ada\n"),
        "{created}"
    );
    assert!(!created.contains("default profile"), "{created}");
    assert_eq!(first.user_profile_md, created);

    // A person edits the profile; the other channel sees the edit, not a new copy.
    std::fs::write(&profile, "# Ada\nPrefers German.\n").unwrap();
    let second = context_from(&bus, "slack", "U7").await;
    assert_eq!(second.user_id, "ada");
    assert_eq!(second.user_profile_md, "# Ada\nPrefers German.\n");
    assert_eq!(
        std::fs::read_to_string(&profile).unwrap(),
        "# Ada\nPrefers German.\n"
    );

    // A link wins over the user a gateway named.
    let linked = context_named(&bus, "telegram", "42", "someone_else").await;
    assert_eq!(linked.user_id, "ada");
    // An unlinked sender is the user the gateway named (an API key's user)...
    let named = context_named(&bus, "api", "k1", "bob").await;
    assert_eq!(named.user_id, "bob");
    // ...or its default user, and a profile someone wrote stays.
    let nine = context_named(&bus, "telegram", "9", "").await;
    assert_eq!(nine.user_id, "telegram_9");
    assert_eq!(nine.user_profile_md, "# Nine\nWrote this myself.\n");
    assert_eq!(
        std::fs::read_to_string(env.workspace_path().join("USER_telegram_9.md")).unwrap(),
        "# Nine\nWrote this myself.\n"
    );
    svc.stop().await;
}

#[tokio::test]
async fn postgres_keeps_linked_identities_across_a_restart() {
    let mut env = TestEnv::new();
    let url = nexus_testkit::postgres_url();
    let schema = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut admin = PgConnection::connect(&url).await.unwrap();
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    env.config.database.url = format!("{url}{separator}options=-csearch_path%3D{schema}");

    let outcome = AssertUnwindSafe(async {
        let bus = env.bus("test").await;
        let svc = spawn_memory_svc(env.config.clone(), &bus).await;
        link(&bus, "telegram", "42", "ada").await.unwrap();
        link(&bus, "slack", "U7", "ada").await.unwrap();
        link(&bus, "slack", "U7", "ada").await.unwrap();
        svc.stop().await;

        let svc = spawn_memory_svc(env.config.clone(), &bus).await;
        assert_eq!(resolve(&bus, "telegram", "42").await, "ada");
        assert_eq!(resolve(&bus, "telegram", "43").await, "telegram_43");
        assert_eq!(
            list(&bus, "ada").await,
            [
                triple("slack", "U7", "ada"),
                triple("telegram", "42", "ada")
            ]
        );
        assert_eq!(context_from(&bus, "slack", "U7").await.user_id, "ada");
        svc.stop().await;

        let (links,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {schema}.identities"))
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(links, 2);
    })
    .catch_unwind()
    .await;

    admin
        .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
