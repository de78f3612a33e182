//! The tool runtime every tool provider shares — tool-runner, memory-svc, and a
//! Rust plugin outside this repository:
//! - [`Tool`]: typed arguments whose JSON Schema is derived from their type;
//!   [`DynTool`] for tools that bring their own schema (MCP);
//! - [`ToolFailure`]: failures as data (kind, retryable, a message for the model);
//! - [`ToolServer`]: serves tools on `N.tool.<name>` in the provider's queue group,
//!   with a per-tool timeout and an output cap, and announces them;
//! - [`ToolDirectory`]: the caller's view of the live tools;
//! - [`wire`]: the protocol's protobuf and JSON encodings (`proto/TOOL_PROTOCOL.md`).
//!
//! It must never know what a particular tool does.

mod directory;
mod failure;
mod ops;
mod server;
mod tool;
pub mod wire;

pub use directory::{LiveProvider, ToolDirectory};
pub use failure::{ToolErrorKind, ToolFailure};
pub use ops::{OpLimits, serve_with_ops};
pub use server::{ANNOUNCE_EVERY, ServeOptions, ToolServer, cap_output, execute};
pub use tool::{Caller, DEFAULT_TIMEOUT, DynTool, Spec, Tool, parse_args, schema_of, typed};
