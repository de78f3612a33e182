//! Retries with exponential backoff for 429s, 5xx, timeouts and junk responses.
//! A turn never loops forever: after `max_retries` the last error is returned.

use std::time::Duration;

use nexus_common::backoff::Backoff;

use super::{ChatModel, LlmError, LlmRequest, LlmResponse, TextSink};

/// How many times and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Delay before retry number `attempt` (1-based): the exponential backoff, or longer
    /// if the provider's Retry-After asks for it, and never more than `max_delay` (a
    /// provider asking for an hour gets the cap, then the router's failover).
    pub fn delay(&self, attempt: u32, err: &LlmError) -> Duration {
        let exp = Backoff::new(self.base_delay, self.max_delay).delay(attempt);
        let asked = match err {
            LlmError::RateLimited {
                retry_after: Some(d),
            } => *d,
            _ => Duration::ZERO,
        };
        exp.max(asked).min(self.max_delay)
    }
}

/// The response, and how many attempts it took.
pub async fn chat_with_retry(
    model: &dyn ChatModel,
    policy: RetryPolicy,
    req: &LlmRequest,
    on_text: &TextSink,
) -> (Result<LlmResponse, LlmError>, u32) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match model.chat(req, on_text).await {
            Ok(r) => return (Ok(r), attempt),
            Err(e) if e.retryable() && attempt <= policy.max_retries => {
                let delay = policy.delay(attempt, &e);
                tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, model = %req.model, "LLM call failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return (Err(e), attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use async_trait::async_trait;

    use super::*;

    struct Flaky {
        fail_first: u32,
        calls: Arc<AtomicU32>,
        err: LlmError,
    }

    #[async_trait]
    impl ChatModel for Flaky {
        async fn chat(&self, _req: &LlmRequest, _on: &TextSink) -> Result<LlmResponse, LlmError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                Err(self.err.clone())
            } else {
                Ok(LlmResponse {
                    text: "ok".into(),
                    ..Default::default()
                })
            }
        }
    }

    fn req() -> LlmRequest {
        LlmRequest {
            model: "m".into(),
            system: String::new(),
            messages: vec![],
            tools: Default::default(),
            max_output_tokens: 0,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(30),
    };

    #[tokio::test(start_paused = true)]
    async fn retryable_errors_are_retried_until_success() {
        let calls = Arc::new(AtomicU32::new(0));
        let m = Flaky {
            fail_first: 2,
            calls: calls.clone(),
            err: LlmError::RateLimited { retry_after: None },
        };
        let (r, attempts) = chat_with_retry(&m, POLICY, &req(), &|_| {}).await;
        assert_eq!(r.unwrap().text, "ok");
        assert_eq!(attempts, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_the_budget_and_rejections_are_not_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let m = Flaky {
            fail_first: u32::MAX,
            calls: calls.clone(),
            err: LlmError::Upstream {
                status: 500,
                detail: String::new(),
            },
        };
        let (r, attempts) = chat_with_retry(&m, POLICY, &req(), &|_| {}).await;
        assert!(matches!(r, Err(LlmError::Upstream { status: 500, .. })));
        assert_eq!(attempts, 4);

        let calls = Arc::new(AtomicU32::new(0));
        let m = Flaky {
            fail_first: u32::MAX,
            calls: calls.clone(),
            err: LlmError::Rejected {
                status: 401,
                detail: String::new(),
            },
        };
        let (_, attempts) = chat_with_retry(&m, POLICY, &req(), &|_| {}).await;
        assert_eq!(attempts, 1);
    }

    #[test]
    fn a_retry_after_is_honoured_but_never_shortens_the_backoff_or_passes_the_cap() {
        let after = |secs| LlmError::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(POLICY.delay(1, &after(7)), Duration::from_secs(7));
        assert_eq!(POLICY.delay(1, &after(3600)), Duration::from_secs(30));
        assert_eq!(POLICY.delay(3, &after(0)), Duration::from_millis(400));
        assert_eq!(
            POLICY.delay(2, &LlmError::RateLimited { retry_after: None }),
            Duration::from_millis(200)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_call_waits_as_long_as_the_provider_asked() {
        let calls = Arc::new(AtomicU32::new(0));
        let m = Flaky {
            fail_first: 1,
            calls: calls.clone(),
            err: LlmError::RateLimited {
                retry_after: Some(Duration::from_secs(5)),
            },
        };
        let started = tokio::time::Instant::now();
        let (r, attempts) = chat_with_retry(&m, POLICY, &req(), &|_| {}).await;
        assert_eq!(r.unwrap().text, "ok");
        assert_eq!(attempts, 2);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let e = LlmError::Timeout(Duration::from_secs(1));
        assert_eq!(POLICY.delay(1, &e), Duration::from_millis(100));
        assert_eq!(POLICY.delay(3, &e), Duration::from_millis(400));
        assert_eq!(POLICY.delay(30, &e), Duration::from_secs(30));
    }
}
