//! Tool failures as data: what went wrong, whether a retry may help, and a
//! message that is safe to show the model. This module owns the one mapping
//! from failures to the protobuf `ToolError`.

use nexus_proto::v1;

/// Why a tool call failed, as the caller should act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolErrorKind {
    /// The arguments are wrong; the model should fix them.
    InvalidArgs,
    /// What the call names does not exist.
    NotFound,
    /// Policy refused (sandbox, allow-list, private address).
    Denied,
    /// The tool ran out of time.
    Timeout,
    /// Something the tool depends on failed (a web service, an MCP server).
    Upstream,
    /// A bug or an unexpected I/O error.
    Internal,
    /// The tool needs a person's yes in the chat first.
    NeedsApproval,
}

impl ToolErrorKind {
    /// The name in the JSON form of the protocol (`invalid_args`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgs => "invalid_args",
            Self::NotFound => "not_found",
            Self::Denied => "denied",
            Self::Timeout => "timeout",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
            Self::NeedsApproval => "needs_approval",
        }
    }

    /// The kind a JSON name stands for; unknown names are `Internal`.
    pub fn parse(name: &str) -> Self {
        match name {
            "invalid_args" => Self::InvalidArgs,
            "not_found" => Self::NotFound,
            "denied" => Self::Denied,
            "timeout" => Self::Timeout,
            "upstream" => Self::Upstream,
            "needs_approval" => Self::NeedsApproval,
            _ => Self::Internal,
        }
    }
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
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Upstream, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Internal, message)
    }
    /// The same failure with `retryable` set as given.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
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

impl From<v1::ToolErrorKind> for ToolErrorKind {
    fn from(kind: v1::ToolErrorKind) -> Self {
        match kind {
            v1::ToolErrorKind::InvalidArgs => Self::InvalidArgs,
            v1::ToolErrorKind::NotFound => Self::NotFound,
            v1::ToolErrorKind::Denied => Self::Denied,
            v1::ToolErrorKind::Timeout => Self::Timeout,
            v1::ToolErrorKind::Upstream => Self::Upstream,
            v1::ToolErrorKind::NeedsApproval => Self::NeedsApproval,
            v1::ToolErrorKind::Internal | v1::ToolErrorKind::Unspecified => Self::Internal,
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
            (
                ToolErrorKind::NeedsApproval,
                v1::ToolErrorKind::NeedsApproval,
                false,
            ),
        ];
        for (kind, proto, retryable) in cases {
            let e = v1::ToolError::from(ToolFailure::new(kind, "m"));
            assert_eq!(e.kind(), proto);
            assert_eq!(e.retryable, retryable, "{kind:?}");
            assert_eq!(e.message, "m");
            assert_eq!(ToolErrorKind::from(proto), kind);
            assert_eq!(ToolErrorKind::parse(kind.as_str()), kind);
        }
    }
}
