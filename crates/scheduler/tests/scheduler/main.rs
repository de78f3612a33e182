//! The scheduler against real NATS and real databases (a SQLite file, and a fresh
//! PostgreSQL schema per test): the claim that makes each due time fire once, the
//! republishing of a claimed fire, missed-fire policies; then the built binaries as
//! processes (`replicas.rs`): replicas that are killed, a stack that restarts, the
//! `cron` tool's refusals and `nexus cron`.
//!
//! Library tests drive [`Runner::pass`] with the time they pass in, so hours of a
//! schedule take no time; process tests use second-long intervals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod replicas;
mod tool;

use std::time::Duration;

use futures::StreamExt as _;
use nexus_bus::{Bus, TraceContext, async_nats::jetstream};
use nexus_common::{domain::scheduled, now_ms};
use nexus_proto::v1::InboundMessage;
use nexus_testkit::TestEnv;
use prost::Message as _;
use scheduler::{
    Runner, Store,
    job::{Job, Origin},
    runner::{REPUBLISH_AFTER, fire_message},
    schedule::{MissedPolicy, Schedule},
    store::Claim,
};
use sqlx::{Connection as _, Executor as _, postgres::PgConnection};

/// A database for one test: a SQLite file in a temporary directory, or a fresh
/// PostgreSQL schema that is dropped afterwards.
pub struct Db {
    pub url: String,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            url: format!("sqlite://{}/jobs.db?mode=rwc", dir.path().display()),
            schema: None,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> Self {
        let base = nexus_testkit::postgres_url();
        let schema = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut admin = PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {base} must be running for tests: {e}"));
        admin
            .execute(format!("CREATE SCHEMA {schema}").as_str())
            .await
            .unwrap();
        let _ = admin.close().await;
        Self {
            url: format!("{base}?options=-c%20search_path%3D{schema}"),
            schema: Some(schema),
            _dir: None,
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&nexus_testkit::postgres_url()).await {
                    let _ = admin
                        .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// Every inbound message in the namespace's stream, in stream order.
pub async fn inbound(bus: &Bus) -> Vec<InboundMessage> {
    let s = bus.subjects();
    let mut stream = bus
        .jetstream()
        .get_stream(s.inbound_stream())
        .await
        .unwrap();
    let count = stream.info().await.unwrap().state.messages;
    if count == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: s.inbound_all(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < count {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream's messages")
            .unwrap()
            .unwrap();
        out.push(InboundMessage::decode(m.payload.clone()).unwrap());
    }
    out
}

/// The due time a fire stands for.
pub fn due_of(m: &InboundMessage) -> i64 {
    m.metadata[scheduled::DUE_MS].parse().unwrap()
}

fn job(id: &str, schedule: Schedule, next_run_ms: i64, missed: MissedPolicy) -> Job {
    Job {
        id: id.into(),
        owner: "ada".into(),
        origin: Origin {
            channel: "cli".into(),
            chat_id: format!("chat-{id}"),
            thread_id: String::new(),
        },
        message: format!("do {id}"),
        schedule,
        tz: "Europe/Berlin".into(),
        missed,
        paused: false,
        next_run_ms: Some(next_run_ms),
        last_run_ms: None,
        last_outcome: String::new(),
        created_at_ms: next_run_ms - 1,
    }
}

fn every(secs: u64, anchor_ms: i64) -> Schedule {
    Schedule::Every {
        every: Duration::from_secs(secs),
        anchor_ms,
    }
}

const GRACE: Duration = Duration::from_secs(60);

/// Each body becomes one test per backend.
macro_rules! on_both_backends {
    ($($body:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $body() {
                    super::$body(super::Db::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $body() {
                    super::$body(super::Db::postgres().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    two_replicas_racing_for_every_due_time_fire_each_exactly_once,
    a_fire_claimed_by_a_replica_that_died_before_publishing_is_published_by_another,
    missed_due_times_fire_once_late_or_are_skipped_as_each_job_says,
    a_paused_job_fires_nothing_and_resumes_from_now,
    a_stored_job_that_is_no_longer_valid_is_paused_and_the_others_still_fire,
);

async fn two_replicas_racing_for_every_due_time_fire_each_exactly_once(db: Db) {
    let test = TestEnv::new();
    let bus = test.bus("scheduler-test").await;
    // Two replicas: two pools on one database, as two processes would have.
    let (a, b) = (
        Store::connect(&db.url).await.unwrap(),
        Store::connect(&db.url).await.unwrap(),
    );
    let t0 = now_ms();
    a.insert(&job("j1", every(1, t0), t0 + 1000, MissedPolicy::Skip), 50)
        .await
        .unwrap();
    let ra = Runner::new(a, bus.clone(), "a".into(), GRACE);
    let rb = Runner::new(b, bus.clone(), "b".into(), GRACE);
    let mut fired = 0;
    for k in 1..=20 {
        let now = t0 + k * 1000;
        let (pa, pb) = tokio::join!(ra.pass(now), rb.pass(now));
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        assert_eq!(pa.unpublished + pb.unpublished, 0);
        fired += pa.fired + pb.fired;
    }
    // Counted at the publishers: JetStream's dedupe would hide a second publish.
    assert_eq!(
        fired, 20,
        "each due time is published by exactly one replica"
    );
    let dues: Vec<i64> = inbound(&bus).await.iter().map(due_of).collect();
    assert_eq!(dues, (1..=20).map(|k| t0 + k * 1000).collect::<Vec<_>>());
}

async fn a_fire_claimed_by_a_replica_that_died_before_publishing_is_published_by_another(db: Db) {
    let test = TestEnv::new();
    let bus = test.bus("scheduler-test").await;
    let store = Store::connect(&db.url).await.unwrap();
    let t0 = now_ms();
    let hourly = job("j1", every(3600, t0 - 1), t0, MissedPolicy::RunOnceLate);
    store.insert(&hourly, 50).await.unwrap();
    let claim = Claim {
        job_id: "j1".into(),
        due_ms: t0,
        next_ms: Some(t0 + 3_600_000),
        last_run_ms: Some(t0),
        outcome: "claimed".into(),
        fire: Some(fire_message(&hourly, t0, false, t0).encode_to_vec()),
        by: "dead replica".into(),
        now_ms: t0,
    };
    assert!(store.claim(&claim).await.unwrap());
    // The due time is taken: nobody else can claim it again.
    assert!(!store.claim(&claim).await.unwrap());

    let survivor = Runner::new(store.clone(), bus.clone(), "survivor".into(), GRACE);
    // While the claimant may still be publishing, the others leave its fire alone.
    let early = survivor.pass(t0 + 1000).await.unwrap();
    assert_eq!(early.fired, 0);
    assert!(inbound(&bus).await.is_empty());
    let republish = t0 + REPUBLISH_AFTER.as_millis() as i64 + 1;
    survivor.pass(republish).await.unwrap();
    let fires = inbound(&bus).await;
    assert_eq!(fires.len(), 1);
    assert_eq!(fires[0].id, format!("sched:j1:{t0}"));
    assert_eq!(fires[0].text, "do j1");
    assert!(store.unpublished(republish, 10).await.unwrap().is_empty());

    // Published, but the crash came before the record: the copy is deduplicated.
    let daily = job("j2", every(86_400, t0 - 1), t0, MissedPolicy::RunOnceLate);
    store.insert(&daily, 50).await.unwrap();
    let fire = fire_message(&daily, t0, false, t0);
    store
        .claim(&Claim {
            job_id: "j2".into(),
            next_ms: Some(t0 + 86_400_000),
            fire: Some(fire.encode_to_vec()),
            ..claim.clone()
        })
        .await
        .unwrap();
    bus.publish_inbound_as(&fire, &fire.id, &TraceContext::new_root())
        .await
        .unwrap();
    survivor.pass(republish).await.unwrap();
    let ids: Vec<String> = inbound(&bus).await.into_iter().map(|m| m.id).collect();
    assert_eq!(ids, [format!("sched:j1:{t0}"), format!("sched:j2:{t0}")]);
    assert!(store.unpublished(republish, 10).await.unwrap().is_empty());
}

async fn missed_due_times_fire_once_late_or_are_skipped_as_each_job_says(db: Db) {
    let test = TestEnv::new();
    let bus = test.bus("scheduler-test").await;
    let store = Store::connect(&db.url).await.unwrap();
    let t0 = now_ms();
    for (id, schedule, policy) in [
        ("late", every(10, t0), MissedPolicy::RunOnceLate),
        ("skip", every(10, t0), MissedPolicy::Skip),
        (
            "once-late",
            Schedule::At { at_ms: t0 + 10_000 },
            MissedPolicy::RunOnceLate,
        ),
        (
            "once-skip",
            Schedule::At { at_ms: t0 + 10_000 },
            MissedPolicy::Skip,
        ),
    ] {
        store
            .insert(&job(id, schedule, t0 + 10_000, policy), 50)
            .await
            .unwrap();
    }
    let runner = Runner::new(store.clone(), bus.clone(), "r".into(), GRACE);
    // Everything was down for five minutes: 30 due times of each repeating job passed.
    let back = t0 + 10_000 + 300_000;
    runner.pass(back).await.unwrap();
    let fires = inbound(&bus).await;
    let mut fired: Vec<(String, i64, bool)> = fires
        .iter()
        .map(|m| {
            (
                m.metadata[scheduled::JOB_ID].clone(),
                due_of(m),
                m.metadata.get(scheduled::LATE).is_some_and(|l| l == "true"),
            )
        })
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        [
            ("late".to_owned(), t0 + 10_000, true),
            ("once-late".to_owned(), t0 + 10_000, true),
        ],
        "one late fire for each run_once_late job, none for the skip jobs"
    );
    let get = |id: &'static str| {
        let store = store.clone();
        async move { store.get(id, None).await.unwrap().unwrap() }
    };
    // Both repeating jobs carry on from the grid after now; the one-shots are done.
    assert_eq!(get("late").await.next_run_ms, Some(t0 + 320_000));
    let skip = get("skip").await;
    assert_eq!(skip.next_run_ms, Some(t0 + 320_000));
    assert!(
        skip.last_outcome.contains("skipped"),
        "{}",
        skip.last_outcome
    );
    assert_eq!(skip.last_run_ms, None);
    assert_eq!(get("once-late").await.next_run_ms, None);
    let once_skip = get("once-skip").await;
    assert_eq!(once_skip.next_run_ms, None);
    assert!(once_skip.last_outcome.contains("skipped"));
    assert!(get("late").await.last_outcome.starts_with("fired late"));

    // Back on time, both repeating jobs fire again, not late.
    runner.pass(t0 + 320_000).await.unwrap();
    let fires = inbound(&bus).await;
    let on_time: Vec<&InboundMessage> =
        fires.iter().filter(|m| due_of(m) == t0 + 320_000).collect();
    assert_eq!(on_time.len(), 2);
    assert!(
        on_time
            .iter()
            .all(|m| !m.metadata.contains_key(scheduled::LATE))
    );
}

async fn a_paused_job_fires_nothing_and_resumes_from_now(db: Db) {
    let test = TestEnv::new();
    let bus = test.bus("scheduler-test").await;
    let store = Store::connect(&db.url).await.unwrap();
    let jobs = scheduler::Jobs::new(
        store.clone(),
        None,
        nexus_common::config::SchedulerConfig {
            min_interval_secs: 1,
            ..Default::default()
        },
        "UTC".into(),
    );
    let added = jobs
        .add(scheduler::NewJob {
            owner: "ada".into(),
            origin: Some(Origin {
                channel: "cli".into(),
                chat_id: "c1".into(),
                thread_id: String::new(),
            }),
            message: "ping".into(),
            every_seconds: Some(60),
            ..Default::default()
        })
        .await
        .unwrap();
    let first_due = added.next_run_ms.unwrap();
    let admin = scheduler::Actor::Admin;
    let paused = jobs.pause(&admin, &added.id).await.unwrap();
    assert!(paused.paused);
    let runner = Runner::new(store.clone(), bus.clone(), "r".into(), GRACE);
    let pass = runner.pass(first_due + 5_000).await.unwrap();
    assert_eq!(pass.fired, 0);
    assert!(inbound(&bus).await.is_empty());
    assert_eq!(store.next_due_ms().await.unwrap(), None);
    let resumed = jobs.resume(&admin, &added.id).await.unwrap();
    assert!(!resumed.paused);
    assert!(resumed.next_run_ms.unwrap() > now_ms() - 1000);
    assert_eq!(store.next_due_ms().await.unwrap(), resumed.next_run_ms);
}

#[tokio::test]
async fn the_store_refuses_urls_it_cannot_open() {
    let e = Store::connect("mysql://db/x").await.unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
}

async fn a_stored_job_that_is_no_longer_valid_is_paused_and_the_others_still_fire(db: Db) {
    let test = TestEnv::new();
    let bus = test.bus("scheduler-test").await;
    let store = Store::connect(&db.url).await.unwrap();
    let t0 = now_ms();
    for id in ["broken", "fine"] {
        store
            .insert(&job(id, every(60, t0 - 60_000), t0, MissedPolicy::Skip), 50)
            .await
            .unwrap();
    }
    // Damaged behind the scheduler's back (a hand edit, a bad restore).
    let damage = "UPDATE scheduler_jobs SET cron_expr = 'not cron' WHERE id = 'broken'";
    if db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query(damage).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query(damage).execute(&pool).await.unwrap();
        pool.close().await;
    }
    let runner = Runner::new(store.clone(), bus.clone(), "r".into(), GRACE);
    let pass = runner.pass(t0).await.unwrap();
    assert_eq!(pass.fired, 1);
    let fires = inbound(&bus).await;
    assert_eq!(fires.len(), 1);
    assert_eq!(fires[0].metadata[scheduled::JOB_ID], "fine");
    // Paused with the reason, out of the way of the loop; the good job carries on.
    let broken = store.list(None, 0).await.unwrap();
    assert_eq!(broken.len(), 1, "only the valid job is listed");
    assert_eq!(store.next_due_ms().await.unwrap(), Some(t0 + 60_000));
}
