//! Tool failures are `nexus_tools::ToolFailure`; this module maps the sandbox's
//! refusals onto them. It must never put host paths outside the workspace into a
//! message: every message here is read by the model.

pub use nexus_tools::{ToolErrorKind, ToolFailure};

use crate::sandbox::SandboxError;

impl From<SandboxError> for ToolFailure {
    fn from(e: SandboxError) -> Self {
        let kind = match &e {
            SandboxError::Denied(_) => ToolErrorKind::Denied,
            SandboxError::NotFound(_) => ToolErrorKind::NotFound,
            SandboxError::Invalid(_) => ToolErrorKind::InvalidArgs,
            SandboxError::Io(_) => ToolErrorKind::Internal,
        };
        Self::new(kind, e.to_string())
    }
}
