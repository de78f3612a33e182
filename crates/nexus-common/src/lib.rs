//! Foundations every Nexus service shares: configuration, telemetry, shutdown
//! and the validated domain types that protobuf messages are converted into.
//!
//! This crate must never talk to NATS or know a channel's wire format.

pub mod backoff;
pub mod channel_settings;
pub mod code_pages;
pub mod config;
pub mod domain;
pub mod limits;
pub mod logfile;
pub mod malloc;
pub mod process;
pub mod redact;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;

pub use config::Config;

/// Milliseconds since the Unix epoch, for protobuf timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
