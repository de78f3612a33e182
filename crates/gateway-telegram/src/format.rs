//! Markdown from the model → Telegram messages.
//!
//! Telegram's HTML parse mode is used because it needs only four characters
//! escaped (`& < > "`), where MarkdownV2 needs eighteen. Each message is rendered
//! on its own from whole Markdown blocks, so a split never lands inside a tag, an
//! entity or a UTF-16 surrogate pair, and every message is valid HTML by itself.
//!
//! This module must never send anything: it only turns text into [`Chunk`]s.

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

/// Longest message Telegram accepts, in UTF-16 code units (how Telegram counts).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// One Telegram message: HTML for `parse_mode=HTML`, and plain text for the
/// retry when Telegram refuses the markup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub html: String,
    pub plain: String,
}

/// Length as Telegram counts it.
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Escapes text for Telegram HTML (content and attribute values).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '&' => 5,
            '<' | '>' => 4,
            '"' => 6,
            c => c.len_utf16(),
        })
        .sum()
}

/// Renders Markdown into messages of at most [`MAX_MESSAGE_LEN`].
pub fn render(markdown: &str) -> Vec<Chunk> {
    render_with_limit(markdown, MAX_MESSAGE_LEN)
}

/// Like [`render`] with another limit (`limit` ≥ 64).
pub fn render_with_limit(markdown: &str, limit: usize) -> Vec<Chunk> {
    let limit = limit.max(64);
    let mut chunks = Vec::new();
    let mut html = String::new();
    let mut plain = String::new();
    let flush = |html: &mut String, plain: &mut String, chunks: &mut Vec<Chunk>| {
        let h = html.trim_end().to_owned();
        let p = plain.trim().to_owned();
        if !h.trim().is_empty() || !p.is_empty() {
            chunks.push(Chunk { html: h, plain: p });
        }
        html.clear();
        plain.clear();
    };
    for block in blocks(markdown) {
        if block.html.trim().is_empty() {
            continue;
        }
        let sep = if html.is_empty() { 0 } else { 2 };
        if utf16_len(&html) + sep + utf16_len(&block.html) <= limit {
            if sep > 0 {
                html.push_str("\n\n");
                plain.push_str("\n\n");
            }
            html.push_str(&block.html);
            plain.push_str(&block.source);
            continue;
        }
        flush(&mut html, &mut plain, &mut chunks);
        if utf16_len(&block.html) <= limit {
            html.push_str(&block.html);
            plain.push_str(&block.source);
        } else {
            chunks.extend(split_block(&block, limit));
        }
    }
    flush(&mut html, &mut plain, &mut chunks);
    chunks
}

/// Splits plain text into pieces of at most `limit` UTF-16 units, preferring
/// paragraph, then line, then word boundaries, and never splitting a character.
pub fn split_plain(text: &str, limit: usize) -> Vec<String> {
    split_measured(text, limit.max(1), &utf16_len)
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// A top-level Markdown block: its source text and its Telegram HTML.
struct Block {
    source: String,
    html: String,
    /// The raw code of a fenced or indented code block, with its language.
    code: Option<(String, Option<String>)>,
}

fn options() -> Options {
    Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    let mut renderer = Renderer::default();
    for (event, range) in Parser::new_ext(markdown, options()).into_offset_iter() {
        match &event {
            Event::Start(_) => {
                if depth == 0 {
                    start = range.start;
                    renderer = Renderer::default();
                }
                depth += 1;
                renderer.event(event);
            }
            Event::End(_) => {
                renderer.event(event);
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    let r = std::mem::take(&mut renderer);
                    out.push(Block {
                        source: markdown
                            .get(start..range.end)
                            .unwrap_or_default()
                            .trim_end()
                            .to_owned(),
                        html: r.out.trim_end().to_owned(),
                        code: r.code,
                    });
                }
            }
            _ if depth == 0 => {
                let mut r = Renderer::default();
                r.event(event);
                out.push(Block {
                    source: markdown
                        .get(range)
                        .unwrap_or_default()
                        .trim_end()
                        .to_owned(),
                    html: r.out.trim_end().to_owned(),
                    code: None,
                });
            }
            _ => renderer.event(event),
        }
    }
    out
}

/// A block too long for one message: code is split on lines and re-wrapped;
/// anything else is split on source lines, each group rendered on its own.
fn split_block(block: &Block, limit: usize) -> Vec<Chunk> {
    if let Some((code, lang)) = &block.code {
        let open = match lang {
            Some(l) => format!("<pre><code class=\"language-{}\">", escape_html(l)),
            None => "<pre>".to_owned(),
        };
        let close = if lang.is_some() {
            "</code></pre>"
        } else {
            "</pre>"
        };
        let room = limit
            .saturating_sub(utf16_len(&open) + utf16_len(close))
            .max(1);
        return split_measured(code, room, &escaped_len)
            .into_iter()
            .map(|piece| {
                let piece = piece.trim_end_matches('\n');
                Chunk {
                    html: format!("{open}{}{close}", escape_html(piece)),
                    plain: piece.to_owned(),
                }
            })
            .collect();
    }

    let mut chunks = Vec::new();
    let mut group = String::new();
    let render_group = |src: &str| -> String {
        blocks(src)
            .into_iter()
            .map(|b| b.html)
            .filter(|h| !h.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    let push_group = |group: &mut String, chunks: &mut Vec<Chunk>| {
        if !group.trim().is_empty() {
            let html = render_group(group);
            chunks.push(Chunk {
                html,
                plain: group.trim().to_owned(),
            });
        }
        group.clear();
    };
    for line in block.source.split_inclusive('\n') {
        let candidate = format!("{group}{line}");
        if utf16_len(&render_group(&candidate)) <= limit {
            group = candidate;
            continue;
        }
        push_group(&mut group, &mut chunks);
        if utf16_len(&render_group(line)) <= limit {
            group.push_str(line);
        } else {
            // One enormous line: give up its formatting rather than split a tag.
            for piece in split_measured(line, limit, &escaped_len) {
                let piece = piece.trim();
                if !piece.is_empty() {
                    chunks.push(Chunk {
                        html: escape_html(piece),
                        plain: piece.to_owned(),
                    });
                }
            }
        }
    }
    push_group(&mut group, &mut chunks);
    chunks
}

/// Greedy split where `measure` is additive over concatenation: paragraphs,
/// then lines, then words, then characters.
fn split_measured(text: &str, limit: usize, measure: &dyn Fn(&str) -> usize) -> Vec<String> {
    fn go(
        text: &str,
        limit: usize,
        measure: &dyn Fn(&str) -> usize,
        seps: &[&str],
        out: &mut Vec<String>,
    ) {
        let Some((sep, rest)) = seps.split_first() else {
            // Characters: the last resort, never inside a character.
            let mut current = String::new();
            let mut size = 0;
            for c in text.chars() {
                let n = measure(c.encode_utf8(&mut [0; 4]));
                if size + n > limit && !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                    size = 0;
                }
                current.push(c);
                size += n;
            }
            if !current.is_empty() {
                out.push(current);
            }
            return;
        };
        let mut current = String::new();
        let mut size = 0;
        for piece in text.split_inclusive(sep) {
            let n = measure(piece);
            if size + n <= limit {
                current.push_str(piece);
                size += n;
                continue;
            }
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
                size = 0;
            }
            if n <= limit {
                current.push_str(piece);
                size = n;
            } else {
                go(piece, limit, measure, rest, out);
            }
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    let mut out = Vec::new();
    go(text, limit, measure, &["\n\n", "\n", " "], &mut out);
    out
}

/// Turns the events of one top-level block into Telegram HTML.
#[derive(Default)]
struct Renderer {
    out: String,
    /// Open lists: `Some(next number)` for ordered ones.
    lists: Vec<Option<u64>>,
    /// Inside a link whose URL Telegram would refuse: its text is kept, the tag dropped.
    dropped_links: Vec<bool>,
    code: Option<(String, Option<String>)>,
    in_code_block: bool,
    /// Right after a list bullet or `<blockquote>`: the first paragraph stays on that line.
    at_line_start: bool,
}

impl Renderer {
    fn line_break(&mut self) {
        if self.at_line_start {
            return;
        }
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push('\n');
        }
    }

    fn event(&mut self, event: Event<'_>) {
        let keeps_line_start = matches!(
            event,
            Event::Start(Tag::Paragraph) | Event::Start(Tag::Item) | Event::End(TagEnd::Paragraph)
        );
        if !keeps_line_start {
            self.at_line_start = false;
        }
        self.render_event(event);
    }

    fn render_event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(t) => {
                if self.in_code_block
                    && let Some((code, _)) = &mut self.code
                {
                    code.push_str(&t);
                }
                self.out.push_str(&escape_html(&t));
            }
            Event::Code(t) => {
                self.out.push_str("<code>");
                self.out.push_str(&escape_html(&t));
                self.out.push_str("</code>");
            }
            // Raw HTML from the model is shown as text, never interpreted.
            Event::Html(t) | Event::InlineHtml(t) => self.out.push_str(&escape_html(&t)),
            Event::InlineMath(t) | Event::DisplayMath(t) => self.out.push_str(&escape_html(&t)),
            Event::FootnoteReference(t) => {
                self.out.push_str(&escape_html(&format!("[^{t}]")));
            }
            Event::SoftBreak | Event::HardBreak => self.out.push('\n'),
            Event::Rule => {
                self.line_break();
                self.out.push_str("──────────");
            }
            Event::TaskListMarker(done) => self.out.push_str(if done { "☑ " } else { "☐ " }),
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph => self.line_break(),
            Tag::Heading { .. } => {
                self.line_break();
                self.out.push_str("<b>");
            }
            Tag::BlockQuote(_) => {
                self.line_break();
                self.out.push_str("<blockquote>");
                self.at_line_start = true;
            }
            Tag::CodeBlock(kind) => {
                self.line_break();
                let lang = match kind {
                    CodeBlockKind::Fenced(info) => info
                        .split_whitespace()
                        .next()
                        .filter(|l| {
                            l.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"+-_#.".contains(&b))
                        })
                        .map(str::to_owned),
                    CodeBlockKind::Indented => None,
                };
                match &lang {
                    Some(l) => {
                        self.out.push_str("<pre><code class=\"language-");
                        self.out.push_str(&escape_html(l));
                        self.out.push_str("\">");
                    }
                    None => self.out.push_str("<pre>"),
                }
                self.code = Some((String::new(), lang));
                self.in_code_block = true;
            }
            Tag::List(first) => {
                self.line_break();
                self.lists.push(first);
            }
            Tag::Item => {
                self.at_line_start = false;
                self.line_break();
                let depth = self.lists.len().saturating_sub(1);
                self.out.push_str(&"  ".repeat(depth));
                match self.lists.last_mut() {
                    Some(Some(n)) => {
                        self.out.push_str(&format!("{n}. "));
                        *n += 1;
                    }
                    _ => self.out.push_str("• "),
                }
                self.at_line_start = true;
            }
            Tag::Emphasis => self.out.push_str("<i>"),
            Tag::Strong => self.out.push_str("<b>"),
            Tag::Strikethrough => self.out.push_str("<s>"),
            Tag::Superscript | Tag::Subscript => {}
            Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                let ok = ["http://", "https://", "tg://", "mailto:"]
                    .iter()
                    .any(|p| dest_url.starts_with(p));
                self.dropped_links.push(!ok);
                if ok {
                    self.out.push_str("<a href=\"");
                    self.out.push_str(&escape_html(&dest_url));
                    self.out.push_str("\">");
                }
            }
            Tag::Table(_)
            | Tag::TableHead
            | Tag::TableRow
            | Tag::TableCell
            | Tag::HtmlBlock
            | Tag::FootnoteDefinition(_)
            | Tag::DefinitionList
            | Tag::DefinitionListTitle
            | Tag::DefinitionListDefinition
            | Tag::MetadataBlock(_) => self.line_break(),
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph => {}
            TagEnd::Heading(_) => self.out.push_str("</b>"),
            TagEnd::BlockQuote(_) => {
                while self.out.ends_with('\n') {
                    self.out.pop();
                }
                self.out.push_str("</blockquote>");
            }
            TagEnd::CodeBlock => {
                while self.out.ends_with('\n') {
                    self.out.pop();
                }
                let has_lang = self.code.as_ref().is_some_and(|(_, l)| l.is_some());
                self.out
                    .push_str(if has_lang { "</code></pre>" } else { "</pre>" });
                self.in_code_block = false;
                if let Some((code, _)) = &mut self.code {
                    while code.ends_with('\n') {
                        code.pop();
                    }
                }
            }
            TagEnd::List(_) => {
                self.lists.pop();
            }
            TagEnd::Emphasis => self.out.push_str("</i>"),
            TagEnd::Strong => self.out.push_str("</b>"),
            TagEnd::Strikethrough => self.out.push_str("</s>"),
            TagEnd::Link | TagEnd::Image => {
                let dropped = self.dropped_links.pop().unwrap_or(true);
                if !dropped {
                    self.out.push_str("</a>");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags open and close in order, and no `<`/`>`/`&` appears outside a tag or entity.
    fn assert_well_formed(html: &str) {
        let allowed = ["b", "i", "s", "a", "code", "pre", "blockquote"];
        let mut stack: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(pos) = rest.find(['<', '>', '&']) {
            let tail = &rest[pos..];
            if tail.starts_with('&') {
                let end = tail.find(';').unwrap_or_else(|| panic!("bare & in {html}"));
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"].contains(&&tail[..=end]),
                    "unknown entity in {html}"
                );
                rest = &tail[end + 1..];
                continue;
            }
            assert!(tail.starts_with('<'), "stray > in {html}");
            let end = tail
                .find('>')
                .unwrap_or_else(|| panic!("unclosed tag in {html}"));
            let inner = &tail[1..end];
            if let Some(name) = inner.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "misnested in {html}");
            } else {
                let name = inner.split(' ').next().unwrap_or_default();
                assert!(allowed.contains(&name), "tag {name} not allowed in {html}");
                stack.push(name.to_owned());
            }
            rest = &tail[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?} in {html}");
    }

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            escape_html("a < b && c > \"d\""),
            "a &lt; b &amp;&amp; c &gt; &quot;d&quot;"
        );
        let chunks = render("if a<b && c>d then <script>alert(1)</script>");
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            chunks[0].html,
            "if a&lt;b &amp;&amp; c&gt;d then &lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_well_formed(&chunks[0].html);
    }

    #[test]
    fn markdown_becomes_telegram_html() {
        let md = "# Title\n\nSome **bold**, *italic*, ~~gone~~ and `a<b`.\n\n\
                  - one\n- two\n  1. nested\n\n\
                  > quoted\n\n\
                  [link](https://example.com/?a=1&b=\"2\") and [bad](javascript:alert(1))\n\n\
                  ```rust\nfn main() { if a < b {} }\n```";
        let chunks = render(md);
        assert_eq!(chunks.len(), 1);
        let html = &chunks[0].html;
        assert_well_formed(html);
        for expected in [
            "<b>Title</b>",
            "<b>bold</b>",
            "<i>italic</i>",
            "<s>gone</s>",
            "<code>a&lt;b</code>",
            "• one\n• two\n  1. nested",
            "<blockquote>quoted</blockquote>",
            "<a href=\"https://example.com/?a=1&amp;b=&quot;2&quot;\">link</a>",
            "<pre><code class=\"language-rust\">fn main() { if a &lt; b {} }</code></pre>",
        ] {
            assert!(html.contains(expected), "{expected:?} missing from {html}");
        }
        assert!(!html.contains("javascript"), "{html}");
        assert!(html.contains("bad"), "{html}");
        assert_eq!(chunks[0].plain, md.trim());
    }

    #[test]
    fn short_text_is_one_chunk_and_empty_text_none() {
        assert_eq!(render("hello").len(), 1);
        assert!(render("").is_empty());
        assert!(render("  \n\n ").is_empty());
    }

    #[test]
    fn long_replies_split_on_paragraph_boundaries_in_order() {
        let paragraphs: Vec<String> = (0..40)
            .map(|i| format!("Paragraph {i:03} **bold** {}", "word ".repeat(30)))
            .collect();
        let md = paragraphs.join("\n\n");
        let chunks = render_with_limit(&md, 1000);
        assert!(chunks.len() > 4, "{}", chunks.len());
        let mut next = 0;
        for c in &chunks {
            assert!(utf16_len(&c.html) <= 1000);
            assert!(utf16_len(&c.plain) <= 1000);
            assert_well_formed(&c.html);
            for line in c.html.split("\n\n") {
                assert!(
                    line.starts_with(&format!("Paragraph {next:03} <b>bold</b>")),
                    "paragraph cut or out of order: {line:.40}"
                );
                next += 1;
            }
        }
        assert_eq!(next, 40);
    }

    #[test]
    fn a_huge_code_block_is_split_into_complete_code_blocks() {
        let code: String = (0..400).map(|i| format!("let x{i} = a < b;\n")).collect();
        let md = format!("Intro\n\n```rust\n{code}```\n\nOutro");
        let chunks = render_with_limit(&md, 1000);
        assert!(chunks.len() > 3);
        let mut seen = String::new();
        for c in &chunks {
            assert!(utf16_len(&c.html) <= 1000, "{}", utf16_len(&c.html));
            assert_well_formed(&c.html);
            if c.html.starts_with("<pre>") {
                seen.push_str(&c.plain);
                seen.push('\n');
            }
        }
        assert_eq!(seen, code, "code lines lost or reordered");
    }

    #[test]
    fn a_huge_paragraph_splits_between_words_and_never_inside_a_surrogate_pair() {
        let md = "😀 emoji ".repeat(600);
        let chunks = render_with_limit(&md, 500);
        assert!(chunks.len() > 2);
        let mut joined = String::new();
        for c in &chunks {
            assert!(utf16_len(&c.html) <= 500);
            assert_well_formed(&c.html);
            joined.push_str(&c.html);
            joined.push(' ');
        }
        assert_eq!(joined.matches('😀').count(), 600);

        // No spaces at all: split between characters, each emoji whole.
        let solid = "😀".repeat(700);
        let pieces = split_plain(&solid, 101);
        assert!(pieces.iter().all(|p| utf16_len(p) <= 101));
        assert_eq!(pieces.concat(), solid);
    }

    #[test]
    fn the_plain_fallback_fits_and_keeps_all_text() {
        let text = format!("{}\n{}", "a".repeat(5000), "b ".repeat(3000));
        let pieces = split_plain(&text, MAX_MESSAGE_LEN);
        assert!(pieces.len() >= 3);
        assert!(pieces.iter().all(|p| utf16_len(p) <= MAX_MESSAGE_LEN));
        let count = |c| pieces.iter().map(|p| p.matches(c).count()).sum::<usize>();
        assert_eq!(count('a'), 5000);
        assert_eq!(count('b'), 3000);
    }
}
