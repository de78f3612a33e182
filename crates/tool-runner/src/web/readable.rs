//! A fetched page as text for the model: the bytes decoded by their charset,
//! and HTML reduced to Markdown of its main content (title, headings,
//! paragraphs, lists, links, code) by Mozilla Readability's algorithm
//! (`dom_smoothie`), without navigation, headers, footers, asides, forms,
//! scripts and styles.
//!
//! It must never run anything a page contains: it parses, it does not execute.

use std::sync::LazyLock;

use dom_smoothie::{Config, Readability, TextMode};
use encoding_rs::{Encoding, UTF_8};
use regex::Regex;
use url::Url;

/// What a response holds, as far as `fetch_url` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Html,
    Json,
    /// Any other text (plain, Markdown, CSV, XML, …), passed through.
    Text,
    Pdf,
    /// Images, archives, media, … (not text).
    Binary,
}

/// The kind a `Content-Type` names, or `None` when it does not say (missing,
/// or `application/octet-stream`): then the body decides ([`sniff`]).
pub fn kind_of(content_type: Option<&str>) -> Option<Kind> {
    let mime = mime_of(content_type?);
    Some(match mime.as_str() {
        "text/html" | "application/xhtml+xml" => Kind::Html,
        "application/json" => Kind::Json,
        m if m.ends_with("+json") => Kind::Json,
        "application/pdf" | "application/x-pdf" => Kind::Pdf,
        "" | "application/octet-stream" | "binary/octet-stream" => return None,
        m if m.starts_with("text/") => Kind::Text,
        "application/xml"
        | "application/javascript"
        | "application/ecmascript"
        | "application/x-sh"
        | "application/x-yaml"
        | "application/yaml"
        | "application/toml"
        | "application/sql"
        | "application/graphql" => Kind::Text,
        m if m.ends_with("+xml") => Kind::Text,
        _ => Kind::Binary,
    })
}

/// The bare media type, lower case, without parameters.
pub fn mime_of(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The kind of a body whose type was not given.
pub fn sniff(body: &[u8]) -> Kind {
    let head = &body[..body.len().min(1024)];
    if head.starts_with(b"%PDF-") {
        return Kind::Pdf;
    }
    if head.contains(&0) {
        return Kind::Binary;
    }
    let text = String::from_utf8_lossy(head);
    let start = text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .to_ascii_lowercase();
    if start.starts_with("<!doctype html") || start.starts_with("<html") {
        return Kind::Html;
    }
    if (start.starts_with('{') || start.starts_with('['))
        && serde_json::from_slice::<serde_json::Value>(body).is_ok()
    {
        return Kind::Json;
    }
    Kind::Text
}

/// Decodes a body: the `charset` of `Content-Type`, else (HTML) a `<meta>`
/// charset near the start, else a byte-order mark, else UTF-8. Bad bytes
/// become U+FFFD rather than an error.
pub fn decode(body: &[u8], content_type: Option<&str>, kind: Kind) -> String {
    static META: LazyLock<Option<Regex>> = LazyLock::new(|| {
        Regex::new(r#"(?i)<meta[^>]*?charset\s*=\s*["']?\s*([a-z0-9_:.\-]+)"#).ok()
    });
    let declared = content_type.and_then(|ct| {
        ct.split(';')
            .skip(1)
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
    });
    let sniffed = || {
        let head = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
        META.as_ref()?.captures(&head).map(|c| c[1].to_owned())
    };
    let label = declared.or_else(|| (kind == Kind::Html).then(sniffed).flatten());
    let encoding = label
        .and_then(|l| Encoding::for_label(l.as_bytes()))
        .unwrap_or(UTF_8);
    // `decode` lets a byte-order mark win over the label, as browsers do.
    encoding.decode(body).0.into_owned()
}

/// Never main content, wherever it is.
const CHROME: &str = "nav, aside, script, style, noscript, template, dialog, iframe, \
                      [role=navigation], [role=complementary], [role=search]";
/// Page furniture when outside the article (an article's own header keeps its title).
const FURNITURE: &str = "header, footer, [role=banner], [role=contentinfo]";
/// Forms shorter than this are search boxes, logins and sign-ups; some sites
/// wrap a whole page in one form, which stays.
const SHORT_FORM_CHARS: usize = 200;

/// HTML as Markdown of its main content, headed by the page title (`# Title`).
/// Links are made absolute against `url`.
pub fn html_to_markdown(html: &str, url: &Url) -> String {
    let config = Config {
        text_mode: TextMode::Markdown,
        ..Config::default()
    };
    let doc = Readability::from(html).doc;
    let title = doc.select("title").text().trim().to_owned();
    // Navigation, asides, scripts, styles, small forms, and headers and footers
    // outside the article go before Readability scores what is left.
    doc.select(CHROME).remove();
    for node in doc.select(FURNITURE).nodes() {
        let in_article = node
            .ancestors_it(None)
            .any(|a| a.has_name("article") || a.has_name("main"));
        if !in_article {
            node.remove_from_parent();
        }
    }
    for node in doc.select("form").nodes() {
        if node.text().chars().count() < SHORT_FORM_CHARS {
            node.remove_from_parent();
        }
    }
    // A copy for when Readability finds no article (a short page, an app shell).
    let whole = doc.md(None).to_string();
    let article = Readability::with_document(doc, Some(url.as_str()), Some(config))
        .ok()
        .and_then(|mut r| r.parse().ok());
    let (title, body) = match article {
        Some(a) if !a.text_content.trim().is_empty() => (a.title, a.text_content.to_string()),
        _ => (title, whole),
    };
    let body = tidy(&body);
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    if title.is_empty() || body.starts_with(&format!("# {title}\n")) || body == format!("# {title}")
    {
        return body;
    }
    format!("# {title}\n\n{body}")
}

/// Trims the ends and collapses runs of blank lines (left where elements were dropped).
fn tidy(md: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut blank = 0;
    for line in md.trim().lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const ARTICLE: &str = r#"<!doctype html>
<html><head><title>Why Otters Hold Hands | River Weekly</title>
<style>.nav { color: red } STYLETEXT</style>
<script>var tracking = "SCRIPTTEXT";</script></head>
<body>
<header><a href="/">River Weekly</a> HEADERTEXT</header>
<nav><ul><li><a href="/news">News</a></li><li><a href="/about">NAVTEXT About</a></li></ul></nav>
<main><article>
<h1>Why Otters Hold Hands</h1>
<p>Sea otters are known for holding hands while they sleep, a behaviour called rafting.
This keeps them from drifting apart on the currents of the bay, and it is one of the most
photographed moments in marine wildlife, as any visitor to the coast can tell you.</p>
<h2>How rafting works</h2>
<p>A raft can hold a dozen otters or more. Mothers keep pups on their chests, and the
group wraps itself in kelp so the tide cannot carry anyone away during the night, which
researchers at the <a href="/research/kelp">kelp institute</a> have documented for years.</p>
<ul><li>Kelp acts as an anchor</li><li>Pups ride on their mothers</li></ul>
<pre><code>rafts = otters / 12</code></pre>
<p>Researchers counted more than two thousand otters along one stretch of coast in a
single season, and most of them slept in rafts of five or more animals at a time.</p>
</article></main>
<aside>ASIDETEXT Subscribe to our newsletter!</aside>
<form><input name="q"><button>FORMTEXT Search</button></form>
<footer>FOOTERTEXT © River Weekly</footer>
</body></html>"#;

    #[test]
    fn an_article_keeps_title_headings_paragraphs_lists_links_and_code_without_the_chrome() {
        let md = html_to_markdown(
            ARTICLE,
            &Url::parse("https://river.example/otters").unwrap(),
        );
        assert!(md.starts_with("# Why Otters Hold Hands"), "{md}");
        assert!(md.contains("## How rafting works"), "{md}");
        assert!(md.contains("behaviour called rafting"), "{md}");
        assert!(md.contains("- Kelp acts as an anchor"), "{md}");
        assert!(
            md.contains("[kelp institute](https://river.example/research/kelp)"),
            "{md}"
        );
        assert!(
            md.contains("```") && md.contains("rafts = otters / 12"),
            "{md}"
        );
        for chrome in [
            "NAVTEXT",
            "HEADERTEXT",
            "FOOTERTEXT",
            "ASIDETEXT",
            "FORMTEXT",
            "SCRIPTTEXT",
            "STYLETEXT",
            "tracking",
        ] {
            assert!(!md.contains(chrome), "{chrome} in {md}");
        }
        assert_eq!(md.matches("Why Otters Hold Hands").count(), 1, "{md}");
    }

    #[test]
    fn a_page_without_an_article_still_gives_its_text_without_the_chrome() {
        let html = "<html><head><title>Tiny</title><script>SCRIPTTEXT</script></head>\
                    <body><nav>NAVTEXT</nav><p>Just one line.</p><footer>FOOTERTEXT</footer></body></html>";
        let md = html_to_markdown(html, &Url::parse("http://x.example/").unwrap());
        assert!(md.starts_with("# Tiny"), "{md}");
        assert!(md.contains("Just one line."), "{md}");
        for chrome in ["NAVTEXT", "FOOTERTEXT", "SCRIPTTEXT"] {
            assert!(!md.contains(chrome), "{chrome} in {md}");
        }
    }

    #[test]
    fn kinds_come_from_the_content_type_or_else_from_the_bytes() {
        assert_eq!(kind_of(Some("text/html; charset=utf-8")), Some(Kind::Html));
        assert_eq!(kind_of(Some("Application/JSON")), Some(Kind::Json));
        assert_eq!(kind_of(Some("application/ld+json")), Some(Kind::Json));
        assert_eq!(kind_of(Some("text/plain")), Some(Kind::Text));
        assert_eq!(kind_of(Some("application/rss+xml")), Some(Kind::Text));
        assert_eq!(kind_of(Some("application/pdf")), Some(Kind::Pdf));
        assert_eq!(kind_of(Some("image/png")), Some(Kind::Binary));
        assert_eq!(kind_of(Some("application/octet-stream")), None);
        assert_eq!(kind_of(None), None);
        assert_eq!(sniff(b"%PDF-1.7\n..."), Kind::Pdf);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0"), Kind::Binary);
        assert_eq!(sniff(b"  <!DOCTYPE html><p>x"), Kind::Html);
        assert_eq!(sniff(br#"{"a": 1}"#), Kind::Json);
        assert_eq!(sniff(b"plain words"), Kind::Text);
    }

    #[test]
    fn bodies_are_decoded_by_their_declared_or_meta_charset() {
        let latin1 = b"caf\xe9";
        assert_eq!(
            decode(latin1, Some("text/plain; charset=ISO-8859-1"), Kind::Text),
            "café"
        );
        let html = b"<html><head><meta charset=\"windows-1252\"></head><body>\x93hi\x94</body>";
        assert!(decode(html, Some("text/html"), Kind::Html).contains("\u{201c}hi\u{201d}"));
        assert_eq!(decode("naïve".as_bytes(), None, Kind::Text), "naïve");
        assert_eq!(
            decode(b"bad \xff byte", None, Kind::Text),
            "bad \u{fffd} byte"
        );
    }
}
