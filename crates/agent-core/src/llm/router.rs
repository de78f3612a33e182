//! Failover across a chain of models: the first healthy model answers; one that
//! keeps failing (after its retries) is put in a cooldown and the next is tried.
//! The caller learns which model produced the answer, for the usage event.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{
    ChatModel, LlmError, LlmRequest, LlmResponse, TextSink,
    retry::{RetryPolicy, chat_with_retry},
};

/// The answer and how it was obtained.
#[derive(Debug)]
pub struct Routed {
    pub response: LlmResponse,
    /// The model of the chain that answered.
    pub model: String,
    /// Calls made in total, over every model tried.
    pub attempts: u32,
}

/// Ordered failover with per-model cooldowns (per replica; cooldowns are a hint, not state).
pub struct ModelRouter {
    cooldowns: Mutex<HashMap<String, Instant>>,
    cooldown: Duration,
    policy: RetryPolicy,
}

impl ModelRouter {
    pub fn new(policy: RetryPolicy, cooldown: Duration) -> Self {
        Self {
            cooldowns: Mutex::new(HashMap::new()),
            cooldown,
            policy,
        }
    }

    fn cooling(&self, model: &str) -> bool {
        self.cooldowns
            .lock()
            .ok()
            .and_then(|c| c.get(model).copied())
            .is_some_and(|until| Instant::now() < until)
    }

    fn cool(&self, model: &str) {
        if let Ok(mut c) = self.cooldowns.lock() {
            c.insert(model.to_owned(), Instant::now() + self.cooldown);
        }
    }

    /// Tries `chain` in order (models in cooldown last). `req.model` is replaced per try.
    pub async fn chat(
        &self,
        model: &dyn ChatModel,
        chain: &[String],
        mut req: LlmRequest,
        on_text: &TextSink,
    ) -> Result<Routed, LlmError> {
        let (mut ready, cooling): (Vec<&String>, Vec<&String>) =
            chain.iter().partition(|m| !self.cooling(m));
        // If everything is cooling down, try anyway rather than fail without a call.
        ready.extend(cooling);
        let mut attempts = 0;
        let mut last = LlmError::NotConfigured("no model is configured ([llm] model)".into());
        for name in ready {
            req.model = name.clone();
            let (result, n) = chat_with_retry(model, self.policy, &req, on_text).await;
            attempts += n;
            match result {
                Ok(response) => {
                    return Ok(Routed {
                        response,
                        model: name.clone(),
                        attempts,
                    });
                }
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "model failed; trying the next in the chain");
                    if e.retryable() {
                        self.cool(name);
                    }
                    // A request the provider refuses as such would fail everywhere the same way,
                    // but a missing key or a bad model name is specific to this model: go on.
                    last = e;
                }
            }
        }
        Err(last)
    }
}

/// The chain for a turn: the session's override or the configured model, then the fallbacks.
pub fn chain(primary: &str, fallbacks: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(1 + fallbacks.len());
    for m in std::iter::once(primary).chain(fallbacks.iter().map(String::as_str)) {
        let m = m.trim();
        if !m.is_empty() && !out.iter().any(|x| x == m) {
            out.push(m.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;

    /// Fails for models whose name starts with "bad".
    struct ByName;

    #[async_trait]
    impl ChatModel for ByName {
        async fn chat(&self, req: &LlmRequest, _on: &TextSink) -> Result<LlmResponse, LlmError> {
            if req.model.starts_with("bad") {
                Err(LlmError::Upstream {
                    status: 503,
                    detail: String::new(),
                })
            } else {
                Ok(LlmResponse {
                    text: format!("from {}", req.model),
                    model: req.model.clone(),
                    ..Default::default()
                })
            }
        }
    }

    fn req() -> LlmRequest {
        LlmRequest {
            model: String::new(),
            system: String::new(),
            messages: vec![],
            tools: Default::default(),
            max_output_tokens: 0,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        max_retries: 1,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
    };

    #[tokio::test]
    async fn the_next_model_answers_when_the_first_keeps_failing_and_then_it_cools_down() {
        let router = ModelRouter::new(POLICY, Duration::from_secs(60));
        let chain = chain("bad-primary", &["good-secondary".into()]);
        let r = router.chat(&ByName, &chain, req(), &|_| {}).await.unwrap();
        assert_eq!(r.model, "good-secondary");
        assert_eq!(
            r.attempts, 3,
            "two tries of the primary, one of the secondary"
        );
        // The primary is cooling down: the next turn goes straight to the secondary.
        let r = router.chat(&ByName, &chain, req(), &|_| {}).await.unwrap();
        assert_eq!(r.attempts, 1);
    }

    #[tokio::test]
    async fn when_every_model_fails_the_last_error_is_returned() {
        let router = ModelRouter::new(POLICY, Duration::from_secs(60));
        let err = router
            .chat(&ByName, &chain("bad-1", &["bad-2".into()]), req(), &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Upstream { status: 503, .. }));
    }

    #[test]
    fn the_chain_has_no_duplicates_or_blanks() {
        assert_eq!(
            chain("a", &["b".into(), "a".into(), " ".into()]),
            vec!["a", "b"]
        );
    }
}
