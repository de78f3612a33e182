//! A fake Telegram Bot API server on loopback, speaking the documented wire format:
//! `POST /bot<token>/<method>` with JSON or multipart bodies, answers
//! `{"ok": true, "result": …}` or `{"ok": false, "error_code": …, "description": …}`,
//! and files under `GET /file/bot<token>/<path>`.
//!
//! `getUpdates` long-polls and follows Telegram's offset rule: a call with
//! `offset = n` confirms (drops) every update below `n`. Behaviour can be scripted:
//! refuse markup once, fail `getUpdates` with 502 for a while, rate-limit, block a
//! chat, or hold `getUpdates` calls so they never reach "Telegram".

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequest, Multipart, Path, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio::sync::Notify;

pub const BOT_ID: u64 = 777_000;
pub const BOT_USERNAME: &str = "nexus_test_bot";

/// A message the bot sent (sendMessage, sendPhoto, sendDocument; `method` in lowercase).
#[derive(Debug, Clone)]
pub struct Sent {
    pub method: String,
    pub chat_id: i64,
    pub text: String,
    pub parse_mode: Option<String>,
    pub reply_to: Option<i64>,
    /// Uploaded file: (file name, bytes).
    pub file: Option<(String, Vec<u8>)>,
}

#[derive(Default)]
struct Inner {
    token: String,
    /// Unconfirmed updates, oldest first.
    updates: VecDeque<Value>,
    next_update_id: i64,
    next_message_id: i64,
    /// Highest offset a getUpdates call has confirmed.
    confirmed: i64,
    deliveries: HashMap<i64, u32>,
    get_updates_calls: u32,
    fail_get_updates_until: Option<Instant>,
    failed_get_updates: u32,
    hold: bool,
    reject_markup: u32,
    rejected: Vec<Value>,
    rate_limit: u32,
    /// Sends let through before `rate_limit` applies.
    rate_limit_after: u32,
    /// 429s answered so far.
    limited: u32,
    blocked: Vec<i64>,
    sent: Vec<Sent>,
    actions: Vec<(i64, String)>,
    files: HashMap<String, (String, Vec<u8>)>,
    /// Runs once, after the next send is taken and before it is answered.
    after_next_send: Option<Box<dyn FnOnce() + Send>>,
}

#[derive(Clone)]
pub struct FakeTelegram {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
}

type Shared = (Arc<Mutex<Inner>>, Arc<Notify>);

impl FakeTelegram {
    pub async fn start(token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_owned(),
            next_update_id: 100_000,
            next_message_id: 1,
            ..Default::default()
        }));
        let notify = Arc::new(Notify::new());
        let app = Router::new()
            .route("/{bot}/{method}", post(method))
            .route("/file/{bot}/{*path}", get(file))
            .with_state((inner.clone(), notify.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind fake Telegram: {e}"));
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            inner,
            notify,
        }
    }

    /// `TELEGRAM_API_URL` for this fake.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    /// Queues an update built around `message` (its ids and date are filled in).
    /// Returns (update_id, message_id).
    pub fn push_message(&self, mut message: Value) -> (i64, i64) {
        let ids = self.with(|i| {
            let update_id = i.next_update_id;
            i.next_update_id += 1;
            let message_id = i.next_message_id;
            i.next_message_id += 1;
            message["message_id"] = json!(message_id);
            message["date"] = json!(unix_now());
            i.updates
                .push_back(json!({"update_id": update_id, "message": message}));
            (update_id, message_id)
        });
        self.notify.notify_waiters();
        ids
    }

    /// Several text messages from `from`, queued at once so one poll takes them all.
    pub fn push_texts(&self, from: i64, username: &str, texts: &[String]) -> Vec<(i64, i64)> {
        let ids = self.with(|i| {
            texts
                .iter()
                .map(|text| {
                    let update_id = i.next_update_id;
                    i.next_update_id += 1;
                    let message_id = i.next_message_id;
                    i.next_message_id += 1;
                    i.updates.push_back(json!({"update_id": update_id, "message": {
                        "message_id": message_id,
                        "date": unix_now(),
                        "chat": {"id": from, "type": "private", "first_name": "User", "username": username},
                        "from": user(from, username),
                        "text": text,
                    }}));
                    (update_id, message_id)
                })
                .collect()
        });
        self.notify.notify_waiters();
        ids
    }

    /// A text message from user `from` in their private chat.
    pub fn push_text(&self, from: i64, username: &str, text: &str) -> (i64, i64) {
        self.push_message(json!({
            "chat": {"id": from, "type": "private", "first_name": "User", "username": username},
            "from": user(from, username),
            "text": text,
        }))
    }

    /// A photo (three sizes, the largest holding `bytes`) with a caption.
    pub fn push_photo(&self, from: i64, username: &str, caption: &str, bytes: &[u8]) -> (i64, i64) {
        self.with(|i| {
            i.files.insert(
                "photo-small".into(),
                ("photos/small.jpg".into(), b"small".to_vec()),
            );
            i.files.insert(
                "photo-large".into(),
                ("photos/large.jpg".into(), bytes.to_vec()),
            );
        });
        self.push_message(json!({
            "chat": {"id": from, "type": "private", "first_name": "User", "username": username},
            "from": user(from, username),
            "photo": [
                {"file_id": "photo-small", "file_unique_id": "ps", "width": 90, "height": 67, "file_size": 5},
                {"file_id": "photo-large", "file_unique_id": "pl", "width": 1280, "height": 960, "file_size": bytes.len()}
            ],
            "caption": caption,
        }))
    }

    /// The next `n` sendMessage calls with a parse_mode get Telegram's real 400.
    pub fn reject_markup(&self, n: u32) {
        self.with(|i| i.reject_markup = n);
    }

    /// getUpdates answers 502 (as Telegram's nginx does) until `d` has passed.
    pub fn fail_get_updates_for(&self, d: Duration) {
        self.with(|i| i.fail_get_updates_until = Some(Instant::now() + d));
    }

    /// While held, getUpdates calls never reach "Telegram": they hang and confirm nothing.
    pub fn hold_get_updates(&self, hold: bool) {
        self.with(|i| i.hold = hold);
        self.notify.notify_waiters();
    }

    /// The next `n` send calls get 429 with retry_after 1.
    pub fn rate_limit(&self, n: u32) {
        self.with(|i| i.rate_limit = n);
    }

    /// After `pass` more successful sends, the next `n` get 429 (`n = 0` lifts it).
    pub fn rate_limit_after(&self, pass: u32, n: u32) {
        self.with(|i| {
            i.rate_limit_after = pass;
            i.rate_limit = n;
        });
    }

    /// 429s answered so far.
    pub fn limited(&self) -> u32 {
        self.with(|i| i.limited)
    }

    /// Runs `f` once, when the next message is sent: after "Telegram" has it, before
    /// the bot hears back (to crash something at exactly that point).
    pub fn after_next_send(&self, f: impl FnOnce() + Send + 'static) {
        self.with(|i| i.after_next_send = Some(Box::new(f)));
    }

    /// The user of `chat` blocked the bot: sends to it get 403.
    pub fn block_chat(&self, chat: i64) {
        self.with(|i| i.blocked.push(chat));
    }

    pub fn sent_to(&self, chat: i64) -> Vec<Sent> {
        self.with(|i| {
            i.sent
                .iter()
                .filter(|s| s.chat_id == chat)
                .cloned()
                .collect()
        })
    }

    pub fn rejected(&self) -> Vec<Value> {
        self.with(|i| i.rejected.clone())
    }

    /// sendChatAction calls: (chat, action).
    pub fn actions(&self) -> Vec<(i64, String)> {
        self.with(|i| i.actions.clone())
    }

    /// How often getUpdates returned this update.
    pub fn deliveries(&self, update_id: i64) -> u32 {
        self.with(|i| i.deliveries.get(&update_id).copied().unwrap_or(0))
    }

    /// Updates below this id are confirmed (dropped).
    pub fn confirmed_offset(&self) -> i64 {
        self.with(|i| i.confirmed)
    }

    pub fn get_updates_calls(&self) -> u32 {
        self.with(|i| i.get_updates_calls)
    }

    pub fn failed_get_updates(&self) -> u32 {
        self.with(|i| i.failed_get_updates)
    }
}

pub fn user(id: i64, username: &str) -> Value {
    json!({"id": id, "is_bot": false, "first_name": "User", "username": username})
}

fn bot_user() -> Value {
    json!({"id": BOT_ID, "is_bot": true, "first_name": "Nexus", "username": BOT_USERNAME})
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ok(result: Value) -> Response {
    Json(json!({"ok": true, "result": result})).into_response()
}

fn error(code: u16, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": code, "description": description});
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    (StatusCode::from_u16(code).unwrap(), Json(body)).into_response()
}

async fn file(
    State((inner, _)): State<Shared>,
    Path((bot, path)): Path<(String, String)>,
) -> Response {
    let i = inner.lock().unwrap();
    if bot != format!("bot{}", i.token) {
        return StatusCode::NOT_FOUND.into_response();
    }
    match i.files.values().find(|(p, _)| *p == path) {
        Some((_, bytes)) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn method(
    State((inner, notify)): State<Shared>,
    Path((bot, method)): Path<(String, String)>,
    request: Request,
) -> Response {
    if bot != format!("bot{}", inner.lock().unwrap().token) {
        return error(404, "Not Found", None);
    }
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/"));
    let params: Value = if multipart {
        match Multipart::from_request(request, &()).await {
            Ok(mut form) => {
                let mut fields = serde_json::Map::new();
                while let Ok(Some(field)) = form.next_field().await {
                    let name = field.name().unwrap_or_default().to_owned();
                    let file_name = field.file_name().map(str::to_owned);
                    let data = field.bytes().await.unwrap_or_default();
                    let value = match file_name {
                        Some(f) => json!({"file_name": f, "bytes": data.to_vec()}),
                        None => {
                            let text = String::from_utf8_lossy(&data).into_owned();
                            // Nested objects travel as JSON strings in multipart forms.
                            serde_json::from_str::<Value>(&text)
                                .ok()
                                .filter(|v| v.is_object())
                                .unwrap_or(Value::String(text))
                        }
                    };
                    fields.insert(name, value);
                }
                Value::Object(fields)
            }
            Err(_) => return error(400, "Bad Request: invalid multipart body", None),
        }
    } else {
        let body = Bytes::from_request(request, &()).await.unwrap_or_default();
        if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) => return error(400, "Bad Request: invalid JSON", None),
            }
        }
    };

    // Bot API method names are case-insensitive (teloxide sends `GetMe`, `SendMessage`).
    let method = method.to_ascii_lowercase();
    match method.as_str() {
        "getme" => ok(json!({
                "id": BOT_ID, "is_bot": true, "first_name": "Nexus", "username": BOT_USERNAME,
                "can_join_groups": true, "can_read_all_group_messages": false,
                "supports_inline_queries": false, "has_main_web_app": false
        })),
        "getupdates" => get_updates(inner, notify, params).await,
        "sendmessage" | "sendphoto" | "senddocument" => send(&inner, &method, &params),
        "sendchataction" => {
            let chat = as_i64(&params["chat_id"]);
            let action = params["action"].as_str().unwrap_or_default().to_owned();
            inner.lock().unwrap().actions.push((chat, action));
            ok(json!(true))
        }
        "getfile" => {
            let id = params["file_id"].as_str().unwrap_or_default().to_owned();
            let i = inner.lock().unwrap();
            match i.files.get(&id) {
                Some((path, bytes)) => ok(json!({
                    "file_id": id, "file_unique_id": format!("u-{id}"),
                    "file_size": bytes.len(), "file_path": path
                })),
                None => error(400, "Bad Request: invalid file_id", None),
            }
        }
        "setwebhook" | "deletewebhook" => ok(json!(true)),
        _ => error(404, "Not Found", None),
    }
}

fn as_i64(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_default()
}

async fn get_updates(inner: Arc<Mutex<Inner>>, notify: Arc<Notify>, params: Value) -> Response {
    enum Entry {
        Fail,
        Hold,
        Poll,
    }
    let entry = {
        let mut i = inner.lock().unwrap();
        i.get_updates_calls += 1;
        if i.fail_get_updates_until.is_some_and(|t| Instant::now() < t) {
            i.failed_get_updates += 1;
            Entry::Fail
        } else if i.hold {
            Entry::Hold
        } else {
            if let Some(offset) = params["offset"].as_i64() {
                if offset > i.confirmed {
                    i.confirmed = offset;
                }
                i.updates
                    .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
            }
            Entry::Poll
        }
    };
    match entry {
        Entry::Fail => {
            return (
                StatusCode::BAD_GATEWAY,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
            )
                .into_response();
        }
        Entry::Hold => {
            // Never reaches "Telegram": wait until released, then confirm nothing.
            loop {
                let released = notify.notified();
                if !inner.lock().unwrap().hold {
                    break;
                }
                released.await;
            }
            return error(502, "Bad Gateway", None);
        }
        Entry::Poll => {}
    }
    let limit = params["limit"].as_u64().unwrap_or(100).clamp(1, 100) as usize;
    let timeout = Duration::from_secs(params["timeout"].as_u64().unwrap_or(0));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let wake = notify.notified();
        {
            let mut i = inner.lock().unwrap();
            if !i.updates.is_empty() {
                let batch: Vec<Value> = i.updates.iter().take(limit).cloned().collect();
                for u in &batch {
                    *i.deliveries
                        .entry(u["update_id"].as_i64().unwrap_or(0))
                        .or_insert(0) += 1;
                }
                return ok(Value::Array(batch));
            }
        }
        if tokio::time::timeout_at(deadline, wake).await.is_err() {
            return ok(json!([]));
        }
    }
}

fn send(inner: &Arc<Mutex<Inner>>, method: &str, params: &Value) -> Response {
    let mut i = inner.lock().unwrap();
    let chat = as_i64(&params["chat_id"]);
    if i.blocked.contains(&chat) {
        return error(403, "Forbidden: bot was blocked by the user", None);
    }
    if i.rate_limit > 0 && i.rate_limit_after == 0 {
        i.rate_limit -= 1;
        i.limited += 1;
        return error(
            429,
            "Too Many Requests: retry after 1",
            Some(json!({"retry_after": 1})),
        );
    }
    let text = params["text"]
        .as_str()
        .or_else(|| params["caption"].as_str())
        .unwrap_or_default()
        .to_owned();
    let parse_mode = params["parse_mode"].as_str().map(str::to_owned);
    i.rate_limit_after = i.rate_limit_after.saturating_sub(1);
    if method == "sendmessage" {
        if text.trim().is_empty() {
            return error(400, "Bad Request: message text is empty", None);
        }
        if text.encode_utf16().count() > 4096 {
            i.rejected.push(params.clone());
            return error(400, "Bad Request: message is too long", None);
        }
        if parse_mode.is_some() && i.reject_markup > 0 {
            i.reject_markup -= 1;
            i.rejected.push(params.clone());
            return error(
                400,
                "Bad Request: can't parse entities: Can't find end of the entity starting at byte offset 0",
                None,
            );
        }
        if parse_mode.as_deref() == Some("HTML")
            && let Err(why) = check_html(&text)
        {
            i.rejected.push(params.clone());
            return error(
                400,
                &format!("Bad Request: can't parse entities: {why}"),
                None,
            );
        }
    }
    let reply_to = params["reply_parameters"]["message_id"].as_i64();
    let field = if method == "sendphoto" {
        "photo"
    } else {
        "document"
    };
    // A file is either the part itself, or `attach://<name>` naming another part.
    let part = match params[field]
        .as_str()
        .and_then(|v| v.strip_prefix("attach://"))
    {
        Some(name) => &params[name],
        None => &params[field],
    };
    let file = part["file_name"].as_str().map(|name| {
        let bytes: Vec<u8> = part["bytes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64().map(|b| b as u8))
                    .collect()
            })
            .unwrap_or_default();
        (name.to_owned(), bytes)
    });
    let message_id = i.next_message_id;
    i.next_message_id += 1;
    i.sent.push(Sent {
        method: method.to_owned(),
        chat_id: chat,
        text: text.clone(),
        parse_mode,
        reply_to,
        file,
    });
    if let Some(f) = i.after_next_send.take() {
        f();
    }
    let chat_json = if chat < 0 {
        json!({"id": chat, "type": "group", "title": "group"})
    } else {
        json!({"id": chat, "type": "private", "first_name": "User"})
    };
    let mut message = json!({
        "message_id": message_id, "date": unix_now(), "chat": chat_json, "from": bot_user(),
    });
    match method {
        "sendphoto" => {
            message["photo"] = json!([{"file_id": format!("sent-{message_id}"), "file_unique_id": format!("s{message_id}"), "width": 1, "height": 1}]);
        }
        "senddocument" => {
            message["document"] = json!({"file_id": format!("sent-{message_id}"), "file_unique_id": format!("s{message_id}")});
        }
        _ => message["text"] = json!(text),
    }
    ok(message)
}

/// What Telegram's HTML parser insists on: known tags, properly nested, entities escaped.
fn check_html(html: &str) -> Result<(), String> {
    const TAGS: &[&str] = &[
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "a",
        "code",
        "pre",
        "blockquote",
        "tg-spoiler",
        "span",
    ];
    let mut open: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(pos) = rest.find(['<', '>', '&']) {
        let tail = &rest[pos..];
        if tail.starts_with('&') {
            let end = tail.find(';').ok_or("unsupported start tag \"&\"")?;
            let entity = &tail[..=end];
            if !["&amp;", "&lt;", "&gt;", "&quot;"].contains(&entity) && !entity.starts_with("&#") {
                return Err(format!("unsupported entity {entity}"));
            }
            rest = &tail[end + 1..];
            continue;
        }
        if tail.starts_with('>') {
            return Err("unexpected \">\"".into());
        }
        let end = tail.find('>').ok_or("unclosed start tag")?;
        let inner = &tail[1..end];
        if let Some(name) = inner.strip_prefix('/') {
            match open.pop() {
                Some(o) if o == name => {}
                _ => return Err(format!("unmatched end tag \"{name}\"")),
            }
        } else {
            let name = inner.split(' ').next().unwrap_or_default();
            if !TAGS.contains(&name) {
                return Err(format!("unsupported start tag \"{name}\""));
            }
            open.push(name.to_owned());
        }
        rest = &tail[end + 1..];
    }
    match open.pop() {
        Some(o) => Err(format!(
            "can't find end tag corresponding to start tag \"{o}\""
        )),
        None => Ok(()),
    }
}
