//! Settings of gateway-api: `[api]` (listeners, keys) and `[channels.api]` (limits).

use std::time::Duration;

use anyhow::bail;
use nexus_common::{Config, config::ChannelConfig};

/// Resolved settings, validated at start.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// HTTP listener (`[api] listen`).
    pub listen: String,
    /// gRPC listener (`[api] grpc_listen`).
    pub grpc_listen: String,
    /// How long a request waits for the agent's reply (`[channels.api] reply_timeout_secs`, 300).
    pub reply_timeout: Duration,
    /// Largest request body / gRPC message accepted (`[channels.api] max_body_bytes`, 1 MiB).
    pub max_body_bytes: usize,
    /// How long open requests may still wait for their replies after SIGTERM
    /// (`[channels.api] shutdown_grace_secs`, 20).
    pub shutdown_grace: Duration,
}

impl ApiSettings {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let channel = config.channel("api");
        let reply_timeout = number(&channel, "reply_timeout_secs", 300)?;
        let max_body_bytes = number(&channel, "max_body_bytes", 1024 * 1024)?;
        let shutdown_grace = number(&channel, "shutdown_grace_secs", 20)?;
        if reply_timeout == 0 || max_body_bytes < 1024 {
            bail!(
                "[channels.api] reply_timeout_secs must be at least 1 and max_body_bytes at least 1024"
            );
        }
        Ok(Self {
            listen: config.api.listen.clone(),
            grpc_listen: config.api.grpc_listen.clone(),
            reply_timeout: Duration::from_secs(reply_timeout),
            max_body_bytes: usize::try_from(max_body_bytes)?,
            shutdown_grace: Duration::from_secs(shutdown_grace),
        })
    }
}

/// A non-negative integer key; environment overrides arrive as strings.
fn number(channel: &ChannelConfig, key: &str, default: u64) -> anyhow::Result<u64> {
    let parsed = match channel.extra.get(key) {
        None => return Ok(default),
        Some(toml::Value::Integer(n)) => u64::try_from(*n).ok(),
        Some(toml::Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    match parsed {
        Some(n) => Ok(n),
        None => bail!("[channels.api] {key} must be a non-negative whole number"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let env = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::from_sources(None, env).unwrap()
    }

    #[test]
    fn defaults_follow_the_design_and_overrides_arrive_as_strings() {
        let s = ApiSettings::from_config(&config(&[])).unwrap();
        assert_eq!(s.listen, "0.0.0.0:8080");
        assert_eq!(s.grpc_listen, "0.0.0.0:50051");
        assert_eq!(s.reply_timeout, Duration::from_secs(300));
        let s = ApiSettings::from_config(&config(&[
            ("NEXUS__CHANNELS__API__REPLY_TIMEOUT_SECS", "7"),
            ("NEXUS__API__LISTEN", "127.0.0.1:9"),
        ]))
        .unwrap();
        assert_eq!(s.reply_timeout, Duration::from_secs(7));
        assert_eq!(s.listen, "127.0.0.1:9");
    }

    #[test]
    fn a_bad_number_is_refused_with_the_key_named() {
        let err = ApiSettings::from_config(&config(&[(
            "NEXUS__CHANNELS__API__REPLY_TIMEOUT_SECS",
            "soon",
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("reply_timeout_secs"), "{err}");
    }
}
