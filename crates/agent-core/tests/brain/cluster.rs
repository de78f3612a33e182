//! Beyond one machine: the stack on a three-node NATS cluster (the shipped
//! `deploy/nats/cluster/nats.conf`) with every stream and bucket kept on three
//! nodes. The node leading `N_INBOUND` dies in the middle of a burst; the
//! cluster elects another leader and every message is still answered once.

use nexus_common::domain::Namespace;
use nexus_testkit::NatsCluster;

use super::*;

const SESSIONS: usize = 20;
const PER_SESSION: usize = 10;

/// The server leading `stream`, once the cluster has one.
async fn leader(bus: &Bus, stream: &str) -> Option<String> {
    let mut stream = bus.jetstream().get_stream(stream).await.ok()?;
    stream.info().await.ok()?.cluster.as_ref()?.leader.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_leader_dies_mid_burst_and_every_message_is_answered_once() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cluster = NatsCluster::start(&repo.join("deploy/nats/cluster/nats.conf")).await;
    let mut test = TestEnv::with_nats(cluster.url());
    test.config.nats.replicas = 3;

    // The streams, with three replicas, once the nodes have elected a JetStream leader.
    let client = async_nats::ConnectOptions::new()
        .connect(nexus_bus::NatsAccess::servers(&cluster.url()).unwrap())
        .await
        .unwrap();
    let bus = Bus::from_client(
        client,
        Namespace::parse(&test.namespace).unwrap(),
        "test",
        Duration::from_secs(10),
    )
    .with_replicas(3);
    eventually(
        "JetStream on the cluster",
        Duration::from_secs(60),
        || async { bus.ensure_streams().await.ok() },
    )
    .await;

    let inbound_stream = bus.subjects().inbound_stream();
    let first_leader = eventually("the leader of N_INBOUND", Duration::from_secs(30), || {
        leader(&bus, &inbound_stream)
    })
    .await;

    // The services are given only the leader's address, so its death takes their
    // connections too: they must fail over to the nodes the cluster told them of.
    let fake = FakeOpenAi::start(Reply::EchoLastUser("re: ".into())).await;
    fake.set_delay(Duration::from_millis(20));
    let mut env = llm_env(&fake);
    env.push(("NEXUS__NATS__REPLICAS", "3".into()));
    env.push(("NATS_URL", cluster.node(&first_leader).url()));
    let stack = Stack::start(&test, &refs(&env)).await;
    let _second = stack.spawn("agent-core");
    let mut info = bus.jetstream().get_stream(&inbound_stream).await.unwrap();
    let info = info.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3, "N_INBOUND keeps three copies");

    // The burst: each session in order, its next message only once the last is
    // stored. A publish the failover interrupts is retried under the same id, as
    // gateways do, and the stream's duplicate window drops a second copy. The first
    // half goes out before the leader dies, the second while the cluster replaces it.
    let burst = |messages: std::ops::Range<usize>| {
        let mut senders = tokio::task::JoinSet::new();
        for s in 0..SESSIONS {
            let (bus, messages) = (bus.clone(), messages.clone());
            senders.spawn(async move {
                let chat = format!("s{s}");
                for i in messages {
                    let msg = inbound(&chat, i, &format!("{chat} message {i}"), "u1");
                    eventually("the message stored", Duration::from_secs(60), || async {
                        bus.publish_inbound(&msg, &TraceContext::new_root())
                            .await
                            .ok()
                    })
                    .await;
                }
            });
        }
        senders
    };
    let mut first = burst(0..PER_SESSION / 2);
    while let Some(sent) = first.join_next().await {
        sent.unwrap();
    }

    // Kill the leader while turns are being answered.
    replies(&bus, SESSIONS, Duration::from_secs(120)).await;
    let killed = eventually("the leader of N_INBOUND", Duration::from_secs(30), || {
        leader(&bus, &inbound_stream)
    })
    .await;
    cluster.node(&killed).kill();
    let mut second = burst(PER_SESSION / 2..PER_SESSION);
    let next = eventually(
        "a new leader of N_INBOUND",
        Duration::from_secs(60),
        || async { leader(&bus, &inbound_stream).await.filter(|l| *l != killed) },
    )
    .await;
    tracing::info!(%killed, %next, "stream leader replaced");
    while let Some(sent) = second.join_next().await {
        sent.unwrap();
    }

    let total = SESSIONS * PER_SESSION;
    replies(&bus, total, Duration::from_secs(180)).await;
    settled(&bus, Duration::from_secs(60)).await;
    let all = replies(&bus, total, Duration::from_secs(30)).await;
    assert_eq!(all.len(), total, "a reply was doubled or lost");
    assert_once_and_in_order(&all, SESSIONS, PER_SESSION);
}
