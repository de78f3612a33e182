//! What gateway-slack is configured with: the design's `SLACK_*` variables and the
//! `[channels.slack]` keys. Secrets are [`Secret`]s and never print.

use super::{KeyError, Keys, Secret, var};
use crate::config::ChannelConfig;

/// The channel's name, as in `[channels.slack]`.
pub const CHANNEL: &str = "slack";
/// Default Web API base.
pub const DEFAULT_API_URL: &str = "https://slack.com/api";
/// Default Events API listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3000";
/// Characters per Slack message when a reply is split. Slack accepts about 40k,
/// but a wall of text reads badly; paragraphs are kept whole where possible.
pub const DEFAULT_CHUNK_CHARS: usize = 3500;
/// The keys of `[channels.slack]` besides the common ones.
pub const KEYS: &[&str] = &[
    "mode",
    "mention_only",
    "max_body_bytes",
    "max_file_bytes",
    "chunk_chars",
    "ack_reaction",
];

/// How events reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Slack POSTs signed events to `/slack/events`.
    Events,
    /// The gateway opens a WebSocket to Slack (`apps.connections.open`).
    Socket,
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
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn mode(keys: &Keys<'_>) -> Result<Mode, KeyError> {
    match keys.keyword("mode")?.as_deref() {
        None | Some("events") | Some("http") => Ok(Mode::Events),
        Some("socket") => Ok(Mode::Socket),
        Some(other) => Err(KeyError {
            channel: CHANNEL,
            key: "mode",
            why: format!("{other:?} is neither \"events\" nor \"socket\""),
        }),
    }
}

/// `[channels.slack] mode`, readable without the credentials (the admin console shows it).
pub fn configured_mode(channel: &ChannelConfig) -> Result<Mode, KeyError> {
    mode(&Keys::new(CHANNEL, channel, KEYS))
}

/// The credential variables `mode` needs.
fn needed(mode: Mode) -> [&'static str; 2] {
    match mode {
        Mode::Events => ["SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"],
        Mode::Socket => ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"],
    }
}

impl SlackSettings {
    /// Reads the process environment and the channel's table; warns of unknown keys.
    pub fn load(channel: &ChannelConfig) -> Result<Self, SettingsError> {
        super::warn_unknown(CHANNEL, channel, KEYS);
        Self::from_sources(channel, |k| std::env::var(k).ok())
    }

    /// The credential variables the configured mode still lacks (empty: the gateway
    /// can start). A bad `mode` counts as the default; starting reports it.
    pub fn missing_credentials(
        channel: &ChannelConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Vec<&'static str> {
        let mode = mode(&Keys::new(CHANNEL, channel, KEYS)).unwrap_or(Mode::Events);
        needed(mode)
            .into_iter()
            .filter(|name| var(&env, name).is_none())
            .collect()
    }

    /// Builds settings from a channel table and a variable lookup (tests pass their own).
    pub fn from_sources(
        channel: &ChannelConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let keys = Keys::new(CHANNEL, channel, KEYS);
        let mode = mode(&keys)?;
        let missing = Self::missing_credentials(channel, &env).join(" and ");
        match mode {
            _ if missing.is_empty() => {}
            Mode::Events => return Err(SettingsError::EventsMissing { missing }),
            Mode::Socket => return Err(SettingsError::SocketMissing { missing }),
        }
        let api_url = var(&env, "SLACK_API_URL")
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned())
            .trim_end_matches('/')
            .to_owned();
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            return Err(KeyError {
                channel: CHANNEL,
                key: "SLACK_API_URL",
                why: format!("{api_url:?} is not an http(s) URL"),
            }
            .into());
        }
        // Sizes and counts of 0 would refuse everything.
        let size = |key, default: usize| -> Result<usize, KeyError> {
            Ok(keys
                .number_at_least(key, 1)?
                .map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX)))
        };
        Ok(Self {
            bot_token: Secret::from_var(&env, "SLACK_BOT_TOKEN").unwrap_or_else(|| Secret::new("")),
            signing_secret: Secret::from_var(&env, "SLACK_SIGNING_SECRET"),
            app_token: Secret::from_var(&env, "SLACK_APP_TOKEN"),
            api_url,
            listen: channel
                .listen
                .clone()
                .filter(|l| !l.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            mention_only: keys.flag("mention_only")?.unwrap_or(true),
            mode,
            max_body_bytes: size("max_body_bytes", 1024 * 1024)?,
            max_file_bytes: size("max_file_bytes", 20 * 1024 * 1024)?,
            chunk_chars: size("chunk_chars", DEFAULT_CHUNK_CHARS)?.max(100),
            // Slack's emoji names are lowercase; `:eyes:` is written with colons in its UI.
            ack_reaction: match keys.text("ack_reaction")? {
                None => Some("eyes".to_owned()),
                Some(name) => Some(name.trim_matches(':').to_lowercase())
                    .filter(|n| !n.is_empty() && n != "none"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel_settings::table as channel;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
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
    fn the_credentials_nexus_up_asks_for_follow_the_mode() {
        let both = env(&[("SLACK_BOT_TOKEN", "xoxb-1"), ("SLACK_APP_TOKEN", "xapp-1")]);
        let socket = channel(&[("mode", "Socket".into())]);
        assert!(SlackSettings::missing_credentials(&socket, &both).is_empty());
        assert_eq!(
            SlackSettings::missing_credentials(&channel(&[]), &both),
            ["SLACK_SIGNING_SECRET"]
        );
        assert_eq!(
            SlackSettings::missing_credentials(&socket, env(&[])),
            ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"]
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
        assert_eq!(configured_mode(&c), Ok(Mode::Socket), "without credentials");
        assert!(!s.mention_only);
        assert_eq!(s.chunk_chars, 1200);
        assert_eq!(s.api_url, "http://127.0.0.1:9/api");

        let creds = env(&[("SLACK_BOT_TOKEN", "x"), ("SLACK_SIGNING_SECRET", "y")]);
        let bad = channel(&[("mention_only", toml::Value::String("maybe".into()))]);
        let err = SlackSettings::from_sources(&bad, &creds).unwrap_err();
        assert!(err.to_string().contains("mention_only"), "{err}");
        let zero = channel(&[("max_body_bytes", toml::Value::Integer(0))]);
        let err = SlackSettings::from_sources(&zero, &creds).unwrap_err();
        assert!(err.to_string().contains("max_body_bytes"), "{err}");
    }
}
