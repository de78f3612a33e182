//! Slack's settings live in `nexus_common::channel_settings::slack`, so `nexus up`
//! can ask whether the channel is configured without this crate.

pub use nexus_common::channel_settings::{Secret, slack::*};
