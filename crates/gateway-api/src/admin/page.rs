//! HTML of the console: the page frame, escaping, and bar charts drawn as inline
//! SVG on the server. No external resource: the pages work offline under a
//! Content-Security-Policy that allows inline styles and the console's one script
//! (the live view's, served from `/admin/live.js`).

use std::fmt::Write as _;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

const CSS: &str = include_str!("admin.css");

/// The pages in the navigation: path, id, title.
pub const NAV: &[(&str, &str, &str)] = &[
    ("/admin/services", "nav-services", "Services"),
    ("/admin/channels", "nav-channels", "Channels"),
    ("/admin/usage", "nav-usage", "Usage"),
    ("/admin/pairings", "nav-pairings", "Pairings"),
    ("/admin/jobs", "nav-jobs", "Jobs"),
    ("/admin/tasks", "nav-tasks", "Tasks"),
    ("/admin/deadletters", "nav-deadletters", "Dead letters"),
    ("/admin/live", "nav-live", "Live turns"),
];

/// Escapes text for HTML content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A message above the page's content.
pub enum Notice {
    None,
    Done(String),
    Failed(String),
}

/// A whole page. `csrf` is `None` on the login page (no navigation, no logout).
pub fn page(
    status: StatusCode,
    title: &str,
    current: &str,
    csrf: Option<&str>,
    notice: &Notice,
    body: &str,
) -> Response {
    page_refreshing(status, title, current, csrf, notice, body, None)
}

/// A page that reloads itself every `refresh` seconds (no script needed).
pub fn page_refreshing(
    status: StatusCode,
    title: &str,
    current: &str,
    csrf: Option<&str>,
    notice: &Notice,
    body: &str,
    refresh: Option<u32>,
) -> Response {
    let mut html = String::new();
    let refresh = refresh
        .map(|secs| format!("<meta http-equiv=\"refresh\" content=\"{secs}\">"))
        .unwrap_or_default();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{refresh}\
         <title>{} · Nexus admin</title><style>{CSS}</style></head><body>",
        esc(title)
    );
    if let Some(csrf) = csrf {
        html.push_str("<header><nav aria-label=\"Console\"><ul>");
        for (path, id, name) in NAV {
            let here = if *path == current {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(
                html,
                "<li><a id=\"{id}\" href=\"{path}\"{here}>{name}</a></li>"
            );
        }
        html.push_str("</ul>");
        let _ = write!(
            html,
            "<form method=\"post\" action=\"/admin/logout\">{}\
             <button id=\"logout\" type=\"submit\">Log out</button></form></nav></header>",
            csrf_field(csrf)
        );
    }
    let _ = write!(html, "<main id=\"main\"><h1>{}</h1>", esc(title));
    match notice {
        Notice::None => {}
        Notice::Done(text) => {
            let _ = write!(
                html,
                "<p id=\"notice\" class=\"done\" role=\"status\">{}</p>",
                esc(text)
            );
        }
        Notice::Failed(text) => {
            let _ = write!(
                html,
                "<p id=\"notice\" class=\"failed\" role=\"alert\">{}</p>",
                esc(text)
            );
        }
    }
    html.push_str(body);
    html.push_str("</main></body></html>\n");
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; \
             connect-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The hidden CSRF field of a form.
pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A one-button form that POSTs `fields` to `action`.
pub fn button(action: &str, csrf: &str, fields: &[(&str, &str)], id: &str, label: &str) -> String {
    let mut out = format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\">{}",
        esc(action),
        csrf_field(csrf)
    );
    for (name, value) in fields {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(name),
            esc(value)
        );
    }
    let _ = write!(
        out,
        "<button id=\"{}\" type=\"submit\">{}</button></form>",
        esc(id),
        esc(label)
    );
    out
}

/// A table with a caption; cells are already HTML.
pub fn table(id: &str, caption: &str, header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(
        "<div class=\"scroll\"><table id=\"{}\"><caption>{}</caption><thead><tr>",
        esc(id),
        esc(caption)
    );
    for h in header {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        // The column's name rides along: on a phone each row is a card of labelled cells.
        for (i, cell) in row.iter().enumerate() {
            let label = header.get(i).copied().unwrap_or_default();
            let _ = write!(out, "<td data-label=\"{}\">{cell}</td>", esc(label));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A horizontal bar chart of `(label, value)`, as inline SVG. Each bar is a `<g>`
/// with `data-key` and `data-value`, so tests and screen readers find the numbers.
pub fn bar_chart(id: &str, title: &str, unit: &str, bars: &[(String, u64)]) -> String {
    const ROW: u64 = 28;
    const WIDTH: u64 = 640;
    const LABEL: u64 = 200;
    const BAR_MAX: u64 = 330;
    let max = bars.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let height = ROW * (bars.len().max(1) as u64) + 8;
    let mut out = format!(
        "<figure><svg id=\"{id}\" class=\"chart\" role=\"img\" aria-labelledby=\"{id}-title\" \
         viewBox=\"0 0 {WIDTH} {height}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"{id}-title\">{}</title>",
        esc(title),
        id = esc(id)
    );
    if bars.is_empty() {
        let _ = write!(
            out,
            "<text x=\"4\" y=\"20\" class=\"label\">no model calls in this range</text>"
        );
    }
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = 4 + ROW * i as u64;
        let width = (value.saturating_mul(BAR_MAX) / max).max(u64::from(*value > 0));
        let shown: String = label.chars().take(28).collect();
        let _ = write!(
            out,
            "<g class=\"bar\" data-key=\"{key}\" data-value=\"{value}\">\
             <title>{key}: {value} {unit}</title>\
             <text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\" class=\"label\">{shown}</text>\
             <rect x=\"{bx}\" y=\"{y}\" width=\"{width}\" height=\"{h}\" rx=\"3\"></rect>\
             <text x=\"{vx}\" y=\"{ty}\" class=\"value\">{value}</text></g>",
            key = esc(label),
            unit = esc(unit),
            shown = esc(&shown),
            lx = LABEL - 8,
            ty = y + 17,
            bx = LABEL,
            h = ROW - 6,
            vx = LABEL + width + 6,
        );
    }
    out.push_str("</svg></figure>");
    out
}

/// A millisecond instant as `YYYY-MM-DD HH:MM:SSZ`.
pub fn utc(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_owned();
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_everywhere_it_lands() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        let svg = bar_chart("c", "t", "tokens", &[("<b>".into(), 5)]);
        assert!(svg.contains("data-key=\"&lt;b&gt;\"") && !svg.contains("<b>"));
    }

    #[test]
    fn bars_are_as_long_as_their_share_of_the_largest() {
        let svg = bar_chart(
            "usage-by-day",
            "Tokens by day",
            "tokens",
            &[("2026-12-01".into(), 50), ("2026-12-02".into(), 100)],
        );
        assert!(svg.contains("data-key=\"2026-12-02\" data-value=\"100\""));
        assert!(svg.contains("width=\"330\""), "{svg}");
        assert!(svg.contains("width=\"165\""), "{svg}");
        assert!(bar_chart("e", "t", "tokens", &[]).contains("no model calls"));
    }

    #[test]
    fn instants_are_shown_in_utc() {
        assert_eq!(utc(1_772_438_400_000), "2026-03-02 08:00:00Z");
        assert_eq!(utc(0), "-");
    }
}
