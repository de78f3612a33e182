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

/// Sorts a genai failure by what the caller should do.
///
/// A streamed call reports its failure boxed inside `Error::WebStream`: an HTTP status
/// arrives there as genai's own `HttpError` (with the response headers), a connection
/// failure as the `reqwest::Error`. Both are looked for there, so a streamed 429 is a
/// rate limit exactly like a plain one, not an unreachable provider.
fn map_error(e: genai::Error, timeout_hint: Duration) -> LlmError {
    let boxed = match &e {
        genai::Error::WebStream { error, .. } => Some(error.as_ref()),
        _ => None,
    };
    let http = boxed
        .and_then(|b| b.downcast_ref::<genai::Error>())
        .unwrap_or(&e);
    if let Some(status) = http.status() {
        let retry_after = http
            .headers()
            .and_then(|h| retry_after(h, jiff::Timestamp::now()));
        return from_status(status.as_u16(), retry_after, clip(&e.to_string(), 500));
    }

    let transport = match &e {
        genai::Error::WebModelCall {
            webc_error: genai::webc::Error::Reqwest(r),
            ..
        }
        | genai::Error::WebAdapterCall {
            webc_error: genai::webc::Error::Reqwest(r),
            ..
        } => Some(r),
        _ => boxed.and_then(|b| b.downcast_ref::<reqwest::Error>()),
    };
    if let Some(r) = transport {
        // Connecting failed (refused, DNS, connect timeout): unreachable. A timeout once
        // connected is a slow model. Anything else broke the connection mid-answer.
        return if r.is_timeout() && !r.is_connect() {
            LlmError::Timeout(timeout_hint)
        } else {
            LlmError::Transport(clip(&with_sources(r), 300))
        };
    }
    if boxed.is_some_and(|b| b.is::<genai::webc::StreamTimeout>()) {
        return LlmError::Timeout(timeout_hint);
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
                LlmError::BadResponse(clip(&text, 300))
            } else {
                LlmError::Transport(clip(&text, 300))
            }
        }
        _ => LlmError::BadResponse(clip(&text, 300)),
    }
}

/// What an HTTP status from the provider means for the caller.
fn from_status(code: u16, retry_after: Option<Duration>, detail: String) -> LlmError {
    match code {
        429 => LlmError::RateLimited { retry_after },
        500..=599 => LlmError::Upstream {
            status: code,
            detail,
        },
        _ => LlmError::Rejected {
            status: code,
            detail,
        },
    }
}

/// How long the provider asked us to wait: OpenAI's `retry-after-ms` if present, else
/// the standard `Retry-After` in seconds or as an HTTP date (a past date is no wait).
fn retry_after(headers: &reqwest::header::HeaderMap, now: jiff::Timestamp) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = get("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// An error with its causes (reqwest's own text hides "connection refused" in a source).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn clip(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
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
    use nexus_testkit::fake_openai::{FakeOpenAi, Reply};

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

    fn headers(pairs: &[(&'static str, &'static str)]) -> reqwest::header::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    reqwest::header::HeaderName::from_static(k),
                    reqwest::header::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn retry_after_is_read_as_seconds_milliseconds_or_an_http_date() {
        let now: jiff::Timestamp = "2015-10-21T07:27:00Z".parse().unwrap();
        let wait = |pairs: &[(&'static str, &'static str)]| retry_after(&headers(pairs), now);
        assert_eq!(wait(&[("retry-after", "7")]), Some(Duration::from_secs(7)));
        assert_eq!(
            wait(&[("retry-after", " 1.5 ")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            Some(Duration::from_secs(60))
        );
        // A date already past means no wait, not a failure to parse.
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:00:00 GMT")]),
            Some(Duration::ZERO)
        );
        // OpenAI's finer header wins when both are sent.
        assert_eq!(
            wait(&[("retry-after-ms", "250"), ("retry-after", "1")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(wait(&[("retry-after", "soon")]), None);
        assert_eq!(wait(&[("retry-after", "-3")]), None);
        assert_eq!(wait(&[]), None);
    }

    fn model_for(base_url: String, stream: bool) -> GenaiModel {
        let env = ProviderEnv {
            openai_api_key: Some("sk-test-key-000000".into()),
            openai_base_url: Some(base_url),
            ..Default::default()
        };
        GenaiModel::new(env, Duration::from_secs(10), stream).unwrap()
    }

    async fn call(model: &GenaiModel) -> Result<LlmResponse, LlmError> {
        let req = LlmRequest {
            model: "gpt-4.1-mini".into(),
            system: "be brief".into(),
            messages: vec![LlmMessage::User("hi".into())],
            tools: Default::default(),
            max_output_tokens: 0,
        };
        model.chat(&req, &|_| {}).await
    }

    #[tokio::test]
    async fn a_429_is_a_rate_limit_with_its_retry_after_streamed_or_not() {
        let fake = FakeOpenAi::start(Reply::StatusRetryAfter(429, "7".into())).await;
        for stream in [true, false] {
            let err = call(&model_for(fake.base_url(), stream)).await.unwrap_err();
            assert!(
                matches!(err, LlmError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(7)),
                "stream={stream}: {err:?}"
            );
        }
        assert_eq!(fake.requests().len(), 2);
        assert_eq!(fake.requests()[0]["stream"], true);
    }

    #[tokio::test]
    async fn a_5xx_is_an_upstream_failure_with_its_status_streamed_or_not() {
        let fake = FakeOpenAi::start(Reply::Status(503)).await;
        for stream in [true, false] {
            let err = call(&model_for(fake.base_url(), stream)).await.unwrap_err();
            assert!(
                matches!(err, LlmError::Upstream { status: 503, .. }),
                "stream={stream}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_an_unreachable_provider_streamed_or_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = format!("http://{}/v1", listener.local_addr().unwrap());
        drop(listener);
        for stream in [true, false] {
            let err = call(&model_for(closed.clone(), stream)).await.unwrap_err();
            assert!(
                matches!(&err, LlmError::Transport(detail) if detail.to_ascii_lowercase().contains("refused")),
                "stream={stream}: {err:?}"
            );
        }
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
