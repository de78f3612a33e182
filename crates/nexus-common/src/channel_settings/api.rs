//! The HTTP/gRPC API channel's settings: the keys of `[channels.api]`, its limits.
//! Listeners and keys live in `[api]`, which gateway-api reads itself.

use std::time::Duration;

use super::{KeyError, Keys};
use crate::config::ChannelConfig;

/// The channel's name, as in `[channels.api]`.
pub const CHANNEL: &str = "api";
/// The keys of `[channels.api]` besides the common ones.
pub const KEYS: &[&str] = &[
    "reply_timeout_secs",
    "max_body_bytes",
    "shutdown_grace_secs",
];

/// The limits gateway-api is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiChannelSettings {
    /// How long a request waits for the agent's reply (`reply_timeout_secs`, 300, at least 1).
    pub reply_timeout: Duration,
    /// Largest request body or gRPC message accepted (`max_body_bytes`, 1 MiB, at least 1024).
    pub max_body_bytes: usize,
    /// How long open requests may still wait for their replies after SIGTERM
    /// (`shutdown_grace_secs`, 20).
    pub shutdown_grace: Duration,
}

impl ApiChannelSettings {
    /// Reads the channel's table; warns of unknown keys.
    pub fn load(channel: &ChannelConfig) -> Result<Self, KeyError> {
        super::warn_unknown(CHANNEL, channel, KEYS);
        Self::from_table(channel)
    }

    /// Builds settings from the channel table alone (no variables are involved).
    pub fn from_table(channel: &ChannelConfig) -> Result<Self, KeyError> {
        let keys = Keys::new(CHANNEL, channel, KEYS);
        let reply_timeout = keys
            .number_at_least("reply_timeout_secs", 1)?
            .unwrap_or(300);
        let max_body_bytes = keys
            .number_at_least("max_body_bytes", 1024)?
            .unwrap_or(1024 * 1024);
        let shutdown_grace = keys.number("shutdown_grace_secs")?.unwrap_or(20);
        Ok(Self {
            reply_timeout: Duration::from_secs(reply_timeout),
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            shutdown_grace: Duration::from_secs(shutdown_grace),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel_settings::table as channel;

    #[test]
    fn defaults_are_five_minutes_one_mebibyte_and_twenty_seconds() {
        let s = ApiChannelSettings::from_table(&channel(&[])).unwrap();
        assert_eq!(s.reply_timeout, Duration::from_secs(300));
        assert_eq!(s.max_body_bytes, 1024 * 1024);
        assert_eq!(s.shutdown_grace, Duration::from_secs(20));
    }

    #[test]
    fn file_values_and_environment_strings_are_both_accepted() {
        let s = ApiChannelSettings::from_table(&channel(&[
            ("reply_timeout_secs", toml::Value::Integer(7)),
            ("max_body_bytes", " 2048 ".into()),
            ("shutdown_grace_secs", "0".into()),
        ]))
        .unwrap();
        assert_eq!(s.reply_timeout, Duration::from_secs(7));
        assert_eq!(s.max_body_bytes, 2048);
        assert_eq!(s.shutdown_grace, Duration::ZERO);
    }

    #[test]
    fn a_bad_or_too_small_number_is_refused_with_the_key_named() {
        for (key, value, why) in [
            (
                "reply_timeout_secs",
                "soon",
                "not a non-negative whole number",
            ),
            ("reply_timeout_secs", "0", "0 is less than 1"),
            ("max_body_bytes", "1023", "1023 is less than 1024"),
            (
                "shutdown_grace_secs",
                "-1",
                "not a non-negative whole number",
            ),
        ] {
            let err = ApiChannelSettings::from_table(&channel(&[(key, value.into())])).unwrap_err();
            assert_eq!(err.key, key);
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("[channels.api] {key}: ")), "{msg}");
            assert!(msg.contains(why), "{msg}");
        }
    }

    #[test]
    fn an_unknown_key_is_reported_and_does_not_stop_the_settings() {
        let t = channel(&[
            ("reply_timeout_secs", "9".into()),
            ("max_body_byte", "4096".into()),
        ]);
        let report = Keys::new(CHANNEL, &t, KEYS).unknown_report().unwrap();
        assert!(
            report.starts_with("[channels.api] ignores unknown key max_body_byte (known keys: "),
            "{report}"
        );
        assert!(report.contains("max_body_bytes"), "{report}");
        let s = ApiChannelSettings::from_table(&t).unwrap();
        assert_eq!(s.reply_timeout, Duration::from_secs(9));
        assert_eq!(s.max_body_bytes, 1024 * 1024);
    }
}
