//! The Telegram channel's settings: `TELEGRAM_BOT_TOKEN`, `TELEGRAM_API_URL`, and
//! the keys of `[channels.telegram]`. Parsed once at start; a value that exists is valid.
//!
//! The token never appears in `Debug` output or in an error message.

use std::{net::SocketAddr, time::Duration};

use super::{KeyError, Keys, Secret, var};
use crate::config::ChannelConfig;

/// The channel's name, as in `[channels.telegram]`.
pub const CHANNEL: &str = "telegram";
/// Telegram's own Bot API server.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";
/// Where webhook updates are posted when `webhook_path` is not set.
pub const DEFAULT_WEBHOOK_PATH: &str = "/telegram/webhook";
/// The keys of `[channels.telegram]` besides the common ones.
pub const KEYS: &[&str] = &[
    "mode",
    "group_mention_only",
    "poll_timeout_secs",
    "max_media_bytes",
    "webhook_secret",
    "webhook_path",
    "webhook_url",
];
const TOKEN_VAR: &str = "TELEGRAM_BOT_TOKEN";

/// How updates reach the gateway.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `getUpdates` long polling, driven by the gateway (the default).
    Polling,
    /// Telegram posts updates to `listen` + `path`; each carries `secret` in a header.
    Webhook {
        listen: SocketAddr,
        path: String,
        secret: Secret,
        /// Public URL registered with `setWebhook` at start; unset leaves registration to the operator.
        public_url: Option<url::Url>,
    },
}

/// `[channels.telegram] mode` alone: which [`Mode`] the gateway runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeName {
    Polling,
    Webhook,
}

impl ModeName {
    /// The word written in `mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::Webhook => "webhook",
        }
    }
}

/// `[channels.telegram] mode`, readable without the token (the admin console shows it).
pub fn configured_mode(channel: &ChannelConfig) -> Result<ModeName, KeyError> {
    mode_name(&Keys::new(CHANNEL, channel, KEYS))
}

fn mode_name(keys: &Keys<'_>) -> Result<ModeName, KeyError> {
    match keys.keyword("mode")?.as_deref() {
        None | Some("polling") => Ok(ModeName::Polling),
        Some("webhook") => Ok(ModeName::Webhook),
        Some(other) => Err(KeyError {
            channel: CHANNEL,
            key: "mode",
            why: format!("{other:?} is neither \"polling\" nor \"webhook\""),
        }),
    }
}

/// Everything the Telegram gateway is configured with.
#[derive(Debug, Clone)]
pub struct TelegramSettings {
    pub token: Secret,
    pub api_url: url::Url,
    pub mode: Mode,
    /// In groups, answer only when mentioned or replied to.
    pub group_mention_only: bool,
    /// Long-poll timeout given to `getUpdates`.
    pub poll_timeout: Duration,
    /// Media larger than this is not downloaded (the Bot API serves at most 20 MB).
    pub max_media_bytes: u64,
}

/// Why the settings are unusable. Messages name the variable or key, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("TELEGRAM_BOT_TOKEN is not set: create a bot with @BotFather and export its token")]
    MissingToken,
    #[error("TELEGRAM_BOT_TOKEN does not look like a bot token (expected <digits>:<secret>)")]
    MalformedToken,
    #[error("TELEGRAM_API_URL {0:?} is not a valid http(s) URL")]
    ApiUrl(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn invalid(key: &'static str, why: impl Into<String>) -> SettingsError {
    SettingsError::Key(KeyError {
        channel: CHANNEL,
        key,
        why: why.into(),
    })
}

impl TelegramSettings {
    /// Reads the process environment and the channel's config table; warns of unknown keys.
    pub fn load(channel: &ChannelConfig) -> Result<Self, SettingsError> {
        super::warn_unknown(CHANNEL, channel, KEYS);
        Self::from_sources(|k| std::env::var(k).ok(), channel)
    }

    /// The credential variables still unset (empty: the gateway can start).
    pub fn missing_credentials(env: impl Fn(&str) -> Option<String>) -> Vec<&'static str> {
        if var(env, TOKEN_VAR).is_some() {
            Vec::new()
        } else {
            vec![TOKEN_VAR]
        }
    }

    /// Builds settings from an environment lookup (tests pass their own) and the channel table.
    pub fn from_sources(
        env: impl Fn(&str) -> Option<String>,
        channel: &ChannelConfig,
    ) -> Result<Self, SettingsError> {
        let keys = Keys::new(CHANNEL, channel, KEYS);
        let token = Secret::from_var(&env, TOKEN_VAR).ok_or(SettingsError::MissingToken)?;
        // A token goes into URL paths: refuse anything that could change the path.
        let well_formed = token.expose().split_once(':').is_some_and(|(id, secret)| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && !secret.is_empty()
                && secret
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !well_formed {
            return Err(SettingsError::MalformedToken);
        }

        let raw_url = var(&env, "TELEGRAM_API_URL").unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        // teloxide appends `/bot<token>/<method>` as path segments; a trailing
        // slash would leave an empty segment in between.
        let api_url = url::Url::parse(raw_url.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .ok_or_else(|| SettingsError::ApiUrl(raw_url.clone()))?;

        let group_mention_only = keys.flag("group_mention_only")?.unwrap_or(true);
        let poll_timeout =
            Duration::from_secs(keys.number("poll_timeout_secs")?.unwrap_or(25).clamp(1, 50));
        let max_media_bytes = keys.number("max_media_bytes")?.unwrap_or(20 * 1024 * 1024);

        let mode = match mode_name(&keys)? {
            ModeName::Polling => Mode::Polling,
            ModeName::Webhook => {
                let listen = channel.listen.as_deref().unwrap_or("0.0.0.0:8443");
                let listen = listen.parse().map_err(|e| {
                    invalid("listen", format!("{listen:?} is not a socket address: {e}"))
                })?;
                let secret = keys.secret("webhook_secret")?.ok_or_else(|| {
                    invalid(
                        "webhook_secret",
                        "webhook mode needs a secret (1-256 characters of A-Z, a-z, 0-9, _ and -)",
                    )
                })?;
                let s = secret.expose();
                if s.len() > 256
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(invalid(
                        "webhook_secret",
                        "only 1-256 characters of A-Z, a-z, 0-9, _ and - are allowed",
                    ));
                }
                let path = keys
                    .text("webhook_path")?
                    .unwrap_or_else(|| DEFAULT_WEBHOOK_PATH.to_owned());
                if !path.starts_with('/') {
                    return Err(invalid(
                        "webhook_path",
                        format!("{path:?} must start with '/'"),
                    ));
                }
                let public_url = match keys.address("webhook_url")? {
                    Some(u) => Some(
                        url::Url::parse(&u)
                            .map_err(|e| invalid("webhook_url", format!("{u:?}: {e}")))?,
                    ),
                    None => None,
                };
                Mode::Webhook {
                    listen,
                    path,
                    secret,
                    public_url,
                }
            }
        };

        Ok(Self {
            token,
            api_url,
            mode,
            group_mention_only,
            poll_timeout,
            max_media_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel_settings::table as channel;

    const TOKEN: &str = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn a_missing_token_is_a_clear_error_that_names_the_variable() {
        let err = TelegramSettings::from_sources(env(&[]), &channel(&[])).unwrap_err();
        assert!(err.to_string().contains("TELEGRAM_BOT_TOKEN"), "{err}");
        assert_eq!(
            TelegramSettings::missing_credentials(env(&[("TELEGRAM_BOT_TOKEN", " ")])),
            ["TELEGRAM_BOT_TOKEN"]
        );
        assert!(
            TelegramSettings::missing_credentials(env(&[("TELEGRAM_BOT_TOKEN", TOKEN)])).is_empty()
        );
        let err = TelegramSettings::from_sources(
            env(&[("TELEGRAM_BOT_TOKEN", "abc/../x")]),
            &channel(&[]),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("abc/../x"), "token leaked: {err}");
    }

    #[test]
    fn defaults_are_polling_against_telegram_with_mentions_required_in_groups() {
        let s =
            TelegramSettings::from_sources(env(&[("TELEGRAM_BOT_TOKEN", TOKEN)]), &channel(&[]))
                .unwrap();
        assert_eq!(s.api_url.as_str(), "https://api.telegram.org/");
        assert!(matches!(s.mode, Mode::Polling));
        assert!(s.group_mention_only);
        assert_eq!(s.poll_timeout, Duration::from_secs(25));
        assert!(!format!("{s:?}").contains("AAHdq"), "token in Debug output");
    }

    #[test]
    fn environment_strings_and_toml_values_are_both_accepted() {
        let s = TelegramSettings::from_sources(
            env(&[
                ("TELEGRAM_BOT_TOKEN", TOKEN),
                ("TELEGRAM_API_URL", "http://127.0.0.1:9999/"),
            ]),
            &channel(&[
                ("group_mention_only", toml::Value::String("false".into())),
                ("poll_timeout_secs", toml::Value::Integer(3)),
            ]),
        )
        .unwrap();
        assert_eq!(s.api_url.as_str(), "http://127.0.0.1:9999/");
        assert!(!s.group_mention_only);
        assert_eq!(s.poll_timeout, Duration::from_secs(3));
    }

    #[test]
    fn webhook_mode_requires_a_well_formed_secret() {
        let e = env(&[("TELEGRAM_BOT_TOKEN", TOKEN)]);
        let mut c = channel(&[("mode", toml::Value::String("webhook".into()))]);
        c.listen = Some("127.0.0.1:8443".into());
        let err = TelegramSettings::from_sources(&e, &c).unwrap_err();
        assert!(err.to_string().contains("webhook_secret"), "{err}");

        c.extra.insert(
            "webhook_secret".into(),
            toml::Value::String("bad secret!".into()),
        );
        let err = TelegramSettings::from_sources(&e, &c).unwrap_err();
        assert!(
            !err.to_string().contains("bad secret"),
            "secret leaked: {err}"
        );

        c.extra.insert(
            "webhook_secret".into(),
            toml::Value::String("s3cret_ok-1".into()),
        );
        let s = TelegramSettings::from_sources(&e, &c).unwrap();
        assert!(
            !format!("{s:?}").contains("s3cret_ok"),
            "secret in Debug output"
        );
        match s.mode {
            Mode::Webhook {
                listen,
                path,
                secret,
                public_url,
            } => {
                assert_eq!(listen.port(), 8443);
                assert_eq!(path, DEFAULT_WEBHOOK_PATH);
                assert_eq!(secret.expose(), "s3cret_ok-1");
                assert!(public_url.is_none());
            }
            Mode::Polling => panic!("expected webhook mode"),
        }

        let c = channel(&[("mode", toml::Value::String("carrier-pigeon".into()))]);
        let err = TelegramSettings::from_sources(&e, &c).unwrap_err();
        assert!(
            err.to_string().contains("[channels.telegram] mode"),
            "{err}"
        );
    }

    #[test]
    fn the_mode_reads_without_the_token() {
        let mode = |v: &str| configured_mode(&channel(&[("mode", v.into())]));
        assert_eq!(configured_mode(&channel(&[])), Ok(ModeName::Polling));
        assert_eq!(mode(" Webhook "), Ok(ModeName::Webhook));
        assert_eq!(mode("pigeon").unwrap_err().key, "mode");
    }
}
