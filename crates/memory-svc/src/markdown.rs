//! Markdown as memory-svc reads and edits it: chunks for the search index
//! (one per paragraph or top-level list item, each with its heading path and
//! line range) and the insertion of a bullet under a heading.
//!
//! Pure text in, text out: it must never touch the disk, and an edit must
//! never change a line it does not insert.

/// A chunk longer than this is split at a line boundary, so one huge
/// paragraph cannot crowd everything else out of an excerpt budget.
const MAX_CHUNK_BYTES: usize = 2000;
/// Separator of the heading path, as stored and shown.
pub const HEADING_SEPARATOR: &str = " > ";

/// One searchable piece of a Markdown file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The headings above it, outermost first, joined by [`HEADING_SEPARATOR`]; empty before the first heading.
    pub heading: String,
    /// First and last line, 1-based and inclusive.
    pub line_start: u32,
    pub line_end: u32,
    /// The lines as written, trailing whitespace removed.
    pub text: String,
    /// Who may read it, from a [`JOURNAL_MARKER`] right under its section's
    /// heading: the user ids it lists (possibly none). `None` without a marker.
    pub readers: Option<Vec<String>>,
}

/// Opens the comment that files a journal section: `<!-- nexus:journal id=12
/// users=telegram_42 slack_U1 -->`, as the first line under its heading.
pub const JOURNAL_MARKER: &str = "<!-- nexus:journal ";

/// What kind of line this is, outside fenced code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line<'a> {
    Blank,
    Heading {
        level: usize,
        text: &'a str,
    },
    /// Starts a list item at the top level (indented by less than two spaces).
    Item,
    Other,
}

fn classify(line: &str) -> Line<'_> {
    let trimmed = line.trim_end();
    if trimmed.trim_start().is_empty() {
        return Line::Blank;
    }
    let indent = trimmed.len() - trimmed.trim_start_matches(' ').len();
    let body = &trimmed[indent..];
    if indent <= 3 {
        let hashes = body.len() - body.trim_start_matches('#').len();
        let rest = &body[hashes..];
        if (1..=6).contains(&hashes) && (rest.is_empty() || rest.starts_with([' ', '\t'])) {
            return Line::Heading {
                level: hashes,
                text: heading_text(rest),
            };
        }
    }
    if indent < 2 && is_item_marker(body) {
        return Line::Item;
    }
    Line::Other
}

/// The text of an ATX heading: trimmed, without a closing run of `#`.
fn heading_text(rest: &str) -> &str {
    let text = rest.trim();
    let without = text.trim_end_matches('#');
    if without.is_empty() {
        ""
    } else if without.ends_with([' ', '\t']) {
        without.trim_end()
    } else {
        text
    }
}

/// `- `, `* `, `+ `, `1. ` or `1) ` (or the marker alone on its line).
fn is_item_marker(body: &str) -> bool {
    let after = if let Some(rest) = body.strip_prefix(['-', '*', '+']) {
        rest
    } else {
        let digits = body.len() - body.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 || digits > 9 {
            return false;
        }
        match body[digits..].strip_prefix(['.', ')']) {
            Some(rest) => rest,
            None => return false,
        }
    };
    after.is_empty() || after.starts_with([' ', '\t'])
}

/// The opening of a code fence: its character and length.
fn fence_open(line: &str) -> Option<(char, usize)> {
    let body = line.trim_start_matches(' ');
    if line.len() - body.len() > 3 {
        return None;
    }
    let c = body.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = body.len() - body.trim_start_matches(c).len();
    (n >= 3).then_some((c, n))
}

fn closes_fence(line: &str, (c, n): (char, usize)) -> bool {
    let body = line.trim();
    let run = body.len() - body.trim_start_matches(c).len();
    run >= n && run == body.len()
}

/// Tracks fenced code, so `#` lines inside it are not headings.
#[derive(Default)]
struct Fences {
    open: Option<(char, usize)>,
}

impl Fences {
    /// Whether `line` is code (a fence line or inside one); updates the state.
    fn code(&mut self, line: &str) -> bool {
        match self.open {
            Some(fence) => {
                if closes_fence(line, fence) {
                    self.open = None;
                }
                true
            }
            None => {
                self.open = fence_open(line);
                self.open.is_some()
            }
        }
    }
}

/// Splits Markdown into chunks: each paragraph, fenced block or top-level
/// list item (with its continuation lines) under its heading path.
pub fn chunks(text: &str) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut headings: Vec<(usize, String)> = Vec::new();
    // Readers set by a marker, with the heading level they hold under.
    let mut readers: Vec<(usize, Vec<String>)> = Vec::new();
    // Whether only blank lines came since the last heading (where a marker counts).
    let mut after_heading = false;
    let mut fences = Fences::default();
    let mut current: Option<Chunk> = None;
    let flush = |current: &mut Option<Chunk>, out: &mut Vec<Chunk>| {
        if let Some(mut chunk) = current.take() {
            chunk.text.truncate(chunk.text.trim_end().len());
            out.push(chunk);
        }
    };
    for (i, line) in text.lines().enumerate() {
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let in_code = fences.open.is_some();
        let code = fences.code(line);
        let kind = if code { Line::Other } else { classify(line) };
        if !code && let Some(users) = journal_marker_users(line) {
            flush(&mut current, &mut out);
            // Only right under a heading: a marker inside a summary files nothing.
            if after_heading && let Some((level, _)) = headings.last() {
                readers.push((*level, users));
            }
            continue;
        }
        match kind {
            Line::Blank => flush(&mut current, &mut out),
            Line::Heading { level, text } => {
                flush(&mut current, &mut out);
                headings.retain(|(l, _)| *l < level);
                headings.push((level, text.to_owned()));
                readers.retain(|(l, _)| *l < level);
                after_heading = true;
            }
            kind => {
                after_heading = false;
                let starts_block = kind == Line::Item || (code && !in_code);
                let too_long = current
                    .as_ref()
                    .is_some_and(|c| c.text.len() + line.len() > MAX_CHUNK_BYTES);
                if (starts_block || too_long) && !in_code {
                    flush(&mut current, &mut out);
                }
                let chunk = current.get_or_insert_with(|| Chunk {
                    heading: heading_path(&headings),
                    line_start: number,
                    line_end: number,
                    text: String::new(),
                    readers: readers.last().map(|(_, users)| users.clone()),
                });
                if !chunk.text.is_empty() {
                    chunk.text.push('\n');
                }
                chunk.text.push_str(line.trim_end());
                chunk.line_end = number;
                if in_code && fences.open.is_none() {
                    // The closing fence ends the block.
                    flush(&mut current, &mut out);
                }
            }
        }
    }
    flush(&mut current, &mut out);
    out
}

/// The user ids of a [`JOURNAL_MARKER`] line; `None` for any other line.
/// Ids that are not `[A-Za-z0-9_-]` are dropped, never widened to everyone.
pub fn journal_marker_users(line: &str) -> Option<Vec<String>> {
    let body = line
        .trim()
        .strip_prefix(JOURNAL_MARKER.trim_end())?
        .strip_suffix("-->")?;
    let mut users = Vec::new();
    let mut in_users = false;
    for word in body.split_whitespace() {
        if let Some(first) = word.strip_prefix("users=") {
            in_users = true;
            users.push(first.to_owned());
        } else if word.contains('=') {
            in_users = false;
        } else if in_users {
            users.push(word.to_owned());
        }
    }
    users.retain(|u| crate::files::is_file_safe(u));
    Some(users)
}

fn heading_path(headings: &[(usize, String)]) -> String {
    headings
        .iter()
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join(HEADING_SEPARATOR)
}

/// The result of [`add_bullet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// The new text of the file.
    Changed(String),
    /// The section already holds this exact bullet; the file stays as it is.
    AlreadyThere,
}

/// Appends `- <fact>` to the section under the first heading named `section`
/// (any level, case-insensitive), after the last non-blank line before the
/// next heading; a missing
/// heading is added at the end as `## <section>`. `fact` and `section` must
/// be single lines. Line endings follow the file's (`\r\n` if it uses them).
pub fn add_bullet(text: &str, section: &str, fact: &str) -> Added {
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let bullet = format!("- {fact}");
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut fences = Fences::default();
    let wanted = section.to_lowercase();
    let mut found = None;
    let mut end = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if fences.code(line) {
            continue;
        }
        if let Line::Heading { text, .. } = classify(line) {
            if found.is_some() {
                // The section's own lines end at the next heading, a subsection's included:
                // a bullet appended there would belong to the subsection.
                end = i;
                break;
            }
            if text.to_lowercase() == wanted {
                found = Some(i);
            }
        }
    }

    let Some(heading) = found else {
        let mut out = text.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(eol);
        }
        if !out.trim().is_empty() && !out.ends_with(&format!("{eol}{eol}")) {
            out.push_str(eol);
        }
        out.push_str(&format!("## {section}{eol}{eol}{bullet}{eol}"));
        return Added::Changed(out);
    };

    let body = &lines[heading + 1..end];
    if body.iter().any(|l| l.trim_end() == bullet) {
        return Added::AlreadyThere;
    }
    let last = body.iter().rposition(|l| !l.trim().is_empty());
    let mut out = String::with_capacity(text.len() + bullet.len() + 4);
    let insert_after = match last {
        Some(k) => heading + 1 + k,
        None => heading,
    };
    for line in &lines[..=insert_after] {
        out.push_str(line);
    }
    if !out.ends_with('\n') {
        out.push_str(eol);
    }
    let previous = lines[insert_after];
    let after_list =
        last.is_some() && (classify(previous) == Line::Item || previous.starts_with(' '));
    if !after_list {
        // A heading or a paragraph: a blank line keeps the bullet a list of its own.
        out.push_str(eol);
    }
    out.push_str(&bullet);
    out.push_str(eol);
    let rest = &lines[insert_after + 1..];
    if rest.first().is_some_and(|l| !l.trim().is_empty()) {
        out.push_str(eol);
    }
    for line in rest {
        out.push_str(line);
    }
    Added::Changed(out)
}

/// A fact as one line: whitespace runs (newlines included) become one space.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
pub(crate) mod fuzz;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn changed(added: Added) -> String {
        match added {
            Added::Changed(text) => text,
            Added::AlreadyThere => panic!("expected a change"),
        }
    }

    #[test]
    fn chunks_follow_paragraphs_and_list_items_and_keep_their_headings_and_lines() {
        let text = "intro line\n\n# Memory\n\nFirst paragraph\nstill first.\n\n## Facts\n- one\n- two\n  continued\n\n### Pets\n1. Rex\n";
        let got = chunks(text);
        let view: Vec<(&str, u32, u32, &str)> = got
            .iter()
            .map(|c| {
                (
                    c.heading.as_str(),
                    c.line_start,
                    c.line_end,
                    c.text.as_str(),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("", 1, 1, "intro line"),
                ("Memory", 5, 6, "First paragraph\nstill first."),
                ("Memory > Facts", 9, 9, "- one"),
                ("Memory > Facts", 10, 11, "- two\n  continued"),
                ("Memory > Facts > Pets", 14, 14, "1. Rex"),
            ]
        );
    }

    #[test]
    fn a_journal_marker_under_a_heading_names_the_readers_of_its_section_only() {
        let text = "# Journal\n\nshared intro\n\n## 09:00 telegram\n<!-- nexus:journal id=1 users=alice bob -->\n\n- talked\n\n\
                    ## 10:00 slack\n<!-- nexus:journal id=2 users=carol -->\n- planned\n<!-- nexus:journal id=9 users=mallory -->\n- more\n\n\
                    ## Notes\nfree text\n";
        let got = chunks(text);
        let view: Vec<(&str, Option<Vec<String>>)> = got
            .iter()
            .map(|c| (c.text.as_str(), c.readers.clone()))
            .collect();
        let users = |u: &[&str]| Some(u.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            view,
            [
                ("shared intro", None),
                ("- talked", users(&["alice", "bob"])),
                ("- planned", users(&["carol"])),
                // A marker further down (say, inside a summary) changes nothing.
                ("- more", users(&["carol"])),
                ("free text", None),
            ]
        );
        assert!(got.iter().all(|c| !c.text.contains("nexus:journal")));
        assert_eq!(
            journal_marker_users("<!-- nexus:journal id=3 users=ok ../x -->"),
            Some(vec!["ok".to_owned()])
        );
        assert_eq!(journal_marker_users("<!-- note -->"), None);
    }

    #[test]
    fn a_heading_closes_deeper_headings_and_fences_hide_hashes() {
        let text = "# A\n## B\nb\n# C\n```\n# not a heading\n\nstill code\n```\nafter\n";
        let got = chunks(text);
        assert_eq!(got[0].heading, "A > B");
        assert_eq!(got[1].heading, "C");
        assert_eq!(got[1].text, "```\n# not a heading\n\nstill code\n```");
        assert_eq!((got[1].line_start, got[1].line_end), (5, 9));
        assert_eq!(got[2].text, "after");
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_huge_paragraph_is_split_at_lines() {
        let line = "word ".repeat(100);
        let text = format!("# H\n{}", format!("{line}\n").repeat(20));
        let got = chunks(&text);
        assert!(got.len() > 1);
        assert!(got.iter().all(|c| c.text.len() <= MAX_CHUNK_BYTES));
        assert_eq!(got[0].line_start, 2);
        assert_eq!(got.last().unwrap().line_end, 21);
    }

    #[test]
    fn closing_hashes_and_non_headings_are_told_apart() {
        assert_eq!(
            classify("## Facts ##"),
            Line::Heading {
                level: 2,
                text: "Facts"
            }
        );
        assert_eq!(classify("#hashtag"), Line::Other);
        assert_eq!(classify("    # code"), Line::Other);
        assert_eq!(classify("-not an item"), Line::Other);
        assert_eq!(classify("12. item"), Line::Item);
        assert_eq!(classify("  - nested"), Line::Other);
    }

    #[test]
    fn a_bullet_goes_after_the_last_line_of_its_section() {
        let text = "# Memory\n\n## Facts\n- one\n- two\n\n## Other\n- x\n";
        assert_eq!(
            changed(add_bullet(text, "facts", "three")),
            "# Memory\n\n## Facts\n- one\n- two\n- three\n\n## Other\n- x\n"
        );
    }

    #[test]
    fn an_empty_section_at_the_end_gets_its_first_bullet_after_a_blank_line() {
        let template = "# MEMORY.md\n\nFacts worth keeping.\n\n## Facts\n";
        assert_eq!(
            changed(add_bullet(template, "Facts", "a")),
            "# MEMORY.md\n\nFacts worth keeping.\n\n## Facts\n\n- a\n"
        );
        assert_eq!(
            changed(add_bullet("## Facts", "Facts", "a")),
            "## Facts\n\n- a\n"
        );
    }

    #[test]
    fn a_missing_section_is_added_at_the_end() {
        assert_eq!(
            changed(add_bullet("# Memory\n- x", "Pets", "Rex")),
            "# Memory\n- x\n\n## Pets\n\n- Rex\n"
        );
        assert_eq!(changed(add_bullet("", "Pets", "Rex")), "## Pets\n\n- Rex\n");
    }

    #[test]
    fn a_bullet_stays_above_the_subsections_of_its_section() {
        let text = "## Facts\n- a\n### Detail\ntext\n## Next\n";
        assert_eq!(
            changed(add_bullet(text, "Facts", "b")),
            "## Facts\n- a\n- b\n\n### Detail\ntext\n## Next\n"
        );
        assert_eq!(
            changed(add_bullet("# T\n## Facts\n### Detail\n- x\n", "facts", "b")),
            "# T\n## Facts\n\n- b\n\n### Detail\n- x\n"
        );
    }

    #[test]
    fn the_same_bullet_is_not_added_twice_and_crlf_files_stay_crlf() {
        let text = "## Facts\r\n- a\r\n";
        assert_eq!(add_bullet(text, "Facts", "a"), Added::AlreadyThere);
        assert_eq!(
            changed(add_bullet(text, "Facts", "b")),
            "## Facts\r\n- a\r\n- b\r\n"
        );
    }

    #[test]
    fn a_heading_inside_code_is_not_a_section() {
        let text = "```\n## Facts\n```\n";
        assert_eq!(
            changed(add_bullet(text, "Facts", "a")),
            "```\n## Facts\n```\n\n## Facts\n\n- a\n"
        );
    }

    #[test]
    fn facts_become_one_line() {
        assert_eq!(one_line("  a\n\n## b\tc  "), "a ## b c");
    }
}
