//! The admin console in a real browser: headless Chromium driven through chromedriver
//! against the real stack (real NATS and services, the fake model). One stack and one
//! browser serve every scenario, in the order an admin would meet them.
//!
//! With `NEXUS_SCREENSHOTS=<dir>` (`just screenshots`; a relative dir is taken from
//! `crates/gateway-api`, where cargo runs the tests) it also saves PNGs of the main
//! pages at a desktop and a phone width there, for the README.

mod webdriver;

use std::{path::PathBuf, time::Duration};

use nexus_bus::{Bus, TraceContext, scheduler_op};
use nexus_common::{domain::ChannelName, limits::windows, now_ms};
use nexus_gateway::Admission;
use nexus_proto::v1::{
    AddJobRequest, AddJobResponse, ChatRef, InboundKind, InboundMessage, Job, JobOrigin,
    ListJobsRequest, ListJobsResponse, OutboundMessage, Sender, job::When,
};
use nexus_testkit::{eventually, fake_openai::Reply, stream_messages, wait_registered};

use self::webdriver::Chrome;
use super::{ALICE, WAIT, spawn_world};

const ADMIN: &str = "admin-key-browser-0123456789";

/// Where `NEXUS_SCREENSHOTS` asks for the README's screenshots, if it does.
struct Screenshots(Option<PathBuf>);

impl Screenshots {
    fn from_env() -> Self {
        Self(std::env::var_os("NEXUS_SCREENSHOTS").map(|dir| {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            dir
        }))
    }

    /// `<name>-desktop.png` and `<name>-phone.png` of the page shown.
    async fn take(&self, chrome: &Chrome, name: &str) {
        let Some(dir) = &self.0 else { return };
        for (suffix, width, mobile) in [("desktop", 1024, false), ("phone", 390, true)] {
            let png = chrome.full_page(width, mobile).await;
            let path = dir.join(format!("{name}-{suffix}.png"));
            std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_in_a_browser_logs_in_sees_services_usage_and_live_turns_approves_a_pairing_and_pauses_a_job()
 {
    let w = spawn_world(Reply::EchoLastUser("echo: ".into()), false).await;
    let mut scheduler = w.stack.spawn("scheduler");
    let (api, chrome) = tokio::join!(w.api(&[("NEXUS__API__ADMIN_KEYS", ADMIN)]), Chrome::start());
    let bus = w.bus().await;
    wait_registered(&bus, &mut [&mut scheduler], &["scheduler"], WAIT).await;
    let shots = Screenshots::from_env();

    // A wrong key is refused and logs no one in; the admin key does.
    chrome.goto(&api.url("/admin/services")).await;
    chrome.wait_for("#login", None).await;
    chrome
        .wait_for("#key", None)
        .await
        .type_text("not-the-admin-key-0123")
        .await;
    chrome.wait_for("#login-submit", None).await.click().await;
    chrome
        .wait_for("#notice.failed", Some("that is not an admin key"))
        .await;
    chrome.goto(&api.url("/admin/services")).await;
    chrome.wait_for("#login", None).await;
    chrome.wait_for("#key", None).await.type_text(ADMIN).await;
    chrome.wait_for("#login-submit", None).await.click().await;

    // The services page lists agent-core.
    chrome.wait_for("#service-agent-core", None).await;
    assert!(chrome.url().await.ends_with("/admin/services"));
    shots.take(&chrome, "services").await;

    // Two chats make the day's bar on the usage page: 42 + 7 tokens each from the fake.
    api.ask(ALICE, "first", "s").await;
    api.ask(ALICE, "second", "s").await;
    let today = windows(now_ms()).day;
    let bar = format!("svg#usage-by-day g.bar[data-key=\"{today}\"][data-value=\"98\"]");
    chrome.reload_until(&api.url("/admin/usage"), &bar).await;
    let drawn = chrome
        .script(&format!(
            "return document.querySelector('{} rect').getBoundingClientRect().width;",
            bar.replace('\'', "\\'")
        ))
        .await;
    assert!(
        drawn.as_f64().is_some_and(|w| w > 0.0),
        "the bar is not drawn: {drawn}"
    );
    shots.take(&chrome, "usage").await;

    // A stranger writes to Telegram under `dm_policy = "pairing"` and gets a code.
    let gateway = crate::admin::eve_waits_for_pairing(&w.test.config).await;
    // The admin approves it in the page.
    chrome.goto(&api.url("/admin/pairings")).await;
    let code = chrome
        .wait_for("#pairings span[id^=\"code-\"]", None)
        .await
        .text()
        .await;
    shots.take(&chrome, "pairings").await;
    chrome
        .wait_for(&by_id(&format!("approve-{code}")), None)
        .await
        .click()
        .await;
    chrome
        .wait_for("#notice.done", Some(&format!("approved {code}")))
        .await;
    assert!(chrome.find(&by_id(&format!("code-{code}"))).await.is_none());
    // The stranger's next message is let in and answered.
    let admitted = gateway
        .admit(&["99"], crate::admin::eve(), false)
        .await
        .unwrap();
    let Admission::Allowed { .. } = admitted else {
        panic!("the approved stranger is still refused: {admitted:?}");
    };
    let msg = InboundMessage {
        id: "telegram:99:2".into(),
        channel: "telegram".into(),
        chat: Some(ChatRef {
            chat_id: "99".into(),
            thread_id: String::new(),
            is_group: false,
        }),
        sender: Some(Sender {
            id: "99".into(),
            display_name: "Eve".into(),
            user_id: gateway.admitted_user_id(&admitted, "99"),
        }),
        text: "hello again".into(),
        upstream_id: "2".into(),
        sent_at_ms: now_ms(),
        received_at_ms: now_ms(),
        kind: InboundKind::User as i32,
        ..Default::default()
    };
    gateway.intake(&msg).await.unwrap();
    let s = bus.subjects();
    let telegram = ChannelName::parse("telegram").unwrap();
    let reply: OutboundMessage = eventually("the agent's answer to Eve", WAIT, || async {
        stream_messages::<OutboundMessage>(&bus, &s.outbound_stream(), s.outbound(&telegram))
            .await
            .into_iter()
            .find(|m| m.in_reply_to == msg.id)
    })
    .await;
    assert_eq!(reply.text, "echo: hello again");
    gateway.close().await;

    // A scheduled job is paused in the page, and the scheduler says so too.
    let id = add_job(&bus).await;
    chrome.goto(&api.url("/admin/jobs")).await;
    shots.take(&chrome, "jobs").await;
    chrome
        .wait_for(&by_id(&format!("pause-{id}")), None)
        .await
        .click()
        .await;
    chrome
        .wait_for(&by_id(&format!("job-state-{id}")), Some("paused"))
        .await;
    let jobs = list_jobs(&bus).await;
    assert!(jobs.jobs.iter().any(|j| j.id == id && j.paused), "{jobs:?}");

    // The live page shows a turn starting as it happens, without what was said.
    chrome.goto(&api.url("/admin/live")).await;
    chrome.wait_for("#live-state", Some("Live.")).await;
    let body = api.ask(ALICE, "the secret plan", "live").await;
    let turn_id = body["turn_id"].as_str().unwrap().to_owned();
    chrome
        .wait_for("#live-turns li.turn_started", Some(&turn_id))
        .await;
    chrome
        .wait_for("#live-turns li.turn_finished", Some(&turn_id))
        .await;
    let shown = chrome.wait_for("#live-turns", None).await.text().await;
    assert!(!shown.contains("secret plan"), "{shown}");
    shots.take(&chrome, "live").await;

    chrome.quit().await;
}

/// A selector for the element with `id`; `#id` is no selector when the id starts with a digit.
fn by_id(id: &str) -> String {
    format!("[id=\"{id}\"]")
}

/// An hourly job of alice's, from the API channel; returns its id.
pub(crate) async fn add_job(bus: &Bus) -> String {
    let added: AddJobResponse = bus
        .request(
            bus.subjects().scheduler(scheduler_op::ADD),
            &AddJobRequest {
                job: Some(Job {
                    when: Some(When::EverySeconds(3600)),
                    owner_user_id: "alice".into(),
                    message: "stretch".into(),
                    origin: Some(JobOrigin {
                        channel: "api".into(),
                        chat_id: "alice:default".into(),
                        thread_id: String::new(),
                    }),
                    ..Default::default()
                }),
            },
            &TraceContext::new_root(),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    added.job.unwrap().id
}

async fn list_jobs(bus: &Bus) -> ListJobsResponse {
    bus.request(
        bus.subjects().scheduler(scheduler_op::LIST),
        &ListJobsRequest {
            owner_user_id: String::new(),
            limit: 0,
        },
        &TraceContext::new_root(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap()
}
