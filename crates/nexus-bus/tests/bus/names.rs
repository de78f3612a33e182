//! Only nexus-bus spells subject, stream, consumer and bucket names: a string
//! literal anywhere else in `crates/*/src` that holds one fails this test. The
//! names looked for come from `Subjects` itself, so a new name is covered at once.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use nexus_bus::Subjects;
use nexus_common::domain::{ChannelName, Namespace, ToolName};

/// Literals that may spell a name, by file and the literal's text. Each says why.
const ALLOWED: &[(&str, &str)] = &[
    // Metric names and descriptions: nexus-common sits below nexus-bus, and
    // `nexus.tool.calls` is an instrument, not the subject of a tool named `calls`.
    (
        "crates/nexus-common/src/telemetry/metrics.rs",
        "nexus.tool.calls",
    ),
    (
        "crates/nexus-common/src/telemetry/metrics.rs",
        "nexus.tool.failures",
    ),
    (
        "crates/nexus-common/src/telemetry/metrics.rs",
        "Messages set aside on N.deadletter",
    ),
];

/// Placeholders for the variable parts of names: where a name's fixed part ends.
const VARIABLE: &str = "zq9";
const PARTITION: u32 = 987_654;

/// The fixed part of a name, without the namespace: `.inbound`, `_INBOUND`, …
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Stem {
    text: String,
    /// A variable part follows with no separator (`_agent-core-p` + partition).
    open: bool,
}

/// The stems of every name `Subjects` builds.
fn stems() -> Vec<Stem> {
    let s = Subjects::new(Namespace::parse("nexus").unwrap());
    let ch = ChannelName::parse(VARIABLE).unwrap();
    let tool = ToolName::parse(VARIABLE).unwrap();
    let names = [
        s.inbound(&ch),
        s.inbound_all(),
        s.inbound_partition(&ch, PARTITION),
        s.inbound_partition_filter(PARTITION),
        s.inbound_unpartitioned(),
        s.outbound(&ch),
        s.outbound_all(),
        s.tool(&tool),
        s.tools_announce(),
        s.tools_discover(),
        s.files_stage(),
        s.memory_all(),
        s.scheduler(VARIABLE),
        s.gateway_command(&ch, VARIABLE),
        s.event(VARIABLE),
        s.events_all(),
        s.progress(&ch),
        s.tasks(),
        s.tasks_all(),
        s.deadletter(),
        s.inbound_stream(),
        s.outbound_stream(),
        s.events_stream(),
        s.tasks_stream(),
        s.deadletter_stream(),
        s.tasks_consumer(),
        s.tasks_bucket(),
        s.agent_consumer(PARTITION),
        s.usage_consumer(),
        s.router_consumer(),
        s.gateway_consumer(&ch),
        s.reply_feed_consumer(&ch, VARIABLE),
        s.delivered_bucket(&ch),
        s.denied_bucket(&ch),
        s.pairing_bucket(),
        s.paired_bucket(),
        s.limits_bucket(),
        s.user_limits_bucket(),
        s.settings_bucket(),
        s.approvals_bucket(),
        s.media_bucket(),
    ];
    let mut stems: Vec<Stem> = names
        .iter()
        .map(|name| {
            let rest = name.strip_prefix("nexus").unwrap();
            let fixed = rest
                .split(VARIABLE)
                .next()
                .unwrap()
                .split(&PARTITION.to_string())
                .next()
                .unwrap();
            let text = fixed.trim_end_matches(['.', '_', '-', '>', '*']);
            Stem {
                text: text.to_owned(),
                open: text.len() < rest.len() && text.len() == fixed.len(),
            }
        })
        .collect();
    stems.sort();
    stems.dedup();
    stems
}

/// Whether a literal spells a name: a stem after the default namespace, the `N`
/// the docs use, or a format placeholder (`{}.inbound`), or a JetStream prefix of
/// the streams behind KV buckets and object stores.
fn spells_a_name(literal: &str, stems: &[Stem]) -> bool {
    if ["KV_", "OBJ_", "$KV.", "$O."]
        .iter()
        .any(|p| literal.contains(p))
    {
        return true;
    }
    stems.iter().any(|stem| {
        ["nexus", "N", "}"].iter().any(|ns| {
            let needle = format!("{ns}{}", stem.text);
            literal.match_indices(&needle).any(|(at, _)| {
                let before = literal[..at].chars().next_back();
                let after = literal[at + needle.len()..].chars().next();
                let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
                // `}` may follow anything; a namespace must start a word.
                (*ns == "}" || !word(before)) && (stem.open || !word(after))
            })
        })
    })
}

/// The string literals of a Rust source with the line each starts on; comments
/// (doc comments too, which may name subjects) are skipped.
fn string_literals(src: &str) -> Vec<(usize, String)> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(b[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '\'' {
            // A char literal ('"', '\'', 'x') or a lifetime ('a).
            if next == Some('\\') {
                i += 3;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c == '"' {
            let (start_line, mut text) = (line, String::new());
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    text.push(b[i]);
                    i += 1;
                }
                if let Some(&ch) = b.get(i) {
                    line += usize::from(ch == '\n');
                    text.push(ch);
                }
                i += 1;
            }
            out.push((start_line, text));
            i += 1;
        } else if ident(c) {
            // Whole words, so that only a word `r`, `br` or `cr` opens a raw string.
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            if !matches!(word.as_str(), "r" | "br" | "cr") || !matches!(b.get(i), Some('"' | '#')) {
                continue;
            }
            let mut j = i;
            while b.get(j) == Some(&'#') {
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                i = j;
                continue;
            }
            let hashes = j - i;
            let (text_start, start_line) = (j + 1, line);
            let mut k = text_start;
            while k < b.len() && !(b[k] == '"' && (1..=hashes).all(|h| b.get(k + h) == Some(&'#')))
            {
                line += usize::from(b[k] == '\n');
                k += 1;
            }
            out.push((start_line, b[text_start..k.min(b.len())].iter().collect()));
            i = k + 1 + hashes;
        } else {
            i += 1;
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_crate_but_nexus_bus_spells_a_subject_stream_or_bucket_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stems = stems();
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let krate = krate.unwrap().path();
        if krate.file_name().is_some_and(|n| n != "nexus-bus") && krate.join("src").is_dir() {
            rust_files(&krate.join("src"), &mut files);
        }
    }
    assert!(
        files.len() > 50,
        "found only {} sources under {}",
        files.len(),
        root.display()
    );
    let mut found = Vec::new();
    let mut used = vec![false; ALLOWED.len()];
    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let src = std::fs::read_to_string(file).unwrap();
        for (line, literal) in string_literals(&src) {
            if !spells_a_name(&literal, &stems) {
                continue;
            }
            match ALLOWED
                .iter()
                .position(|(f, l)| *f == rel && literal.contains(l))
            {
                Some(at) => used[at] = true,
                None => found.push(format!("{rel}:{line}: {literal:?}")),
            }
        }
    }
    assert!(
        found.is_empty(),
        "names spelled outside nexus-bus (ask `Subjects` or the bus instead, or allow \
         them in tests/bus/names.rs with the reason):\n{}",
        found.join("\n")
    );
    let stale: Vec<_> = ALLOWED
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(a, _)| a)
        .collect();
    assert!(
        stale.is_empty(),
        "allowed literals no longer found (remove them): {stale:?}"
    );
}

#[test]
fn the_scan_sees_the_names_it_looks_for_and_only_those() {
    let stems = stems();
    for (stem, open) in [
        (".inbound", false),
        (".tools.announce", false),
        ("_INBOUND", false),
        ("_agent-core-p", true),
        ("_gateway", false),
        ("_delivered", false),
        ("_media", false),
    ] {
        let want = Stem {
            text: stem.into(),
            open,
        };
        assert!(stems.contains(&want), "{want:?} not in {stems:?}");
    }
    for name in [
        "nexus.inbound.telegram.7",
        "N.inbound",
        "{}.memory.{}",
        "{ns}.events.>",
        "nexus_OUTBOUND",
        "{}_delivered_{}",
        "N_agent-core-p3",
        "KV_nexus_pairing",
        "$KV.nexus_paired.>",
    ] {
        assert!(spells_a_name(name, &stems), "{name}");
    }
    for other in [
        "nexus.v1.InboundMessage",
        "nexus.toml",
        "nexus.task_id",
        "nexus_bot",
        "inbound",
        "{day}.md",
        "mynexus.inbound",
    ] {
        assert!(!spells_a_name(other, &stems), "{other}");
    }
    let src = r####"
        // "nexus.inbound" in a comment
        /* "N_INBOUND" /* nested */ still a comment */
        let c = '"'; let q = '\''; fn f<'a>(x: &'a str) {}
        let s = "a \"quoted\" nexus.outbound";
        let r = r#"raw "N_EVENTS" here"#;
        let b = br"bytes";
        let for_r = 1;
    "####;
    let literals: Vec<String> = string_literals(src).into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        literals,
        [
            r#"a \"quoted\" nexus.outbound"#,
            r#"raw "N_EVENTS" here"#,
            "bytes"
        ]
    );
}

/// Calls that reach past `Bus` to the raw NATS client or JetStream context.
const RAW: &[&str] = &[".client()", ".jetstream()"];

#[test]
fn no_crate_but_nexus_bus_reaches_past_the_bus_to_the_raw_client() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let krate = krate.unwrap().path();
        if krate.file_name().is_some_and(|n| n != "nexus-bus") && krate.join("src").is_dir() {
            rust_files(&krate.join("src"), &mut files);
        }
    }
    assert!(files.len() > 50, "found only {} sources", files.len());
    let mut found = Vec::new();
    for file in &files {
        let src = std::fs::read_to_string(file).unwrap();
        for (n, line) in src.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if RAW.iter().any(|call| code.contains(call)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "raw NATS access outside nexus-bus: give `Bus` the method instead (subscribe, \
         publish_live, flush, stream, ordered_feed, existing_kv_bucket, …):\n{}",
        found.join("\n")
    );
}
