//! A minimal fake of bridge/ on loopback (cut down from gateway-whatsapp's test fake):
//! a real WebSocket server that checks the `auth` token, answers `ready`, sends the
//! configured events on connect, answers `login` with the configured pairing events
//! (as the Node.js bridge does: `connecting`, then a `qr`), and records commands.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

#[derive(Default)]
struct State {
    /// Sent after `ready` on every connect.
    on_connect: Vec<Value>,
    /// Sent in answer to each `login`.
    on_login: Vec<Value>,
    /// Every command after `auth`.
    commands: Vec<Value>,
    current: Option<mpsc::UnboundedSender<Message>>,
}

pub struct FakeBridge {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

/// `status connected` as the bridge sends it once the phone has paired.
pub fn connected() -> Value {
    json!({"type": "status", "state": "connected",
           "me": {"phone_jid": "491700000001@s.whatsapp.net", "lid_jid": "170000000000001@lid", "name": "Nexus"}})
}

impl FakeBridge {
    pub async fn start(token: &str, on_connect: Vec<Value>, on_login: Vec<Value>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            on_connect,
            on_login,
            ..Default::default()
        }));
        let (s, token) = (state.clone(), token.to_owned());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(s.clone(), token.clone(), stream));
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Sends an event to the connected gateway.
    pub fn event(&self, event: Value) {
        if let Some(tx) = &self.state.lock().unwrap().current {
            let _ = tx.send(Message::text(event.to_string()));
        }
    }

    pub fn commands(&self) -> Vec<Value> {
        self.state.lock().unwrap().commands.clone()
    }
}

impl Drop for FakeBridge {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(state: Arc<Mutex<State>>, token: String, stream: tokio::net::TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let auth = match ws.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(&t).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    if auth["type"] != "auth" || auth["token"] != token.as_str() {
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(4001),
                reason: "unauthorized: wrong or missing token".into(),
            })))
            .await;
        return;
    }
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let ready = json!({"type": "ready", "protocol_version": 1, "bridge_version": "fake"});
    let _ = tx.send(Message::text(ready.to_string()));
    {
        let mut s = state.lock().unwrap();
        for e in &s.on_connect {
            let _ = tx.send(Message::text(e.to_string()));
        }
        s.current = Some(tx.clone());
    }
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(m) => if sink.send(m).await.is_err() { break },
                None => break,
            },
            frame = source.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let cmd: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let mut s = state.lock().unwrap();
                    if cmd["type"] == "login" {
                        for e in &s.on_login {
                            let _ = tx.send(Message::text(e.to_string()));
                        }
                    }
                    s.commands.push(cmd);
                }
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
}
