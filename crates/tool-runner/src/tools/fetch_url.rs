//! `fetch_url`: a web page as readable Markdown (HTML), or as the text it is
//! (plain text, JSON pretty-printed). The output starts with the final URL.
//!
//! It must never reach a private, loopback or link-local address the operator
//! did not allow (see `crate::web::guard`), never return binary bytes, and never
//! read more than `[tools.web] max_page_bytes` of a page.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use nexus_tools::{Caller, DynTool, Tool, ToolFailure, typed};
use reqwest::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use url::Url;

use super::{ToolEnv, blocking};
use crate::web::{
    Fetcher, Page,
    readable::{self, Kind},
};

pub const NAME: &str = "fetch_url";

/// Characters returned when the model does not say.
const DEFAULT_MAX_CHARS: usize = 20_000;

pub fn build(env: &ToolEnv) -> Arc<dyn DynTool> {
    typed(FetchUrl {
        fetcher: Fetcher::new(&env.config.web).map(Arc::new),
    })
}

pub struct FetchUrl {
    /// `Err` only if the HTTP client cannot be built (no TLS); every call says so.
    fetcher: Result<Arc<Fetcher>, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The page to fetch: an http:// or https:// URL
    url: String,
    /// Return at most this many characters of the page (default 20000)
    #[schemars(range(min = 1))]
    max_chars: Option<usize>,
}

#[async_trait]
impl Tool for FetchUrl {
    type Args = Args;
    const NAME: &'static str = NAME;

    fn description(&self) -> String {
        "Fetch a web page (http or https) and return its main content as Markdown: title, \
         headings, paragraphs, lists, links and code, without menus, ads or scripts. Plain text \
         and JSON come back as they are. The first line is the final URL (after redirects). \
         PDFs, images and other binary files are not returned. Private and local network \
         addresses are refused. Give max_chars to limit the length."
            .into()
    }

    fn timeout(&self) -> Duration {
        // Room after the fetch's own deadline so its message, not the runner's, is returned.
        let fetch = self.fetcher.as_ref().map(|f| f.timeout).unwrap_or_default();
        fetch + Duration::from_secs(10)
    }

    async fn call(&self, _: &Caller, args: Args) -> Result<String, ToolFailure> {
        let fetcher = self
            .fetcher
            .as_ref()
            .map_err(|e| ToolFailure::internal(e.clone()))?;
        let max_chars = match args.max_chars {
            Some(0) => return Err(ToolFailure::invalid_args("max_chars must be at least 1")),
            Some(n) => n,
            None => DEFAULT_MAX_CHARS,
        };
        let url = Url::parse(args.url.trim()).map_err(|e| {
            ToolFailure::invalid_args(format!("'{}' is not a valid URL: {e}", args.url))
        })?;
        // Bodies of types that are plainly not text are never downloaded.
        let page = fetcher
            .get(url.clone(), |ct| {
                !matches!(readable::kind_of(ct), Some(Kind::Pdf | Kind::Binary))
            })
            .await?;
        check_status(&page)?;
        let max_page_bytes = fetcher.max_page_bytes;
        blocking(move || render(page, &url, max_chars, max_page_bytes)).await
    }
}

/// Pages that are not there or not given are failures, with the status.
fn check_status(page: &Page) -> Result<(), ToolFailure> {
    let status = page.status;
    if status.is_success() {
        return Ok(());
    }
    let said = format!("{} answered {status}", page.url);
    Err(match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => ToolFailure::not_found(said),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
            ToolFailure::upstream(format!("{said}; try again later"))
        }
        s if s.is_server_error() => ToolFailure::upstream(said),
        _ => ToolFailure::upstream(said).retryable(false),
    })
}

/// The output: final URL, then the content as text, then what was cut.
fn render(
    page: Page,
    asked: &Url,
    max_chars: usize,
    max_page_bytes: usize,
) -> Result<String, ToolFailure> {
    let ct = page.content_type.as_deref();
    let kind = match readable::kind_of(ct) {
        Some(kind) => kind,
        None => readable::sniff(&page.body),
    };
    let mime = ct.map(readable::mime_of).filter(|m| !m.is_empty());
    let size = || match (page.declared_len, page.body.is_empty()) {
        (Some(n), _) => format!("{n} bytes"),
        (None, false) if !page.cut => format!("{} bytes", page.body.len()),
        _ => "size not given".to_owned(),
    };
    match kind {
        Kind::Pdf => {
            return Err(ToolFailure::invalid_args(format!(
                "{} is a PDF ({}, {}); fetch_url returns text pages only",
                page.url,
                mime.as_deref().unwrap_or("application/pdf"),
                size()
            )));
        }
        Kind::Binary => {
            return Err(ToolFailure::invalid_args(format!(
                "{} is not text ({}, {}); fetch_url returns text pages only",
                page.url,
                mime.as_deref().unwrap_or("binary content"),
                size()
            )));
        }
        Kind::Html | Kind::Json | Kind::Text => {}
    }
    let text = readable::decode(&page.body, ct, kind);
    let content = match kind {
        Kind::Html => readable::html_to_markdown(&text, &page.url),
        Kind::Json => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(value) if !page.cut => serde_json::to_string_pretty(&value).unwrap_or(text),
            _ => text,
        },
        _ => text,
    };

    let mut out = page.url.to_string();
    if page.redirects > 0 {
        out.push_str(&format!(" (redirected from {asked})"));
    }
    out.push_str("\n\n");
    let total = content.chars().count();
    if total > max_chars {
        out.extend(content.chars().take(max_chars));
        out.push_str(&format!(
            "\n\n[cut at {max_chars} of {total} characters; ask with a larger max_chars for more]"
        ));
    } else if content.trim().is_empty() {
        out.push_str("(the page has no text)");
    } else {
        out.push_str(&content);
    }
    if page.cut {
        out.push_str(&format!(
            "\n\n[the page is larger than {max_page_bytes} bytes; only its first {max_page_bytes} bytes were read]"
        ));
    }
    Ok(out)
}
