//! The admin console over HTTP, against the real stack on real NATS: off without an
//! admin key, refusing wrong keys, forged or expired cookies and forms without the
//! session's token; and each page reading and acting through the same NATS requests
//! the CLI uses (services, the usage ledger, pairing, the scheduler) and the live
//! view of turns from their events.

use std::time::Duration;

use gateway_api::admin::session::{AdminKeys, COOKIE, SESSION_SECS};
use nexus_bus::{Bus, TraceContext, scheduler_op};
use nexus_common::{config::DmPolicy, limits::windows, now_ms};
use nexus_gateway::{Admission, Gateway, pairing::Stranger};
use nexus_proto::v1::{
    ChatRef, InboundKind, InboundMessage, ListJobsRequest, ListJobsResponse, OutboundMessage,
    Sender, ServiceNotice, event,
};
use nexus_testkit::{eventually, fake_openai::Reply, stream_messages, wait_registered};

use super::{ALICE, Api, SseReader, WAIT, spawn_world};

const ADMIN: &str = "admin-key-0123456789abcdef";

fn admin_env() -> [(&'static str, &'static str); 1] {
    [("NEXUS__API__ADMIN_KEYS", ADMIN)]
}

/// A browser without cookie jar or redirects: each step is asserted by hand.
struct Browser<'a> {
    api: &'a Api,
    client: reqwest::Client,
    cookie: Option<String>,
}

/// `application/x-www-form-urlencoded` of `fields`.
fn form(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The CSRF token in a page's forms.
fn csrf_in(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in the page: {page}"))
        .to_owned()
}

impl<'a> Browser<'a> {
    fn new(api: &'a Api) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            api,
            client,
            cookie: None,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut req = self.client.get(self.api.url(path));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        req.send().await.unwrap()
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.api.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        req.send().await.unwrap()
    }

    /// A page that must answer 200, as text.
    async fn page(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.text().await.unwrap()
    }

    /// Logs in with the admin key and keeps the session cookie.
    async fn login(&mut self) {
        let r = self.post("/admin/login", &[("key", ADMIN)]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/admin/services");
        let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        let pair = set.split(';').next().unwrap().to_owned();
        assert!(pair.starts_with(&format!("{COOKIE}=v1.")), "{set}");
        self.cookie = Some(pair);
    }

    /// POSTs a form of the page at `page` with that page's CSRF token.
    async fn submit(&self, page: &str, action: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let token = csrf_in(&self.page(page).await);
        let mut fields = fields.to_vec();
        fields.push(("csrf", &token));
        let r = self.post(action, &fields).await;
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

fn redirected_to_login(r: &reqwest::Response) -> bool {
    r.status() == 303 && r.headers()["location"] == "/admin/login"
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_off_without_an_admin_key_and_refuses_wrong_keys_forged_cookies_and_forms_without_the_token()
 {
    let w = spawn_world(Reply::Text("unused".into()), false).await;

    let off = w.api(&[]).await;
    let browser = Browser::new(&off);
    for path in ["/admin", "/admin/login", "/admin/services"] {
        assert_eq!(browser.get(path).await.status(), 404, "{path}");
    }
    assert_eq!(
        browser
            .post("/admin/login", &[("key", ADMIN)])
            .await
            .status(),
        404
    );

    let api = w.api(&admin_env()).await;
    let mut browser = Browser::new(&api);
    for path in [
        "/admin",
        "/admin/services",
        "/admin/usage",
        "/admin/pairings",
        "/admin/jobs",
        "/admin/deadletters",
    ] {
        let r = browser.get(path).await;
        assert!(
            redirected_to_login(&r) || r.headers()["location"] == "/admin/services",
            "{path} without a session: {:?}",
            r.status()
        );
    }
    assert!(redirected_to_login(&browser.get("/admin/services").await));
    let login = browser.page("/admin/login").await;
    assert!(login.contains("<label for=\"key\">") && login.contains("id=\"login\""));

    // A wrong key: refused, no cookie.
    let r = browser
        .post("/admin/login", &[("key", "admin-key-0123456789abcdeF")])
        .await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    // An API key is not an admin key.
    let r = browser.post("/admin/login", &[("key", ALICE)]).await;
    assert_eq!(r.status(), 401);

    // Forged and expired cookies send the browser to the login form.
    let future = now_ms() / 1000 + 3600;
    let forged = format!("{COOKIE}=v1.{future}.{}.{}", "a".repeat(32), "b".repeat(64));
    let (_, expired) = AdminKeys::new(&[ADMIN.to_owned()])
        .login(ADMIN, now_ms() / 1000 - SESSION_SECS - 60)
        .unwrap();
    let (_, other_deployment) = AdminKeys::new(&["someone-elses-key-0123".to_owned()])
        .login("someone-elses-key-0123", now_ms() / 1000)
        .unwrap();
    for cookie in [
        forged,
        format!("{COOKIE}={expired}"),
        format!("{COOKIE}={other_deployment}"),
    ] {
        browser.cookie = Some(cookie.clone());
        assert!(
            redirected_to_login(&browser.get("/admin/services").await),
            "{cookie}"
        );
    }
    // A genuine cookie made for this key is accepted (the expired one failed by its age only).
    let (_, fresh) = AdminKeys::new(&[ADMIN.to_owned()])
        .login(ADMIN, now_ms() / 1000)
        .unwrap();
    browser.cookie = Some(format!("{COOKIE}={fresh}"));
    assert_eq!(browser.get("/admin/services").await.status(), 200);

    // The login cookie: HttpOnly, SameSite=Strict, scoped and expiring; Secure behind TLS.
    let r = browser.post("/admin/login", &[("key", ADMIN)]).await;
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        &format!("Max-Age={SESSION_SECS}"),
    ] {
        assert!(set.contains(part), "{part} missing in {set}");
    }
    assert!(!set.contains("Secure") && !set.contains(ADMIN), "{set}");
    let r = browser
        .client
        .post(api.url("/admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-proto", "https")
        .body(form(&[("key", ADMIN)]))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );

    browser.login().await;
    let services = browser.page("/admin/services").await;
    for name in ["agent-core", "memory-svc", "tool-runner", "gateway-api"] {
        assert!(
            services.contains(&format!("id=\"service-{name}\"")),
            "{name} not listed: {services}"
        );
    }
    assert!(!services.contains(ADMIN));

    // What services report about themselves shows; a QR code to pair with never does.
    let bus = w.bus().await;
    for (service, status, detail) in [
        ("gateway-telegram", "degraded", "getUpdates failed 3 times"),
        ("gateway-whatsapp", "qr", "2@QRDATA-THAT-PAIRS-A-PHONE"),
    ] {
        bus.emit(event::Kind::Service(ServiceNotice {
            service: service.into(),
            instance: "i1".into(),
            status: status.into(),
            detail: detail.into(),
        }))
        .await;
    }
    let services = browser.page("/admin/services").await;
    assert!(
        services.contains("id=\"reported-gateway-telegram\"")
            && services.contains("getUpdates failed 3 times"),
        "{services}"
    );
    assert!(
        services.contains("id=\"reported-gateway-whatsapp\""),
        "{services}"
    );
    assert!(!services.contains("QRDATA"), "{services}");

    // State changes without the session's token are refused, and change nothing.
    for fields in [vec![], vec![("csrf", "0".repeat(64))]] {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for action in [
            "/admin/logout",
            "/admin/pairings/reject",
            "/admin/jobs/pause",
        ] {
            let r = browser.post(action, &fields).await;
            assert_eq!(r.status(), 403, "{action} {fields:?}");
        }
    }
    assert_eq!(browser.get("/admin/services").await.status(), 200);

    // Dead letters show the reason, never the bytes.
    bus.dead_letter(
        "x.inbound.api.1",
        b"secret body of a poisoned message",
        None,
        "undecodable: test poison",
        7,
        5,
    )
    .await
    .unwrap();
    let page = browser.page("/admin/deadletters").await;
    assert!(page.contains("undecodable: test poison"), "{page}");
    assert!(!page.contains("secret body"), "{page}");

    // Logout clears the cookie and needs the token.
    let token = csrf_in(&browser.page("/admin/services").await);
    let r = browser.post("/admin/logout", &[("csrf", &token)]).await;
    assert!(redirected_to_login(&r));
    let set = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        set.starts_with(&format!("{COOKIE}=;")) && set.contains("Max-Age=0"),
        "{set}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_chats_appear_as_the_days_bar_with_their_tokens_on_the_usage_page() {
    let w = spawn_world(Reply::EchoLastUser("echo: ".into()), false).await;
    let api = w.api(&admin_env()).await;
    let mut browser = Browser::new(&api);
    browser.login().await;

    api.ask(ALICE, "first", "s").await;
    api.ask(ALICE, "second", "s").await;
    // The fake model reports 42 input and 7 output tokens per call.
    let today = windows(now_ms()).day;
    let bar = format!("data-key=\"{today}\" data-value=\"98\"");
    let page = eventually("the ledger to count both chats", WAIT, || async {
        let page = browser.page("/admin/usage").await;
        page.contains(&bar).then_some(page)
    })
    .await;
    let by_day = page
        .split("id=\"usage-by-day\"")
        .nth(1)
        .and_then(|rest| rest.split("</svg>").next())
        .unwrap();
    assert!(by_day.contains(&bar), "{by_day}");
    assert!(
        page.contains("data-key=\"alice\" data-value=\"98\""),
        "{page}"
    );
    assert!(
        page.contains("data-key=\"api\" data-value=\"98\""),
        "{page}"
    );
    assert!(
        page.contains("data-key=\"gpt-4.1-mini\" data-value=\"98\""),
        "{page}"
    );
    assert!(page.contains("id=\"budget-alice\""), "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn approving_a_pairing_in_the_console_lets_the_strangers_next_message_through() {
    let w = spawn_world(Reply::EchoLastUser("echo: ".into()), false).await;
    let api = w.api(&admin_env()).await;
    let mut browser = Browser::new(&api);
    browser.login().await;

    // A Telegram stranger writes to a channel under `dm_policy = "pairing"`, through the
    // admission every gateway runs.
    let gateway = eve_waits_for_pairing(&w.test.config).await;
    let page = browser.page("/admin/pairings").await;
    let code = page
        .split("id=\"code-")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no pending code listed: {page}"))
        .to_owned();
    assert!(page.contains(&format!("id=\"approve-{code}\"")), "{page}");

    let (status, page) = browser
        .submit(
            "/admin/pairings",
            "/admin/pairings/approve",
            &[("code", &code), ("user", "")],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("approved {code}")), "{page}");
    assert!(!page.contains(&format!("id=\"code-{code}\"")), "{page}");
    // Used once: a second approval is refused with the reason.
    let (status, page) = browser
        .submit(
            "/admin/pairings",
            "/admin/pairings/approve",
            &[("code", &code)],
        )
        .await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("already approved"), "{page}");

    let admitted = gateway.admit(&["99"], eve(), false).await.unwrap();
    let Admission::Allowed { .. } = admitted else {
        panic!("the approved stranger is still refused: {admitted:?}");
    };
    let user_id = gateway.admitted_user_id(&admitted, "99");
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
            user_id,
        }),
        text: "hello again".into(),
        upstream_id: "2".into(),
        sent_at_ms: now_ms(),
        received_at_ms: now_ms(),
        kind: InboundKind::User as i32,
        ..Default::default()
    };
    gateway.intake(&msg).await.unwrap();
    let bus = w.bus().await;
    let s = bus.subjects();
    let reply: OutboundMessage = eventually("the agent's answer to Eve", WAIT, || async {
        let subject = s.outbound(&nexus_common::domain::ChannelName::parse("telegram").ok()?);
        stream_messages::<OutboundMessage>(&bus, &s.outbound_stream(), subject)
            .await
            .into_iter()
            .find(|m| m.in_reply_to == msg.id)
    })
    .await;
    assert_eq!(reply.text, "echo: hello again");
    gateway.close().await;
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

#[tokio::test(flavor = "multi_thread")]
async fn pausing_and_resuming_a_job_in_the_console_is_what_the_scheduler_reports() {
    let w = spawn_world(Reply::Text("unused".into()), false).await;
    let mut scheduler = w.stack.spawn("scheduler");
    let bus = w.bus().await;
    wait_registered(
        &bus,
        &mut [&mut scheduler],
        &["scheduler"],
        Duration::from_secs(60),
    )
    .await;
    let api = w.api(&admin_env()).await;
    let mut browser = Browser::new(&api);
    browser.login().await;

    let id = crate::browser::add_job(&bus).await;
    let page = browser.page("/admin/jobs").await;
    assert!(page.contains(&format!("id=\"pause-{id}\"")), "{page}");

    // Without the token nothing changes.
    let r = browser.post("/admin/jobs/pause", &[("id", &id)]).await;
    assert_eq!(r.status(), 403);
    assert!(!list_jobs(&bus).await.jobs[0].paused);

    let (status, page) = browser
        .submit("/admin/jobs", "/admin/jobs/pause", &[("id", &id)])
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("id=\"job-state-{id}\">paused")),
        "{page}"
    );
    let jobs = list_jobs(&bus).await;
    assert_eq!(jobs.paused, 1);
    assert!(jobs.jobs[0].paused);

    let (status, page) = browser
        .submit("/admin/jobs", "/admin/jobs/resume", &[("id", &id)])
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(!list_jobs(&bus).await.jobs[0].paused);

    let (status, page) = browser
        .submit("/admin/jobs", "/admin/jobs/remove", &[("id", &id)])
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"no-jobs\""), "{page}");
    assert_eq!(list_jobs(&bus).await.total, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_view_streams_a_turns_events_without_what_was_said() {
    // Every turn reads a file through a tool: its name shows, its path and contents do not.
    let w = spawn_world(
        Reply::ToolThenEchoLastUser {
            tool: "read_file".into(),
            args: serde_json::json!({"path": "secret-notes.txt"}),
            prefix: "echo: ".into(),
        },
        false,
    )
    .await;
    w.test.write("secret-notes.txt", "classified launch codes");
    let api = w.api(&admin_env()).await;
    let mut browser = Browser::new(&api);
    assert!(redirected_to_login(
        &browser.get("/admin/live/events").await
    ));
    browser.login().await;
    let page = browser.page("/admin/live").await;
    assert!(page.contains("id=\"live-turns\"") && page.contains("src=\"/admin/live.js\""));
    assert_eq!(browser.get("/admin/live.js").await.status(), 200);

    let r = browser.get("/admin/live/events").await;
    assert_eq!(r.status(), 200);
    let mut events = SseReader::new(r);
    let body = api.ask(ALICE, "the secret plan", "live").await;
    let turn_id = body["turn_id"].as_str().unwrap().to_owned();
    // Bounded: keep-alive comments would otherwise keep the reader waiting for ever.
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        while let Some((name, data)) = events.next().await {
            let done = name == "turn_finished" && data.contains(&turn_id);
            seen.push((name, data));
            if done {
                break;
            }
        }
    })
    .await;
    for (_, data) in &seen {
        for said in ["secret plan", "secret-notes", "classified"] {
            assert!(!data.contains(said), "{said:?} in the live view: {data}");
        }
    }
    let names: Vec<&str> = seen
        .iter()
        .filter(|(_, d)| d.contains(&turn_id))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names.first(), Some(&"turn_started"), "{seen:?}");
    assert!(names.contains(&"llm_call"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|(n, d)| n == "tool_called" && d.contains("\"tool\":\"read_file\"")),
        "{seen:?}"
    );
    assert_eq!(names.last(), Some(&"turn_finished"), "{seen:?}");
    let started = &seen.iter().find(|(n, _)| n == "turn_started").unwrap().1;
    assert!(
        started.contains("\"user\":\"alice\"") && started.contains("\"channel\":\"api\""),
        "{started}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_channels_page_draws_the_whatsapp_qr_code_while_pairing_and_says_when_paired() {
    let w = spawn_world(Reply::Text("unused".into()), false).await;
    let api = w.api(&admin_env()).await;
    let mut browser = Browser::new(&api);
    assert!(redirected_to_login(&browser.get("/admin/channels").await));
    browser.login().await;

    // Nothing reported, no gateway-whatsapp: the page says so and offers no pairing.
    let page = browser.page("/admin/channels").await;
    assert!(page.contains("id=\"channel-whatsapp\""), "{page}");
    assert!(page.contains("id=\"whatsapp-off\""), "{page}");
    assert!(!page.contains("http-equiv=\"refresh\""), "{page}");
    // Asking gateway-whatsapp to pair when it does not run: the reason, not a hang.
    let (status, page) = browser
        .submit("/admin/channels", "/admin/channels/whatsapp/login", &[])
        .await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("gateway-whatsapp is not running"), "{page}");

    let bus = w.bus().await;
    let notice = |service: &str, status: &str, detail: &str| {
        event::Kind::Service(ServiceNotice {
            service: service.into(),
            instance: "i1".into(),
            status: status.into(),
            detail: detail.into(),
        })
    };
    bus.emit(notice("gateway-whatsapp", "qr", "2@FIRST-CODE"))
        .await;
    bus.emit(notice(
        "gateway-whatsapp",
        "qr",
        "2@QRDATA-THAT-PAIRS-A-PHONE",
    ))
    .await;
    bus.emit(notice(
        "gateway-telegram",
        "degraded",
        "getUpdates failed 3 times",
    ))
    .await;
    let page = browser.page("/admin/channels").await;
    // The latest code, drawn on the server as SVG, and the page reloads itself.
    let svg = page
        .split("<svg id=\"whatsapp-qr-code\"")
        .nth(1)
        .and_then(|rest| rest.split("</svg>").next())
        .unwrap_or_else(|| panic!("no QR code drawn: {page}"));
    assert!(
        svg.contains("role=\"img\"") && svg.contains("h1v1h-1z"),
        "{svg}"
    );
    assert!(page.contains("http-equiv=\"refresh\""), "{page}");
    assert!(
        page.contains("id=\"state-whatsapp\">pairing: scan the QR code below"),
        "{page}"
    );
    // The code is drawn, never printed.
    assert!(!page.contains("QRDATA"), "{page}");
    assert!(
        page.contains("id=\"state-telegram\">not running")
            && page.contains("degraded: getUpdates failed 3 times"),
        "{page}"
    );
    // A different code draws a different picture.
    bus.emit(notice("gateway-whatsapp", "qr", "2@ANOTHER-CODE"))
        .await;
    let next = browser.page("/admin/channels").await;
    let next_svg = next
        .split("<svg id=\"whatsapp-qr-code\"")
        .nth(1)
        .and_then(|rest| rest.split("</svg>").next())
        .unwrap();
    assert_ne!(svg, next_svg);

    // Once the phone has paired, the code is gone and the account shows.
    bus.emit(notice("gateway-whatsapp", "connected", "+15550001111"))
        .await;
    let page = browser.page("/admin/channels").await;
    assert!(!page.contains("id=\"whatsapp-qr-code\""), "{page}");
    assert!(!page.contains("http-equiv=\"refresh\""), "{page}");
    assert!(
        page.contains("id=\"state-whatsapp\">paired as +15550001111"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_task_in_the_console_marks_it_cancelled_for_agent_core() {
    use nexus_bus::kv_key;
    use nexus_common::tasks::{State, Task};

    let w = spawn_world(Reply::Text("unused".into()), false).await;
    let api = w.api(&admin_env()).await;
    let mut browser = Browser::new(&api);
    browser.login().await;
    let page = browser.page("/admin/tasks").await;
    assert!(page.contains("id=\"no-tasks\""), "{page}");

    // A task as agent-core keeps it while a replica runs it.
    let bus = w.bus().await;
    let kv = bus
        .ensure_kv_bucket(
            &bus.subjects().tasks_bucket(),
            1,
            Some(Duration::from_secs(7 * 24 * 3600)),
            "sub-agent tasks: state, origin and result",
        )
        .await
        .unwrap();
    let task: Task = serde_json::from_value(serde_json::json!({
        "id": "t0123456789", "label": "quarterly report", "task": "the secret brief",
        "depth": 1,
        "origin": {"channel": "api", "chat_id": "alice:s", "thread_id": "",
                   "sender_id": "alice", "user_id": "alice", "session_id": "api:alice:s"},
        "state": "running", "created_ms": now_ms(), "started_ms": now_ms(), "attempts": 1
    }))
    .unwrap();
    kv.put(kv_key(&task.id), serde_json::to_vec(&task).unwrap().into())
        .await
        .unwrap();

    let page = browser.page("/admin/tasks").await;
    assert!(page.contains("id=\"cancel-t0123456789\""), "{page}");
    assert!(
        page.contains("id=\"task-state-t0123456789\">running"),
        "{page}"
    );
    assert!(page.contains("quarterly report"), "{page}");
    assert!(!page.contains("secret brief"), "{page}");

    // Without the token nothing changes.
    let r = browser
        .post("/admin/tasks/cancel", &[("id", "t0123456789")])
        .await;
    assert_eq!(r.status(), 403);
    let stored = |bytes: &[u8]| serde_json::from_slice::<Task>(bytes).unwrap();
    assert_eq!(
        stored(&kv.get(kv_key("t0123456789")).await.unwrap().unwrap()).state,
        State::Running
    );

    let (status, page) = browser
        .submit(
            "/admin/tasks",
            "/admin/tasks/cancel",
            &[("id", "t0123456789")],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("cancelled task t0123456789"), "{page}");
    assert!(
        page.contains("id=\"task-state-t0123456789\">cancelled"),
        "{page}"
    );
    let record = stored(&kv.get(kv_key("t0123456789")).await.unwrap().unwrap());
    assert_eq!(record.state, State::Cancelled);
    assert!(record.finished_ms > 0);

    // Once ended it cannot be cancelled again, and an unknown id is said to be unknown.
    let (status, page) = browser
        .submit(
            "/admin/tasks",
            "/admin/tasks/cancel",
            &[("id", "t0123456789")],
        )
        .await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("already cancelled"), "{page}");
    let (status, page) = browser
        .submit("/admin/tasks", "/admin/tasks/cancel", &[("id", "tnope")])
        .await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("there is no task tnope"), "{page}");
}

/// The live view's events of one turn until it finished.
async fn live_turn(
    browser: &Browser<'_>,
    api: &Api,
    path: &str,
    text: &str,
) -> Vec<(String, String)> {
    let r = browser.get(path).await;
    assert_eq!(r.status(), 200);
    let mut events = SseReader::new(r);
    let body = api.ask(ALICE, text, "live").await;
    let turn_id = body["turn_id"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    // Bounded: keep-alive comments would otherwise keep the reader waiting for ever.
    let _ = tokio::time::timeout(WAIT, async {
        while let Some((name, data)) = events.next().await {
            let done = name == "turn_finished" && data.contains(&turn_id);
            if data.contains(&turn_id) {
                seen.push((name, data));
            }
            if done {
                break;
            }
        }
    })
    .await;
    assert_eq!(
        seen.last().map(|(n, _)| n.as_str()),
        Some("turn_finished"),
        "{seen:?}"
    );
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_view_shows_a_turns_progress_and_its_text_only_when_the_admin_asks() {
    let w = spawn_world(Reply::EchoLastUser("echo: ".into()), true).await;
    let api = w.api(&admin_env()).await;
    let mut browser = Browser::new(&api);
    browser.login().await;
    let page = browser.page("/admin/live").await;
    assert!(
        page.contains("id=\"live-show-text\"") && page.contains("<label for=\"live-show-text\""),
        "{page}"
    );

    // Without "show text": the turn's progress, how much it wrote, never what.
    let seen = live_turn(&browser, &api, "/admin/live/events", "the secret plan").await;
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"progress_llm"), "{seen:?}");
    let written: u64 = seen
        .iter()
        .filter(|(n, _)| n == "progress_text")
        .map(|(_, d)| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["chars"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        written,
        "echo: the secret plan".chars().count() as u64,
        "{seen:?}"
    );
    for (_, data) in &seen {
        assert!(
            !data.contains("secret"),
            "the text in the live view: {data}"
        );
    }

    // With it: the text as the model wrote it.
    let seen = live_turn(&browser, &api, "/admin/live/events?text=1", "the open plan").await;
    let text: String = seen
        .iter()
        .filter(|(n, _)| n == "progress_text")
        .map(|(_, d)| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "echo: the open plan", "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sub_agent_cancelled_in_the_console_is_stopped_by_agent_core_and_sends_no_result() {
    use nexus_bus::kv_key;
    use nexus_common::tasks::Task;

    // The sub-agent's model call never answers: the task runs until it is cancelled.
    let w = spawn_world(Reply::Hang, false).await;
    let api = w.api(&admin_env()).await;
    let mut browser = Browser::new(&api);
    browser.login().await;

    // A task queued as agent-core's spawn tool queues one: its record in N_tasks and
    // its work item on N_TASKS under `task:<id>`. (Queued here rather than by a chat,
    // whose next model call would race the sub-agent's for the fake's replies.)
    let bus = w.bus().await;
    let s = bus.subjects();
    let task: Task = serde_json::from_value(serde_json::json!({
        "id": "t00c0ffee00", "label": "quarterly", "task": "Write the quarterly report",
        "depth": 1,
        "origin": {"channel": "api", "chat_id": "alice:s", "thread_id": "",
                   "sender_id": "alice", "user_id": "alice", "session_id": "api:alice:s"},
        "state": "queued", "created_ms": now_ms()
    }))
    .unwrap();
    let bytes = serde_json::to_vec(&task).unwrap();
    bus.ensure_kv_bucket(
        &s.tasks_bucket(),
        1,
        Some(Duration::from_secs(7 * 24 * 3600)),
        "sub-agent tasks: state, origin and result",
    )
    .await
    .unwrap()
    .create(kv_key(&task.id), bytes.clone().into())
    .await
    .unwrap();
    bus.publish_durable(
        s.tasks(),
        &format!("task:{}", task.id),
        &TraceContext::new_root(),
        bytes.into(),
    )
    .await
    .unwrap();

    let id = task.id.as_str();
    let page = eventually("the running task in the console", WAIT, || async {
        let page = browser.page("/admin/tasks").await;
        page.contains(&format!("id=\"task-state-{id}\">running"))
            .then_some(page)
    })
    .await;
    assert!(page.contains(&format!("id=\"cancel-{id}\"")), "{page}");
    eventually("the sub-agent's model call", WAIT, || async {
        (!w.fake.requests().is_empty()).then_some(())
    })
    .await;

    let (status, page) = browser
        .submit("/admin/tasks", "/admin/tasks/cancel", &[("id", id)])
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("id=\"task-state-{id}\">cancelled")),
        "{page}"
    );

    // agent-core stops it and settles its work item; no result goes to the chat.
    eventually("agent-core to settle the cancelled task", WAIT, || async {
        let mut stream = bus.jetstream().get_stream(s.tasks_stream()).await.ok()?;
        (stream.info().await.ok()?.state.messages == 0).then_some(())
    })
    .await;
    let api_channel = nexus_common::domain::ChannelName::parse("api").unwrap();
    let replies =
        stream_messages::<OutboundMessage>(&bus, &s.outbound_stream(), s.outbound(&api_channel))
            .await;
    assert!(
        !replies.iter().any(|m| m.id == format!("task:{id}:result")),
        "a cancelled task sent its result: {replies:?}"
    );
    let page = browser.page("/admin/tasks").await;
    assert!(
        page.contains(&format!("id=\"task-state-{id}\">cancelled")),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_live_view_does_not_hold_up_gateway_apis_shutdown() {
    let w = spawn_world(Reply::Text("unused".into()), false).await;
    // A grace longer than the test waits: only ending the stream lets it exit in time.
    let api = w
        .api(&[
            ("NEXUS__API__ADMIN_KEYS", ADMIN),
            ("NEXUS__CHANNELS__API__SHUTDOWN_GRACE_SECS", "3600"),
        ])
        .await;
    let mut browser = Browser::new(&api);
    browser.login().await;
    let r = browser.get("/admin/live/events").await;
    assert_eq!(r.status(), 200);
    let mut events = SseReader::new(r);

    nexus_common::process::terminate(api.process.id().unwrap());
    // The stream ends (rather than running until the process is killed)…
    let rest = tokio::time::timeout(WAIT, events.rest())
        .await
        .expect("the live view's stream was still open a minute after SIGTERM");
    assert!(rest.is_empty(), "{rest:?}");
    // …and gateway-api exits by itself, cleanly.
    let status = api.process.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
}

/// Telegram's gateway under `dm_policy = "pairing"`, after Eve, a stranger, wrote to
/// it through the admission every gateway runs and got a pairing code.
pub(crate) async fn eve_waits_for_pairing(config: &nexus_common::Config) -> Gateway {
    let mut config = config.clone();
    config
        .channels
        .entry("telegram".into())
        .or_default()
        .dm_policy = DmPolicy::Pairing;
    let gateway = Gateway::connect(&config, "telegram").await.unwrap();
    let admitted = gateway.admit(&["99"], eve(), false).await.unwrap();
    assert!(
        matches!(admitted, Admission::Pairing { notice: Some(_) }),
        "{admitted:?}"
    );
    gateway
}

/// The stranger of [`eve_waits_for_pairing`].
pub(crate) fn eve() -> Stranger<'static> {
    Stranger {
        sender_id: "99",
        display_name: "Eve",
        chat_id: "99",
        thread_id: "",
    }
}
