//! The bridge protocol (version 1) as serde types. `bridge/PROTOCOL.md` is the one
//! description; every file in `bridge/protocol/examples/` must deserialize here.
//!
//! Unknown fields are ignored, so the bridge may add optional fields within a version.

use serde::{Deserialize, Serialize};

use crate::settings::Secret;

/// The protocol version this gateway speaks (one integer: the major version).
pub const PROTOCOL_VERSION: u32 = 1;

/// WebSocket close codes of a refused handshake.
pub mod close {
    pub const BAD_REQUEST: u16 = 4000;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const UNSUPPORTED_VERSION: u16 = 4002;
    pub const AUTH_TIMEOUT: u16 = 4003;
    pub const REPLACED: u16 = 4004;
}

/// A message from the bridge to the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BridgeEvent {
    Ready {
        protocol_version: u32,
        #[serde(default)]
        bridge_version: String,
    },
    Status(Status),
    Qr {
        data: String,
    },
    Message(Box<InboundMsg>),
    SendResult(SendResult),
    Error {
        #[serde(default)]
        id: Option<String>,
        message: String,
    },
}

/// The WhatsApp connection's state, as the bridge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaState {
    Connecting,
    Connected,
    Reconnecting,
    LoggedOut,
    Banned,
    Replaced,
    /// A state a newer bridge knows and this gateway does not.
    #[serde(other)]
    Unknown,
}

impl WaState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
            Self::LoggedOut => "logged_out",
            Self::Banned => "banned",
            Self::Replaced => "replaced",
            Self::Unknown => "unknown",
        }
    }
    /// States in which the bridge waits for `login` instead of reconnecting.
    pub fn needs_login(self) -> bool {
        matches!(self, Self::LoggedOut | Self::Banned | Self::Replaced)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: WaState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub me: Option<Identity>,
}

/// A WhatsApp account: phone-number JID and LID, whichever are known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default)]
    pub phone_jid: Option<String>,
    #[serde(default)]
    pub lid_jid: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// One inbound WhatsApp message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMsg {
    pub id: String,
    pub chat_id: String,
    #[serde(default)]
    pub is_group: bool,
    pub sender: Identity,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub timestamp_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    #[serde(default)]
    pub mentions_me: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    pub id: String,
    #[serde(default)]
    pub sender_jid: Option<String>,
    #[serde(default)]
    pub from_me: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Document,
    Audio,
    Video,
    Sticker,
}

/// An attachment, base64 on the wire (both directions; `size_bytes` only inbound).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    pub kind: MediaKind,
    pub mime_type: String,
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    pub data_base64: String,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("kind", &self.kind)
            .field("mime_type", &self.mime_type)
            .field("file_name", &self.file_name)
            .field(
                "data_base64",
                &format_args!("<{} chars>", self.data_base64.len()),
            )
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResult {
    pub id: String,
    pub ok: bool,
    #[serde(default)]
    pub message_ids: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub retryable: Option<bool>,
}

/// A message from the gateway to the bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GatewayCommand {
    Auth {
        token: Secret,
        protocol_version: u32,
    },
    Ack {
        id: String,
    },
    Send(SendCmd),
    Login,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendCmd {
    pub id: String,
    pub chat_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Vec<Media>>,
}

impl GatewayCommand {
    /// The JSON text frame for this command.
    pub fn to_json(&self) -> String {
        // Serializing these plain types cannot fail; an empty frame would be refused by the bridge.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_states_are_tolerated() {
        let e: BridgeEvent =
            serde_json::from_str(r#"{"type":"status","state":"hibernating","new_field":1}"#)
                .unwrap();
        assert_eq!(
            e,
            BridgeEvent::Status(Status {
                state: WaState::Unknown,
                reason: None,
                retry_in_ms: None,
                me: None
            })
        );
    }

    #[test]
    fn commands_serialize_as_the_protocol_says() {
        let auth = GatewayCommand::Auth {
            token: Secret::new("t0123456789abcdef"),
            protocol_version: 1,
        };
        assert_eq!(
            auth.to_json(),
            r#"{"type":"auth","token":"t0123456789abcdef","protocol_version":1}"#
        );
        assert!(!format!("{auth:?}").contains("t0123456789abcdef"));
        assert_eq!(GatewayCommand::Login.to_json(), r#"{"type":"login"}"#);
        assert_eq!(
            GatewayCommand::Ack { id: "X".into() }.to_json(),
            r#"{"type":"ack","id":"X"}"#
        );
    }
}
