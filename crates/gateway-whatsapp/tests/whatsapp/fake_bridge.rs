//! A fake of bridge/ on loopback: a real WebSocket server speaking the bridge
//! protocol (PROTOCOL.md) as the Node.js bridge does — token check on the first
//! message with the documented close codes, `ready`, a configurable status on
//! connect, unacked messages re-sent on every reconnect, `send_result` for sends.
//! It records what the gateway said.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
};

#[derive(Default)]
struct State {
    auths: Vec<Value>,
    connections: usize,
    acks: Vec<String>,
    sends: Vec<Value>,
    logins: usize,
    /// Every command after `auth`, as received.
    commands: Vec<Value>,
    /// Messages sent and not acknowledged yet, re-sent on every (re)connect.
    pending: Vec<Value>,
    current: Option<mpsc::UnboundedSender<Message>>,
    /// Sent after `ready` on every connect.
    on_connect: Vec<Value>,
    /// Answer to the next sends: `None` = ok.
    send_failures: Vec<Value>,
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    token: String,
    announce_version: u64,
    state: Mutex<State>,
}

/// The running fake. `stop` ends it as a crash would (connections cut).
pub struct FakeBridge {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

/// `status connected` as the bridge sends it after a login.
pub fn connected() -> Value {
    json!({"type": "status", "state": "connected",
           "me": {"phone_jid": "491700000001@s.whatsapp.net", "lid_jid": "170000000000001@lid", "name": "Nexus"}})
}

impl FakeBridge {
    pub async fn start(token: &str) -> Self {
        Self::start_with(token, 1, 0, vec![connected()]).await
    }

    /// `announce_version` is the protocol version sent in `ready`; `port` 0 picks one.
    pub async fn start_with(
        token: &str,
        announce_version: u64,
        port: u16,
        on_connect: Vec<Value>,
    ) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("bind fake bridge on port {port}: {e}"));
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            token: token.to_owned(),
            announce_version,
            state: Mutex::new(State {
                on_connect,
                ..Default::default()
            }),
        });
        let i = inner.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let i2 = i.clone();
                let task = tokio::spawn(async move { serve(i2, stream).await });
                i.state.lock().unwrap().tasks.push(task);
            }
        });
        Self {
            addr,
            inner,
            accept,
        }
    }

    /// A new fake on the same port, carrying over the unacknowledged messages (as the
    /// real bridge does with its pending files).
    pub async fn restart(self) -> Self {
        let port = self.addr.port();
        let (token, version, pending, on_connect) = {
            let s = self.inner.state.lock().unwrap();
            (
                self.inner.token.clone(),
                self.inner.announce_version,
                s.pending.clone(),
                s.on_connect.clone(),
            )
        };
        self.stop().await;
        let fresh = Self::start_with(&token, version, port, on_connect).await;
        fresh.inner.state.lock().unwrap().pending = pending;
        fresh
    }

    /// Stops accepting and cuts every connection (the port is free on return).
    pub async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let tasks: Vec<_> = {
            let mut s = self.inner.state.lock().unwrap();
            s.current = None;
            s.tasks.drain(..).collect()
        };
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Sends an inbound WhatsApp message; it is re-sent on reconnect until acked.
    pub fn push(&self, msg: Value) {
        let mut s = self.inner.state.lock().unwrap();
        s.pending.push(msg.clone());
        if let Some(tx) = &s.current {
            let _ = tx.send(Message::text(msg.to_string()));
        }
    }

    /// Sends an event (status, qr) to the connected gateway.
    pub fn event(&self, event: Value) {
        let s = self.inner.state.lock().unwrap();
        if let Some(tx) = &s.current {
            let _ = tx.send(Message::text(event.to_string()));
        }
    }

    /// The next sends fail with this `send_result` body (`error`, `retryable`).
    pub fn fail_next_send(&self, error: &str, retryable: bool) {
        self.inner
            .state
            .lock()
            .unwrap()
            .send_failures
            .push(json!({"error": error, "retryable": retryable}));
    }

    pub fn auths(&self) -> Vec<Value> {
        self.inner.state.lock().unwrap().auths.clone()
    }
    pub fn connections(&self) -> usize {
        self.inner.state.lock().unwrap().connections
    }
    pub fn acks(&self) -> Vec<String> {
        self.inner.state.lock().unwrap().acks.clone()
    }
    pub fn sends(&self) -> Vec<Value> {
        self.inner.state.lock().unwrap().sends.clone()
    }
    pub fn logins(&self) -> usize {
        self.inner.state.lock().unwrap().logins
    }
    pub fn commands(&self) -> Vec<Value> {
        self.inner.state.lock().unwrap().commands.clone()
    }
    pub fn pending(&self) -> usize {
        self.inner.state.lock().unwrap().pending.len()
    }
}

async fn serve(inner: Arc<Inner>, stream: tokio::net::TcpStream) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let refuse = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        }))
    };
    let first = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(&t).unwrap_or(Value::Null),
        Err(_) => {
            let _ = ws
                .send(refuse(4003, "no auth message within 5000 ms"))
                .await;
            return;
        }
        _ => Value::Null,
    };
    inner.state.lock().unwrap().auths.push(first.clone());
    if first["type"] != "auth" {
        let _ = ws
            .send(refuse(
                4000,
                "the first message must be {\"type\":\"auth\",...}",
            ))
            .await;
        return;
    }
    if first["token"].as_str() != Some(inner.token.as_str()) {
        let _ = ws
            .send(refuse(4001, "unauthorized: wrong or missing token"))
            .await;
        return;
    }
    if first["protocol_version"] != 1 {
        let _ = ws
            .send(refuse(
                4002,
                &format!(
                    "unsupported protocol_version {}; this bridge speaks 1",
                    first["protocol_version"]
                ),
            ))
            .await;
        return;
    }

    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let hello = json!({"type": "ready", "protocol_version": inner.announce_version, "bridge_version": "fake"});
    let _ = tx.send(Message::text(hello.to_string()));
    {
        let mut s = inner.state.lock().unwrap();
        for e in s.on_connect.iter().chain(s.pending.iter()) {
            let _ = tx.send(Message::text(e.to_string()));
        }
        s.connections += 1;
        s.current = Some(tx.clone());
    }
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(m) => if sink.send(m).await.is_err() { break },
                None => break,
            },
            frame = source.next() => {
                let Some(Ok(Message::Text(text))) = frame else {
                    match frame {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        _ => continue,
                    }
                };
                let cmd: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let mut s = inner.state.lock().unwrap();
                s.commands.push(cmd.clone());
                match cmd["type"].as_str() {
                    Some("ack") => {
                        let id = cmd["id"].as_str().unwrap_or_default().to_owned();
                        s.pending.retain(|m| m["id"] != id.as_str());
                        s.acks.push(id);
                    }
                    Some("send") => {
                        s.sends.push(cmd.clone());
                        let result = if s.send_failures.is_empty() {
                            let n = s.sends.len();
                            json!({"type": "send_result", "id": cmd["id"], "ok": true, "message_ids": [format!("FAKE-OUT-{n}")]})
                        } else {
                            let f = s.send_failures.remove(0);
                            json!({"type": "send_result", "id": cmd["id"], "ok": false, "error": f["error"], "retryable": f["retryable"]})
                        };
                        let _ = tx.send(Message::text(result.to_string()));
                    }
                    Some("login") => s.logins += 1,
                    _ => {}
                }
            }
        }
    }
    let mut s = inner.state.lock().unwrap();
    if s.current.as_ref().is_some_and(|c| c.same_channel(&tx)) {
        s.current = None;
    }
}

/// A bridge `message` from a direct chat.
pub fn dm(id: &str, phone: Option<&str>, lid: Option<&str>, text: &str) -> Value {
    let chat = lid
        .map(str::to_owned)
        .or(phone.map(str::to_owned))
        .unwrap_or_default();
    json!({
        "type": "message", "id": id, "chat_id": chat, "is_group": false,
        "sender": {"phone_jid": phone, "lid_jid": lid, "name": "Alice"},
        "text": text, "timestamp_ms": 1_760_000_000_000_i64, "mentions_me": false
    })
}
