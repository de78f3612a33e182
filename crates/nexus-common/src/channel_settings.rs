//! The one way a channel's settings are read: its `[channels.<name>]` keys (from the
//! TOML file or `NEXUS__CHANNELS__<NAME>__<KEY>`) and its credential variables.
//!
//! One set of rules for every channel:
//! - values are trimmed; overrides arrive as strings, the file gives typed values, and
//!   both are accepted;
//! - a flag is `true`/`false`, `yes`/`no`, `on`/`off` or `1`/`0`, in any case;
//! - a number is a non-negative whole number; each setting says its own bounds;
//! - a keyword (`mode`) is matched in any case;
//! - an empty secret or URL counts as unset;
//! - a key the channel does not know is reported, naming the known ones;
//! - so is a `[channels.<name>]` table of a channel Nexus does not have.
//!
//! A secret is a [`Secret`], whose `Debug` never shows it. No error names a secret's value.

use crate::config::ChannelConfig;

pub mod api;
pub mod slack;
pub mod telegram;
pub mod whatsapp;

/// The command line's channel (`nexus chat`): only the common keys.
pub const CLI: &str = "cli";
/// Sub-agents' sessions (`task:<id>`): only the common keys, and the `message` tool
/// reads its `allow_from` as any channel's.
pub const TASK: &str = "task";

/// Every channel that has a `[channels.<name>]` table, with its own keys besides
/// [`COMMON_KEYS`]. A table of another name is read by nobody.
pub const CHANNELS: &[(&str, &[&str])] = &[
    (api::CHANNEL, api::KEYS),
    (CLI, &[]),
    (slack::CHANNEL, slack::KEYS),
    (TASK, &[]),
    (telegram::CHANNEL, telegram::KEYS),
    (whatsapp::CHANNEL, whatsapp::KEYS),
];

/// Keys every channel has, modelled in [`ChannelConfig`] itself.
pub const COMMON_KEYS: &[&str] = &[
    "allow_from",
    "dm_policy",
    "pairing_code_ttl_secs",
    "pairing_max_pending",
    "listen",
];

/// A token, password or shared secret. `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A variable's value, trimmed; unset or empty is `None`.
    pub fn from_var(env: impl Fn(&str) -> Option<String>, name: &str) -> Option<Self> {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(Self)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A variable's value, trimmed; unset or empty is `None`.
pub fn var(env: impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A `[channels.<name>]` value that cannot be used; names the key, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[channels.{channel}] {key}: {why}")]
pub struct KeyError {
    pub channel: &'static str,
    pub key: &'static str,
    pub why: String,
}

/// Reads one channel's keys by the rules above.
pub struct Keys<'a> {
    channel: &'static str,
    table: &'a ChannelConfig,
    known: &'static [&'static str],
}

impl<'a> Keys<'a> {
    /// `known` lists the channel's own keys, besides [`COMMON_KEYS`].
    pub fn new(
        channel: &'static str,
        table: &'a ChannelConfig,
        known: &'static [&'static str],
    ) -> Self {
        Self {
            channel,
            table,
            known,
        }
    }

    fn error(&self, key: &'static str, why: String) -> KeyError {
        KeyError {
            channel: self.channel,
            key,
            why,
        }
    }

    fn get(&self, key: &'static str) -> Option<&'a toml::Value> {
        debug_assert!(self.known.contains(&key), "{key} is not declared");
        self.table.extra.get(key)
    }

    /// A string, trimmed (empty stays empty: some keys give it a meaning).
    pub fn text(&self, key: &'static str) -> Result<Option<String>, KeyError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(other) => {
                Err(self.error(key, format!("expected a string, got {}", other.type_str())))
            }
        }
    }

    /// A URL or other address: like [`Self::text`], with empty meaning unset.
    pub fn address(&self, key: &'static str) -> Result<Option<String>, KeyError> {
        Ok(self.text(key)?.filter(|s| !s.is_empty()))
    }

    /// A secret: like [`Self::address`]; the error never shows the value.
    pub fn secret(&self, key: &'static str) -> Result<Option<Secret>, KeyError> {
        match self.get(key) {
            Some(toml::Value::String(_)) | None => Ok(self.address(key)?.map(Secret)),
            Some(_) => Err(self.error(key, "expected a string".into())),
        }
    }

    /// One of a few words, lowercased.
    pub fn keyword(&self, key: &'static str) -> Result<Option<String>, KeyError> {
        Ok(self.text(key)?.map(|s| s.to_lowercase()))
    }

    /// A flag: true/false, yes/no, on/off or 1/0, in any case.
    pub fn flag(&self, key: &'static str) -> Result<Option<bool>, KeyError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(toml::Value::Integer(1)) => Ok(Some(true)),
            Some(toml::Value::Integer(0)) => Ok(Some(false)),
            Some(toml::Value::String(s)) => match s.trim().to_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(Some(true)),
                "false" | "no" | "off" | "0" => Ok(Some(false)),
                _ => Err(self.error(key, format!("{s:?} is not true or false"))),
            },
            Some(other) => Err(self.error(key, format!("{other} is not true or false"))),
        }
    }

    /// A non-negative whole number.
    pub fn number(&self, key: &'static str) -> Result<Option<u64>, KeyError> {
        let bad = |v: &dyn std::fmt::Display| {
            self.error(key, format!("{v} is not a non-negative whole number"))
        };
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) => u64::try_from(*n).map(Some).map_err(|_| bad(n)),
            Some(toml::Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| bad(&format!("{s:?}"))),
            Some(other) => Err(bad(other)),
        }
    }

    /// A number of at least `min` (a size or count where 0 means nothing sensible).
    pub fn number_at_least(&self, key: &'static str, min: u64) -> Result<Option<u64>, KeyError> {
        match self.number(key)? {
            Some(n) if n < min => Err(self.error(key, format!("{n} is less than {min}"))),
            n => Ok(n),
        }
    }

    /// Keys in the table that neither the channel nor [`COMMON_KEYS`] know.
    pub fn unknown(&self) -> Vec<&'a str> {
        self.table
            .extra
            .keys()
            .map(String::as_str)
            .filter(|k| !self.known.contains(k))
            .collect()
    }

    /// The message for [`Self::unknown`] keys, or `None` when every key is known.
    pub fn unknown_report(&self) -> Option<String> {
        let unknown = self.unknown();
        if unknown.is_empty() {
            return None;
        }
        let mut known: Vec<&str> = COMMON_KEYS.iter().chain(self.known).copied().collect();
        known.sort_unstable();
        Some(format!(
            "[channels.{}] ignores unknown key{} {} (known keys: {})",
            self.channel,
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", "),
            known.join(", ")
        ))
    }
}

/// Logs the report of keys in `[channels.<channel>]` that the channel does not know.
/// A warning, not an error: the service still starts, and the operator sees the typo.
pub fn warn_unknown(channel: &'static str, table: &ChannelConfig, known: &'static [&'static str]) {
    if let Some(report) = Keys::new(channel, table, known).unknown_report() {
        tracing::warn!("{report}");
    }
}

/// What `[channels]` holds that nothing reads: tables of channels Nexus does not have
/// (a misspelt name), and keys a channel does not know. Warnings, never a refusal.
pub fn unknown_channels_and_keys(
    channels: &std::collections::BTreeMap<String, ChannelConfig>,
) -> Vec<String> {
    channels
        .iter()
        .filter_map(|(name, table)| {
            match CHANNELS.iter().find(|&&(known, _)| known == name.as_str()) {
                Some(&(known, keys)) => Keys::new(known, table, keys).unknown_report(),
                None => Some(unknown_channel_report(name)),
            }
        })
        .collect()
}

fn unknown_channel_report(name: &str) -> String {
    let mut known: Vec<&str> = CHANNELS.iter().map(|(name, _)| *name).collect();
    known.sort_unstable();
    format!(
        "[channels.{name}] is ignored: Nexus has no channel {name:?} (channels: {})",
        known.join(", ")
    )
}

/// A `[channels.<name>]` table holding these keys, for the settings modules' tests.
#[cfg(test)]
fn table(pairs: &[(&str, toml::Value)]) -> ChannelConfig {
    ChannelConfig {
        extra: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["on", "n", "mode", "url", "token", "name"];

    #[test]
    fn flags_read_the_same_words_from_the_file_and_the_environment() {
        for (raw, want) in [
            (toml::Value::Boolean(true), true),
            (toml::Value::Integer(0), false),
            ("yes".into(), true),
            (" TRUE ".into(), true),
            ("1".into(), true),
            ("on".into(), true),
            ("No".into(), false),
            ("0".into(), false),
            ("off".into(), false),
            ("false".into(), false),
        ] {
            let t = table(&[("on", raw.clone())]);
            assert_eq!(
                Keys::new("x", &t, KNOWN).flag("on"),
                Ok(Some(want)),
                "{raw}"
            );
        }
        let t = table(&[("on", "maybe".into())]);
        let err = Keys::new("x", &t, KNOWN).flag("on").unwrap_err();
        assert_eq!(
            err.to_string(),
            "[channels.x] on: \"maybe\" is not true or false"
        );
        assert_eq!(Keys::new("x", &table(&[]), KNOWN).flag("on"), Ok(None));
    }

    #[test]
    fn numbers_are_non_negative_whole_numbers_with_bounds_per_key() {
        let keys = |v: toml::Value| table(&[("n", v)]);
        let t = keys(toml::Value::Integer(3));
        assert_eq!(Keys::new("x", &t, KNOWN).number("n"), Ok(Some(3)));
        let t = keys(" 42 ".into());
        assert_eq!(Keys::new("x", &t, KNOWN).number("n"), Ok(Some(42)));
        for bad in [
            toml::Value::Integer(-1),
            "soon".into(),
            "".into(),
            1.5.into(),
        ] {
            let t = keys(bad.clone());
            let err = Keys::new("x", &t, KNOWN).number("n").unwrap_err();
            assert_eq!(err.key, "n", "{bad}");
        }
        let t = keys("0".into());
        assert_eq!(Keys::new("x", &t, KNOWN).number("n"), Ok(Some(0)));
        let err = Keys::new("x", &t, KNOWN)
            .number_at_least("n", 1)
            .unwrap_err();
        assert!(err.to_string().contains("less than 1"), "{err}");
    }

    #[test]
    fn text_is_trimmed_keywords_ignore_case_and_empty_addresses_are_unset() {
        let t = table(&[
            ("mode", " Socket ".into()),
            ("url", "  ".into()),
            ("name", "".into()),
        ]);
        let keys = Keys::new("x", &t, KNOWN);
        assert_eq!(keys.keyword("mode"), Ok(Some("socket".into())));
        assert_eq!(keys.text("mode"), Ok(Some("Socket".into())));
        assert_eq!(keys.address("url"), Ok(None));
        assert_eq!(keys.text("name"), Ok(Some(String::new())));
        let t = table(&[("url", toml::Value::Integer(1))]);
        let err = Keys::new("x", &t, KNOWN).text("url").unwrap_err();
        assert!(err.to_string().contains("expected a string"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output_or_errors() {
        let t = table(&[("token", " hunter2-hunter2 ".into())]);
        let secret = Keys::new("x", &t, KNOWN).secret("token").unwrap().unwrap();
        assert_eq!(secret.expose(), "hunter2-hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        let t = table(&[("token", toml::Value::Integer(123_456_789))]);
        let err = Keys::new("x", &t, KNOWN).secret("token").unwrap_err();
        assert!(!err.to_string().contains("123456789"), "{err}");
        let env = |k: &str| (k == "T").then(|| " v ".to_owned());
        assert_eq!(Secret::from_var(env, "T"), Some(Secret::new("v")));
        assert_eq!(Secret::from_var(|_| Some(" ".into()), "T"), None);
    }

    #[test]
    fn unknown_keys_are_reported_with_the_known_ones() {
        let t = table(&[("mode", "a".into()), ("moed", "b".into())]);
        let keys = Keys::new("telegram", &t, &["mode"]);
        assert_eq!(keys.unknown(), ["moed"]);
        let report = keys.unknown_report().unwrap();
        assert_eq!(
            report,
            "[channels.telegram] ignores unknown key moed (known keys: allow_from, dm_policy, \
             listen, mode, pairing_code_ttl_secs, pairing_max_pending)"
        );
        let t = table(&[("mode", "a".into())]);
        assert_eq!(Keys::new("telegram", &t, &["mode"]).unknown_report(), None);

        let channels = [
            ("slack".to_owned(), table(&[("mention_only", "no".into())])),
            (
                "whatsapp".to_owned(),
                table(&[("bridge_ulr", "ws://x".into())]),
            ),
        ]
        .into();
        let reports = unknown_channels_and_keys(&channels);
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(reports[0].starts_with("[channels.whatsapp] ignores unknown key bridge_ulr"));
    }

    #[test]
    fn a_table_of_a_channel_nexus_does_not_have_is_reported_with_the_known_channels() {
        let channels = [
            ("telegarm".to_owned(), table(&[])),
            ("telegram".to_owned(), table(&[])),
            ("cli".to_owned(), table(&[])),
            ("task".to_owned(), table(&[])),
            ("api".to_owned(), table(&[("reply_timout_secs", 9.into())])),
        ]
        .into();
        let reports = unknown_channels_and_keys(&channels);
        assert_eq!(
            reports,
            [
                "[channels.api] ignores unknown key reply_timout_secs (known keys: allow_from, \
                 dm_policy, listen, max_body_bytes, pairing_code_ttl_secs, pairing_max_pending, \
                 reply_timeout_secs, shutdown_grace_secs)",
                "[channels.telegarm] is ignored: Nexus has no channel \"telegarm\" (channels: \
                 api, cli, slack, task, telegram, whatsapp)",
            ]
        );
    }
}
