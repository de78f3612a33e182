//! Property tests of Markdown memory files as people and models leave them
//! (MEMORY.md, USER_<id>.md, journals with `<!-- nexus:journal … -->` markers):
//! chunking for the index, markers, bullet insertion, excerpts and shortened heads
//! never panic, and keep their promises (line ranges inside the file, readers only
//! file-safe ids, an insertion changes no other line). `PROPTEST_CASES` sets the count.

use nexus_testkit::fuzz::config;
use proptest::prelude::*;

use super::*;
use crate::{
    files::{is_file_safe, profile_from_template, shorten},
    index::{excerpts, terms},
    store::ChunkHit,
};

/// One line of a memory file: headings, items, fences, markers, and anything else.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ ]{0,4}#{1,7}[ \t]?[a-zA-Z #é]{0,12}",
        3 => "[ ]{0,3}([-*+]|[0-9]{1,10}[.)])[ \t]?[a-z ]{0,12}",
        2 => "[ ]{0,4}(```|~~~|````)[a-z]{0,4}",
        2 => " ?<!-- nexus:journal( id=-?[0-9]{1,3})?( users=[a-zA-Z0-9_ .=é-]{0,20})? ?-->",
        3 => "[ a-zA-Z0-9\t\r]{0,30}",
        // Around the chunk size limit.
        1 => (1990usize..2010).prop_map(|n| "ab ".repeat(n / 3)),
        1 => any::<String>(),
    ]
}

/// A Markdown file made of such lines, with `\n` or `\r\n` endings.
pub(crate) fn markdown() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (prop::collection::vec(line(), 0..24), any::<bool>(), any::<bool>()).prop_map(
            |(lines, crlf, end)| {
                let eol = if crlf { "\r\n" } else { "\n" };
                let mut text = lines.join(eol);
                if end {
                    text.push_str(eol);
                }
                text
            }
        ),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_chunks_stay_inside_the_file(text in markdown()) {
        let lines = text.lines().count();
        let mut last_end = 0;
        for chunk in chunks(&text) {
            prop_assert!(chunk.line_start >= 1 && chunk.line_start <= chunk.line_end);
            prop_assert!(chunk.line_end as usize <= lines);
            prop_assert!(chunk.line_start > last_end, "chunks overlap");
            last_end = chunk.line_end;
            prop_assert!(!chunk.text.trim().is_empty());
            if let Some(readers) = &chunk.readers {
                prop_assert!(readers.iter().all(|u| is_file_safe(u)));
            }
        }
    }

    #[test]
    fn fuzz_journal_markers_name_only_file_safe_users(line in prop_oneof![
        line(),
        "<!-- nexus:journal [ -~]{0,40}-->",
    ]) {
        if let Some(users) = journal_marker_users(&line) {
            prop_assert!(line.trim().starts_with(JOURNAL_MARKER.trim_end()));
            prop_assert!(users.iter().all(|u| is_file_safe(u)));
        }
    }

    #[test]
    fn fuzz_a_bullet_is_added_without_changing_other_lines(
        text in markdown(),
        section in prop_oneof![Just("Facts".to_owned()), "[a-zA-Z #é]{0,12}", any::<String>()],
        fact in prop_oneof!["[a-z ]{1,20}", any::<String>()],
    ) {
        // As the `remember` tool passes them: one line each.
        let (section, fact) = (one_line(&section), one_line(&fact));
        let bullet = format!("- {fact}");
        match add_bullet(&text, &section, &fact) {
            Added::AlreadyThere => {
                prop_assert!(text.lines().any(|l| l.trim_end() == bullet));
            }
            Added::Changed(out) => {
                prop_assert!(out.starts_with(text.lines().next().unwrap_or_default()));
                prop_assert!(out.lines().any(|l| l == bullet), "{out:?}");
                // Every line of the file is still there, in order.
                let mut new_lines = out.lines();
                for old in text.lines() {
                    let old = old.trim_end_matches('\r');
                    prop_assert!(
                        new_lines.any(|l| l.trim_end_matches('\r') == old),
                        "line {old:?} lost in {out:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn fuzz_excerpts_fit_their_budget(
        text in markdown(),
        budget in 0usize..4000,
        total in any::<u64>(),
    ) {
        let hits: Vec<ChunkHit> = chunks(&text)
            .into_iter()
            .map(|c| ChunkHit {
                path: "MEMORY.md".into(),
                heading: c.heading,
                line_start: c.line_start,
                line_end: c.line_end,
                text: c.text,
                score: 1.0,
            })
            .collect();
        if let Some(out) = excerpts(total, &hits, budget) {
            prop_assert!(out.len() <= budget, "{} > {budget}", out.len());
        }
        for term in terms(&text) {
            prop_assert!(term.chars().count() >= 2);
        }
    }

    #[test]
    fn fuzz_file_heads_are_shortened_at_a_boundary(
        head in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..600),
            markdown().prop_map(String::into_bytes),
        ],
        more in any::<u32>(),
    ) {
        let total = head.len() as u64 + u64::from(more);
        let out = shorten("MEMORY.md", &head, total);
        prop_assert!(out.contains("[MEMORY.md was shortened here: "));
    }

    #[test]
    fn fuzz_profiles_are_made_from_any_template(
        template in markdown(),
        user in "[a-zA-Z0-9_-]{1,128}",
    ) {
        let profile = profile_from_template(&user, &template);
        let title = format!("# USER_{user}.md");
        prop_assert!(profile.starts_with(&title));
    }
}
