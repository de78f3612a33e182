//! The console's pages and actions. Each reads and acts through what the CLI uses:
//! `Bus::discover_services` (`nexus status`), memory-svc's `usage` op and the
//! `N_user_limits` bucket (`nexus usage`), `nexus_gateway::pairing` (`nexus pair`),
//! `N.scheduler.<op>` (`nexus cron`), and the `N_DEADLETTER` stream (reasons only,
//! never the stored bytes).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    sync::Arc,
    time::Duration,
};

use axum::{
    Form,
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use futures::StreamExt as _;
use nexus_bus::{
    BusError, MemoryOp, TraceContext,
    async_nats::jetstream::consumer::{DeliverPolicy, pull},
    event_kind,
    limits::{overrides, user_limits_bucket},
    scheduler_op,
};
use nexus_common::{
    limits::{Consumption, windows},
    now_ms,
};
use nexus_gateway::pairing::Pairing;
use nexus_proto::{
    Message as _,
    v1::{
        DeadLetter, Event, JobActionRequest, JobActionResponse, ListJobsRequest, ListJobsResponse,
        ServiceNotice, UsageRequest, UsageResponse, UsageRow, UserLimits, event,
    },
};
use serde::Deserialize;

use super::{
    Admin, AdminState,
    page::{Notice, bar_chart, button, esc, page, table, utc},
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long replicas get to answer the service ping (as `nexus status`).
const DISCOVERY_WAIT: Duration = Duration::from_millis(750);
/// Dead letters shown, newest first.
const DEAD_LETTERS: u64 = 50;

type Shared = State<Arc<AdminState>>;

/// `GET /admin/services`: live replicas by service, and the streams' sizes.
pub async fn services(State(state): Shared, admin: Admin) -> Response {
    services_page(&state, &admin).await
}

async fn services_page(state: &AdminState, admin: &Admin) -> Response {
    let bus = &state.bus;
    let instances = match bus.discover_services(DISCOVERY_WAIT).await {
        Ok(found) => found,
        Err(e) => return failed(admin, "Services", "/admin/services", &e.to_string()),
    };
    let mut by_name: BTreeMap<&str, Vec<&nexus_bus::ServiceInstance>> = BTreeMap::new();
    for i in &instances {
        by_name.entry(i.name.as_str()).or_default().push(i);
    }
    let rows: Vec<Vec<String>> = by_name
        .iter()
        .map(|(name, list)| {
            let ids: Vec<String> = list.iter().map(|i| esc(&i.id)).collect();
            vec![
                format!("<span id=\"service-{0}\">{0}</span>", esc(name)),
                format!("<span class=\"num\">{}</span>", list.len()),
                esc(&list[0].version),
                "live (answers the service ping)".to_owned(),
                ids.join(", "),
            ]
        })
        .collect();
    let mut body = String::new();
    let _ = write!(
        body,
        "<p>Namespace <code>{}</code>. Replicas that answered the NATS service ping within {} ms.</p>",
        esc(&state.config.namespace),
        DISCOVERY_WAIT.as_millis()
    );
    if rows.is_empty() {
        body.push_str(
            "<p id=\"no-services\">No live services; start them with <code>nexus up</code>.</p>",
        );
    }
    body.push_str(&table(
        "services",
        "Services",
        &["Service", "Replicas", "Version", "Health", "Instances"],
        &rows,
    ));
    match reported(state).await {
        Ok(reports) => {
            let rows: Vec<Vec<String>> = reports
                .iter()
                .map(|(service, (at, n))| {
                    // A QR code is long and lets anyone pair: say one waits, never show it.
                    let detail = if n.status == "qr" {
                        "a QR code waits: scan it on the <a href=\"/admin/channels#whatsapp\">Channels</a> \
                         page or with <code>nexus whatsapp login</code>"
                            .to_owned()
                    } else {
                        esc(&n.detail)
                    };
                    vec![
                        format!("<span id=\"reported-{0}\">{0}</span>", esc(service)),
                        esc(&n.status),
                        utc(*at),
                        detail,
                    ]
                })
                .collect();
            body.push_str(&table(
                "reported",
                "What services last reported about themselves (last 24 h)",
                &["Service", "Status", "At", "Detail"],
                &rows,
            ));
        }
        Err(e) => {
            let _ = write!(
                body,
                "<p class=\"failed\" role=\"alert\">Reports of the services could not be read: {}</p>",
                esc(&e)
            );
        }
    }
    let s = bus.subjects();
    let mut streams = Vec::new();
    for name in [
        s.inbound_stream(),
        s.outbound_stream(),
        s.events_stream(),
        s.deadletter_stream(),
        s.tasks_stream(),
    ] {
        let info = bus.stream_state(&name).await.map(|st| st.messages);
        streams.push(vec![
            esc(&name),
            info.map_or_else(|| "-".to_owned(), |m| m.to_string()),
        ]);
    }
    body.push_str(&table(
        "streams",
        "Streams",
        &["Stream", "Messages"],
        &streams,
    ));
    page(
        StatusCode::OK,
        "Services",
        "/admin/services",
        Some(&admin.csrf),
        &Notice::None,
        &body,
    )
}

/// The last `service` event of each service in the past 24 h (watchdogs, pairing,
/// outages), as `nexus status` shows them.
async fn reported(state: &AdminState) -> Result<BTreeMap<String, (i64, ServiceNotice)>, String> {
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(24);
    let mut out = BTreeMap::new();
    service_events(
        state,
        DeliverPolicy::ByStartTime { start_time: since },
        |at_ms, n| {
            out.insert(n.service.clone(), (at_ms, n));
        },
    )
    .await?;
    Ok(out)
}

/// Hands each stored `service` event from `policy` on, oldest first, with its time.
pub(super) async fn service_events(
    state: &AdminState,
    policy: DeliverPolicy,
    mut each: impl FnMut(i64, ServiceNotice),
) -> Result<(), String> {
    let bus = &state.bus;
    let s = bus.subjects();
    let mut feed = bus
        .ordered_feed(
            &s.events_stream(),
            pull::OrderedConfig {
                filter_subject: s.event(event_kind::SERVICE),
                deliver_policy: policy,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("reading service events: {e}"))?;
    if feed.pending == 0 {
        return Ok(());
    }
    loop {
        let msg = tokio::time::timeout(REQUEST_TIMEOUT, feed.messages.next())
            .await
            .map_err(|_| "reading service events timed out".to_owned())?
            .ok_or("the events stream closed")?
            .map_err(|e| format!("reading service events: {e}"))?;
        if let Ok(Event {
            at_ms,
            kind: Some(event::Kind::Service(n)),
            ..
        }) = Event::decode(msg.payload.clone())
        {
            each(at_ms, n);
        }
        if msg.info().map(|i| i.pending).unwrap_or(0) == 0 {
            return Ok(());
        }
    }
}

/// `GET /admin/usage`: the ledger (last 30 UTC days) as charts, costs by model, and
/// each user's day and month against their limits.
pub async fn usage(State(state): Shared, admin: Admin) -> Response {
    let title = "Usage";
    let rows = match ask_usage(&state, String::new(), String::new()).await {
        Ok(rows) => rows,
        Err(e) => return failed(&admin, title, "/admin/usage", &e),
    };
    let w = windows(now_ms());
    let month = match ask_usage(&state, w.month_start.clone(), w.day.clone()).await {
        Ok(rows) => rows,
        Err(e) => return failed(&admin, title, "/admin/usage", &e),
    };
    let stored = match stored_limits(&state).await {
        Ok(stored) => stored,
        Err(e) => return failed(&admin, title, "/admin/usage", &e),
    };
    let prices = &state.config.llm.prices;
    let mut body = String::from(
        "<p>Tokens (input + output) of the last 30 UTC days, from memory-svc's usage ledger.</p>",
    );
    for (id, heading, key) in [
        ("usage-by-day", "Tokens by day", Key::Day),
        ("usage-by-user", "Tokens by user", Key::User),
        ("usage-by-model", "Tokens by model", Key::Model),
        ("usage-by-channel", "Tokens by channel", Key::Channel),
    ] {
        let mut sums: BTreeMap<String, u64> = BTreeMap::new();
        for r in &rows {
            *sums.entry(key.of(r)).or_default() += r.input_tokens + r.output_tokens;
        }
        let mut bars: Vec<(String, u64)> = sums.into_iter().collect();
        if !matches!(key, Key::Day) {
            bars.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            bars.truncate(15);
        }
        let _ = write!(body, "<h2>{heading}</h2>");
        body.push_str(&bar_chart(id, heading, "tokens", &bars));
    }

    // Calls, tokens and cost by model, priced by [llm.prices] as `nexus usage` does.
    let mut by_model: BTreeMap<String, (u64, u64, u64, Consumption)> = BTreeMap::new();
    for r in &rows {
        let e = by_model.entry(Key::Model.of(r)).or_default();
        e.0 += r.calls;
        e.1 += r.input_tokens;
        e.2 += r.output_tokens;
        e.3.add(&r.model, r.input_tokens, r.output_tokens, prices);
    }
    let model_rows: Vec<Vec<String>> = by_model
        .iter()
        .map(|(model, (calls, input, output, c))| {
            vec![
                esc(model),
                calls.to_string(),
                input.to_string(),
                output.to_string(),
                cost(c),
            ]
        })
        .collect();
    body.push_str("<h2>Cost by model</h2>");
    body.push_str(&table(
        "usage-models",
        "Costs from [llm.prices] (USD per million tokens); ≥ means some models have no price",
        &[
            "Model",
            "Calls",
            "Input tokens",
            "Output tokens",
            "Cost (USD)",
        ],
        &model_rows,
    ));

    // Budgets: [limits] with each user's overrides, against today and this month (UTC).
    let config = &state.config;
    let users: BTreeSet<&str> = month
        .iter()
        .map(|r| r.user_id.as_str())
        .filter(|u| !u.is_empty())
        .chain(stored.keys().map(String::as_str))
        .collect();
    let mut all_day = Consumption::default();
    for r in month.iter().filter(|r| r.day == w.day) {
        all_day.add(&r.model, r.input_tokens, r.output_tokens, prices);
    }
    let budget_rows: Vec<Vec<String>> = users
        .into_iter()
        .map(|user| {
            let limits = config
                .limits
                .for_user(&stored.get(user).map(overrides).unwrap_or_default());
            let (mut day, mut this_month) = (Consumption::default(), Consumption::default());
            for r in month.iter().filter(|r| r.user_id == user) {
                if r.day == w.day {
                    day.add(&r.model, r.input_tokens, r.output_tokens, prices);
                }
                this_month.add(&r.model, r.input_tokens, r.output_tokens, prices);
            }
            vec![
                format!("<span id=\"budget-{0}\">{0}</span>", esc(user)),
                limit_text(limits.messages_per_minute as f64, 0),
                used_of(day.tokens as f64, limits.tokens_per_day as f64, 0),
                used_of(this_month.tokens as f64, limits.tokens_per_month as f64, 0),
                used_of(day.cost, limits.cost_per_day, 4),
                used_of(this_month.cost, limits.cost_per_month, 4),
            ]
        })
        .collect();
    let _ = write!(
        body,
        "<h2>Budgets</h2><p>UTC day {}, month {}; limits from <code>[limits]</code> and \
         each user's overrides (<code>nexus users limit</code>); - means unlimited.</p>",
        esc(&w.day),
        esc(&w.month)
    );
    body.push_str(&table(
        "budgets",
        "Used / limit",
        &[
            "User",
            "Messages/min",
            "Tokens today",
            "Tokens this month",
            "USD today",
            "USD this month",
        ],
        &budget_rows,
    ));
    let _ = write!(
        body,
        "<p id=\"deployment-budget\">Deployment today: {}</p>",
        used_of(all_day.cost, config.limits.total_cost_per_day, 4)
    );
    page(
        StatusCode::OK,
        title,
        "/admin/usage",
        Some(&admin.csrf),
        &Notice::None,
        &body,
    )
}

#[derive(Clone, Copy)]
enum Key {
    Day,
    User,
    Model,
    Channel,
}

impl Key {
    fn of(self, row: &UsageRow) -> String {
        let key = match self {
            Key::Day => &row.day,
            Key::User => &row.user_id,
            Key::Model => &row.model,
            Key::Channel => &row.channel,
        };
        if key.is_empty() {
            "(none)".to_owned()
        } else {
            key.clone()
        }
    }
}

fn cost(c: &Consumption) -> String {
    format!("{}{:.4}", if c.unpriced { "≥" } else { "" }, c.cost)
}

fn limit_text(limit: f64, decimals: usize) -> String {
    if limit == 0.0 {
        "-".to_owned()
    } else {
        format!("{limit:.decimals$}")
    }
}

/// `used / limit`, with a meter when there is a limit.
fn used_of(used: f64, limit: f64, decimals: usize) -> String {
    let text = format!("{used:.decimals$} / {}", limit_text(limit, decimals));
    if limit > 0.0 {
        format!(
            "{text} <meter min=\"0\" max=\"{limit}\" value=\"{}\" aria-label=\"{:.0}% used\"></meter>",
            used.min(limit),
            100.0 * used / limit
        )
    } else {
        text
    }
}

async fn ask_usage(state: &AdminState, from: String, to: String) -> Result<Vec<UsageRow>, String> {
    let reply: UsageResponse = ask(
        state,
        state.bus.subjects().memory(MemoryOp::Usage),
        "memory-svc",
        &UsageRequest {
            from_day: from,
            to_day: to,
            user_id: String::new(),
        },
    )
    .await?;
    Ok(reply.rows)
}

/// Every user's stored limits (`N_user_limits`), by user id.
async fn stored_limits(state: &AdminState) -> Result<BTreeMap<String, UserLimits>, String> {
    let kv = user_limits_bucket(&state.bus)
        .await
        .map_err(|e| format!("opening the user limits bucket: {e}"))?;
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| format!("listing the user limits: {e}"))?;
    let mut stored = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| format!("listing the user limits: {e}"))?;
        if let Ok(Some(bytes)) = kv.get(&key).await
            && let Ok(l) = UserLimits::decode(bytes)
        {
            stored.insert(l.user_id.clone(), l);
        }
    }
    Ok(stored)
}

/// One request to a service, its failure said in words.
async fn ask<Req: prost::Message, Resp: prost::Message + Default>(
    state: &AdminState,
    subject: String,
    service: &str,
    req: &Req,
) -> Result<Resp, String> {
    match state
        .bus
        .request(
            subject,
            req,
            &TraceContext::new_root(),
            Some(REQUEST_TIMEOUT),
        )
        .await
    {
        Ok(reply) => Ok(reply),
        Err(BusError::NoResponders { .. }) => Err(format!(
            "{service} is not running in namespace \"{}\"",
            state.config.namespace
        )),
        Err(BusError::Remote { message, .. }) => Err(message),
        Err(e) => Err(format!("asking {service}: {e}")),
    }
}

/// `GET /admin/pairings`: codes waiting for an admin, with Approve and Reject.
pub async fn pairings(State(state): Shared, admin: Admin) -> Response {
    pairings_page(&state, &admin, StatusCode::OK, Notice::None).await
}

async fn pairings_page(
    state: &AdminState,
    admin: &Admin,
    status: StatusCode,
    notice: Notice,
) -> Response {
    let title = "Pairings";
    let pairing = match Pairing::open(&state.bus).await {
        Ok(p) => p,
        Err(e) => return failed(admin, title, "/admin/pairings", &e.to_string()),
    };
    let now = now_ms();
    let codes = match pairing.pending(now).await {
        Ok(codes) => codes,
        Err(e) => return failed(admin, title, "/admin/pairings", &e.to_string()),
    };
    let rows: Vec<Vec<String>> = codes
        .iter()
        .map(|c| {
            let approve = format!(
                "<form class=\"inline\" method=\"post\" action=\"/admin/pairings/approve\">{}\
                 <input type=\"hidden\" name=\"code\" value=\"{code}\">\
                 <label for=\"user-{code}\">Link to user (optional)</label>\
                 <input id=\"user-{code}\" name=\"user\" type=\"text\" autocomplete=\"off\">\
                 <button id=\"approve-{code}\" type=\"submit\">Approve</button></form>",
                super::page::csrf_field(&admin.csrf),
                code = esc(&c.code),
            );
            let reject = button(
                "/admin/pairings/reject",
                &admin.csrf,
                &[("code", &c.code)],
                &format!("reject-{}", c.code),
                "Reject",
            );
            vec![
                format!("<span id=\"code-{0}\">{0}</span>", esc(&c.code)),
                esc(&c.channel),
                esc(&c.sender_id),
                if c.display_name.is_empty() {
                    "-".to_owned()
                } else {
                    esc(&c.display_name)
                },
                utc(c.created_at_ms),
                utc(c.expires_at_ms),
                format!("{approve}{reject}"),
            ]
        })
        .collect();
    let mut body = String::from(
        "<p>Strangers on channels with <code>dm_policy = \"pairing\"</code> got these codes. \
         Approving lets the sender in (as the user given, else the user they already are); \
         rejecting shuts them out for good. The same as <code>nexus pair approve|reject</code>.</p>",
    );
    if rows.is_empty() {
        body.push_str("<p id=\"no-pairings\">No pairing codes waiting.</p>");
    }
    body.push_str(&table(
        "pairings",
        "Codes waiting",
        &[
            "Code", "Channel", "Sender", "Name", "Issued", "Expires", "Decide",
        ],
        &rows,
    ));
    page(
        status,
        title,
        "/admin/pairings",
        Some(&admin.csrf),
        &notice,
        &body,
    )
}

#[derive(Deserialize)]
pub struct PairingForm {
    csrf: Option<String>,
    #[serde(default)]
    code: String,
    #[serde(default)]
    user: String,
}

/// `POST /admin/pairings/approve`: `nexus pair approve <code> [--user]`.
pub async fn approve(
    State(state): Shared,
    admin: Admin,
    Form(form): Form<PairingForm>,
) -> Response {
    if let Some(refused) = admin.refused(&state, form.csrf.as_deref()) {
        return refused;
    }
    let user = Some(form.user.trim()).filter(|u| !u.is_empty());
    let outcome = match Pairing::open(&state.bus).await {
        Ok(p) => p
            .approve(&form.code, user, "admin-console", now_ms())
            .await
            .map(|c| {
                format!(
                    "approved {}: {} may talk on {} as user {}",
                    c.code, c.sender_id, c.channel, c.user_id
                )
            })
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    decided(&state, &admin, outcome).await
}

/// `POST /admin/pairings/reject`: `nexus pair reject <code>`.
pub async fn reject(State(state): Shared, admin: Admin, Form(form): Form<PairingForm>) -> Response {
    if let Some(refused) = admin.refused(&state, form.csrf.as_deref()) {
        return refused;
    }
    let outcome = match Pairing::open(&state.bus).await {
        Ok(p) => p
            .reject(&form.code, "admin-console", now_ms())
            .await
            .map(|c| {
                format!(
                    "rejected {}: {} on {} gets no further answer",
                    c.code, c.sender_id, c.channel
                )
            })
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    decided(&state, &admin, outcome).await
}

async fn decided(state: &AdminState, admin: &Admin, outcome: Result<String, String>) -> Response {
    match outcome {
        Ok(done) => pairings_page(state, admin, StatusCode::OK, Notice::Done(done)).await,
        Err(e) => pairings_page(state, admin, StatusCode::CONFLICT, Notice::Failed(e)).await,
    }
}

/// `GET /admin/jobs`: every scheduled job with pause, resume and remove.
pub async fn jobs(State(state): Shared, admin: Admin) -> Response {
    jobs_page(&state, &admin, StatusCode::OK, Notice::None).await
}

async fn jobs_page(
    state: &AdminState,
    admin: &Admin,
    status: StatusCode,
    notice: Notice,
) -> Response {
    let title = "Jobs";
    let reply: ListJobsResponse = match ask(
        state,
        state.bus.subjects().scheduler(scheduler_op::LIST),
        "the scheduler",
        &ListJobsRequest {
            owner_user_id: String::new(),
            limit: 0,
        },
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return failed(admin, title, "/admin/jobs", &e),
    };
    let rows: Vec<Vec<String>> = reply
        .jobs
        .iter()
        .map(|j| {
            let id = j.id.as_str();
            let state_text = if j.paused {
                "paused"
            } else if j.next_run_ms > 0 {
                "active"
            } else {
                "done"
            };
            let mut actions = String::new();
            if j.paused {
                actions.push_str(&button(
                    "/admin/jobs/resume",
                    &admin.csrf,
                    &[("id", id)],
                    &format!("resume-{id}"),
                    "Resume",
                ));
            } else if j.next_run_ms > 0 {
                actions.push_str(&button(
                    "/admin/jobs/pause",
                    &admin.csrf,
                    &[("id", id)],
                    &format!("pause-{id}"),
                    "Pause",
                ));
            }
            actions.push_str(&button(
                "/admin/jobs/remove",
                &admin.csrf,
                &[("id", id)],
                &format!("remove-{id}"),
                "Remove",
            ));
            let origin = j.origin.clone().unwrap_or_default();
            vec![
                format!("<span id=\"job-{0}\">{0}</span>", esc(id)),
                esc(&j.owner_user_id),
                esc(&j.schedule),
                format!("<span id=\"job-state-{}\">{state_text}</span>", esc(id)),
                if j.paused {
                    "-".to_owned()
                } else {
                    utc(j.next_run_ms)
                },
                utc(j.last_run_ms),
                if j.last_outcome.is_empty() {
                    "-".to_owned()
                } else {
                    esc(&j.last_outcome)
                },
                esc(&format!("{} {}", origin.channel, origin.chat_id)),
                actions,
            ]
        })
        .collect();
    let mut body = format!(
        "<p>{} job(s): {} waiting to fire, {} paused. The same as <code>nexus cron</code>.</p>",
        reply.total, reply.active, reply.paused
    );
    if rows.is_empty() {
        body.push_str("<p id=\"no-jobs\">No scheduled jobs.</p>");
    }
    body.push_str(&table(
        "jobs",
        "Scheduled jobs",
        &[
            "Job",
            "Owner",
            "Schedule",
            "State",
            "Next fire",
            "Last fire",
            "Last outcome",
            "Chat",
            "Actions",
        ],
        &rows,
    ));
    page(
        status,
        title,
        "/admin/jobs",
        Some(&admin.csrf),
        &notice,
        &body,
    )
}

#[derive(Deserialize)]
pub struct JobForm {
    csrf: Option<String>,
    #[serde(default)]
    id: String,
}

/// `POST /admin/jobs/{pause|resume|remove}`: `nexus cron pause|resume|remove <id>`.
pub async fn job_action(
    State(state): Shared,
    admin: Admin,
    Path(action): Path<String>,
    Form(form): Form<JobForm>,
) -> Response {
    if let Some(refused) = admin.refused(&state, form.csrf.as_deref()) {
        return refused;
    }
    let (op, done) = match action.as_str() {
        "pause" => (scheduler_op::PAUSE, "paused"),
        "resume" => (scheduler_op::RESUME, "resumed"),
        "remove" => (scheduler_op::REMOVE, "removed"),
        _ => {
            return jobs_page(
                &state,
                &admin,
                StatusCode::NOT_FOUND,
                Notice::Failed(format!("no job action {action:?}")),
            )
            .await;
        }
    };
    let outcome: Result<JobActionResponse, String> = ask(
        &state,
        state.bus.subjects().scheduler(op),
        "the scheduler",
        &JobActionRequest {
            id: form.id.clone(),
            owner_user_id: String::new(),
        },
    )
    .await;
    match outcome {
        Ok(reply) => {
            let job = reply.job.unwrap_or_default();
            let text = format!(
                "{done} {} ({}, of {})",
                job.id, job.schedule, job.owner_user_id
            );
            jobs_page(&state, &admin, StatusCode::OK, Notice::Done(text)).await
        }
        Err(e) => jobs_page(&state, &admin, StatusCode::CONFLICT, Notice::Failed(e)).await,
    }
}

/// `GET /admin/deadletters`: the newest dead letters with their reason; never their bytes.
pub async fn dead_letters(State(state): Shared, admin: Admin) -> Response {
    let title = "Dead letters";
    let bus = &state.bus;
    let stream = match bus.stream(&bus.subjects().deadletter_stream()).await {
        Ok(s) => s,
        Err(e) => return failed(&admin, title, "/admin/deadletters", &e.to_string()),
    };
    let info = match stream.get_info().await {
        Ok(info) => info,
        Err(e) => return failed(&admin, title, "/admin/deadletters", &e.to_string()),
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut rows = Vec::new();
    if info.state.messages > 0 {
        let mut seq = last;
        while seq >= first.max(1) && rows.len() < DEAD_LETTERS as usize {
            // A sequence may have been removed (limits, purge): skip it.
            if let Ok(raw) = stream.get_raw_message(seq).await
                && let Ok(dl) = DeadLetter::decode(raw.payload)
            {
                rows.push(vec![
                    utc(dl.at_ms),
                    format!("<code>{}</code>", esc(&dl.subject)),
                    esc(&dl.reason),
                    dl.deliveries.to_string(),
                    esc(&dl.source),
                    dl.stream_sequence.to_string(),
                ]);
            }
            if seq == 0 {
                break;
            }
            seq -= 1;
        }
    }
    let mut body = format!(
        "<p>The newest {DEAD_LETTERS} of {} messages set aside on <code>{}</code>, with why. \
         Their contents stay in the stream.</p>",
        info.state.messages,
        esc(&bus.subjects().deadletter_stream())
    );
    if rows.is_empty() {
        body.push_str("<p id=\"no-deadletters\">No dead letters.</p>");
    }
    body.push_str(&table(
        "deadletters",
        "Dead letters, newest first",
        &[
            "At",
            "Subject",
            "Reason",
            "Deliveries",
            "Set aside by",
            "Stream seq",
        ],
        &rows,
    ));
    page(
        StatusCode::OK,
        title,
        "/admin/deadletters",
        Some(&admin.csrf),
        &Notice::None,
        &body,
    )
}

/// A page that could not be read: what failed, with status 503.
fn failed(admin: &Admin, title: &str, current: &str, error: &str) -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        title,
        current,
        Some(&admin.csrf),
        &Notice::Failed(error.to_owned()),
        "",
    )
}
