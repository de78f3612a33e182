//! The wire contracts of Nexus: protobuf types generated from `proto/nexus/v1`.
//!
//! These types stop at the edge of each service: convert them into validated
//! domain types (see `nexus-common::domain`) before acting on them.

/// Version 1 of the contracts.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/nexus.v1.rs"));
}

/// Encoded `FileDescriptorSet` of every `.proto`, for dynamic decoding (`nexus tail`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nexus_descriptor.bin"));

pub use prost::Message;
