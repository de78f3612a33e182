//! The web side of tool-runner: [`Fetcher`] is `fetch_url`'s one HTTP client,
//! [`guard`] decides which addresses it may connect to, [`readable`] turns a page
//! into Markdown.
//!
//! The fetcher must never connect to an address the guard has not checked: no
//! proxy (`HTTP(S)_PROXY` are ignored), no redirect followed by the client (each
//! hop is checked here), and no resolver but the guard's.

pub mod guard;
pub mod readable;

use std::{error::Error as _, sync::Arc, time::Duration};

use nexus_common::config::WebToolsConfig;
use reqwest::{StatusCode, header};
use url::Url;

use self::guard::{GuardedResolver, HostPolicy, LookupError, Refused, UrlProblem};
use crate::error::ToolFailure;

/// Sent with every request; some sites refuse clients without one.
pub const USER_AGENT: &str = concat!(
    "Mozilla/5.0 (compatible; Nexus-fetch_url/",
    env!("CARGO_PKG_VERSION"),
    ")"
);

/// Installs rustls's ring provider once per process (reqwest is built
/// without one of its own; tool-runner's other TLS clients use ring too).
pub fn ensure_crypto_provider() {
    // Err only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One fetched response: the last hop's status, headers and (capped) body.
#[derive(Debug)]
pub struct Page {
    /// The URL the response came from, after redirects.
    pub url: Url,
    pub redirects: usize,
    pub status: StatusCode,
    /// The `Content-Type` header as sent.
    pub content_type: Option<String>,
    /// `Content-Length`, when the server said.
    pub declared_len: Option<u64>,
    /// Empty when [`Fetcher::get`] was told not to read it.
    pub body: Vec<u8>,
    /// The body was longer than `max_page_bytes` and was cut there.
    pub cut: bool,
}

/// GETs pages with the address policy, size cap, timeout and redirect limit of `[tools.web]`.
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<HostPolicy>,
    pub max_page_bytes: usize,
    pub max_redirects: usize,
    pub timeout: Duration,
}

impl Fetcher {
    pub fn new(config: &WebToolsConfig) -> Result<Self, String> {
        ensure_crypto_provider();
        let policy = Arc::new(HostPolicy::new(&config.allow_hosts));
        let timeout = Duration::from_secs(config.timeout_secs.max(1));
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .user_agent(USER_AGENT)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            policy,
            max_page_bytes: config.max_page_bytes,
            max_redirects: config.max_redirects,
            timeout,
        })
    }

    /// Fetches `url`, following redirects itself; `read_body` decides from the
    /// final response's `Content-Type` whether its body is read at all.
    pub async fn get(
        &self,
        url: Url,
        read_body: impl Fn(Option<&str>) -> bool,
    ) -> Result<Page, ToolFailure> {
        let shown = url.to_string();
        tokio::time::timeout(self.timeout, self.get_inner(url, read_body))
            .await
            .map_err(|_| {
                ToolFailure::timeout(format!(
                    "{shown} did not answer within {} s",
                    self.timeout.as_secs()
                ))
            })?
    }

    async fn get_inner(
        &self,
        mut url: Url,
        read_body: impl Fn(Option<&str>) -> bool,
    ) -> Result<Page, ToolFailure> {
        let mut redirects = 0;
        loop {
            self.policy
                .check_url(&url)
                .map_err(|p| url_failure(p, redirects, &url))?;
            let mut response = self
                .client
                .get(url.clone())
                .header(
                    header::ACCEPT,
                    "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.9,*/*;q=0.5",
                )
                .send()
                .await
                .map_err(|e| at_hop(send_failure(&e, &url), redirects, &url))?;
            if let Some(addr) = response.remote_addr() {
                self.policy
                    .check_connected(&url, addr)
                    .map_err(|r| ToolFailure::denied(r.0))?;
            }
            let status = response.status();
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok());
            if status.is_redirection()
                && status != StatusCode::NOT_MODIFIED
                && let Some(location) = location
            {
                let next = url.join(location).map_err(|e| {
                    ToolFailure::upstream(format!(
                        "{url} redirects to '{location}', which is not a valid URL: {e}"
                    ))
                    .retryable(false)
                })?;
                if redirects == self.max_redirects {
                    return Err(ToolFailure::upstream(format!(
                        "{url} redirects again (to {next}) after {redirects} redirects; \
                         fetch_url follows at most {}",
                        self.max_redirects
                    ))
                    .retryable(false));
                }
                redirects += 1;
                url = next;
                continue;
            }
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let declared_len = response.content_length();
            let mut page = Page {
                url,
                redirects,
                status,
                content_type,
                declared_len,
                body: Vec::new(),
                cut: false,
            };
            if read_body(page.content_type.as_deref()) {
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|e| read_failure(&e, &page.url))?
                {
                    let room = self.max_page_bytes - page.body.len();
                    if chunk.len() > room {
                        page.body.extend_from_slice(&chunk[..room]);
                        page.cut = true;
                        break;
                    }
                    page.body.extend_from_slice(&chunk);
                }
            }
            return Ok(page);
        }
    }
}

fn url_failure(problem: UrlProblem, redirects: usize, url: &Url) -> ToolFailure {
    let failure = match problem {
        UrlProblem::Refused(Refused(why)) => ToolFailure::denied(why),
        // A redirect to another scheme is the site's doing, not the model's.
        other if redirects > 0 => ToolFailure::denied(other.to_string()),
        other => ToolFailure::invalid_args(other.to_string()),
    };
    at_hop(failure, redirects, url)
}

/// Says that a failure happened after a redirect, and where it led.
fn at_hop(mut failure: ToolFailure, redirects: usize, url: &Url) -> ToolFailure {
    if redirects > 0 {
        failure.message = format!("a redirect led to {url}: {}", failure.message);
    }
    failure
}

/// The innermost cause of an error, for a short message.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn send_failure(e: &reqwest::Error, url: &Url) -> ToolFailure {
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(Refused(why)) = cause.downcast_ref::<Refused>() {
            return ToolFailure::denied(why.clone());
        }
        if let Some(LookupError::Dns(why)) = cause.downcast_ref::<LookupError>() {
            return ToolFailure::not_found(why.clone());
        }
        source = cause.source();
    }
    let host = url.host_str().unwrap_or_default();
    if e.is_timeout() {
        return ToolFailure::timeout(format!("{host} did not answer in time"));
    }
    if e.is_connect() {
        return ToolFailure::upstream(format!("cannot connect to {host}: {}", root_cause(e)));
    }
    ToolFailure::upstream(format!("fetching {url} failed: {}", root_cause(e)))
}

fn read_failure(e: &reqwest::Error, url: &Url) -> ToolFailure {
    ToolFailure::upstream(format!(
        "the connection broke while reading {url}: {}",
        root_cause(e)
    ))
}
