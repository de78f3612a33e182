//! `.env` beside the configuration (the directory of `NEXUS_CONFIG`, else the
//! current one), as `nexus onboard` writes it and docker compose reads it: the
//! CLI's commands see its variables without `set -a && . ./.env`, and so do the
//! services `nexus up` starts. A variable already set in the environment wins.
//!
//! Setting variables in a running multi-threaded process is unsound, so the
//! process replaces itself (`exec`) with the same command and the merged
//! environment, once (`NEXUS_DOTENV` marks the second run).

use std::path::PathBuf;

/// Where `.env` is looked for.
pub fn path() -> PathBuf {
    std::env::var_os("NEXUS_CONFIG")
        .map(PathBuf::from)
        .and_then(|c| c.parent().map(PathBuf::from))
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".env")
}

/// Re-executes this command with the variables of `.env` that are not set yet.
/// Returns (having changed nothing) when there are none, the file is missing or
/// unreadable, or this is already the second run; otherwise does not return
/// unless the exec failed.
pub fn reexec_with_dotenv() {
    if std::env::var_os("NEXUS_DOTENV").is_some() {
        return;
    }
    let path = path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let missing: Vec<(String, String)> = parse(&text)
        .into_iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(missing)
        .env("NEXUS_DOTENV", path.as_os_str())
        .exec();
    eprintln!("nexus: could not load {}: {err}", path.display());
}

/// `KEY=value` lines: `#` comments, an optional `export `, and values quoted the
/// way a shell reads them (`'…'` literal, `"…"` with `\` escapes, `\x` outside).
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            out.push((key.to_owned(), unquote(raw.trim_start())));
        }
    }
    out
}

fn unquote(raw: &str) -> String {
    let mut value = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => value.extend(chars.by_ref().take_while(|&c| c != '\'')),
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                            value.extend(chars.next());
                        }
                        c => value.push(c),
                    }
                }
            }
            '\\' => value.extend(chars.next()),
            // Unquoted whitespace ends the value; what follows is a comment or junk.
            c if c.is_whitespace() => break,
            c => value.push(c),
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_a_shell_reads_them() {
        let text = "# secrets\n\
            OPENAI_API_KEY=sk-abc_123\n\
            export NATS_PASSWORD='it'\\''s'\n\
            SPACED=\"a \\\"b\\\" c\"  # note\n\
            PLAIN=x y\n\
            EMPTY=\n\
            1BAD=no\n\
            not a line\n";
        assert_eq!(
            parse(text),
            vec![
                ("OPENAI_API_KEY".into(), "sk-abc_123".into()),
                ("NATS_PASSWORD".into(), "it's".into()),
                ("SPACED".into(), "a \"b\" c".into()),
                ("PLAIN".into(), "x".into()),
                ("EMPTY".into(), String::new()),
            ]
        );
    }
}
