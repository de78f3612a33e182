//! What gateway-slack is configured with: the design's `SLACK_*` variables and the
//! `[channels.slack]` keys. Secrets live only here and never print.

use nexus_common::config::ChannelConfig;

use crate::mrkdwn::DEFAULT_CHUNK_CHARS;

/// Default Web API base.
pub const DEFAULT_API_URL: &str = "https://slack.com/api";
/// Default Events API listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3000";

/// How events reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Slack POSTs signed events to `/slack/events`.
    Events,
    /// The gateway opens a WebSocket to Slack (`apps.connections.open`).
    Socket,
}

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything gateway-slack needs to run.
#[derive(Debug, Clone)]
pub struct SlackSettings {
    /// `SLACK_BOT_TOKEN` (xoxb-…): Web API calls and file downloads.
    pub bot_token: Secret,
    /// `SLACK_SIGNING_SECRET`: verifies Events API requests (not needed in Socket Mode).
    pub signing_secret: Option<Secret>,
    /// `SLACK_APP_TOKEN` (xapp-…): Socket Mode only.
    pub app_token: Option<Secret>,
    /// `SLACK_API_URL`, without a trailing slash.
    pub api_url: String,
    /// `[channels.slack] listen`: Events API and `/healthz`.
    pub listen: String,
    /// `[channels.slack] mention_only` (default true): in channels, answer only when mentioned.
    pub mention_only: bool,
    /// `[channels.slack] mode`: `events` (default) or `socket`.
    pub mode: Mode,
    /// `[channels.slack] max_body_bytes`: larger Events API requests are refused.
    pub max_body_bytes: usize,
    /// `[channels.slack] max_file_bytes`: larger files are neither downloaded nor uploaded.
    pub max_file_bytes: usize,
    /// `[channels.slack] chunk_chars`: a longer reply is split into several messages.
    pub chunk_chars: usize,
    /// `[channels.slack] ack_reaction` (default `eyes`): the emoji the bot puts on a
    /// message it took in, so people see it was received; empty or `none` for none.
    pub ack_reaction: Option<String>,
}

/// Why the settings are unusable; each message names the variable or key to fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "gateway-slack needs {missing} for the Events API (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET, or use Socket Mode with SLACK_APP_TOKEN and [channels.slack] mode = \"socket\")"
    )]
    EventsMissing { missing: String },
    #[error(
        "gateway-slack needs {missing} for Socket Mode ([channels.slack] mode = \"socket\" uses SLACK_BOT_TOKEN and SLACK_APP_TOKEN)"
    )]
    SocketMissing { missing: String },
    #[error("[channels.slack] {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl SlackSettings {
    /// Reads the process environment and the channel's table.
    pub fn load(channel: &ChannelConfig) -> Result<Self, SettingsError> {
        Self::from_sources(channel, |k| std::env::var(k).ok())
    }

    /// Builds settings from a channel table and a variable lookup (tests pass their own).
    pub fn from_sources(
        channel: &ChannelConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let var = |k: &str| {
            env(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mode = match text(channel, "mode").as_deref() {
            None | Some("events") | Some("http") => Mode::Events,
            Some("socket") => Mode::Socket,
            Some(other) => {
                return Err(SettingsError::Invalid {
                    key: "mode",
                    message: format!("{other:?} is neither \"events\" nor \"socket\""),
                });
            }
        };
        let bot_token = var("SLACK_BOT_TOKEN");
        let signing_secret = var("SLACK_SIGNING_SECRET");
        let app_token = var("SLACK_APP_TOKEN");
        let missing = |pairs: &[(&str, bool)]| {
            pairs
                .iter()
                .filter(|(_, present)| !present)
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(" and ")
        };
        match mode {
            Mode::Events => {
                let m = missing(&[
                    ("SLACK_BOT_TOKEN", bot_token.is_some()),
                    ("SLACK_SIGNING_SECRET", signing_secret.is_some()),
                ]);
                if !m.is_empty() {
                    return Err(SettingsError::EventsMissing { missing: m });
                }
            }
            Mode::Socket => {
                let m = missing(&[
                    ("SLACK_BOT_TOKEN", bot_token.is_some()),
                    ("SLACK_APP_TOKEN", app_token.is_some()),
                ]);
                if !m.is_empty() {
                    return Err(SettingsError::SocketMissing { missing: m });
                }
            }
        }
        let api_url = var("SLACK_API_URL")
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned())
            .trim_end_matches('/')
            .to_owned();
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            return Err(SettingsError::Invalid {
                key: "SLACK_API_URL",
                message: format!("{api_url:?} is not an http(s) URL"),
            });
        }
        Ok(Self {
            bot_token: Secret::new(bot_token.unwrap_or_default()),
            signing_secret: signing_secret.map(Secret::new),
            app_token: app_token.map(Secret::new),
            api_url,
            listen: channel
                .listen
                .clone()
                .filter(|l| !l.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            mention_only: boolean(channel, "mention_only", true)?,
            mode,
            max_body_bytes: number(channel, "max_body_bytes", 1024 * 1024)?,
            max_file_bytes: number(channel, "max_file_bytes", 20 * 1024 * 1024)?,
            chunk_chars: number(channel, "chunk_chars", DEFAULT_CHUNK_CHARS)?.max(100),
            ack_reaction: match text(channel, "ack_reaction") {
                None => Some("eyes".to_owned()),
                Some(name) => {
                    Some(name.trim_matches(':').to_owned()).filter(|n| !n.is_empty() && n != "none")
                }
            },
        })
    }
}

fn text(channel: &ChannelConfig, key: &str) -> Option<String> {
    match channel.extra.get(key)? {
        toml::Value::String(s) => Some(s.trim().to_lowercase()),
        other => Some(other.to_string()),
    }
}

// Environment overrides arrive as strings, the TOML file gives typed values: accept both.
fn boolean(
    channel: &ChannelConfig,
    key: &'static str,
    default: bool,
) -> Result<bool, SettingsError> {
    match channel.extra.get(key) {
        None => Ok(default),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(toml::Value::String(s)) => match s.trim().to_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            _ => Err(SettingsError::Invalid {
                key,
                message: format!("{s:?} is not true or false"),
            }),
        },
        Some(other) => Err(SettingsError::Invalid {
            key,
            message: format!("{other} is not true or false"),
        }),
    }
}

fn number(
    channel: &ChannelConfig,
    key: &'static str,
    default: usize,
) -> Result<usize, SettingsError> {
    let bad = |v: &dyn std::fmt::Display| SettingsError::Invalid {
        key,
        message: format!("{v} is not a positive number"),
    };
    match channel.extra.get(key) {
        None => Ok(default),
        Some(toml::Value::Integer(n)) if *n > 0 => Ok(*n as usize),
        Some(toml::Value::String(s)) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(s)),
        Some(other) => Err(bad(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn channel(extra: &[(&str, toml::Value)]) -> ChannelConfig {
        ChannelConfig {
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_events_api_needs_the_bot_token_and_the_signing_secret_and_says_which_is_missing() {
        let err = SlackSettings::from_sources(&channel(&[]), env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET"),
            "{msg}"
        );

        let err = SlackSettings::from_sources(&channel(&[]), env(&[("SLACK_BOT_TOKEN", "xoxb-1")]))
            .unwrap_err();
        assert!(
            matches!(&err, SettingsError::EventsMissing { missing } if missing == "SLACK_SIGNING_SECRET"),
            "{err}"
        );
    }

    #[test]
    fn defaults_match_the_design_and_secrets_never_print() {
        let s = SlackSettings::from_sources(
            &channel(&[]),
            env(&[
                ("SLACK_BOT_TOKEN", "xoxb-very-secret"),
                ("SLACK_SIGNING_SECRET", "signing-very-secret"),
            ]),
        )
        .unwrap();
        assert_eq!(s.api_url, "https://slack.com/api");
        assert_eq!(s.listen, "0.0.0.0:3000");
        assert!(s.mention_only);
        assert_eq!(s.mode, Mode::Events);
        assert_eq!(s.ack_reaction.as_deref(), Some("eyes"));
        let keys = env(&[
            ("SLACK_BOT_TOKEN", "xoxb-very-secret"),
            ("SLACK_SIGNING_SECRET", "signing-very-secret"),
        ]);
        let reaction = |v: &str| {
            SlackSettings::from_sources(
                &channel(&[("ack_reaction", toml::Value::String(v.into()))]),
                &keys,
            )
            .unwrap()
            .ack_reaction
        };
        assert_eq!(
            reaction(":white_check_mark:").as_deref(),
            Some("white_check_mark")
        );
        assert_eq!(reaction("none"), None);
        assert_eq!(reaction(""), None);
        let debug = format!("{s:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
    }

    #[test]
    fn socket_mode_needs_the_app_token_and_string_overrides_are_typed() {
        let c = channel(&[
            ("mode", toml::Value::String("socket".into())),
            ("mention_only", toml::Value::String("false".into())),
            ("chunk_chars", toml::Value::String("1200".into())),
        ]);
        let err =
            SlackSettings::from_sources(&c, env(&[("SLACK_BOT_TOKEN", "xoxb-1")])).unwrap_err();
        assert!(err.to_string().contains("SLACK_APP_TOKEN"), "{err}");
        let s = SlackSettings::from_sources(
            &c,
            env(&[
                ("SLACK_BOT_TOKEN", "xoxb-1"),
                ("SLACK_APP_TOKEN", "xapp-1"),
                ("SLACK_API_URL", "http://127.0.0.1:9/api/"),
            ]),
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Socket);
        assert!(!s.mention_only);
        assert_eq!(s.chunk_chars, 1200);
        assert_eq!(s.api_url, "http://127.0.0.1:9/api");

        let bad = channel(&[("mention_only", toml::Value::String("maybe".into()))]);
        let err = SlackSettings::from_sources(
            &bad,
            env(&[("SLACK_BOT_TOKEN", "x"), ("SLACK_SIGNING_SECRET", "y")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("mention_only"), "{err}");
    }
}
