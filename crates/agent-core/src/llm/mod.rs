//! The model behind the agent, as the project's own trait.
//!
//! [`ChatModel`] is what the turn loop calls; [`genai_model::GenaiModel`] is the
//! production implementation (any provider genai supports). Retries with backoff
//! live in [`retry`], above the trait, so every implementation gets them.
//! Nothing here knows NATS or Nexus messages.

pub mod genai_model;
pub mod retry;
pub mod router;

use std::time::Duration;

use async_trait::async_trait;

/// One message of a conversation sent to the model.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmMessage {
    User(String),
    Assistant {
        text: String,
        tool_calls: Vec<LlmToolCall>,
    },
    /// The result of a tool call, already fenced as untrusted data.
    Tool {
        call_id: String,
        name: String,
        content: String,
    },
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmTool {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// A call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmToolCall {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// What the model is asked.
#[derive(Debug, Clone)]
pub struct LlmRequest {
    pub model: String,
    pub system: String,
    pub messages: Vec<LlmMessage>,
    /// Shared with every turn that offers the same tools (`ToolDirectory::offer`).
    pub tools: std::sync::Arc<[LlmTool]>,
    pub max_output_tokens: u32,
}

/// Token counts as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LlmUsage {
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// What the model answered.
#[derive(Debug, Clone, Default)]
pub struct LlmResponse {
    pub text: String,
    pub tool_calls: Vec<LlmToolCall>,
    pub usage: LlmUsage,
    /// The model that actually answered (after mapping).
    pub model: String,
}

/// Why a model call failed, split by what the caller should do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// No credentials or endpoint for the provider; the message names the settings.
    #[error("{0}")]
    NotConfigured(String),
    #[error("the provider is rate limiting (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the provider failed with HTTP {status}")]
    Upstream { status: u16, detail: String },
    #[error("the provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("could not reach the provider: {0}")]
    Transport(String),
    /// The provider answered something that is not a valid response.
    #[error("the provider returned an invalid response: {0}")]
    BadResponse(String),
    /// The request itself was refused (4xx other than 429): retrying will not help.
    #[error("the provider refused the request (HTTP {status}): {detail}")]
    Rejected { status: u16, detail: String },
}

impl LlmError {
    /// Worth trying again after a backoff.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Upstream { .. }
                | Self::Timeout(_)
                | Self::Transport(_)
                | Self::BadResponse(_)
        )
    }

    /// A message for the person in the chat: what happened and what to do.
    /// The one place an [`LlmError`] becomes text for a user; it never includes details
    /// from the provider (they may echo the request) and never a key.
    pub fn user_message(&self) -> String {
        match self {
            Self::NotConfigured(m) => m.clone(),
            Self::RateLimited { .. } => {
                "The language model provider is rate limiting us: it is getting too many requests right now. \
                 Please try again in a minute."
                    .into()
            }
            Self::Upstream { .. } => {
                "The language model provider is failing right now and did not recover after several retries. \
                 Please try again later."
                    .into()
            }
            Self::Timeout(d) => format!(
                "The language model did not answer within {}s, even after retries. Please try again later.",
                d.as_secs()
            ),
            Self::Transport(_) => {
                "I could not reach the language model provider. Please check the network or the provider's base URL setting.".into()
            }
            Self::BadResponse(_) => {
                "The language model returned a response I could not understand, even after retries. Please try again.".into()
            }
            Self::Rejected { status, .. } => format!(
                "The language model provider refused the request (HTTP {status}). An admin should check the model name and API key."
            ),
        }
    }
}

/// Receives streamed text. Spelled with `for<'s>` so async-trait keeps it higher-ranked.
pub type TextSink = dyn for<'s> Fn(&'s str) + Send + Sync;

/// A language model.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// One call. `on_text` receives text as it streams in (when the implementation streams).
    async fn chat(&self, req: &LlmRequest, on_text: &TextSink) -> Result<LlmResponse, LlmError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_is_told_whether_the_provider_is_failing_rate_limiting_or_unreachable() {
        let secret = "sk-proj-leaked-in-a-body";
        let failing = LlmError::Upstream {
            status: 502,
            detail: secret.into(),
        }
        .user_message();
        let limited = LlmError::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
        }
        .user_message();
        let unreachable = LlmError::Transport(format!("connect {secret}")).user_message();
        assert!(failing.contains("failing"), "{failing}");
        assert!(limited.contains("rate limiting"), "{limited}");
        assert!(unreachable.contains("could not reach"), "{unreachable}");
        for m in [&failing, &limited, &unreachable] {
            assert!(!m.contains(secret) && !m.contains("HTTP"), "{m}");
        }
        assert!(failing != limited && limited != unreachable && failing != unreachable);
    }
}
