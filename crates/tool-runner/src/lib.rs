//! tool-runner: executes the agent's tools inside the workspace sandbox and
//! serves them over NATS, one request/reply endpoint per tool on `N.tool.<name>`,
//! with each tool's `ToolSpec` published in the `N_tools` KV bucket.
//!
//! Layout: [`server`] owns NATS (endpoints, specs, shutdown); [`tools`] holds
//! one file per tool; [`sandbox`] is the only code that touches the
//! filesystem; [`error`] maps failures to the protobuf `ToolError`.
//!
//! This crate must never let a tool reach outside the workspace, and never
//! crash on a bad request: every request gets a `ToolResult`.

pub mod error;
pub mod sandbox;
mod server;
pub mod tools;

pub use error::{ToolErrorKind, ToolFailure};
pub use server::{SERVICE, run};
