//! The WebSocket link to bridge/: connect, authenticate with the first message,
//! check the protocol version, then read events and write commands until the
//! connection drops, and reconnect with backoff.
//!
//! A refused token or a protocol version mismatch is fatal (retrying cannot fix
//! it); anything else is retried. Inbound messages are taken in one at a time, in
//! order, and acknowledged only after `Gateway::intake` returned Ok.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{SinkExt as _, StreamExt as _};
use nexus_common::backoff::Backoff;
use nexus_proto::v1::{ServiceNotice, event};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tokio_tungstenite::{
    connect_async_with_config,
    tungstenite::{
        Message,
        protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    Ctx, SERVICE,
    inbound::{self, Handled},
    protocol::{
        BridgeEvent, GatewayCommand, InboundMsg, PROTOCOL_VERSION, SendCmd, SendResult, Status,
        WaState, close,
    },
};
use nexus_gateway::DeliveryError;

/// Largest frame accepted: attachments travel base64 inside.
const MAX_FRAME: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// The bridge pings every 30 s; this much silence means the connection is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A session that lived this long was healthy: the backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What the rest of the gateway sees of the link.
#[derive(Debug, Clone)]
pub struct LinkState {
    /// Commands to the current session; `None` while the bridge is not connected.
    outbox: Option<mpsc::UnboundedSender<Message>>,
    /// WhatsApp's state as the bridge last reported it.
    pub wa: WaState,
    /// The logged-in account ("+<number>", or the LID) while `wa` is connected.
    pub account: Option<String>,
}

impl LinkState {
    /// Replies can be sent: the bridge is connected and so is WhatsApp.
    pub fn ready(&self) -> bool {
        self.outbox.is_some() && self.wa == WaState::Connected
    }
    /// A session with the bridge is up (whatever WhatsApp's state).
    pub fn bridge_connected(&self) -> bool {
        self.outbox.is_some()
    }
}

/// The shared half of the link: state, and the replies waiting for `send_result`.
pub struct Link {
    state: watch::Sender<LinkState>,
    waiters: Mutex<HashMap<String, oneshot::Sender<SendResult>>>,
}

impl Link {
    pub fn new() -> Self {
        Self {
            state: watch::Sender::new(LinkState {
                outbox: None,
                wa: WaState::Unknown,
                account: None,
            }),
            waiters: Mutex::new(HashMap::new()),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<SendResult>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `cmd` and waits for its `send_result`.
    pub async fn request(
        &self,
        cmd: SendCmd,
        timeout: Duration,
    ) -> Result<SendResult, DeliveryError> {
        let retry = |reason: String| DeliveryError::Retry {
            reason,
            after: Duration::from_secs(2),
        };
        let outbox = self
            .state
            .borrow()
            .outbox
            .clone()
            .ok_or_else(|| retry("the bridge is not connected".into()))?;
        let id = cmd.id.clone();
        let (tx, rx) = oneshot::channel();
        self.waiters().insert(id.clone(), tx);
        let frame = Message::text(GatewayCommand::Send(cmd).to_json());
        if outbox.send(frame).is_err() {
            self.waiters().remove(&id);
            return Err(retry("the bridge connection closed".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(retry(
                "the bridge connection closed before it answered".into(),
            )),
            Err(_) => {
                self.waiters().remove(&id);
                Err(retry(format!(
                    "the bridge did not answer within {timeout:?}"
                )))
            }
        }
    }

    /// Sends a command that expects no answer; false when the bridge is not connected.
    pub(crate) fn command(&self, cmd: &GatewayCommand) -> bool {
        let outbox = self.state.borrow().outbox.clone();
        outbox.is_some_and(|o| o.send(Message::text(cmd.to_json())).is_ok())
    }

    fn complete(&self, result: SendResult) {
        match self.waiters().remove(&result.id) {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => tracing::debug!(id = %result.id, "send_result for a reply nobody waits for"),
        }
    }

    fn attach(&self, outbox: mpsc::UnboundedSender<Message>) {
        self.state.send_modify(|s| {
            s.outbox = Some(outbox);
            s.wa = WaState::Unknown;
            s.account = None;
        });
    }

    fn detach(&self) {
        self.state.send_modify(|s| {
            s.outbox = None;
            s.wa = WaState::Unknown;
            s.account = None;
        });
        // Dropping the senders tells every waiting reply to retry later.
        self.waiters().clear();
    }

    fn set_wa(&self, wa: WaState, account: Option<String>) {
        self.state.send_modify(|s| {
            s.wa = wa;
            s.account = account;
        });
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a session ended.
enum End {
    Shutdown,
    Lost {
        reason: String,
        /// Authenticated and ran long enough to count as healthy.
        stable: bool,
    },
}

/// A failure of one connection attempt.
enum Failure {
    /// Retrying cannot help (wrong token, other protocol version).
    Fatal(anyhow::Error),
    Transient(String),
}

/// Keeps a session with the bridge up until `stop`; returns an error only when
/// retrying cannot help.
pub async fn maintain(ctx: Arc<Ctx>, stop: CancellationToken) -> anyhow::Result<()> {
    // Jittered: a quarter at most, so gateways that lost the bridge together spread out.
    let mut backoff =
        Backoff::new(ctx.settings.reconnect_initial, ctx.settings.reconnect_max).with_jitter(0.25);
    let mut login_sent = false;
    loop {
        let reason = match session(&ctx, &stop, &mut login_sent).await {
            Ok(End::Shutdown) => return Ok(()),
            Ok(End::Lost { reason, stable }) => {
                if stable {
                    backoff.reset();
                }
                reason
            }
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Transient(reason)) => reason,
        };
        let delay = backoff.fail();
        tracing::warn!(
            bridge = %ctx.settings.bridge_url,
            reason,
            retry_in_ms = delay.as_millis() as u64,
            "bridge connection lost; reconnecting"
        );
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn session(
    ctx: &Arc<Ctx>,
    stop: &CancellationToken,
    login_sent: &mut bool,
) -> Result<End, Failure> {
    let url = ctx.settings.bridge_url.as_str();
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let connect = tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect_async_with_config(url, Some(config), true),
    );
    let mut ws = tokio::select! {
        _ = stop.cancelled() => return Ok(End::Shutdown),
        r = connect => match r {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Err(Failure::Transient(format!("cannot reach the bridge at {url}: {e}"))),
            Err(_) => return Err(Failure::Transient(format!("the bridge at {url} did not answer within {CONNECT_TIMEOUT:?}"))),
        },
    };
    let auth = GatewayCommand::Auth {
        token: ctx.settings.token.clone(),
        protocol_version: PROTOCOL_VERSION,
    };
    ws.send(Message::text(auth.to_json()))
        .await
        .map_err(|e| Failure::Transient(format!("sending auth: {e}")))?;

    // The handshake: `ready` with our version, or a close code saying why not.
    let deadline = Instant::now() + HELLO_TIMEOUT;
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return Ok(End::Shutdown),
            f = tokio::time::timeout_at(deadline, ws.next()) => f,
        };
        match frame {
            Err(_) => {
                return Err(Failure::Transient(format!(
                    "no ready from the bridge within {HELLO_TIMEOUT:?}"
                )));
            }
            Ok(None) => {
                return Err(Failure::Transient(
                    "the bridge closed the connection".into(),
                ));
            }
            Ok(Some(Err(e))) => {
                return Err(Failure::Transient(format!("reading from the bridge: {e}")));
            }
            Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<BridgeEvent>(&text) {
                Ok(BridgeEvent::Ready {
                    protocol_version,
                    bridge_version,
                }) => {
                    if protocol_version != PROTOCOL_VERSION {
                        let _ = ws.close(None).await;
                        return Err(Failure::Fatal(anyhow::anyhow!(
                            "the bridge speaks protocol version {protocol_version}, this gateway speaks \
                             {PROTOCOL_VERSION}: deploy bridge/ and gateway-whatsapp from the same release"
                        )));
                    }
                    tracing::info!(bridge = %url, bridge_version, "connected to the WhatsApp bridge");
                    break;
                }
                Ok(other) => {
                    return Err(Failure::Transient(format!(
                        "the bridge sent {other:?} before ready"
                    )));
                }
                Err(e) => {
                    return Err(Failure::Transient(format!(
                        "unreadable first message from the bridge: {e}"
                    )));
                }
            },
            Ok(Some(Ok(Message::Close(frame)))) => return Err(refused(frame)),
            Ok(Some(Ok(_))) => {}
        }
    }

    let started = Instant::now();
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let closing = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    ctx.link.attach(out_tx.clone());

    let failed = CancellationToken::new();
    let (in_tx, in_rx) = mpsc::channel::<InboundMsg>(64);
    let worker = tokio::spawn(take_in_order(
        ctx.clone(),
        in_rx,
        out_tx.clone(),
        failed.clone(),
    ));

    let end = loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => {
                let _ = out_tx.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "gateway shutting down".into(),
                })));
                break End::Shutdown;
            }
            _ = failed.cancelled() => break End::Lost {
                reason: "a message could not be stored; reconnecting so the bridge sends it again".into(),
                stable: false,
            },
            f = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => f,
        };
        let lost = |reason: String| End::Lost {
            reason,
            stable: started.elapsed() >= STABLE_AFTER,
        };
        match frame {
            Err(_) => break lost(format!("nothing from the bridge for {IDLE_TIMEOUT:?}")),
            Ok(None) => break lost("the bridge closed the connection".into()),
            Ok(Some(Err(e))) => break lost(format!("reading from the bridge: {e}")),
            Ok(Some(Ok(Message::Close(frame)))) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                let reason = frame
                    .as_ref()
                    .map(|f| f.reason.to_string())
                    .unwrap_or_default();
                if code == Some(close::REPLACED) {
                    // Another gateway took over: not a healthy end, so the backoff grows
                    // instead of two replicas taking the bridge from each other in a loop.
                    break End::Lost {
                        reason: format!("another gateway connection replaced this one ({reason})"),
                        stable: false,
                    };
                }
                break lost(format!(
                    "the bridge closed the connection ({code:?} {reason})"
                ));
            }
            Ok(Some(Ok(Message::Text(text)))) => {
                let event = match serde_json::from_str::<BridgeEvent>(&text) {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(%error, "unreadable message from the bridge ignored");
                        continue;
                    }
                };
                if let Some(msg) = on_event(ctx, event, &out_tx, login_sent).await
                    && in_tx.send(msg).await.is_err()
                {
                    break lost("the intake worker stopped".into());
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    };

    ctx.link.detach();
    drop(in_tx);
    // A message in the middle of intake may finish: its ack is lost with the
    // connection, and the replay after reconnecting is a JetStream duplicate.
    if tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .is_err()
    {
        tracing::warn!("intake of a message did not finish within 5s after the connection ended");
    }
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(end)
}

/// Maps a close frame received during the handshake to a failure.
fn refused(frame: Option<CloseFrame>) -> Failure {
    let code = frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005);
    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
    match code {
        close::UNAUTHORIZED => Failure::Fatal(anyhow::anyhow!(
            "the bridge refused the token (close {code}: {reason}): set the same \
             WHATSAPP_BRIDGE_TOKEN for gateway-whatsapp and bridge/"
        )),
        close::UNSUPPORTED_VERSION => Failure::Fatal(anyhow::anyhow!(
            "the bridge does not speak protocol version {PROTOCOL_VERSION} (close {code}: {reason}): \
             deploy bridge/ and gateway-whatsapp from the same release"
        )),
        close::BAD_REQUEST | close::AUTH_TIMEOUT => Failure::Transient(format!(
            "the bridge refused the handshake (close {code}: {reason})"
        )),
        _ => Failure::Transient(format!(
            "the bridge closed the connection during the handshake (close {code}: {reason})"
        )),
    }
}

/// Handles one event; returns inbound messages for the in-order intake worker.
async fn on_event(
    ctx: &Arc<Ctx>,
    event: BridgeEvent,
    out: &mpsc::UnboundedSender<Message>,
    login_sent: &mut bool,
) -> Option<InboundMsg> {
    match event {
        BridgeEvent::Message(msg) => return Some(*msg),
        BridgeEvent::SendResult(result) => ctx.link.complete(result),
        BridgeEvent::Status(status) => {
            on_status(ctx, &status).await;
            if status.state.needs_login() && ctx.settings.login_on_start && !*login_sent {
                *login_sent = true;
                tracing::info!("login_on_start: asking the bridge to pair again");
                let _ = out.send(Message::text(GatewayCommand::Login.to_json()));
            }
        }
        BridgeEvent::Qr { data } => {
            tracing::info!(
                "WhatsApp needs pairing: scan the QR code shown by the bridge, or render the \
                 one published as a service event (status \"qr\")"
            );
            notice(ctx, "qr", data).await;
        }
        BridgeEvent::Ready { .. } => {}
        BridgeEvent::Error { id, message } => {
            tracing::warn!(
                id = id.unwrap_or_default(),
                message,
                "the bridge reported an error"
            );
        }
    }
    None
}

async fn on_status(ctx: &Arc<Ctx>, status: &Status) {
    let reason = status.reason.clone().unwrap_or_default();
    let account = match (&status.state, &status.me) {
        (WaState::Connected, Some(me)) => me
            .phone_jid
            .as_deref()
            .and_then(|j| j.split('@').next())
            .map(|p| format!("+{p}"))
            .or_else(|| me.lid_jid.clone()),
        _ => None,
    };
    ctx.link.set_wa(status.state, account.clone());
    let detail = match status.state {
        WaState::Connected => account.unwrap_or_default(),
        _ => reason.clone(),
    };
    match status.state {
        WaState::Connected => tracing::info!("WhatsApp connected"),
        s if s.needs_login() => tracing::warn!(
            state = s.as_str(),
            reason,
            "WhatsApp is not logged in; the bridge waits for a new pairing (login)"
        ),
        s => tracing::info!(state = s.as_str(), reason, "WhatsApp status"),
    }
    notice(ctx, status.state.as_str(), detail).await;
}

/// Publishes a `service` event for operators and the CLI (QR codes, status changes).
async fn notice(ctx: &Arc<Ctx>, status: &str, detail: String) {
    ctx.gateway
        .bus()
        .emit(event::Kind::Service(ServiceNotice {
            service: SERVICE.to_owned(),
            instance: String::new(),
            status: status.to_owned(),
            detail,
        }))
        .await;
}

/// Takes messages in one at a time; acks each only after intake returned Ok.
async fn take_in_order(
    ctx: Arc<Ctx>,
    mut rx: mpsc::Receiver<InboundMsg>,
    out: mpsc::UnboundedSender<Message>,
    failed: CancellationToken,
) {
    while let Some(msg) = rx.recv().await {
        match inbound::take_in(&ctx.gateway, &msg).await {
            Ok(handled) => {
                match &handled {
                    Handled::Stored { duplicate } => {
                        tracing::debug!(id = %msg.id, duplicate, "message stored");
                    }
                    Handled::Denied {
                        notice: Some((chat_id, text)),
                    } => send_notice(&ctx, &msg.id, chat_id.clone(), text.clone()),
                    Handled::Denied { notice: None } => {}
                    Handled::Ignored(why) => tracing::debug!(id = %msg.id, why, "message ignored"),
                }
                let ack = GatewayCommand::Ack { id: msg.id.clone() };
                if out.send(Message::text(ack.to_json())).is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(
                    %error, id = %msg.id,
                    "message not taken in; the bridge keeps it and sends it again"
                );
                failed.cancel();
                return;
            }
        }
    }
}

/// Tells a denied sender their id, directly (never into a group), without holding up intake.
fn send_notice(ctx: &Arc<Ctx>, msg_id: &str, chat_id: String, text: String) {
    let ctx2 = ctx.clone();
    let cmd = SendCmd {
        id: format!("notice:{msg_id}"),
        chat_id,
        text: Some(text),
        reply_to: None,
        media: None,
    };
    ctx.tasks.spawn(async move {
        match ctx2.link.request(cmd, Duration::from_secs(60)).await {
            Ok(r) if r.ok => {}
            Ok(r) => tracing::warn!(
                error = r.error.unwrap_or_default(),
                "access notice not sent"
            ),
            Err(error) => tracing::warn!(%error, "access notice not sent"),
        }
    });
}
