//! The web tools over real NATS. `fetch_url` runs in-process against fake
//! sites on loopback (several loopback addresses, so a refused address is shown
//! to get no request at all); `web_search` runs in the built binary, started
//! with `BRAVE_API_KEY`/`BRAVE_API_URL` pointing at a fake Brave Search that
//! speaks Brave's JSON and checks the token.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use nexus_bus::{Bus, BusError, TraceContext};
use nexus_common::domain::ToolName;
use nexus_proto::v1::{ToolCall, ToolErrorKind, ToolResult, tool_result::Outcome};
use nexus_testkit::{ServiceProcess, TestEnv, eventually, fake_site::FakeSite};
use nexus_tools::ToolDirectory;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{TestApp, spawn_app_with};

const LO1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const LO2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

const ARTICLE: &str = r#"<!doctype html>
<html><head><title>Why Otters Hold Hands</title>
<style>body { font-family: serif } STYLETEXT</style>
<script>window.tracker = "SCRIPTTEXT";</script></head>
<body>
<header><a href="/">River Weekly</a> HEADERTEXT</header>
<nav><a href="/news">News</a> <a href="/about">NAVTEXT About us</a></nav>
<article>
<h1>Why Otters Hold Hands</h1>
<p>Sea otters hold hands while they sleep, a behaviour called rafting. It keeps them
from drifting apart on the currents of the bay, and it is one of the most photographed
moments in marine wildlife, as any visitor to the coast will tell you at length.</p>
<h2>How rafting works</h2>
<p>A raft can hold a dozen otters or more. Mothers keep pups on their chests, and the
group wraps itself in kelp so the tide cannot carry anyone away during the night, as
the <a href="/research/kelp">kelp institute</a> has documented for many years now.</p>
<ul><li>Kelp acts as an anchor</li><li>Pups ride on their mothers</li></ul>
<pre><code>rafts = otters / 12</code></pre>
</article>
<aside>ASIDETEXT Subscribe to our newsletter</aside>
<footer>FOOTERTEXT All rights reserved</footer>
</body></html>"#;

/// Pages for `fetch_url`: an article, text, JSON, a PDF, a big page, a long
/// page, redirect chains and an open redirect.
fn pages() -> Router {
    let big: String = (0..20_000).map(|i| format!("line {i:05}\n")).collect();
    let long: String = "0123456789".repeat(100);
    Router::new()
        .route("/article", get(|| async { html(ARTICLE) }))
        .route(
            "/plain",
            get(|| async { typed("text/plain; charset=utf-8", "Just text.\nSecond line.\n") }),
        )
        .route(
            "/data.json",
            get(|| async { typed("application/json", r#"{"name":"otter","tags":["a","b"]}"#) }),
        )
        .route(
            "/paper.pdf",
            get(|| async { typed("application/pdf", "%PDF-1.4\n% not really a pdf\n") }),
        )
        .route(
            "/big",
            get(move || async move { typed("text/plain", &big) }),
        )
        .route(
            "/long",
            get(move || async move { typed("text/plain", &long) }),
        )
        .route(
            "/hops/{n}",
            get(|Path(n): Path<u32>| async move {
                if n == 0 {
                    typed("text/plain", "arrived after the hops")
                } else {
                    Redirect::temporary(&format!("/hops/{}", n - 1)).into_response()
                }
            }),
        )
        .route(
            "/to",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                Redirect::to(&q["url"]).into_response()
            }),
        )
        .route(
            "/secret",
            get(|| async { typed("text/plain", "internal secret") }),
        )
}

fn html(body: &str) -> Response {
    typed("text/html; charset=utf-8", body)
}

fn typed(content_type: &str, body: &str) -> Response {
    (
        [(header::CONTENT_TYPE, content_type.to_owned())],
        body.to_owned(),
    )
        .into_response()
}

/// tool-runner in-process with `[tools.web]` allowing `allow` and small limits.
async fn spawn_web_app(allow: &[&str]) -> TestApp {
    let mut env = TestEnv::new();
    let web = &mut env.config.tools.web;
    web.allow_hosts = allow.iter().map(|h| (*h).to_owned()).collect();
    web.max_redirects = 3;
    web.max_page_bytes = 100_000;
    // Room for a whole capped page, so the runtime's own cut does not hide ours.
    env.config.tools.max_output_bytes = 1 << 20;
    spawn_app_with(env, tempfile::tempdir().unwrap()).await
}

#[tokio::test]
async fn an_article_comes_back_as_markdown_with_its_title_and_without_navigation_or_scripts() {
    let site = FakeSite::start(pages()).await;
    let app = spawn_web_app(&["127.0.0.1"]).await;
    let url = site.url("/article");
    let out = app.output("fetch_url", json!({"url": url})).await;
    assert!(
        out.starts_with(&format!("{url}\n\n# Why Otters Hold Hands\n")),
        "{out}"
    );
    assert!(out.contains("## How rafting works"), "{out}");
    assert!(out.contains("a behaviour called rafting"), "{out}");
    assert!(out.contains("- Kelp acts as an anchor"), "{out}");
    assert!(
        out.contains(&format!("[kelp institute]({})", site.url("/research/kelp"))),
        "{out}"
    );
    assert!(out.contains("```\nrafts = otters / 12\n```"), "{out}");
    for chrome in [
        "NAVTEXT",
        "HEADERTEXT",
        "FOOTERTEXT",
        "ASIDETEXT",
        "SCRIPTTEXT",
        "STYLETEXT",
        "tracker",
    ] {
        assert!(!out.contains(chrome), "{chrome} in {out}");
    }
    app.stop().await;
}

#[tokio::test]
async fn text_and_json_pass_through_and_a_pdf_is_named_not_returned() {
    let site = FakeSite::start(pages()).await;
    let app = spawn_web_app(&["127.0.0.1"]).await;
    let out = app
        .output("fetch_url", json!({"url": site.url("/plain")}))
        .await;
    assert_eq!(
        out,
        format!("{}\n\nJust text.\nSecond line.\n", site.url("/plain"))
    );
    let out = app
        .output("fetch_url", json!({"url": site.url("/data.json")}))
        .await;
    assert!(
        out.ends_with("{\n  \"name\": \"otter\",\n  \"tags\": [\n    \"a\",\n    \"b\"\n  ]\n}"),
        "{out}"
    );
    let pdf = site.url("/paper.pdf");
    let m = app
        .failure("fetch_url", json!({"url": pdf}), ToolErrorKind::InvalidArgs)
        .await;
    assert_eq!(
        m,
        format!("{pdf} is a PDF (application/pdf, 28 bytes); fetch_url returns text pages only")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_page_over_the_size_cap_is_cut_and_max_chars_cuts_the_text_with_a_note() {
    let site = FakeSite::start(pages()).await;
    let app = spawn_web_app(&["127.0.0.1"]).await;
    let out = app
        .output(
            "fetch_url",
            json!({"url": site.url("/big"), "max_chars": 1_000_000}),
        )
        .await;
    assert!(out.contains("line 00000\n"), "{}", &out[..200]);
    // 100 000 bytes of 11-byte lines: the cut falls in line 09090.
    assert!(out.contains("line 09089\n") && !out.contains("line 09091"));
    assert!(
        out.ends_with(
            "[the page is larger than 100000 bytes; only its first 100000 bytes were read]"
        ),
        "{}",
        &out[out.len() - 200..]
    );

    let out = app
        .output(
            "fetch_url",
            json!({"url": site.url("/long"), "max_chars": 25}),
        )
        .await;
    assert_eq!(
        out,
        format!(
            "{}\n\n0123456789012345678901234\n\n[cut at 25 of 1000 characters; ask with a larger max_chars for more]",
            site.url("/long")
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn redirects_are_followed_up_to_the_limit_and_a_longer_chain_fails() {
    let site = FakeSite::start(pages()).await;
    let app = spawn_web_app(&["127.0.0.1"]).await;
    let out = app
        .output("fetch_url", json!({"url": site.url("/hops/3")}))
        .await;
    assert_eq!(
        out,
        format!(
            "{} (redirected from {})\n\narrived after the hops",
            site.url("/hops/0"),
            site.url("/hops/3")
        )
    );
    let before = site.hits().len();
    let m = app
        .failure(
            "fetch_url",
            json!({"url": site.url("/hops/4")}),
            ToolErrorKind::Upstream,
        )
        .await;
    assert!(m.contains("after 3 redirects"), "{m}");
    // /hops/4 … /hops/1 were asked; the fourth redirect (to /hops/0) was not followed.
    let asked: Vec<String> = site.hits()[before..]
        .iter()
        .map(|h| h.path.clone())
        .collect();
    assert_eq!(asked, ["/hops/4", "/hops/3", "/hops/2", "/hops/1"]);
    app.stop().await;
}

#[tokio::test]
async fn private_and_local_addresses_are_refused_without_a_request_unless_allowed() {
    let site = FakeSite::start_on(pages(), &[LO1, LO2]).await;
    let inner = FakeSite::start_on(pages(), &[LO2]).await;
    let port = site.addr_on(LO1).port();
    let app = spawn_web_app(&["127.0.0.1"]).await;

    // The allowed host is reachable.
    let out = app
        .output("fetch_url", json!({"url": site.url_on(LO1, "/plain")}))
        .await;
    assert!(out.contains("Just text."), "{out}");

    // The same site under another loopback address or name is not.
    for url in [
        site.url_on(LO2, "/plain"),
        format!("http://localhost:{port}/plain"),
        format!("http://[::ffff:127.0.0.1]:{port}/plain"),
        format!("http://[::1]:{port}/plain"),
        format!("http://0.0.0.0:{port}/plain"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
    ] {
        let m = app
            .failure("fetch_url", json!({"url": url}), ToolErrorKind::Denied)
            .await;
        assert!(m.contains("private or local networks"), "{url}: {m}");
    }
    // A redirect from the allowed host to another loopback address is refused at the hop.
    for target in [
        inner.url_on(LO2, "/secret"),
        format!("http://localhost:{}/secret", inner.addr_on(LO2).port()),
    ] {
        let url = format!("{}?url={target}", site.url_on(LO1, "/to"));
        let m = app
            .failure("fetch_url", json!({"url": url}), ToolErrorKind::Denied)
            .await;
        assert!(m.starts_with("a redirect led to"), "{m}");
        assert!(!m.contains("internal secret"), "{m}");
    }
    for url in ["file:///etc/passwd", "ftp://127.0.0.1/pub/file"] {
        let m = app
            .failure("fetch_url", json!({"url": url}), ToolErrorKind::InvalidArgs)
            .await;
        assert!(m.contains("only http and https"), "{m}");
    }
    assert_eq!(site.hits_on(LO2), 0, "{:?}", site.hits());
    assert!(inner.hits().is_empty(), "{:?}", inner.hits());
    assert_eq!(site.hits_on(LO1), 3, "/plain and the two redirects");
    app.stop().await;

    // Control: allowed by name, the second address serves the very same site.
    let app = spawn_web_app(&["127.0.0.2"]).await;
    let out = app
        .output("fetch_url", json!({"url": site.url_on(LO2, "/plain")}))
        .await;
    assert!(out.contains("Just text."), "{out}");
    assert_eq!(site.hits_on(LO2), 1);
    app.stop().await;
}

// ---- web_search against a fake Brave Search, in the built binary ----

/// What the fake Brave does with the next searches.
#[derive(Clone, Copy)]
enum BraveMode {
    Results,
    Status(u16),
    Junk,
    Hang,
}

struct BraveState {
    key: String,
    mode: BraveMode,
    /// Query parameters of every search that passed the token check.
    searches: Vec<HashMap<String, String>>,
}

#[derive(Clone)]
struct FakeBrave {
    origin: String,
    state: Arc<Mutex<BraveState>>,
}

impl FakeBrave {
    async fn start(key: &str) -> Self {
        let state = Arc::new(Mutex::new(BraveState {
            key: key.to_owned(),
            mode: BraveMode::Results,
            searches: Vec::new(),
        }));
        let app = Router::new()
            .route("/res/v1/web/search", get(brave_search))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { origin, state }
    }

    fn set_mode(&self, mode: BraveMode) {
        self.state.lock().unwrap().mode = mode;
    }

    fn set_key(&self, key: &str) {
        self.state.lock().unwrap().key = key.to_owned();
    }

    fn searches(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().searches.clone()
    }
}

/// Brave's error body.
fn brave_error(status: u16, code: &str, detail: &str) -> Response {
    let body = json!({
        "type": "ErrorResponse",
        "error": {"id": "0f5c7a1e", "status": status, "code": code, "detail": detail, "meta": {}},
        "time": 1_700_000_000
    });
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

async fn brave_search(
    State(state): State<Arc<Mutex<BraveState>>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mode = {
        let mut s = state.lock().unwrap();
        let token = headers
            .get("x-subscription-token")
            .and_then(|v| v.to_str().ok());
        if token != Some(s.key.as_str()) {
            return brave_error(
                401,
                "SUBSCRIPTION_TOKEN_INVALID",
                "The provided subscription token is invalid.",
            );
        }
        let accepts_json = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json"));
        if !accepts_json {
            return brave_error(406, "NOT_ACCEPTABLE", "Accept application/json.");
        }
        s.searches.push(params.clone());
        s.mode
    };
    match mode {
        BraveMode::Status(429) => {
            brave_error(429, "RATE_LIMITED", "Request rate limit exceeded for plan.")
        }
        BraveMode::Status(code) => brave_error(code, "UNKNOWN", "Something went wrong."),
        BraveMode::Junk => typed("application/json", "<html>gateway error</html>"),
        BraveMode::Hang => std::future::pending().await,
        BraveMode::Results => {
            let q = params.get("q").cloned().unwrap_or_default();
            let count: usize = params
                .get("count")
                .and_then(|c| c.parse().ok())
                .unwrap_or(20);
            let results: Vec<Value> = (1..=count.min(20))
                .map(|i| {
                    json!({
                        "title": format!("Result {i} about {q}"),
                        "url": format!("https://example.com/{i}"),
                        "is_source_local": false,
                        "description": format!("All about <strong>{q}</strong> &amp; kelp, part {i}."),
                        "profile": {"name": "Example", "url": "https://example.com"},
                        "language": "en",
                    })
                })
                .collect();
            Json(json!({
                "type": "search",
                "query": {"original": q, "more_results_available": true},
                "mixed": {"type": "mixed", "main": []},
                "web": {"type": "search", "results": results, "family_friendly": true},
            }))
            .into_response()
        }
    }
}

/// The built tool-runner in its own namespace, with `extra` environment.
struct Runner {
    _env: TestEnv,
    bus: Bus,
    tools: ToolDirectory,
    _process: ServiceProcess,
    _stop: tokio_util::sync::DropGuard,
}

impl Runner {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let env = TestEnv::new();
        let bus = env.bus("web-test").await;
        let stop = CancellationToken::new();
        let tools = ToolDirectory::start(&bus, stop.clone()).await.unwrap();
        let mut process_env = env.process_env();
        process_env.extend(extra.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        let process = ServiceProcess::spawn("tool-runner", &[], &process_env);
        eventually(
            "tool-runner to announce fetch_url",
            Duration::from_secs(30),
            || async { tools.specs().contains_key("fetch_url").then_some(()) },
        )
        .await;
        Self {
            _env: env,
            bus,
            tools,
            _process: process,
            _stop: stop.drop_guard(),
        }
    }

    async fn try_call(&self, tool: &str, args: Value) -> Result<ToolResult, BusError> {
        let call = ToolCall {
            call_id: "call-1".into(),
            name: tool.into(),
            arguments_json: args.to_string(),
            context: None,
        };
        self.bus
            .request::<ToolCall, ToolResult>(
                self.bus.subjects().tool(&ToolName::parse(tool).unwrap()),
                &call,
                &TraceContext::new_root(),
                Some(Duration::from_secs(20)),
            )
            .await
    }

    async fn search(&self, args: Value) -> Outcome {
        self.try_call("web_search", args)
            .await
            .unwrap()
            .outcome
            .unwrap()
    }
}

fn failure_of(outcome: Outcome, kind: ToolErrorKind, retryable: bool) -> String {
    match outcome {
        Outcome::Error(e) if e.kind() == kind && e.retryable == retryable => e.message,
        other => panic!("expected {kind:?} (retryable {retryable}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn web_search_lists_brave_results_and_says_clearly_when_brave_fails() {
    let brave = FakeBrave::start("brave-test-key").await;
    let runner = Runner::start(&[
        ("BRAVE_API_KEY", "brave-test-key"),
        ("BRAVE_API_URL", &brave.origin),
        ("NEXUS__TOOLS__WEB__TIMEOUT_SECS", "2"),
    ])
    .await;
    assert!(runner.tools.specs().contains_key("web_search"));

    let Outcome::Output(out) = runner.search(json!({"query": "sea otters"})).await else {
        panic!("search failed");
    };
    assert!(
        out.starts_with(
            "Web results for \"sea otters\":\n\n\
             1. Result 1 about sea otters\n   https://example.com/1\n   All about sea otters & kelp, part 1.\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("\n5. Result 5") && !out.contains("\n6. "),
        "{out}"
    );

    let Outcome::Output(out) = runner.search(json!({"query": "kelp", "count": 3})).await else {
        panic!("search failed");
    };
    assert!(
        out.contains("\n3. Result 3 about kelp") && !out.contains("\n4. "),
        "{out}"
    );
    let searches = brave.searches();
    assert_eq!(searches[0]["q"], "sea otters");
    assert_eq!(searches[0]["count"], "5");
    assert_eq!(searches[1]["count"], "3");

    let m = failure_of(
        runner.search(json!({"query": "kelp", "count": 21})).await,
        ToolErrorKind::InvalidArgs,
        false,
    );
    assert!(m.contains("count"), "{m}");

    brave.set_mode(BraveMode::Status(429));
    let m = failure_of(
        runner.search(json!({"query": "x"})).await,
        ToolErrorKind::Upstream,
        true,
    );
    assert!(m.contains("rate-limited"), "{m}");

    brave.set_mode(BraveMode::Status(500));
    let m = failure_of(
        runner.search(json!({"query": "x"})).await,
        ToolErrorKind::Upstream,
        true,
    );
    assert!(m.contains("Brave Search failed (500"), "{m}");

    brave.set_mode(BraveMode::Junk);
    let m = failure_of(
        runner.search(json!({"query": "x"})).await,
        ToolErrorKind::Upstream,
        true,
    );
    assert!(m.contains("not its search JSON"), "{m}");

    brave.set_mode(BraveMode::Hang);
    let m = failure_of(
        runner.search(json!({"query": "x"})).await,
        ToolErrorKind::Timeout,
        true,
    );
    assert!(m.contains("did not answer within 2 s"), "{m}");

    // The key is revoked: Brave answers 401, which no retry can fix.
    brave.set_mode(BraveMode::Results);
    brave.set_key("rotated-key");
    let m = failure_of(
        runner.search(json!({"query": "x"})).await,
        ToolErrorKind::Upstream,
        false,
    );
    assert!(
        m.contains("refused the API key") && m.contains("BRAVE_API_KEY"),
        "{m}"
    );
    assert!(!m.contains("brave-test-key"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_brave_key_web_search_is_not_offered_and_the_status_says_why() {
    let runner = Runner::start(&[]).await;
    let specs = runner.tools.specs();
    assert!(specs.contains_key("fetch_url"));
    assert!(!specs.contains_key("web_search"), "{:?}", specs.keys());
    let providers = runner.tools.providers();
    let status = &providers
        .iter()
        .find(|p| p.provider == "tool-runner")
        .expect("tool-runner announces")
        .status;
    assert_eq!(
        status.get("web_search").map(String::as_str),
        Some("not offered (BRAVE_API_KEY is not set)")
    );
    let err = runner
        .try_call("web_search", json!({"query": "x"}))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::NoResponders { .. }), "{err}");
}
