//! [`ChatModel`] over genai: OpenAI, Anthropic, Gemini, Ollama and any
//! OpenAI-compatible server, chosen by the model name.
//!
//! Endpoints and keys come from the design's variables (`OPENAI_BASE_URL`,
//! `OPENAI_API_KEY`, …), read once into [`ProviderEnv`]. Keys are handed to genai
//! directly and never logged.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use genai::{
    Client, ServiceTarget,
    adapter::AdapterKind,
    chat::{
        ChatMessage, ChatOptions, ChatRequest, ChatStreamEvent, ContentPart, MessageContent, Tool,
        ToolCall, ToolResponse,
    },
    resolver::{AuthData, Endpoint},
};

use super::{
    ChatModel, LlmError, LlmMessage, LlmRequest, LlmResponse, LlmToolCall, LlmUsage, TextSink,
};

/// Provider endpoints and keys, from the environment.
#[derive(Clone, Default)]
pub struct ProviderEnv {
    pub openai_api_key: Option<String>,
    pub openai_base_url: Option<String>,
    pub anthropic_api_key: Option<String>,
    pub anthropic_base_url: Option<String>,
    pub gemini_api_key: Option<String>,
    pub gemini_base_url: Option<String>,
    pub ollama_host: Option<String>,
}

impl std::fmt::Debug for ProviderEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only whether a key is set; never the key.
        f.debug_struct("ProviderEnv")
            .field("openai_api_key", &self.openai_api_key.is_some())
            .field("openai_base_url", &self.openai_base_url)
            .field("anthropic_api_key", &self.anthropic_api_key.is_some())
            .field("anthropic_base_url", &self.anthropic_base_url)
            .field("gemini_api_key", &self.gemini_api_key.is_some())
            .field("gemini_base_url", &self.gemini_base_url)
            .field("ollama_host", &self.ollama_host)
            .finish()
    }
}

impl ProviderEnv {
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            openai_api_key: get("OPENAI_API_KEY"),
            openai_base_url: get("OPENAI_BASE_URL"),
            anthropic_api_key: get("ANTHROPIC_API_KEY"),
            anthropic_base_url: get("ANTHROPIC_BASE_URL"),
            gemini_api_key: get("GEMINI_API_KEY"),
            gemini_base_url: get("GEMINI_BASE_URL"),
            ollama_host: get("OLLAMA_HOST"),
        }
    }

    /// Which provider serves `model`, and whether it is configured; the error names the settings.
    pub fn check(&self, model: &str) -> Result<AdapterKind, LlmError> {
        let kind = adapter_for(model)?;
        let missing = match kind {
            AdapterKind::OpenAI | AdapterKind::OpenAIResp => {
                self.openai_api_key.is_none() && self.openai_base_url.is_none()
            }
            AdapterKind::Anthropic => {
                self.anthropic_api_key.is_none() && self.anthropic_base_url.is_none()
            }
            AdapterKind::Gemini => self.gemini_api_key.is_none() && self.gemini_base_url.is_none(),
            // Ollama runs locally without a key.
            AdapterKind::Ollama => false,
            _ => false,
        };
        if missing {
            return Err(LlmError::NotConfigured(format!(
                "No language model is configured for model \"{model}\". Set OPENAI_API_KEY (or OPENAI_BASE_URL for an \
                 OpenAI-compatible server), ANTHROPIC_API_KEY, GEMINI_API_KEY, or OLLAMA_HOST, and choose the model with \
                 [llm] model in nexus.toml or NEXUS__LLM__MODEL."
            )));
        }
        Ok(kind)
    }
}

/// The adapter a model name maps to: `provider::name` or genai's name prefixes.
fn adapter_for(model: &str) -> Result<AdapterKind, LlmError> {
    if let Some((ns, _)) = model.split_once("::") {
        return match ns.to_ascii_lowercase().as_str() {
            "openai" => Ok(AdapterKind::OpenAI),
            "anthropic" => Ok(AdapterKind::Anthropic),
            "gemini" => Ok(AdapterKind::Gemini),
            "ollama" => Ok(AdapterKind::Ollama),
            other => AdapterKind::from_model(model).map_err(|_| {
                LlmError::NotConfigured(format!(
                    "unknown model provider \"{other}\" in \"{model}\""
                ))
            }),
        };
    }
    AdapterKind::from_model(model).map_err(|e| {
        LlmError::NotConfigured(format!(
            "cannot tell which provider serves model \"{model}\": {e}"
        ))
    })
}

/// genai joins paths onto the base URL, so a base without a trailing slash
/// would lose its last segment (`…/v1` + `chat/completions` → `…/chat/completions`).
fn with_trailing_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    }
}

/// The production model client.
pub struct GenaiModel {
    client: Client,
    env: ProviderEnv,
    stream: bool,
    timeout: Duration,
}

impl GenaiModel {
    pub fn new(env: ProviderEnv, timeout: Duration, stream: bool) -> Result<Self, LlmError> {
        let resolver_env = env.clone();
        let client = Client::builder()
            .with_web_config(
                genai::WebConfig::default()
                    .with_timeout(timeout)
                    .with_connect_timeout(Duration::from_secs(10)),
            )
            .with_service_target_resolver_fn(move |mut target: ServiceTarget| {
                let e = &resolver_env;
                let (base, key) = match target.model.adapter_kind {
                    AdapterKind::OpenAI | AdapterKind::OpenAIResp => {
                        // A local OpenAI-compatible server may need no key at all.
                        let key = e
                            .openai_api_key
                            .clone()
                            .or_else(|| e.openai_base_url.as_ref().map(|_| "no-key".to_owned()));
                        (e.openai_base_url.clone(), key)
                    }
                    AdapterKind::Anthropic => {
                        (e.anthropic_base_url.clone(), e.anthropic_api_key.clone())
                    }
                    AdapterKind::Gemini => (e.gemini_base_url.clone(), e.gemini_api_key.clone()),
                    AdapterKind::Ollama => (e.ollama_host.clone(), None),
                    _ => (None, None),
                };
                if let Some(base) = base {
                    target.endpoint = Endpoint::from_owned(with_trailing_slash(&base));
                }
                if let Some(key) = key {
                    target.auth = AuthData::from_single(key);
                }
                Ok(target)
            })
            .build()
            .map_err(|e| LlmError::Transport(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            env,
            stream,
            timeout,
        })
    }

    fn to_genai(req: &LlmRequest) -> ChatRequest {
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            messages.push(match m {
                LlmMessage::User(t) => ChatMessage::user(t.clone()),
                LlmMessage::Assistant { text, tool_calls } if tool_calls.is_empty() => {
                    ChatMessage::assistant(text.clone())
                }
                LlmMessage::Assistant { text, tool_calls } => {
                    let mut parts = Vec::new();
                    if !text.is_empty() {
                        parts.push(ContentPart::Text(text.clone()));
                    }
                    parts.extend(tool_calls.iter().map(|c| {
                        ContentPart::ToolCall(ToolCall {
                            call_id: c.id.clone(),
                            fn_name: c.name.clone(),
                            fn_arguments: c.arguments.clone(),
                            thought_signatures: None,
                        })
                    }));
                    ChatMessage::assistant(MessageContent::from_parts(parts))
                }
                LlmMessage::Tool {
                    call_id,
                    name,
                    content,
                } => ChatMessage::from(
                    ToolResponse::new(call_id.clone(), content.clone()).with_fn_name(name.clone()),
                ),
            });
        }
        let mut chat = ChatRequest::new(messages).with_system(req.system.clone());
        if !req.tools.is_empty() {
            chat = chat.with_tools(req.tools.iter().map(|t| {
                Tool::new(t.name.clone())
                    .with_description(t.description.clone())
                    .with_schema(t.parameters.clone())
            }));
        }
        chat
    }
}

fn map_error(e: genai::Error, timeout_hint: Duration) -> LlmError {
    if let Some(status) = e.status() {
        let code = status.as_u16();
        let detail: String = e.to_string().chars().take(500).collect();
        return match code {
            429 => LlmError::RateLimited { retry_after: None },
            500..=599 => LlmError::Upstream {
                status: code,
                detail,
            },
            _ => LlmError::Rejected {
                status: code,
                detail,
            },
        };
    }
    let text = e.to_string();
    match &e {
        genai::Error::RequiresApiKey { .. }
        | genai::Error::NoAuthData { .. }
        | genai::Error::NoAuthResolver { .. } => LlmError::NotConfigured(format!(
            "The model provider needs an API key: {text}. Set OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY."
        )),
        genai::Error::WebModelCall { .. }
        | genai::Error::WebAdapterCall { .. }
        | genai::Error::WebStream { .. } => {
            let lower = text.to_ascii_lowercase();
            if lower.contains("timed out") || lower.contains("timeout") {
                LlmError::Timeout(timeout_hint)
            } else if lower.contains("json") || lower.contains("parse") {
                LlmError::BadResponse(text.chars().take(300).collect())
            } else {
                LlmError::Transport(text.chars().take(300).collect())
            }
        }
        _ => LlmError::BadResponse(text.chars().take(300).collect()),
    }
}

fn usage_of(u: &genai::chat::Usage) -> LlmUsage {
    LlmUsage {
        input_tokens: u.prompt_tokens.unwrap_or(0).max(0) as u32,
        output_tokens: u.completion_tokens.unwrap_or(0).max(0) as u32,
    }
}

fn calls_of(calls: Vec<ToolCall>) -> Vec<LlmToolCall> {
    calls
        .into_iter()
        .map(|c| LlmToolCall {
            id: c.call_id,
            name: c.fn_name,
            arguments: c.fn_arguments,
        })
        .collect()
}

#[async_trait]
impl ChatModel for GenaiModel {
    async fn chat(&self, req: &LlmRequest, on_text: &TextSink) -> Result<LlmResponse, LlmError> {
        self.env.check(&req.model)?;
        let chat = Self::to_genai(req);
        let mut options = ChatOptions::default()
            .with_capture_usage(true)
            .with_capture_content(true)
            .with_capture_tool_calls(true);
        if req.max_output_tokens > 0 {
            options = options.with_max_tokens(req.max_output_tokens);
        }
        let timeout = self.timeout;

        if !self.stream {
            let resp = self
                .client
                .exec_chat(req.model.as_str(), chat, Some(&options))
                .await
                .map_err(|e| map_error(e, timeout))?;
            let text = resp.content.joined_texts().unwrap_or_default();
            on_text(&text);
            return Ok(LlmResponse {
                usage: usage_of(&resp.usage),
                model: resp.model_iden.model_name.to_string(),
                tool_calls: calls_of(resp.content.into_tool_calls()),
                text,
            });
        }

        let resp = self
            .client
            .exec_chat_stream(req.model.as_str(), chat, Some(&options))
            .await
            .map_err(|e| map_error(e, timeout))?;
        let model = resp.model_iden.model_name.to_string();
        let mut stream = resp.stream;
        let mut text = String::new();
        let mut out = LlmResponse {
            model,
            ..Default::default()
        };
        let mut ended = false;
        while let Some(event) = stream.next().await {
            match event.map_err(|e| map_error(e, timeout))? {
                ChatStreamEvent::Chunk(chunk) => {
                    on_text(&chunk.content);
                    text.push_str(&chunk.content);
                }
                ChatStreamEvent::End(end) => {
                    if let Some(u) = &end.captured_usage {
                        out.usage = usage_of(u);
                    }
                    if let Some(calls) = end.captured_tool_calls() {
                        out.tool_calls = calls_of(calls.into_iter().cloned().collect());
                    }
                    ended = true;
                }
                _ => {}
            }
        }
        if !ended {
            return Err(LlmError::BadResponse(
                "the stream ended without a final event".into(),
            ));
        }
        out.text = text;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_names_the_settings_to_set() {
        let err = ProviderEnv::default().check("gpt-4.1-mini").unwrap_err();
        let msg = err.user_message();
        assert!(
            msg.contains("OPENAI_API_KEY") && msg.contains("OPENAI_BASE_URL"),
            "{msg}"
        );
        assert!(
            ProviderEnv {
                openai_base_url: Some("http://127.0.0.1:1/v1".into()),
                ..Default::default()
            }
            .check("gpt-4.1-mini")
            .is_ok()
        );
        assert!(ProviderEnv::default().check("ollama::llama3").is_ok());
        assert!(matches!(
            ProviderEnv::default().check("claude-sonnet-4-5"),
            Err(LlmError::NotConfigured(m)) if m.contains("ANTHROPIC_API_KEY")
        ));
    }

    #[test]
    fn base_urls_keep_their_last_segment() {
        assert_eq!(with_trailing_slash("http://h/v1"), "http://h/v1/");
        assert_eq!(with_trailing_slash("http://h/v1/"), "http://h/v1/");
    }

    #[test]
    fn keys_never_appear_in_debug_output() {
        let env = ProviderEnv {
            openai_api_key: Some("sk-very-secret".into()),
            ..Default::default()
        };
        assert!(!format!("{env:?}").contains("very-secret"));
    }
}
