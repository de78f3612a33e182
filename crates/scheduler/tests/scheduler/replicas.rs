//! Scheduler replicas as processes: one SIGKILLed between fires and started
//! again, and a whole stack stopped and started, with second-long intervals.

use std::{collections::BTreeSet, time::Duration};

use nexus_bus::{Bus, TraceContext, scheduler_op};
use nexus_common::{domain::scheduled, now_ms};
use nexus_proto::v1::{
    AddJobRequest, AddJobResponse, Job, JobOrigin, ListJobsRequest, ListJobsResponse,
    MissedFirePolicy, OutboundMessage, job::When,
};
use nexus_testkit::{
    ServiceProcess, Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
};
use prost::Message as _;

use super::{Db, due_of, inbound};

const WAIT: Duration = Duration::from_secs(60);

/// Adds a job through the operators' endpoint.
async fn add(bus: &Bus, chat: &str, every_seconds: u64, missed: MissedFirePolicy) -> Job {
    let job = Job {
        when: Some(When::EverySeconds(every_seconds)),
        owner_user_id: "ada".into(),
        message: format!("check {chat}"),
        origin: Some(JobOrigin {
            channel: "cli".into(),
            chat_id: chat.into(),
            thread_id: String::new(),
        }),
        missed: missed as i32,
        ..Default::default()
    };
    let reply: AddJobResponse = bus
        .request(
            bus.subjects().scheduler(scheduler_op::ADD),
            &AddJobRequest { job: Some(job) },
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap();
    reply.job.unwrap()
}

async fn replicas(bus: &Bus) -> usize {
    bus.discover_services(Duration::from_millis(200))
        .await
        .unwrap_or_default()
        .iter()
        .filter(|s| s.name == "scheduler")
        .count()
}

/// The due times of `job` fired so far, in stream order.
async fn dues(bus: &Bus, job: &str) -> Vec<i64> {
    inbound(bus)
        .await
        .iter()
        .filter(|m| m.metadata.get(scheduled::JOB_ID).map(String::as_str) == Some(job))
        .map(due_of)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_with_one_killed_between_fires_fire_every_due_time_exactly_once() {
    let test = TestEnv::new();
    let db = Db::postgres().await;
    let mut env = test.process_env();
    env.push(("DATABASE_URL".into(), db.url.clone()));
    env.push(("NEXUS__SCHEDULER__MIN_INTERVAL_SECS".into(), "1".into()));
    let a = ServiceProcess::spawn("scheduler", &[], &env);
    let b = ServiceProcess::spawn("scheduler", &[], &env);
    let bus = test.bus("test").await;
    eventually("two scheduler replicas", WAIT, || async {
        (replicas(&bus).await == 2).then_some(())
    })
    .await;

    let job = add(&bus, "c1", 1, MissedFirePolicy::RunOnceLate).await;
    let first = job.next_run_ms;
    let fired = |n: usize| {
        let bus = bus.clone();
        let id = job.id.clone();
        async move {
            eventually(&format!("{n} fires"), WAIT, || async {
                (dues(&bus, &id).await.len() >= n).then_some(())
            })
            .await
        }
    };
    fired(3).await;
    // Right after a fire, so the kill lands between two due times.
    a.kill().await;
    fired(6).await;
    let a = ServiceProcess::spawn("scheduler", &[], &env);
    eventually("the killed replica back", WAIT, || async {
        (replicas(&bus).await == 2).then_some(())
    })
    .await;
    fired(10).await;

    // Every due time from the first to the last fired, none skipped (a fire the
    // killed replica claimed but did not publish is published by the other one).
    let all = eventually("a fire for every due time so far", WAIT, || async {
        let d = dues(&bus, &job.id).await;
        let set: BTreeSet<i64> = d.iter().copied().collect();
        let last = *set.last()?;
        let expected: BTreeSet<i64> = (0..=(last - first) / 1000)
            .map(|k| first + k * 1000)
            .collect();
        (set == expected).then_some(d)
    })
    .await;
    let distinct: BTreeSet<&i64> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a due time fired twice: {all:?}");
    for p in [a, b] {
        assert!(p.terminate(Duration::from_secs(20)).await.success());
    }
    drop(db);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stack_stopped_and_started_keeps_its_jobs_and_honours_the_missed_fire_policy() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("Done: checked.".into())).await;
    let base = fake.base_url();
    let llm = [
        ("OPENAI_API_KEY", "sk-test-00000000"),
        ("OPENAI_BASE_URL", base.as_str()),
        ("NEXUS__LLM__MODEL", "gpt-4.1-mini"),
        ("NEXUS__LLM__STREAM", "false"),
        ("NEXUS__SCHEDULER__MIN_INTERVAL_SECS", "1"),
        ("NEXUS__SCHEDULER__MISFIRE_GRACE_SECS", "1"),
    ];
    let mut stack = Stack::start(&test, &llm).await;
    let scheduler = stack.spawn("scheduler");
    let bus = test.bus("test").await;
    stack.wait_ready(&test, &["scheduler"]).await;
    let late = add(&bus, "late", 2, MissedFirePolicy::RunOnceLate).await;
    let skip = add(&bus, "skip", 2, MissedFirePolicy::Skip).await;
    eventually("a fire of each job, answered", WAIT, || async {
        let answered = outbound(&bus).await;
        let answered = |chat: &str| {
            answered
                .iter()
                .any(|r| r.chat.as_ref().is_some_and(|c| c.chat_id == chat))
        };
        (answered("late") && answered("skip")).then_some(())
    })
    .await;

    // Everything stops; no due time after `down` can have fired before it.
    assert!(scheduler.terminate(Duration::from_secs(20)).await.success());
    let down = now_ms();
    for p in [stack.agent.take(), stack.tools.take(), stack.memory.take()]
        .into_iter()
        .flatten()
    {
        assert!(p.terminate(Duration::from_secs(30)).await.success());
    }
    // The event under test is time passing while nothing runs: two due times of
    // each job go by, and both are later than the one-second grace when seen.
    tokio::time::sleep(Duration::from_millis(5_000)).await;

    let mut stack = Stack::start(&test, &llm).await;
    let back = now_ms();
    let _scheduler = stack.spawn("scheduler");
    stack.wait_ready(&test, &["scheduler"]).await;
    let listed: ListJobsResponse = bus
        .request(
            bus.subjects().scheduler(scheduler_op::LIST),
            &ListJobsRequest::default(),
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap();
    let ids: BTreeSet<&str> = listed.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([late.id.as_str(), skip.id.as_str()]));

    // Both jobs fire on time again after the restart.
    eventually("on-time fires after the restart", WAIT, || async {
        let l = dues(&bus, &late.id).await;
        let s = dues(&bus, &skip.id).await;
        (l.iter().any(|d| *d > back) && s.iter().any(|d| *d > back)).then_some(())
    })
    .await;
    let missed = |dues: Vec<i64>| -> Vec<i64> {
        dues.into_iter()
            .filter(|d| *d > down && *d < back)
            .collect()
    };
    let late_missed = missed(dues(&bus, &late.id).await);
    assert_eq!(
        late_missed.len(),
        1,
        "run_once_late fires once for the missed ones: {late_missed:?}"
    );
    let skip_missed = missed(dues(&bus, &skip.id).await);
    assert!(
        skip_missed.is_empty(),
        "skip fired a missed due time: {skip_missed:?}"
    );
    let fires = inbound(&bus).await;
    let late_fire = fires
        .iter()
        .find(|m| due_of(m) == late_missed[0] && m.metadata[scheduled::JOB_ID] == late.id)
        .unwrap();
    assert_eq!(
        late_fire.metadata.get(scheduled::LATE).map(String::as_str),
        Some("true")
    );
    // The late fire ran a turn like any other.
    eventually("the late fire answered", WAIT, || async {
        outbound(&bus)
            .await
            .iter()
            .any(|r| r.in_reply_to == late_fire.id)
            .then_some(())
    })
    .await;
}

/// Every reply in `N_OUTBOUND`.
async fn outbound(bus: &Bus) -> Vec<OutboundMessage> {
    use futures::StreamExt as _;
    let s = bus.subjects();
    let mut stream = bus
        .jetstream()
        .get_stream(s.outbound_stream())
        .await
        .unwrap();
    let count = stream.info().await.unwrap().state.messages;
    if count == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(
            nexus_bus::async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: s.outbound_all(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < count {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        out.push(OutboundMessage::decode(m.payload.clone()).unwrap());
    }
    out
}
