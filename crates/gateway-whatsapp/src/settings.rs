//! The WhatsApp channel's settings: `WHATSAPP_BRIDGE_URL`, `WHATSAPP_BRIDGE_TOKEN`, and
//! the keys of `[channels.whatsapp]`. Parsed once at start; a value that exists is valid.
//!
//! The token never appears in `Debug` output or in an error message.

use std::time::Duration;

use nexus_common::config::ChannelConfig;
use serde::{Deserialize, Serialize};

/// Where the bridge listens when nothing else is said (bridge/'s default).
pub const DEFAULT_BRIDGE_URL: &str = "ws://127.0.0.1:3001";

/// The shared secret of gateway and bridge. `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BridgeToken(String);

impl BridgeToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BridgeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BridgeToken(<redacted>)")
    }
}

/// Everything the WhatsApp gateway is configured with.
#[derive(Debug, Clone)]
pub struct WhatsAppSettings {
    /// `ws://` or `wss://` URL of bridge/.
    pub bridge_url: String,
    pub token: BridgeToken,
    /// Send `login` once when the bridge reports logged_out/banned/replaced at start.
    pub login_on_start: bool,
    /// First and largest delay between reconnect attempts to the bridge.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// How long a reply may wait for the bridge's `send_result` (pacing included).
    pub send_timeout: Duration,
    /// Largest outbound attachment read from the object store.
    pub max_media_bytes: usize,
}

/// Why the settings are unusable. Messages name the variable or key, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "WHATSAPP_BRIDGE_TOKEN is not set: give the gateway and bridge/ the same secret \
         (at least 16 characters)"
    )]
    MissingToken,
    #[error("WHATSAPP_BRIDGE_TOKEN is too short: use at least 16 characters")]
    ShortToken,
    #[error("WHATSAPP_BRIDGE_URL {0:?} is not a ws:// or wss:// URL")]
    BridgeUrl(String),
    #[error("[channels.whatsapp] {key}: {why}")]
    Invalid { key: &'static str, why: String },
}

impl WhatsAppSettings {
    /// Reads the process environment and the channel's config table.
    pub fn load(channel: &ChannelConfig) -> Result<Self, SettingsError> {
        Self::from_sources(|k| std::env::var(k).ok(), channel)
    }

    /// Builds settings from an environment lookup (tests pass their own) and the channel table.
    pub fn from_sources(
        env: impl Fn(&str) -> Option<String>,
        channel: &ChannelConfig,
    ) -> Result<Self, SettingsError> {
        let token = env("WHATSAPP_BRIDGE_TOKEN")
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or(SettingsError::MissingToken)?;
        if token.chars().count() < 16 {
            return Err(SettingsError::ShortToken);
        }
        let bridge_url = env("WHATSAPP_BRIDGE_URL")
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .or(str_key(channel, "bridge_url")?)
            .unwrap_or_else(|| DEFAULT_BRIDGE_URL.to_owned());
        url::Url::parse(&bridge_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "ws" | "wss") && u.host().is_some())
            .ok_or_else(|| SettingsError::BridgeUrl(bridge_url.clone()))?;

        let reconnect_initial = Duration::from_millis(
            u64_key(channel, "reconnect_initial_ms")?
                .unwrap_or(500)
                .max(1),
        );
        let reconnect_max = Duration::from_millis(
            u64_key(channel, "reconnect_max_ms")?
                .unwrap_or(30_000)
                .max(1),
        )
        .max(reconnect_initial);
        Ok(Self {
            bridge_url,
            token: BridgeToken(token),
            login_on_start: bool_key(channel, "login_on_start")?.unwrap_or(false),
            reconnect_initial,
            reconnect_max,
            send_timeout: Duration::from_secs(
                u64_key(channel, "send_timeout_secs")?.unwrap_or(120).max(1),
            ),
            max_media_bytes: u64_key(channel, "max_media_bytes")?
                .unwrap_or(20 * 1024 * 1024)
                .try_into()
                .unwrap_or(usize::MAX),
        })
    }
}

fn str_key(channel: &ChannelConfig, key: &'static str) -> Result<Option<String>, SettingsError> {
    match channel.extra.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Some(other) => Err(SettingsError::Invalid {
            key,
            why: format!("expected a string, got {other}"),
        }),
    }
}

/// Integers come as TOML integers, or as strings from `NEXUS__CHANNELS__WHATSAPP__…`.
fn u64_key(channel: &ChannelConfig, key: &'static str) -> Result<Option<u64>, SettingsError> {
    let bad = |v: &dyn std::fmt::Display| SettingsError::Invalid {
        key,
        why: format!("expected a non-negative integer, got {v}"),
    };
    match channel.extra.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) => u64::try_from(*i).map(Some).map_err(|_| bad(i)),
        Some(toml::Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(s)),
        Some(other) => Err(bad(other)),
    }
}

fn bool_key(channel: &ChannelConfig, key: &'static str) -> Result<Option<bool>, SettingsError> {
    let bad = |v: &dyn std::fmt::Display| SettingsError::Invalid {
        key,
        why: format!("expected true or false, got {v}"),
    };
    match channel.extra.get(key) {
        None => Ok(None),
        Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
        Some(toml::Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(s)),
        Some(other) => Err(bad(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn channel(pairs: &[(&str, toml::Value)]) -> ChannelConfig {
        let mut c = ChannelConfig::default();
        for (k, v) in pairs {
            c.extra.insert((*k).to_owned(), v.clone());
        }
        c
    }

    #[test]
    fn the_token_is_required_long_and_never_printed() {
        let none = WhatsAppSettings::from_sources(env(&[]), &channel(&[]));
        assert!(matches!(none, Err(SettingsError::MissingToken)));
        let short =
            WhatsAppSettings::from_sources(env(&[("WHATSAPP_BRIDGE_TOKEN", "abc")]), &channel(&[]));
        assert!(matches!(short, Err(SettingsError::ShortToken)));
        let s = WhatsAppSettings::from_sources(
            env(&[("WHATSAPP_BRIDGE_TOKEN", "secret-0123456789-secret")]),
            &channel(&[]),
        )
        .unwrap();
        assert_eq!(s.bridge_url, DEFAULT_BRIDGE_URL);
        assert!(!format!("{s:?}").contains("secret-0123456789"));
    }

    #[test]
    fn the_url_comes_from_the_environment_before_the_config_and_must_be_websocket() {
        let s = WhatsAppSettings::from_sources(
            env(&[
                ("WHATSAPP_BRIDGE_TOKEN", "secret-0123456789-secret"),
                ("WHATSAPP_BRIDGE_URL", "ws://whatsapp-bridge:3001"),
            ]),
            &channel(&[("bridge_url", "ws://elsewhere:1".into())]),
        )
        .unwrap();
        assert_eq!(s.bridge_url, "ws://whatsapp-bridge:3001");
        let bad = WhatsAppSettings::from_sources(
            env(&[
                ("WHATSAPP_BRIDGE_TOKEN", "secret-0123456789-secret"),
                ("WHATSAPP_BRIDGE_URL", "http://bridge:3001"),
            ]),
            &channel(&[]),
        );
        assert!(matches!(bad, Err(SettingsError::BridgeUrl(_))));
    }

    #[test]
    fn channel_keys_accept_toml_values_and_override_strings() {
        let s = WhatsAppSettings::from_sources(
            env(&[("WHATSAPP_BRIDGE_TOKEN", "secret-0123456789-secret")]),
            &channel(&[
                ("reconnect_initial_ms", "50".into()),
                ("reconnect_max_ms", toml::Value::Integer(200)),
                ("login_on_start", "true".into()),
            ]),
        )
        .unwrap();
        assert_eq!(s.reconnect_initial, Duration::from_millis(50));
        assert_eq!(s.reconnect_max, Duration::from_millis(200));
        assert!(s.login_on_start);
        let bad = WhatsAppSettings::from_sources(
            env(&[("WHATSAPP_BRIDGE_TOKEN", "secret-0123456789-secret")]),
            &channel(&[("send_timeout_secs", "soon".into())]),
        );
        assert!(bad.unwrap_err().to_string().contains("send_timeout_secs"));
    }
}
