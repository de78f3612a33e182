//! Tool failures as data: what went wrong, whether a retry may help, and a
//! message that is safe to show the model. This module owns the one mapping
//! from failures to the protobuf `ToolError`.
//!
//! It must never put host paths outside the workspace into a message: every
//! message here is read by the model.

use nexus_proto::v1;

use crate::sandbox::SandboxError;

/// Why a tool call failed, as the caller should act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolErrorKind {
    /// The arguments are wrong; the model should fix them.
    InvalidArgs,
    /// The file or directory does not exist.
    NotFound,
    /// The sandbox refused: the path leads out of the workspace or into `.nexus/`.
    Denied,
    /// The tool ran out of time.
    Timeout,
    /// Something the tool depends on failed.
    Upstream,
    /// A bug or an unexpected I/O error.
    Internal,
    /// The tool needs a person's yes in the chat first.
    NeedsApproval,
}

/// A failed tool call. `message` is shown to the model as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ToolFailure {
    pub kind: ToolErrorKind,
    pub message: String,
    pub retryable: bool,
}

impl ToolFailure {
    pub fn new(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        // Only time and flaky dependencies get better by trying again.
        let retryable = matches!(kind, ToolErrorKind::Timeout | ToolErrorKind::Upstream);
        Self {
            kind,
            message: message.into(),
            retryable,
        }
    }
    pub fn invalid_args(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::InvalidArgs, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::NotFound, message)
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Denied, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Timeout, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Internal, message)
    }
}

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

impl From<ToolErrorKind> for v1::ToolErrorKind {
    fn from(kind: ToolErrorKind) -> Self {
        match kind {
            ToolErrorKind::InvalidArgs => Self::InvalidArgs,
            ToolErrorKind::NotFound => Self::NotFound,
            ToolErrorKind::Denied => Self::Denied,
            ToolErrorKind::Timeout => Self::Timeout,
            ToolErrorKind::Upstream => Self::Upstream,
            ToolErrorKind::Internal => Self::Internal,
            ToolErrorKind::NeedsApproval => Self::NeedsApproval,
        }
    }
}

impl From<ToolFailure> for v1::ToolError {
    fn from(f: ToolFailure) -> Self {
        Self {
            kind: v1::ToolErrorKind::from(f.kind) as i32,
            message: f.message,
            retryable: f.retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_the_proto_kinds_and_only_transient_ones_are_retryable() {
        let cases = [
            (
                ToolErrorKind::InvalidArgs,
                v1::ToolErrorKind::InvalidArgs,
                false,
            ),
            (ToolErrorKind::NotFound, v1::ToolErrorKind::NotFound, false),
            (ToolErrorKind::Denied, v1::ToolErrorKind::Denied, false),
            (ToolErrorKind::Timeout, v1::ToolErrorKind::Timeout, true),
            (ToolErrorKind::Upstream, v1::ToolErrorKind::Upstream, true),
            (ToolErrorKind::Internal, v1::ToolErrorKind::Internal, false),
        ];
        for (kind, proto, retryable) in cases {
            let e = v1::ToolError::from(ToolFailure::new(kind, "m"));
            assert_eq!(e.kind(), proto);
            assert_eq!(e.retryable, retryable, "{kind:?}");
            assert_eq!(e.message, "m");
        }
    }
}
