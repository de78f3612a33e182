//! tool-runner: executes the agent's tools inside the workspace sandbox and
//! serves them over NATS through the shared tool runtime (`nexus-tools`): one
//! request/reply endpoint per tool on `N.tool.<name>`, announced on `N.tools.announce`.
//!
//! Layout: [`server`] wires the runtime (service, tools, shutdown); [`tools`] holds
//! one file per tool; [`sandbox`] is the only code that touches the
//! filesystem; [`error`] maps sandbox refusals to tool failures; [`mcp`] mounts
//! the `[[tools.mcp]]` servers' tools; [`web`] is the only code that makes
//! HTTP requests of the model's choosing (`fetch_url`).
//!
//! This crate must never let a tool reach outside the workspace, and never
//! crash on a bad request: every request gets a `ToolResult`.

pub mod error;
pub mod exec;
mod mcp;
pub mod sandbox;
mod server;
mod stage;
pub mod tools;
pub mod web;

pub use error::{ToolErrorKind, ToolFailure};
pub use server::{SERVICE, run};
