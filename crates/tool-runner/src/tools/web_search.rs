//! `web_search`: a numbered list of web results (title, URL, snippet) from the
//! Brave Search API. Offered only when `BRAVE_API_KEY` is set.
//!
//! It must never put the key into a log line, a `Debug` output or a message.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use nexus_tools::{Caller, DynTool, Tool, ToolFailure, typed};
use reqwest::{StatusCode, header};
use schemars::JsonSchema;
use serde::Deserialize;
use url::Url;

use super::ToolEnv;

pub const NAME: &str = "web_search";

/// Brave's own API origin; `/res/v1/web/search` follows.
pub const DEFAULT_BRAVE_API_URL: &str = "https://api.search.brave.com";
/// Brave refuses longer queries.
const MAX_QUERY_CHARS: usize = 400;
const DEFAULT_COUNT: u8 = 5;

/// Where and how to reach Brave Search: `BRAVE_API_KEY`, `BRAVE_API_URL`.
#[derive(Clone)]
pub struct BraveApi {
    key: String,
    origin: Url,
}

impl std::fmt::Debug for BraveApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BraveApi")
            .field("key", &"<redacted>")
            .field("origin", &self.origin.as_str())
            .finish()
    }
}

impl BraveApi {
    /// From the process environment, read once at start. `Err` says why
    /// `web_search` is not offered (for `nexus status`).
    pub fn from_env() -> Result<Self, String> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self::new(get("BRAVE_API_KEY"), get("BRAVE_API_URL"))
    }

    pub fn new(key: Option<String>, origin: Option<String>) -> Result<Self, String> {
        let key = key.ok_or("BRAVE_API_KEY is not set")?.trim().to_owned();
        let origin = origin.unwrap_or_else(|| DEFAULT_BRAVE_API_URL.into());
        let origin = Url::parse(origin.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| format!("BRAVE_API_URL is not an http(s) URL: {origin}"))?;
        Ok(Self { key, origin })
    }

    fn search_url(&self, query: &str, count: u8) -> Url {
        let mut url = self.origin.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/res/v1/web/search"));
        url.query_pairs_mut()
            .clear()
            .append_pair("q", query)
            .append_pair("count", &count.to_string());
        url
    }
}

/// Why `web_search` is not offered here, if it is not.
pub fn offered(env: &ToolEnv) -> Result<(), String> {
    env.brave.as_ref().map(|_| ()).map_err(Clone::clone)
}

pub fn build(env: &ToolEnv) -> Arc<dyn DynTool> {
    crate::web::ensure_crypto_provider();
    let timeout = Duration::from_secs(env.config.web.timeout_secs.max(1));
    typed(WebSearch {
        api: env.brave.clone(),
        client: reqwest::Client::builder()
            // The origin is the operator's; no proxy, so tests and operators see one behaviour.
            .no_proxy()
            .connect_timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}")),
        timeout,
    })
}

pub struct WebSearch {
    api: Result<BraveApi, String>,
    client: Result<reqwest::Client, String>,
    timeout: Duration,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// What to search the web for
    query: String,
    /// How many results, 1-20 (default 5)
    #[schemars(range(min = 1, max = 20))]
    count: Option<u8>,
}

/// The part of Brave's answer we use.
#[derive(Deserialize)]
struct BraveAnswer {
    web: Option<BraveWeb>,
}

#[derive(Deserialize)]
struct BraveWeb {
    #[serde(default)]
    results: Vec<BraveResult>,
}

#[derive(Deserialize)]
struct BraveResult {
    #[serde(default)]
    title: String,
    url: String,
    #[serde(default)]
    description: String,
}

#[async_trait]
impl Tool for WebSearch {
    type Args = Args;
    const NAME: &'static str = NAME;

    fn description(&self) -> String {
        "Search the web. Returns a numbered list of results, each with its title, URL and a \
         snippet; use fetch_url to read a result."
            .into()
    }

    fn timeout(&self) -> Duration {
        self.timeout + Duration::from_secs(10)
    }

    async fn call(&self, _: &Caller, args: Args) -> Result<String, ToolFailure> {
        let api = self
            .api
            .as_ref()
            .map_err(|e| ToolFailure::internal(e.clone()))?;
        let client = self
            .client
            .as_ref()
            .map_err(|e| ToolFailure::internal(e.clone()))?;
        let query = args.query.trim();
        if query.is_empty() {
            return Err(ToolFailure::invalid_args("query must not be empty"));
        }
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(ToolFailure::invalid_args(format!(
                "query is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let count = args.count.unwrap_or(DEFAULT_COUNT);
        if !(1..=20).contains(&count) {
            return Err(ToolFailure::invalid_args("count must be between 1 and 20"));
        }
        let mut key = header::HeaderValue::from_str(&api.key).map_err(|_| {
            ToolFailure::internal("BRAVE_API_KEY holds characters an HTTP header cannot carry")
        })?;
        key.set_sensitive(true);
        let request = client
            .get(api.search_url(query, count))
            .header("X-Subscription-Token", key)
            .header(header::ACCEPT, "application/json")
            .send();
        let body = tokio::time::timeout(self.timeout, async {
            let response = request.await.map_err(|e| unreachable_brave(&e))?;
            let status = response.status();
            let body = response.text().await.map_err(|e| unreachable_brave(&e))?;
            Ok::<_, ToolFailure>((status, body))
        })
        .await
        .map_err(|_| {
            ToolFailure::timeout(format!(
                "Brave Search did not answer within {} s",
                self.timeout.as_secs()
            ))
        })??;
        let (status, body) = body;
        check_status(status, &body)?;
        let answer: BraveAnswer = serde_json::from_str(&body).map_err(|e| {
            ToolFailure::upstream(format!(
                "Brave Search answered with something that is not its search JSON ({e})"
            ))
        })?;
        Ok(format_results(
            query,
            answer.web.map(|w| w.results).unwrap_or_default(),
        ))
    }
}

fn unreachable_brave(e: &reqwest::Error) -> ToolFailure {
    if e.is_timeout() {
        return ToolFailure::timeout("Brave Search did not answer in time");
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    ToolFailure::upstream(format!("cannot reach Brave Search: {cause}"))
}

fn check_status(status: StatusCode, body: &str) -> Result<(), ToolFailure> {
    if status.is_success() {
        return Ok(());
    }
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ToolFailure::upstream(format!(
            "Brave Search refused the API key ({status}); the operator must check BRAVE_API_KEY"
        ))
        .retryable(false),
        StatusCode::TOO_MANY_REQUESTS => ToolFailure::upstream(
            "Brave Search rate-limited the search (429 Too Many Requests); try again later",
        ),
        s if s.is_server_error() => {
            ToolFailure::upstream(format!("Brave Search failed ({status}); try again later"))
        }
        _ => {
            // Brave explains a refused request in `error.detail`.
            let detail = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"]["detail"].as_str().map(str::to_owned))
                .unwrap_or_default();
            ToolFailure::upstream(
                format!("Brave Search refused the search ({status}) {detail}")
                    .trim_end()
                    .to_owned(),
            )
            .retryable(false)
        }
    })
}

fn format_results(query: &str, results: Vec<BraveResult>) -> String {
    if results.is_empty() {
        return format!("No web results for \"{query}\".");
    }
    let mut out = format!("Web results for \"{query}\":\n");
    for (i, r) in results.iter().enumerate() {
        out.push_str(&format!("\n{}. {}\n   {}\n", i + 1, plain(&r.title), r.url));
        let snippet = plain(&r.description);
        if !snippet.is_empty() {
            out.push_str(&format!("   {snippet}\n"));
        }
    }
    out.trim_end().to_owned()
}

/// Brave's snippets mark the query's words with `<strong>` and escape HTML
/// characters; the model gets plain text.
fn plain(html: &str) -> String {
    let stripped = html.replace("<strong>", "").replace("</strong>", "");
    let mut out = String::with_capacity(stripped.len());
    let mut rest = stripped.as_str();
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            }?;
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn snippets_lose_brave_markup_and_entities() {
        assert_eq!(
            plain("The <strong>otter</strong> &amp; its &#x27;raft&#39; &lt;3 &quot;x&quot;"),
            "The otter & its 'raft' <3 \"x\""
        );
        assert_eq!(plain("AT&T and a & b;"), "AT&T and a & b;");
    }

    #[test]
    fn the_key_is_required_and_never_shown() {
        assert_eq!(
            BraveApi::new(None, None).unwrap_err(),
            "BRAVE_API_KEY is not set"
        );
        let api = BraveApi::new(Some("sekret-123".into()), None).unwrap();
        assert!(!format!("{api:?}").contains("sekret"));
        assert_eq!(
            api.search_url("otters & kelp", 3).as_str(),
            "https://api.search.brave.com/res/v1/web/search?q=otters+%26+kelp&count=3"
        );
        let local = BraveApi::new(Some("k".into()), Some("http://127.0.0.1:9/".into())).unwrap();
        assert_eq!(
            local.search_url("x", 1).as_str(),
            "http://127.0.0.1:9/res/v1/web/search?q=x&count=1"
        );
        assert!(BraveApi::new(Some("k".into()), Some("ftp://x".into())).is_err());
    }
}
