//! A fake Slack on loopback that speaks the Web API's wire format (`ok`/`error` JSON,
//! HTTP 429 with `Retry-After`, Bearer tokens), serves private files, takes
//! uploads, and plays the Socket Mode WebSocket. Every call is recorded.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub const BOT_TOKEN: &str = "xoxb-test-0000-bot-token";
pub const APP_TOKEN: &str = "xapp-test-0000-app-token";
pub const BOT_USER: &str = "UBOT";

/// One recorded Web API call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
    /// Whether it carried the right token.
    pub authorized: bool,
}

/// A scripted answer for the next `chat.postMessage`.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Accept this one (to script a failure on a later call).
    Pass,
    /// HTTP 429 with `Retry-After` seconds.
    RateLimited(u64),
    /// HTTP 200 with `{"ok":false,"error":code}`.
    Error(&'static str),
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    post_failures: VecDeque<Failure>,
    files: HashMap<String, Vec<u8>>,
    uploads: HashMap<String, Vec<u8>>,
    next_ts: u64,
    next_file: u64,
    socket_tx: Option<mpsc::UnboundedSender<String>>,
    socket_connections: usize,
    acks: Vec<String>,
}

#[derive(Clone)]
pub struct FakeSlack {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

type Shared = (Arc<Mutex<Inner>>, SocketAddr, SocketAddr);

impl FakeSlack {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            next_ts: 1,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ws_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_addr = ws_listener.local_addr().unwrap();
        let state: Shared = (inner.clone(), addr, ws_addr);
        let app = Router::new()
            // Slack accepts GET and POST for auth.test.
            .route("/api/auth.test", get(auth_test).post(auth_test))
            .route("/api/chat.postMessage", post(post_message))
            .route("/api/chat.postEphemeral", post(post_ephemeral))
            .route("/api/reactions.add", post(add_reaction))
            .route("/api/files.getUploadURLExternal", get(upload_url))
            .route("/api/files.completeUploadExternal", post(complete_upload))
            .route("/api/apps.connections.open", post(connections_open))
            .route("/upload/{id}", post(upload))
            .route("/files/{name}", get(file))
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        tokio::spawn(socket_server(ws_listener, inner.clone()));
        Self { addr, inner }
    }

    /// `SLACK_API_URL` for this fake.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Serves `bytes` as a private file; returns its `url_private_download`.
    pub fn serve_file(&self, name: &str, bytes: &[u8]) -> String {
        self.inner
            .lock()
            .unwrap()
            .files
            .insert(name.to_owned(), bytes.to_vec());
        format!("http://{}/files/{name}", self.addr)
    }

    pub fn fail_next_posts(&self, failures: impl IntoIterator<Item = Failure>) {
        self.inner.lock().unwrap().post_failures.extend(failures);
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.inner
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Bodies of the `chat.postMessage` calls Slack accepted.
    pub fn posts(&self) -> Vec<Value> {
        self.calls("chat.postMessage")
            .into_iter()
            .filter(|c| c.authorized && c.body["accepted"] == true)
            .map(|c| c.body)
            .collect()
    }

    pub fn uploads(&self) -> HashMap<String, Vec<u8>> {
        self.inner.lock().unwrap().uploads.clone()
    }

    /// Socket Mode: pushes a frame to the connected client; false when none is connected.
    pub fn push(&self, frame: &Value) -> bool {
        let inner = self.inner.lock().unwrap();
        inner
            .socket_tx
            .as_ref()
            .is_some_and(|tx| tx.send(frame.to_string()).is_ok())
    }

    pub fn socket_connections(&self) -> usize {
        self.inner.lock().unwrap().socket_connections
    }

    /// Envelope ids the client acknowledged, in order.
    pub fn acks(&self) -> Vec<String> {
        self.inner.lock().unwrap().acks.clone()
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn record(inner: &Arc<Mutex<Inner>>, method: &str, body: Value, authorized: bool) {
    inner.lock().unwrap().calls.push(Call {
        method: method.to_owned(),
        body,
        authorized,
    });
}

fn slack_error(code: &str) -> Response {
    Json(json!({"ok": false, "error": code})).into_response()
}

async fn auth_test(State((inner, _, _)): State<Shared>, headers: HeaderMap) -> Response {
    let ok = bearer(&headers) == Some(BOT_TOKEN);
    record(&inner, "auth.test", Value::Null, ok);
    if !ok {
        return slack_error("invalid_auth");
    }
    Json(json!({
        "ok": true, "url": "https://fake.slack.com/", "team": "Fake", "user": "nexus",
        "team_id": "T1", "user_id": BOT_USER, "bot_id": "BBOT", "is_enterprise_install": false
    }))
    .into_response()
}

async fn post_message(
    State((inner, _, _)): State<Shared>,
    headers: HeaderMap,
    Json(mut body): Json<Value>,
) -> Response {
    let ok = bearer(&headers) == Some(BOT_TOKEN);
    let failure = if ok {
        inner.lock().unwrap().post_failures.pop_front()
    } else {
        None
    };
    body["accepted"] = json!(ok && matches!(failure, None | Some(Failure::Pass)));
    record(&inner, "chat.postMessage", body.clone(), ok);
    if !ok {
        return slack_error("invalid_auth");
    }
    match failure {
        Some(Failure::RateLimited(secs)) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response();
        }
        Some(Failure::Error(code)) => return slack_error(code),
        Some(Failure::Pass) | None => {}
    }
    let ts = {
        let mut i = inner.lock().unwrap();
        i.next_ts += 1;
        format!("1800000000.{:06}", i.next_ts)
    };
    Json(json!({
        "ok": true,
        "channel": body["channel"],
        "ts": ts,
        "message": {
            "type": "message", "subtype": "bot_message", "text": body["text"],
            "ts": ts, "user": BOT_USER, "bot_id": "BBOT", "thread_ts": body["thread_ts"]
        }
    }))
    .into_response()
}

async fn add_reaction(
    State((inner, _, _)): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let ok = bearer(&headers) == Some(BOT_TOKEN);
    record(&inner, "reactions.add", body, ok);
    if !ok {
        return slack_error("invalid_auth");
    }
    Json(json!({"ok": true})).into_response()
}

async fn post_ephemeral(
    State((inner, _, _)): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let ok = bearer(&headers) == Some(BOT_TOKEN);
    record(&inner, "chat.postEphemeral", body, ok);
    if !ok {
        return slack_error("invalid_auth");
    }
    Json(json!({"ok": true, "message_ts": "1800000000.999999"})).into_response()
}

async fn upload_url(
    State((inner, addr, _)): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ok = bearer(&headers) == Some(BOT_TOKEN);
    record(&inner, "files.getUploadURLExternal", json!(q), ok);
    if !ok {
        return slack_error("invalid_auth");
    }
    let id = {
        let mut i = inner.lock().unwrap();
        i.next_file += 1;
        format!("F{:04}", i.next_file)
    };
    Json(json!({"ok": true, "upload_url": format!("http://{addr}/upload/{id}"), "file_id": id}))
        .into_response()
}

async fn upload(
    State((inner, _, _)): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    inner
        .lock()
        .unwrap()
        .uploads
        .insert(id.clone(), body.to_vec());
    (StatusCode::OK, format!("OK - {}", body.len())).into_response()
}

async fn complete_upload(
    State((inner, _, _)): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let ok = bearer(&headers) == Some(BOT_TOKEN);
    record(&inner, "files.completeUploadExternal", body.clone(), ok);
    if !ok {
        return slack_error("invalid_auth");
    }
    let files: Vec<Value> = body["files"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|f| json!({"id": f["id"], "title": f["title"]}))
        .collect();
    Json(json!({"ok": true, "files": files})).into_response()
}

async fn connections_open(
    State((inner, _, ws_addr)): State<Shared>,
    headers: HeaderMap,
) -> Response {
    let ok = bearer(&headers) == Some(APP_TOKEN);
    record(&inner, "apps.connections.open", Value::Null, ok);
    if !ok {
        return slack_error("invalid_auth");
    }
    Json(json!({"ok": true, "url": format!("ws://{ws_addr}/link/?ticket=t1&app_id=A1")}))
        .into_response()
}

async fn file(
    State((inner, _, _)): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if bearer(&headers) != Some(BOT_TOKEN) {
        return StatusCode::FORBIDDEN.into_response();
    }
    match inner.lock().unwrap().files.get(&name) {
        Some(bytes) => (StatusCode::OK, bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Socket Mode: each connection gets `hello`, then whatever the test pushes; acks are recorded.
async fn socket_server(listener: tokio::net::TcpListener, inner: Arc<Mutex<Inner>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            {
                let mut i = inner.lock().unwrap();
                i.socket_tx = Some(tx);
                i.socket_connections += 1;
            }
            let hello =
                json!({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"}});
            if ws
                .send(Message::Text(hello.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
            loop {
                tokio::select! {
                    out = rx.recv() => match out {
                        Some(text) => if ws.send(Message::Text(text.into())).await.is_err() { return },
                        None => return,
                    },
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(t))) => {
                            if let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                                && let Some(id) = v["envelope_id"].as_str()
                            {
                                inner.lock().unwrap().acks.push(id.to_owned());
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                }
            }
        });
    }
}
