//! Settings of gateway-api: `[api]` (listeners, keys) and `[channels.api]` (limits).

use std::time::Duration;

use nexus_common::{
    Config,
    channel_settings::api::{self, ApiChannelSettings},
};

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
    /// `[api]` as it is, and `[channels.api]` by `channel_settings::api` (unknown keys warned).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let ApiChannelSettings {
            reply_timeout,
            max_body_bytes,
            shutdown_grace,
        } = ApiChannelSettings::load(&config.channel(api::CHANNEL))?;
        Ok(Self {
            listen: config.api.listen.clone(),
            grpc_listen: config.api.grpc_listen.clone(),
            reply_timeout,
            max_body_bytes,
            shutdown_grace,
        })
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
        let err =
            ApiSettings::from_config(&config(&[("NEXUS__CHANNELS__API__MAX_BODY_BYTES", "1000")]))
                .unwrap_err();
        assert!(err.to_string().contains("max_body_bytes"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_only_warned_of() {
        let s = ApiSettings::from_config(&config(&[
            ("NEXUS__CHANNELS__API__REPLY_TIMEOUT", "7"),
            ("NEXUS__CHANNELS__API__SHUTDOWN_GRACE_SECS", "3"),
        ]))
        .unwrap();
        assert_eq!(s.reply_timeout, Duration::from_secs(300));
        assert_eq!(s.shutdown_grace, Duration::from_secs(3));
    }
}
