//! Text conversion between the agent's Markdown and Slack's `mrkdwn`, both ways,
//! and splitting of long replies into readable messages.
//!
//! Pure functions only: no I/O, no Slack API knowledge beyond the text format.

pub use crate::settings::DEFAULT_CHUNK_CHARS;

const FENCE: &str = "```";

/// Converts the agent's Markdown into Slack `mrkdwn`.
///
/// `**bold**` → `*bold*`, `*italic*` → `_italic_`, `~~strike~~` → `~strike~`,
/// `[text](url)` → `<url|text>`, headings → bold lines, `- item` → `• item`,
/// tables → code blocks; code (fenced or inline) is kept verbatim. `&`, `<` and `>`
/// are escaped as Slack requires, except in the links and quotes this produces.
pub fn to_mrkdwn(md: &str) -> String {
    let lines: Vec<&str> = md.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut in_fence = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        i += 1;
        if trimmed.starts_with(FENCE) || trimmed.starts_with("~~~") {
            // Slack shows a language tag as code, so it is dropped.
            out.push(FENCE.to_owned());
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            out.push(escape(line));
            continue;
        }
        if is_table_row(trimmed) && lines.get(i).is_some_and(|next| is_table_rule(next.trim())) {
            out.push(FENCE.to_owned());
            out.push(escape(trimmed));
            i += 1; // the |---|---| rule
            while let Some(row) = lines.get(i).map(|l| l.trim()).filter(|l| is_table_row(l)) {
                out.push(escape(row));
                i += 1;
            }
            out.push(FENCE.to_owned());
            continue;
        }
        out.push(convert_line(line));
    }
    if in_fence {
        out.push(FENCE.to_owned());
    }
    out.join("\n").trim_end().to_owned()
}

fn convert_line(line: &str) -> String {
    let trimmed = line.trim_start();
    let indent = &line[..line.len() - trimmed.len()];
    if let Some(title) = heading(trimmed) {
        let plain = title.replace("**", "").replace("__", "");
        let plain = plain.trim().trim_end_matches('#').trim();
        return if plain.is_empty() {
            String::new()
        } else {
            format!("*{}*", inline(plain))
        };
    }
    if is_rule(trimmed) {
        return "──────────".to_owned();
    }
    for bullet in ["- ", "* ", "+ "] {
        if let Some(rest) = trimmed.strip_prefix(bullet) {
            return format!("{indent}• {}", inline(rest));
        }
    }
    if let Some(rest) = trimmed.strip_prefix('>') {
        // A literal `>` starts a quote in mrkdwn.
        return format!(">{}", inline(rest));
    }
    format!("{indent}{}", inline(trimmed))
}

fn heading(line: &str) -> Option<&str> {
    let hashes = line.bytes().take_while(|b| *b == b'#').count();
    if (1..=6).contains(&hashes) {
        let rest = &line[hashes..];
        if rest.is_empty() || rest.starts_with(' ') {
            return Some(rest);
        }
    }
    None
}

fn is_rule(line: &str) -> bool {
    let l = line.trim();
    l.len() >= 3
        && ["-", "*", "_"].iter().any(|c| {
            l.chars().all(|x| x.to_string() == *c || x == ' ') && l.matches(*c).count() >= 3
        })
}

fn is_table_row(line: &str) -> bool {
    line.len() >= 2 && line.starts_with('|') && line.ends_with('|')
}

fn is_table_rule(line: &str) -> bool {
    line.contains('-')
        && line.starts_with('|')
        && line.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
}

/// Escapes the three characters Slack treats as markup.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Converts inline Markdown (emphasis, code, links) on one line.
fn inline(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = if i == 0 { None } else { Some(chars[i - 1]) };
        match c {
            '`' => {
                let ticks = run_len(&chars, i, '`');
                if let Some(end) = find_run(&chars, i + ticks, '`', ticks) {
                    let code: String = chars[i + ticks..end].iter().collect();
                    out.push('`');
                    out.push_str(&escape(code.trim()));
                    out.push('`');
                    i = end + ticks;
                } else {
                    out.extend(std::iter::repeat_n('`', ticks));
                    i += ticks;
                }
            }
            '!' if chars.get(i + 1) == Some(&'[') => {
                if let Some((label, url, next)) = link_at(&chars, i + 1) {
                    out.push_str(&slack_link(&url, &label));
                    i = next;
                } else {
                    out.push('!');
                    i += 1;
                }
            }
            '[' => {
                if let Some((label, url, next)) = link_at(&chars, i) {
                    out.push_str(&slack_link(&url, &label));
                    i = next;
                } else {
                    out.push('[');
                    i += 1;
                }
            }
            '<' => {
                // Markdown autolink <https://…> stays a Slack link.
                let end = chars[i + 1..].iter().position(|c| *c == '>');
                let inner: Option<String> = end.map(|e| chars[i + 1..i + 1 + e].iter().collect());
                match inner {
                    Some(url) if is_url(&url) => {
                        out.push('<');
                        out.push_str(&url);
                        out.push('>');
                        i += url.chars().count() + 2;
                    }
                    _ => {
                        out.push_str("&lt;");
                        i += 1;
                    }
                }
            }
            '*' | '_'
                if run_len(&chars, i, c) == 3
                    && (c == '*' || prev.is_none_or(|p| !p.is_alphanumeric()))
                    && find_closing(&chars, i + 3, &[c, c, c]).is_some() =>
            {
                let end = find_closing(&chars, i + 3, &[c, c, c]).unwrap_or(i + 3);
                let inner: String = chars[i + 3..end].iter().collect();
                out.push_str("*_");
                out.push_str(&inline(&inner));
                out.push_str("_*");
                i = end + 3;
            }
            '*' | '_' if chars.get(i + 1) == Some(&c) => {
                let boundary = c == '*' || prev.is_none_or(|p| !p.is_alphanumeric());
                match find_closing(&chars, i + 2, &[c, c]).filter(|_| boundary) {
                    Some(end) => {
                        let inner: String = chars[i + 2..end].iter().collect();
                        out.push('*');
                        out.push_str(&inline(&inner));
                        out.push('*');
                        i = end + 2;
                    }
                    None => {
                        out.push(c);
                        out.push(c);
                        i += 2;
                    }
                }
            }
            '*' | '_' => {
                let boundary = c == '*' || prev.is_none_or(|p| !p.is_alphanumeric());
                let opens = chars.get(i + 1).is_some_and(|n| !n.is_whitespace());
                match find_closing(&chars, i + 1, &[c])
                    .filter(|_| boundary && opens)
                    .filter(|end| {
                        c == '*' || chars.get(end + 1).is_none_or(|n| !n.is_alphanumeric())
                    }) {
                    Some(end) => {
                        let inner: String = chars[i + 1..end].iter().collect();
                        out.push('_');
                        out.push_str(&inline(&inner));
                        out.push('_');
                        i = end + 1;
                    }
                    None => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            '~' if chars.get(i + 1) == Some(&'~') => match find_closing(&chars, i + 2, &['~', '~'])
            {
                Some(end) => {
                    let inner: String = chars[i + 2..end].iter().collect();
                    out.push('~');
                    out.push_str(&inline(&inner));
                    out.push('~');
                    i = end + 2;
                }
                None => {
                    out.push_str("~~");
                    i += 2;
                }
            },
            '&' => {
                out.push_str("&amp;");
                i += 1;
            }
            '>' => {
                out.push_str("&gt;");
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn run_len(chars: &[char], from: usize, c: char) -> usize {
    chars[from..].iter().take_while(|x| **x == c).count()
}

/// Start of the next run of exactly `len` `c`s at or after `from`.
fn find_run(chars: &[char], from: usize, c: char, len: usize) -> Option<usize> {
    let mut i = from;
    while i < chars.len() {
        if chars[i] == c {
            let n = run_len(chars, i, c);
            if n == len {
                return Some(i);
            }
            i += n;
        } else {
            i += 1;
        }
    }
    None
}

/// Index of the closing delimiter `delim` (not preceded by whitespace) at or after `from`,
/// with something between.
fn find_closing(chars: &[char], from: usize, delim: &[char]) -> Option<usize> {
    let n = delim.len();
    let mut i = from + 1;
    while i + n <= chars.len() {
        if chars[i] == '`' {
            // Emphasis never closes inside a code span.
            let ticks = run_len(chars, i, '`');
            match find_run(chars, i + ticks, '`', ticks) {
                Some(end) => {
                    i = end + ticks;
                    continue;
                }
                None => return None,
            }
        }
        if chars[i..i + n] == *delim && !chars[i - 1].is_whitespace() {
            // `**` inside `*…*` belongs to a nested bold, not the closer.
            if n == 1 && chars.get(i + 1) == Some(&delim[0]) {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Parses `[label](url)` starting at the `[` at `open`; returns label, url and the index after `)`.
fn link_at(chars: &[char], open: usize) -> Option<(String, String, usize)> {
    let mut depth = 0usize;
    let mut close = None;
    for (j, c) in chars.iter().enumerate().skip(open) {
        match c {
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(j);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let mut depth = 0usize;
    for (j, c) in chars.iter().enumerate().skip(close + 1) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    let label: String = chars[open + 1..close].iter().collect();
                    let target: String = chars[close + 2..j].iter().collect();
                    // `(url "title")` carries an optional title after the URL.
                    let url = target.split_whitespace().next()?.to_owned();
                    return Some((label, url, j + 1));
                }
            }
            c if c.is_whitespace() && depth == 0 => return None,
            _ => {}
        }
    }
    None
}

fn is_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://") || s.starts_with("mailto:"))
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>' || c == '|')
}

fn slack_link(url: &str, label: &str) -> String {
    let url = url.trim_start_matches('<').trim_end_matches('>');
    if !is_url(url) {
        // Not something Slack can link (relative path, anchor): keep the words.
        return escape(label);
    }
    let url = url.replace('&', "&amp;");
    let label = label.replace("**", "").replace('`', "");
    let label = escape(label.trim()).replace('|', "¦");
    if label.is_empty() || label == url {
        format!("<{url}>")
    } else {
        format!("<{url}|{label}>")
    }
}

/// Splits `text` into messages of at most `max_chars` characters, preferring
/// paragraph breaks, then line breaks, then spaces. A code block cut in two is
/// closed at the end of one message and reopened at the start of the next.
pub fn split(text: &str, max_chars: usize) -> Vec<String> {
    let text = text.trim();
    if text.is_empty() {
        return Vec::new();
    }
    if text.chars().count() <= max_chars {
        return vec![text.to_owned()];
    }
    // Room for a fence closed at the end and reopened at the start.
    let budget = max_chars.saturating_sub(2 * (FENCE.len() + 1)).max(16);
    let mut pieces = Vec::new();
    cut(text, budget, &["\n\n", "\n", " "], &mut pieces);

    let mut chunks: Vec<String> = Vec::new();
    let mut current = String::new();
    for piece in pieces {
        if !current.is_empty() && chars(&current) + chars(&piece) > budget {
            chunks.push(std::mem::take(&mut current));
        }
        current.push_str(&piece);
    }
    if !current.trim().is_empty() {
        chunks.push(current);
    }

    let mut out = Vec::with_capacity(chunks.len());
    let mut open = false;
    for chunk in chunks {
        let mut chunk = chunk.trim().to_owned();
        if chunk.is_empty() {
            continue;
        }
        if open {
            chunk = format!("{FENCE}\n{chunk}");
        }
        open = chunk.matches(FENCE).count() % 2 == 1;
        if open {
            chunk.push('\n');
            chunk.push_str(FENCE);
        }
        out.push(chunk);
    }
    out
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Cuts `text` into pieces of at most `budget` characters, each ending with its separator,
/// trying the separators in order and cutting hard as a last resort.
fn cut(text: &str, budget: usize, seps: &[&str], out: &mut Vec<String>) {
    if chars(text) <= budget {
        out.push(text.to_owned());
        return;
    }
    let Some((sep, rest)) = seps.split_first() else {
        let all: Vec<char> = text.chars().collect();
        for part in all.chunks(budget) {
            out.push(part.iter().collect());
        }
        return;
    };
    let mut parts = text.split_inclusive(sep).peekable();
    if parts.clone().count() == 1 {
        cut(text, budget, rest, out);
        return;
    }
    while let Some(part) = parts.next() {
        let _ = parts.peek();
        if chars(part) <= budget {
            out.push(part.to_owned());
        } else {
            cut(part, budget, rest, out);
        }
    }
}

/// Turns Slack message text into the plain text the agent reads: user, channel and
/// special mentions become `@name`/`#name`, links `label (url)`, entities are
/// unescaped, and the mention of the bot itself is removed.
pub fn from_slack(text: &str, bot_user_id: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('>') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        rest = &after[end + 1..];
        let (target, label) = match inner.split_once('|') {
            Some((t, l)) => (t, Some(l)),
            None => (inner, None),
        };
        if let Some(user) = target.strip_prefix('@') {
            if bot_user_id.is_some_and(|b| b == user) {
                rest = rest.strip_prefix(' ').unwrap_or(rest);
                continue;
            }
            out.push('@');
            out.push_str(label.unwrap_or(user).trim_start_matches('@'));
        } else if let Some(channel) = target.strip_prefix('#') {
            out.push('#');
            out.push_str(label.unwrap_or(channel));
        } else if let Some(special) = target.strip_prefix('!') {
            match label {
                Some(l) => out.push_str(l),
                None => {
                    out.push('@');
                    out.push_str(special);
                }
            }
        } else {
            let url = target.strip_prefix("mailto:").unwrap_or(target);
            match label {
                Some(l) if l != url && l != target => {
                    out.push_str(l);
                    out.push_str(" (");
                    out.push_str(target);
                    out.push(')');
                }
                _ => out.push_str(url),
            }
        }
    }
    out.push_str(rest);
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bold_italic_strike_and_links_become_mrkdwn() {
        assert_eq!(to_mrkdwn("**bold** and __also__"), "*bold* and *also*");
        assert_eq!(to_mrkdwn("*italic* and _this_"), "_italic_ and _this_");
        assert_eq!(to_mrkdwn("~~gone~~"), "~gone~");
        assert_eq!(
            to_mrkdwn("see [the docs](https://example.com/a?b=1&c=2)"),
            "see <https://example.com/a?b=1&amp;c=2|the docs>"
        );
        assert_eq!(
            to_mrkdwn("![chart](https://x.io/c.png)"),
            "<https://x.io/c.png|chart>"
        );
        assert_eq!(to_mrkdwn("<https://x.io>"), "<https://x.io>");
        assert_eq!(to_mrkdwn("**[x](https://x.io)**"), "*<https://x.io|x>*");
        assert_eq!(to_mrkdwn("***both***"), "*_both_*");
    }

    #[test]
    fn snake_case_arithmetic_and_relative_links_are_left_alone() {
        assert_eq!(to_mrkdwn("call read_file_now"), "call read_file_now");
        assert_eq!(to_mrkdwn("2 * 3 * 4 = 24"), "2 * 3 * 4 = 24");
        assert_eq!(to_mrkdwn("[notes](notes.txt)"), "notes");
        assert_eq!(to_mrkdwn("[not a link] (x)"), "[not a link] (x)");
    }

    #[test]
    fn headings_become_bold_lines_and_lists_get_bullets() {
        let md = "# Title\n\n## Sub **part**\n- one\n* two\n  - nested\n1. first\n---";
        assert_eq!(
            to_mrkdwn(md),
            "*Title*\n\n*Sub part*\n• one\n• two\n  • nested\n1. first\n──────────"
        );
    }

    #[test]
    fn code_is_kept_verbatim_and_only_escaped() {
        let md = "Run `a **b** <c>` then:\n```rust\nlet x = **y** && z < 2;\n```\nafter **bold**";
        assert_eq!(
            to_mrkdwn(md),
            "Run `a **b** &lt;c&gt;` then:\n```\nlet x = **y** &amp;&amp; z &lt; 2;\n```\nafter *bold*"
        );
        // An unclosed fence is closed so the rest of the message is not swallowed.
        assert_eq!(to_mrkdwn("```\ncode"), "```\ncode\n```");
        // Emphasis does not close inside a code span.
        assert_eq!(to_mrkdwn("**not `closed** here`"), "**not `closed** here`");
    }

    #[test]
    fn special_characters_are_escaped_but_quotes_stay_quotes() {
        assert_eq!(to_mrkdwn("a < b & c > d"), "a &lt; b &amp; c &gt; d");
        assert_eq!(to_mrkdwn("> quoted **text**"), "> quoted *text*");
    }

    #[test]
    fn tables_become_code_blocks() {
        let md = "| a | b |\n|---|:-:|\n| 1 | 2 |\nafter";
        assert_eq!(to_mrkdwn(md), "```\n| a | b |\n| 1 | 2 |\n```\nafter");
    }

    #[test]
    fn short_text_is_one_message_and_empty_text_none() {
        assert_eq!(split("hello", 100), vec!["hello"]);
        assert!(split("  \n ", 100).is_empty());
    }

    #[test]
    fn long_text_splits_on_paragraphs_within_the_limit() {
        let para = |c: char| std::iter::repeat_n(c, 60).collect::<String>();
        let text = format!(
            "{}\n\n{}\n\n{}\n\n{}",
            para('a'),
            para('b'),
            para('c'),
            para('d')
        );
        let parts = split(&text, 140);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts[0], format!("{}\n\n{}", para('a'), para('b')));
        assert_eq!(parts[1], format!("{}\n\n{}", para('c'), para('d')));
        assert_eq!(parts.join("\n\n"), text);
    }

    #[test]
    fn a_paragraph_longer_than_the_limit_splits_on_lines_then_words_then_hard() {
        let words = "word ".repeat(100);
        let parts = split(&words, 50);
        assert!(parts.iter().all(|p| p.chars().count() <= 50), "{parts:?}");
        assert_eq!(parts.join(" ").split_whitespace().count(), 100);

        let blob = "x".repeat(130);
        let parts = split(&blob, 50);
        assert!(parts.iter().all(|p| p.chars().count() <= 50));
        assert_eq!(parts.concat(), blob);

        let multibyte = "é".repeat(120);
        let parts = split(&multibyte, 50);
        assert!(parts.iter().all(|p| p.chars().count() <= 50));
        assert_eq!(parts.concat(), multibyte);
    }

    #[test]
    fn a_code_block_cut_in_two_is_closed_and_reopened() {
        let code: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let text = format!("intro\n\n```\n{code}```\n\nouter");
        let parts = split(&text, 120);
        assert!(parts.len() > 2, "{parts:?}");
        for p in &parts {
            assert!(p.chars().count() <= 120, "{p}");
            assert_eq!(p.matches("```").count() % 2, 0, "unbalanced fence in {p:?}");
        }
        assert!(parts[1].starts_with("```\n"));
        let all = parts.join("\n");
        for i in 0..40 {
            assert!(all.contains(&format!("line {i}\n")) || all.contains(&format!("line {i}")));
        }
    }

    #[test]
    fn slack_text_becomes_plain_text_without_the_bots_mention() {
        assert_eq!(
            from_slack(
                "<@UBOT> what about <@U42|ann> in <#C1|general>?",
                Some("UBOT")
            ),
            "what about @ann in #general?"
        );
        assert_eq!(
            from_slack(
                "see <https://x.io|the site> and <https://y.io> &amp; &lt;3 <!here>",
                None
            ),
            "see the site (https://x.io) and https://y.io & <3 @here"
        );
        assert_eq!(from_slack("<mailto:a@b.c|a@b.c>", None), "a@b.c");
        assert_eq!(from_slack("<@U42> hi", Some("UBOT")), "@U42 hi");
        assert_eq!(from_slack("a < b", None), "a < b");
    }
}
