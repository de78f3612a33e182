//! A fake OpenAI Chat Completions server on loopback, speaking the real wire
//! format: JSON responses, and SSE streams with content and tool-call deltas.
//!
//! Behaviour is scripted per request; every request body is logged so tests can
//! check what the model was shown. `GET /v1/models` lists [`FakeOpenAi::set_models`]
//! (what `nexus onboard` and `nexus doctor` check a key with), and
//! [`FakeOpenAi::require_key`] makes every route refuse other keys with a 401.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

/// What the fake does for one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A plain text answer.
    Text(String),
    /// Tool calls: (name, arguments as JSON).
    ToolCalls(Vec<(String, Value)>),
    /// Answers with the content of the last tool message it was sent, prefixed.
    EchoLastTool(String),
    /// Answers with every earlier user message it was sent, joined by " | ".
    EchoUserMessages,
    /// Answers with the prefix and the last user message.
    EchoLastUser(String),
    /// Answers with the text, `{last_user_json}` replaced by the last user
    /// message as a JSON string (to answer in a JSON format about the input).
    Template(String),
    /// An HTTP error with an OpenAI-style error body.
    Status(u16),
    /// The same, with a `Retry-After` header (seconds or an HTTP date).
    StatusRetryAfter(u16, String),
    /// A 401 whose message quotes the API key it was sent, whole: a provider (or a
    /// proxy) that echoes credentials, so that redaction has something to remove.
    EchoKey,
    /// A 200 whose body is not a valid completion.
    Junk,
    /// Never answers: the request stays open (counted in flight) until the client
    /// gives up — a provider that hangs, or a turn caught in the middle.
    Hang,
    /// Calls `tool` with `args` while the request ends with the user's message; once
    /// the tool's result is in, answers like [`Reply::EchoLastUser`] with `prefix`
    /// (every turn goes through a tool, whatever it answered).
    ToolThenEchoLastUser {
        tool: String,
        args: Value,
        prefix: String,
    },
    /// Each request takes the next of these, round robin over all requests (a
    /// provider failing a share of its calls).
    Cycle(Vec<Reply>),
    /// A 200 whose body breaks off: the first pieces of an answer with this text
    /// (SSE, or JSON when not streamed), then the connection is cut.
    CutStream(String),
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    fallback: Option<Reply>,
    /// Replies by requested model name; they win over the script and the fallback.
    per_model: std::collections::HashMap<String, Reply>,
    /// Added before every answer, to stand for a model that takes its time.
    delay: std::time::Duration,
    /// The same per requested model; wins over `delay`.
    model_delay: std::collections::HashMap<String, std::time::Duration>,
    /// Requests being answered right now, by requested model.
    in_flight: std::collections::HashMap<String, usize>,
    requests: Vec<Value>,
    /// When each request arrived, in the order of `requests`.
    arrivals: Vec<std::time::Instant>,
    /// What `GET /v1/models` lists.
    models: Vec<String>,
    /// `GET /v1/models` calls answered, refused ones included.
    model_list_calls: usize,
    /// The only key accepted (`Authorization: Bearer …`); `None` accepts any.
    required_key: Option<String>,
    /// Requests [`Reply::Cycle`] has answered so far.
    cycled: usize,
    /// Keep no request bodies (see [`FakeOpenAi::forget_requests`]).
    forget: bool,
}

/// The running fake. Dropping it does not stop the server; tests end with the runtime.
#[derive(Clone)]
pub struct FakeOpenAi {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeOpenAi {
    /// Starts on `127.0.0.1:0`. `fallback` answers when the script is empty.
    pub async fn start(fallback: Reply) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            fallback: Some(fallback),
            models: vec!["gpt-4.1-mini".to_owned(), "fake-model".to_owned()],
            ..Default::default()
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/v1/models", get(models))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind fake OpenAI: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner }
    }

    /// `OPENAI_BASE_URL` for this fake, deliberately without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The variables that point agent-core at this fake: a test key, its URL, a
    /// model it lists, and answers without streaming. Later entries a suite adds win.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OPENAI_API_KEY", "sk-test-key-000000".into()),
            ("OPENAI_BASE_URL", self.base_url()),
            ("NEXUS__LLM__MODEL", "gpt-4.1-mini".into()),
            ("NEXUS__LLM__STREAM", "false".into()),
        ]
    }

    /// Queues replies, used in order before the fallback.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        if let Ok(mut i) = self.inner.lock() {
            i.script.extend(replies);
        }
    }

    pub fn set_fallback(&self, reply: Reply) {
        if let Ok(mut i) = self.inner.lock() {
            i.fallback = Some(reply);
        }
    }

    /// Makes every request for `model` answer with `reply`.
    pub fn set_model_reply(&self, model: &str, reply: Reply) {
        if let Ok(mut i) = self.inner.lock() {
            i.per_model.insert(model.to_owned(), reply);
        }
    }

    /// Delays every answer by `delay`.
    pub fn set_delay(&self, delay: std::time::Duration) {
        if let Ok(mut i) = self.inner.lock() {
            i.delay = delay;
        }
    }

    /// Delays every answer for `model` by `delay` (instead of the general delay).
    pub fn set_model_delay(&self, model: &str, delay: std::time::Duration) {
        if let Ok(mut i) = self.inner.lock() {
            i.model_delay.insert(model.to_owned(), delay);
        }
    }

    /// Requests for `model` that have arrived and not been answered yet.
    pub fn in_flight(&self, model: &str) -> usize {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.in_flight.get(model).copied())
            .unwrap_or(0)
    }

    /// Sets the models `GET /v1/models` lists (default: `gpt-4.1-mini`, `fake-model`).
    pub fn set_models(&self, models: &[&str]) {
        if let Ok(mut i) = self.inner.lock() {
            i.models = models.iter().map(|m| (*m).to_owned()).collect();
        }
    }

    /// Accepts only `key` from now on: any other (or none) gets OpenAI's 401.
    pub fn require_key(&self, key: &str) {
        if let Ok(mut i) = self.inner.lock() {
            i.required_key = Some(key.to_owned());
        }
    }

    /// `GET /v1/models` calls so far, refused ones included.
    pub fn model_list_calls(&self) -> usize {
        self.inner.lock().map(|i| i.model_list_calls).unwrap_or(0)
    }

    /// Stops keeping request bodies and arrival times, for long loads: the bench's
    /// 100,000-turn soak kept every prompt and grew past 20 GiB.
    pub fn forget_requests(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.forget = true;
            i.requests = Vec::new();
            i.arrivals = Vec::new();
        }
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.inner
            .lock()
            .map(|i| i.requests.clone())
            .unwrap_or_default()
    }

    /// When each request arrived, in the order of [`Self::requests`] (to check backoffs).
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.inner
            .lock()
            .map(|i| i.arrivals.clone())
            .unwrap_or_default()
    }
}

/// OpenAI's answer to a missing or wrong key, when [`FakeOpenAi::require_key`] is set.
fn refused(inner: &Inner, headers: &header::HeaderMap) -> Option<Response> {
    let required = inner.required_key.as_deref()?;
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if sent == Some(required) {
        return None;
    }
    let err = json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
    Some((StatusCode::UNAUTHORIZED, Json(err)).into_response())
}

/// `GET /v1/models`: the list OpenAI answers, one object per model.
async fn models(State(inner): State<Arc<Mutex<Inner>>>, headers: header::HeaderMap) -> Response {
    let Ok(mut i) = inner.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    i.model_list_calls += 1;
    if let Some(refusal) = refused(&i, &headers) {
        return refusal;
    }
    let data: Vec<Value> = i
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn completions(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: header::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let (reply, delay, requested) = {
        let Ok(mut i) = inner.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        if let Some(refusal) = refused(&i, &headers) {
            return refusal;
        }
        if !i.forget {
            i.requests.push(body.clone());
            i.arrivals.push(std::time::Instant::now());
        }
        let requested = body["model"].as_str().unwrap_or_default().to_owned();
        let reply = match i.per_model.get(&requested) {
            Some(r) => r.clone(),
            None => i
                .script
                .pop_front()
                .or_else(|| i.fallback.clone())
                .unwrap_or(Reply::Text("ok".into())),
        };
        let reply = match reply {
            Reply::Cycle(replies) if !replies.is_empty() => {
                let n = i.cycled;
                i.cycled += 1;
                replies[n % replies.len()].clone()
            }
            other => other,
        };
        *i.in_flight.entry(requested.clone()).or_default() += 1;
        let delay = i.model_delay.get(&requested).copied().unwrap_or(i.delay);
        (reply, delay, requested)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if matches!(reply, Reply::Hang) {
        // In flight until the client closes the connection, which drops this future.
        return std::future::pending().await;
    }
    if let Ok(mut i) = inner.lock()
        && let Some(n) = i.in_flight.get_mut(&requested)
    {
        *n = n.saturating_sub(1);
    }
    let model = body["model"].as_str().unwrap_or("fake").to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let (text, calls) = match reply {
        // OpenAI answers a failed streamed request with a JSON error too, not SSE.
        Reply::Status(code) => return failure(code, None),
        Reply::StatusRetryAfter(code, after) => return failure(code, Some(&after)),
        Reply::EchoKey => {
            let key = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            let message = format!("Incorrect API key provided: {key}.");
            let err = json!({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}});
            return (StatusCode::UNAUTHORIZED, Json(err)).into_response();
        }
        Reply::Junk => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"choices\": 42}",
            )
                .into_response();
        }
        Reply::Text(t) => (t, vec![]),
        Reply::Hang => return std::future::pending().await,
        Reply::ToolThenEchoLastUser { tool, args, prefix } => {
            let after_tool = body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .is_some_and(|m| m["role"] == "tool");
            if after_tool {
                (format!("{prefix}{}", last_user(&body)), vec![])
            } else {
                (String::new(), vec![(tool, args)])
            }
        }
        Reply::Cycle(_) => ("ok".to_owned(), vec![]),
        Reply::CutStream(text) => {
            let seq = inner.lock().map(|i| i.requests.len()).unwrap_or(0);
            return cut(&model, &text, seq, stream);
        }
        Reply::ToolCalls(c) => (String::new(), c),
        Reply::EchoLastTool(prefix) => {
            let last = body["messages"]
                .as_array()
                .and_then(|m| m.iter().rev().find(|m| m["role"] == "tool"))
                .and_then(|m| m["content"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "(no tool output)".into());
            (format!("{prefix}{last}"), vec![])
        }
        Reply::EchoLastUser(prefix) => (format!("{prefix}{}", last_user(&body)), vec![]),
        Reply::Template(text) => {
            let last = Value::String(last_user(&body)).to_string();
            (text.replace("{last_user_json}", &last), vec![])
        }
        Reply::EchoUserMessages => {
            let users: Vec<String> = body["messages"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter(|m| m["role"] == "user")
                        .filter_map(|m| m["content"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (format!("You said: {}", users.join(" | ")), vec![])
        }
    };
    let seq = inner.lock().map(|i| i.requests.len()).unwrap_or(0);
    if stream {
        sse(&model, &text, &calls, seq)
    } else {
        Json(full(&model, &text, &calls, seq)).into_response()
    }
}

fn failure(code: u16, retry_after: Option<&str>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let err = json!({"error": {"message": format!("fake failure {code}"), "type": "server_error", "code": null}});
    let mut response = (status, Json(err)).into_response();
    if let Some(value) = retry_after.and_then(|v| header::HeaderValue::from_str(v).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The first half of an answer, then a broken connection (the body stream fails).
fn cut(model: &str, text: &str, seq: usize, stream: bool) -> Response {
    let half: String = text.chars().take(text.chars().count() / 2).collect();
    let (content_type, sent) = if stream {
        let chunk = json!({
            "id": format!("chatcmpl-{seq}"), "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": {"role": "assistant", "content": half}, "finish_reason": null}]
        });
        ("text/event-stream", format!("data: {chunk}\n\n"))
    } else {
        let whole = full(model, text, &[], seq).to_string();
        (
            "application/json",
            whole.chars().take(whole.len() / 2).collect(),
        )
    };
    let pieces: Vec<Result<String, std::io::Error>> = vec![
        Ok(sent),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "cut off by the fake",
        )),
    ];
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(futures::stream::iter(pieces)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn tool_call_json(i: usize, seq: usize, name: &str, args: &Value) -> Value {
    json!({"id": format!("call_{seq}_{i}"), "type": "function", "function": {"name": name, "arguments": args.to_string()}})
}

fn usage() -> Value {
    json!({"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49})
}

fn full(model: &str, text: &str, calls: &[(String, Value)], seq: usize) -> Value {
    let mut message = json!({"role": "assistant", "content": if calls.is_empty() { json!(text) } else { Value::Null }});
    if !calls.is_empty() {
        message["tool_calls"] = calls
            .iter()
            .enumerate()
            .map(|(i, (n, a))| tool_call_json(i, seq, n, a))
            .collect();
    }
    json!({
        "id": format!("chatcmpl-{seq}"),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" }}],
        "usage": usage(),
    })
}

/// The stream OpenAI sends: role, content in pieces, tool calls with their
/// arguments split across deltas, finish reason, usage, `[DONE]`.
fn sse(model: &str, text: &str, calls: &[(String, Value)], seq: usize) -> Response {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": format!("chatcmpl-{seq}"), "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        })
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(8) {
        events.push(chunk(
            json!({"content": piece.iter().collect::<String>()}),
            Value::Null,
        ));
    }
    for (i, (name, args)) in calls.iter().enumerate() {
        let args = args.to_string();
        events.push(chunk(
            json!({"tool_calls": [{"index": i, "id": format!("call_{seq}_{i}"), "type": "function",
                   "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        let a: Vec<char> = args.chars().collect();
        for piece in a.chunks(5) {
            events.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": piece.iter().collect::<String>()}}]}),
                Value::Null,
            ));
        }
    }
    events.push(chunk(
        json!({}),
        json!(if calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }),
    ));
    let mut body = String::new();
    for e in events {
        body.push_str(&format!("data: {e}\n\n"));
    }
    let usage_chunk = json!({"id": format!("chatcmpl-{seq}"), "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": model, "choices": [], "usage": usage()});
    body.push_str(&format!("data: {usage_chunk}\n\ndata: [DONE]\n\n"));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The content of the last user message of a request.
fn last_user(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str().map(str::to_owned))
        .unwrap_or_default()
}
