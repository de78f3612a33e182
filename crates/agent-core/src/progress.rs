//! Live progress of a turn on `N.progress.<channel>`: streamed text and tool
//! activity, for channels that show work as it happens. Core NATS, best effort:
//! nothing depends on it, and the reply itself always travels through `N_OUTBOUND`.

use nexus_bus::Bus;
use nexus_common::domain::ChannelName;
use nexus_proto::v1::{ToolCalled, TurnProgress, turn_progress};
use prost::Message as _;
use tokio::sync::mpsc;

/// Publishes one turn's progress in order, from sync callbacks (the model's text sink).
#[derive(Clone)]
pub struct Progress {
    tx: mpsc::UnboundedSender<turn_progress::Kind>,
}

impl Progress {
    pub fn start(bus: &Bus, channel: &ChannelName, turn_id: &str, session_id: &str) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<turn_progress::Kind>();
        let bus = bus.clone();
        let subject = bus.subjects().progress(channel);
        let (turn_id, session_id) = (turn_id.to_owned(), session_id.to_owned());
        // Ends when the last sender is dropped, after publishing what was queued.
        tokio::spawn(async move {
            let mut seq = 0;
            while let Some(kind) = rx.recv().await {
                seq += 1;
                let msg = TurnProgress {
                    turn_id: turn_id.clone(),
                    session_id: session_id.clone(),
                    seq,
                    kind: Some(kind),
                };
                if let Err(error) = bus
                    .publish_live(subject.clone(), msg.encode_to_vec().into())
                    .await
                {
                    tracing::debug!(%error, "progress not published");
                }
            }
        });
        Self { tx }
    }

    pub fn text(&self, delta: &str) {
        if !delta.is_empty() {
            let _ = self
                .tx
                .send(turn_progress::Kind::TextDelta(delta.to_owned()));
        }
    }

    pub fn tool(&self, called: ToolCalled) {
        let _ = self.tx.send(turn_progress::Kind::Tool(called));
    }

    /// A new model call begins (the `n`th of the turn).
    pub fn llm_call(&self, n: u32) {
        let _ = self.tx.send(turn_progress::Kind::LlmCall(n));
    }
}
