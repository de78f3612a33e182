//! The WhatsApp channel's settings: `WHATSAPP_BRIDGE_URL`, `WHATSAPP_BRIDGE_TOKEN`, and
//! the keys of `[channels.whatsapp]`. Parsed once at start; a value that exists is valid.
//!
//! The token never appears in `Debug` output or in an error message.

use std::time::Duration;

use super::{KeyError, Keys, Secret, var};
use crate::config::ChannelConfig;

/// The channel's name, as in `[channels.whatsapp]`.
pub const CHANNEL: &str = "whatsapp";
/// Where the bridge listens when nothing else is said (bridge/'s default).
pub const DEFAULT_BRIDGE_URL: &str = "ws://127.0.0.1:3001";
/// The keys of `[channels.whatsapp]` besides the common ones.
pub const KEYS: &[&str] = &[
    "bridge_url",
    "login_on_start",
    "reconnect_initial_ms",
    "reconnect_max_ms",
    "send_timeout_secs",
    "max_media_bytes",
];
const TOKEN_VAR: &str = "WHATSAPP_BRIDGE_TOKEN";
const URL_VAR: &str = "WHATSAPP_BRIDGE_URL";

/// Everything the WhatsApp gateway is configured with.
#[derive(Debug, Clone)]
pub struct WhatsAppSettings {
    /// `ws://` or `wss://` URL of bridge/.
    pub bridge_url: String,
    /// The shared secret of gateway and bridge.
    pub token: Secret,
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
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl WhatsAppSettings {
    /// Reads the process environment and the channel's config table; warns of unknown keys.
    pub fn load(channel: &ChannelConfig) -> Result<Self, SettingsError> {
        super::warn_unknown(CHANNEL, channel, KEYS);
        Self::from_sources(|k| std::env::var(k).ok(), channel)
    }

    /// What `nexus up` still lacks to start the gateway (empty: ready): the token, and a
    /// bridge URL, which says a bridge runs (the gateway alone would default to one).
    pub fn missing_credentials(
        channel: &ChannelConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Vec<&'static str> {
        let url_given = var(&env, URL_VAR).is_some()
            || Keys::new(CHANNEL, channel, KEYS)
                .address("bridge_url")
                .is_ok_and(|u| u.is_some());
        [
            (URL_VAR, url_given),
            (TOKEN_VAR, var(&env, TOKEN_VAR).is_some()),
        ]
        .into_iter()
        .filter(|(_, given)| !given)
        .map(|(name, _)| name)
        .collect()
    }

    /// Builds settings from an environment lookup (tests pass their own) and the channel table.
    pub fn from_sources(
        env: impl Fn(&str) -> Option<String>,
        channel: &ChannelConfig,
    ) -> Result<Self, SettingsError> {
        let keys = Keys::new(CHANNEL, channel, KEYS);
        let token = Secret::from_var(&env, TOKEN_VAR).ok_or(SettingsError::MissingToken)?;
        if token.expose().chars().count() < 16 {
            return Err(SettingsError::ShortToken);
        }
        let bridge_url = var(&env, URL_VAR)
            .or(keys.address("bridge_url")?)
            .unwrap_or_else(|| DEFAULT_BRIDGE_URL.to_owned());
        url::Url::parse(&bridge_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "ws" | "wss") && u.host().is_some())
            .ok_or_else(|| SettingsError::BridgeUrl(bridge_url.clone()))?;

        let reconnect_initial =
            Duration::from_millis(keys.number("reconnect_initial_ms")?.unwrap_or(500).max(1));
        let reconnect_max =
            Duration::from_millis(keys.number("reconnect_max_ms")?.unwrap_or(30_000).max(1))
                .max(reconnect_initial);
        Ok(Self {
            bridge_url,
            token,
            login_on_start: keys.flag("login_on_start")?.unwrap_or(false),
            reconnect_initial,
            reconnect_max,
            send_timeout: Duration::from_secs(
                keys.number("send_timeout_secs")?.unwrap_or(120).max(1),
            ),
            max_media_bytes: keys
                .number("max_media_bytes")?
                .unwrap_or(20 * 1024 * 1024)
                .try_into()
                .unwrap_or(usize::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel_settings::table as channel;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
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
    fn nexus_up_needs_the_token_and_a_bridge_url_from_the_environment_or_the_table() {
        let token = env(&[("WHATSAPP_BRIDGE_TOKEN", "secret-0123456789-secret")]);
        assert_eq!(
            WhatsAppSettings::missing_credentials(&channel(&[]), &token),
            ["WHATSAPP_BRIDGE_URL"]
        );
        let table = channel(&[("bridge_url", "ws://bridge:3001".into())]);
        assert!(WhatsAppSettings::missing_credentials(&table, &token).is_empty());
        assert_eq!(
            WhatsAppSettings::missing_credentials(&channel(&[]), env(&[])),
            ["WHATSAPP_BRIDGE_URL", "WHATSAPP_BRIDGE_TOKEN"]
        );
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
                ("login_on_start", "yes".into()),
            ]),
        )
        .unwrap();
        assert_eq!(s.reconnect_initial, Duration::from_millis(50));
        assert_eq!(s.reconnect_max, Duration::from_millis(200));
        assert!(s.login_on_start, "yes is true here as in every channel");
        let bad = WhatsAppSettings::from_sources(
            env(&[("WHATSAPP_BRIDGE_TOKEN", "secret-0123456789-secret")]),
            &channel(&[("send_timeout_secs", "soon".into())]),
        );
        assert!(bad.unwrap_err().to_string().contains("send_timeout_secs"));
    }
}
