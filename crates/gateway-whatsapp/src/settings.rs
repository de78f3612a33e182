//! WhatsApp's settings live in `nexus_common::channel_settings::whatsapp`, so `nexus up`
//! can ask whether the channel is configured without this crate.

pub use nexus_common::channel_settings::{Secret, whatsapp::*};
