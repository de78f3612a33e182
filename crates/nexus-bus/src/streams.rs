//! The namespace's streams: their settings, created or brought up to date at start.

use std::time::Duration;

use async_nats::jetstream::stream;

use crate::{Bus, BusError};

/// How long JetStream remembers message ids. Platforms retry for longer than the
/// 2-minute default (Slack up to an hour), so the window is set explicitly.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(60 * 60);

impl Bus {
    /// Creates or updates the streams of the namespace. Idempotent; every service calls it at start.
    pub async fn ensure_streams(&self) -> Result<(), BusError> {
        let s = &self.subjects;
        let configs = [
            stream::Config {
                name: s.inbound_stream(),
                subjects: vec![s.inbound_all()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                duplicate_window: DUPLICATE_WINDOW,
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            },
            stream::Config {
                name: s.outbound_stream(),
                subjects: vec![s.outbound_all()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                duplicate_window: DUPLICATE_WINDOW,
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            },
            stream::Config {
                name: s.events_stream(),
                subjects: vec![s.events_all()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                // Bounded: events are for operators, not a ledger.
                max_age: Duration::from_secs(3 * 24 * 3600),
                // Bounded by count and age, not bytes: a byte limit is reserved up front
                // against the account's JetStream storage even while the stream is empty.
                max_messages: 200_000,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            },
            // Sub-agent tasks: each item is removed once a replica acks it (finished,
            // failed, timed out or cancelled).
            stream::Config {
                name: s.tasks_stream(),
                subjects: vec![s.tasks_all()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: DUPLICATE_WINDOW,
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            },
            stream::Config {
                name: s.deadletter_stream(),
                subjects: vec![s.deadletter()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                max_age: Duration::from_secs(30 * 24 * 3600),
                max_messages: 100_000,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            },
        ];
        // All at once: on a fresh namespace each creation is a file-store write on the
        // server, and `nexus up` waits for the slowest service's start.
        futures::future::try_join_all(configs.into_iter().map(|config| self.ensure_stream(config)))
            .await?;
        Ok(())
    }

    /// Creates one stream, or brings it up to date.
    async fn ensure_stream(&self, config: stream::Config) -> Result<(), BusError> {
        let name = config.name.clone();
        // A stream that is already as wanted is left alone: then only the users
        // allowed to manage streams (agent-core and admin in deploy/nats) need
        // the JetStream API's create and update subjects.
        if let Ok(stream) = self.js.get_stream(&name).await
            && stream_is_as_configured(&stream.cached_info().config, &config)
        {
            return Ok(());
        }
        // Create first, update only a stream that exists otherwise. async-nats's
        // create_or_update tries the update first, and an update that lands while
        // another service is creating the same stream crashed nats-server 2.9.10
        // (nil pointer in `updateWithAdvisory`) when `nexus up` started them all.
        if let Err(created) = self.js.create_stream(config.clone()).await {
            self.js.update_stream(&config).await.map_err(|updated| {
                BusError::Nats(format!(
                    "stream {name}: creating it: {created}; updating it: {updated}"
                ))
            })?;
        }
        Ok(())
    }
}

/// Whether a stream's settings are those `ensure_streams` asks for (a setting left
/// at zero is the server's default, which it reports filled in). Every field that
/// `ensure_streams` sets must be compared here, or a change to it never reaches
/// existing streams.
fn stream_is_as_configured(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects == want.subjects
        && have.num_replicas.max(1) == want.num_replicas.max(1)
        && have.storage == want.storage
        && have.retention == want.retention
        && (want.duplicate_window.is_zero() || have.duplicate_window == want.duplicate_window)
        && have.max_age == want.max_age
        && have.max_messages.max(0) == want.max_messages.max(0)
        && have.discard == want.discard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_as_the_server_reports_it_matches_what_was_asked() {
        let want = stream::Config {
            name: "n_EVENTS".into(),
            subjects: vec!["n.events.>".into()],
            max_age: Duration::from_secs(60),
            ..Default::default()
        };
        // The server fills in its defaults: unlimited messages, 2 min window, 1 replica.
        let have = stream::Config {
            max_messages: -1,
            duplicate_window: Duration::from_secs(120),
            num_replicas: 1,
            ..want.clone()
        };
        assert!(stream_is_as_configured(&have, &want));
        let older = stream::Config {
            max_age: Duration::from_secs(30),
            ..have.clone()
        };
        assert!(!stream_is_as_configured(&older, &want));
        let three = stream::Config {
            num_replicas: 3,
            ..want.clone()
        };
        assert!(!stream_is_as_configured(&have, &three));
    }
}
