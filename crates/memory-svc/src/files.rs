//! The Markdown memory of the workspace: AGENTS.md, SOUL.md, USER.md,
//! `USER_<id>.md` and MEMORY.md, as read for a context.
//!
//! Files are read fresh on every request, because people edit them while the
//! service runs, and every read is bounded so a huge file cannot blow up memory
//! or a NATS reply (a large MEMORY.md is replaced by excerpts in `ops`, from
//! `index`). On start the templates are written where a file is missing, and a
//! user's first context creates their `USER_<id>.md` from USER.md.
//!
//! It must never overwrite a file that exists, and never build a path from a
//! user id that is not file-safe.

use std::{
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// The MEMORY.md a fresh workspace starts with.
pub const MEMORY_TEMPLATE: &str = include_str!("../../../workspace/MEMORY.md");

/// The templates a fresh workspace starts with, written only where missing.
const TEMPLATES: [(&str, &str); 4] = [
    ("AGENTS.md", include_str!("../../../workspace/AGENTS.md")),
    ("SOUL.md", include_str!("../../../workspace/SOUL.md")),
    ("USER.md", include_str!("../../../workspace/USER.md")),
    ("MEMORY.md", MEMORY_TEMPLATE),
];

/// The default profile, the template of each user's own.
const USER_TEMPLATE: &str = include_str!("../../../workspace/USER.md");

/// Names temporary files uniquely within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// AGENTS.md, SOUL.md and profiles are instructions, not archives: past this
/// size they are shortened like a large MEMORY.md.
const MAX_PROFILE_BYTES: usize = 64 * 1024;

/// The Markdown part of a context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Markdown {
    pub agents_md: String,
    pub soul_md: String,
    /// `USER_<id>.md`, falling back to USER.md.
    pub user_profile_md: String,
    /// MEMORY.md, shortened when larger than the configured limit.
    pub memory_md: String,
    /// MEMORY.md's size when `memory_md` holds only its head.
    pub memory_shortened_from: Option<u64>,
}

/// The workspace directory, seen as Markdown memory.
#[derive(Debug, Clone)]
pub struct MarkdownFiles {
    root: PathBuf,
}

impl MarkdownFiles {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the workspace and writes each missing template. Returns the
    /// names written; a file that exists is left exactly as it is.
    pub async fn ensure_templates(&self) -> io::Result<Vec<&'static str>> {
        tokio::fs::create_dir_all(&self.root).await?;
        let mut written = Vec::new();
        for (name, text) in TEMPLATES {
            // create_new: even a file created a moment ago by someone else wins.
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.root.join(name))
                .await;
            match file {
                Ok(mut file) => {
                    tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes()).await?;
                    tokio::io::AsyncWriteExt::flush(&mut file).await?;
                    written.push(name);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    /// Creates `USER_<id>.md` from the workspace's USER.md (the built-in
    /// template when it is missing), retitled for the user. Returns whether it
    /// was created: an existing profile is never touched, and a reader never
    /// sees a half-written one (written aside, then hard-linked into place).
    /// A context creates it with [`Self::ensure_profile_and_read`].
    #[cfg(test)]
    pub async fn ensure_profile(&self, user_id: &str) -> io::Result<bool> {
        let (root, user_id) = (self.root.clone(), user_id.to_owned());
        blocking(move || ensure_profile_in(&root, &user_id)).await
    }

    /// Reads the Markdown of a context for `user_id`. Missing files read as empty.
    /// A context reads it with [`Self::ensure_profile_and_read`].
    #[cfg(test)]
    pub async fn read(&self, user_id: &str, max_memory_bytes: usize) -> io::Result<Markdown> {
        let (root, user_id) = (self.root.clone(), user_id.to_owned());
        // One trip to the blocking pool for the four files, not one per open, stat
        // and read: those hand-offs were most of memory-svc's CPU per turn.
        blocking(move || read_in(&root, &user_id, max_memory_bytes)).await
    }

    /// [`Self::ensure_profile`] and then [`Self::read`], in one trip to the
    /// blocking pool: what every turn's context does. The profile's outcome comes
    /// apart, since a context is never refused over it.
    pub async fn ensure_profile_and_read(
        &self,
        user_id: &str,
        max_memory_bytes: usize,
    ) -> io::Result<(io::Result<bool>, Markdown)> {
        let (root, user_id) = (self.root.clone(), user_id.to_owned());
        blocking(move || {
            let created = ensure_profile_in(&root, &user_id);
            Ok((created, read_in(&root, &user_id, max_memory_bytes)?))
        })
        .await
    }
}

/// [`Files::read`]'s work, on the blocking pool.
fn read_in(root: &Path, user_id: &str, max_memory_bytes: usize) -> io::Result<Markdown> {
    let read = |name: &str, limit| read_bounded(root, name, limit);
    let own = is_file_safe(user_id)
        .then(|| read(&format!("USER_{user_id}.md"), MAX_PROFILE_BYTES))
        .transpose()?
        .flatten();
    let user_profile_md = match own {
        Some(own) => Some(own),
        None => read("USER.md", MAX_PROFILE_BYTES)?,
    };
    let memory_md = read("MEMORY.md", max_memory_bytes)?;
    let text = |read: Option<Bounded>| read.map(|r| r.text).unwrap_or_default();
    Ok(Markdown {
        agents_md: text(read("AGENTS.md", MAX_PROFILE_BYTES)?),
        soul_md: text(read("SOUL.md", MAX_PROFILE_BYTES)?),
        user_profile_md: text(user_profile_md),
        memory_shortened_from: memory_md.as_ref().and_then(|r| r.shortened_from),
        memory_md: text(memory_md),
    })
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

/// [`Files::ensure_profile`]'s work, on the blocking pool.
fn ensure_profile_in(root: &Path, user_id: &str) -> io::Result<bool> {
    // A user id that cannot name a file gets no profile (it reads USER.md).
    if !is_file_safe(user_id) {
        return Ok(false);
    }
    let name = format!("USER_{user_id}.md");
    let path = root.join(&name);
    if path.try_exists()? {
        return Ok(false);
    }
    let template = match read_bounded(root, "USER.md", MAX_PROFILE_BYTES)? {
        Some(read) if read.shortened_from.is_none() => read.text,
        _ => USER_TEMPLATE.to_owned(),
    };
    let text = profile_from_template(user_id, &template);
    let temp = root.join(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&temp, text.as_bytes()).map_err(|e| with_path(e, &temp))?;
    // A hard link fails when the name exists: someone else's profile wins.
    let linked = std::fs::hard_link(&temp, &path);
    let removed = std::fs::remove_file(&temp);
    let created = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(with_path(e, &path)),
    };
    if let Err(error) = removed {
        tracing::warn!(%error, path = %temp.display(), "temporary profile not removed");
    }
    Ok(created)
}

/// The file's text, shortened past `limit` bytes; `None` when it does not exist.
fn read_bounded(root: &Path, name: &str, limit: usize) -> io::Result<Option<Bounded>> {
    let path = root.join(name);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(with_path(e, &path)),
    };
    let total = file.metadata().map_err(|e| with_path(e, &path))?.len();
    let mut head = Vec::with_capacity(limit.min(total as usize) + 1);
    // One byte past the limit tells "exactly at the limit" from "longer".
    file.take(limit as u64 + 1)
        .read_to_end(&mut head)
        .map_err(|e| with_path(e, &path))?;
    if head.len() <= limit {
        return Ok(Some(Bounded {
            text: String::from_utf8_lossy(&head).into_owned(),
            shortened_from: None,
        }));
    }
    // The file may have grown since `metadata`; never report fewer bytes than we saw.
    let total = total.max(head.len() as u64);
    Ok(Some(Bounded {
        text: shorten(name, &head[..limit], total),
        shortened_from: Some(total),
    }))
}

/// A file read up to a limit.
struct Bounded {
    text: String,
    /// The file's size, when `text` is only its head.
    shortened_from: Option<u64>,
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Whether a user id can name `USER_<id>.md`: 1 to 128 of `[A-Za-z0-9_-]`.
pub fn is_file_safe(user_id: &str) -> bool {
    !user_id.is_empty()
        && user_id.len() <= 128
        && user_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A user's first profile: the default one, retitled `# USER_<id>.md — profile
/// of <id>`, without the heading and the paragraph that say it is the default.
pub fn profile_from_template(user_id: &str, template: &str) -> String {
    let mut paragraphs: Vec<&str> = template.trim_start().split("\n\n").collect();
    if paragraphs.first().is_some_and(|p| p.starts_with('#')) {
        let heading = paragraphs.remove(0);
        // The heading paragraph may carry more lines than the title.
        if let Some((_, rest)) = heading.split_once('\n') {
            paragraphs.insert(0, rest);
        }
    }
    paragraphs.retain(|p| !p.contains("USER_<id>.md") && !p.contains("default profile"));
    let body = paragraphs.join("\n\n");
    let body = body.trim();
    let mut out = format!("# USER_{user_id}.md — profile of {user_id}\n");
    if !body.is_empty() {
        out.push('\n');
        out.push_str(body);
        out.push('\n');
    }
    out
}

/// Cuts `head` (the first bytes of a file of `total` bytes) at the last
/// paragraph break in its second half, else at the last line break, and says
/// how much was left out.
pub fn shorten(name: &str, head: &[u8], total: u64) -> String {
    let half = head.len() / 2;
    let paragraph = find_last(head, b"\n\n").filter(|&at| at >= half);
    let cut = paragraph
        .or_else(|| head.iter().rposition(|&b| b == b'\n'))
        // One long line: cut at the last whole character.
        .unwrap_or_else(|| match std::str::from_utf8(head) {
            Ok(_) => head.len(),
            Err(e) => e.valid_up_to(),
        });
    let kept = String::from_utf8_lossy(&head[..cut]);
    let remaining = total.saturating_sub(cut as u64);
    format!(
        "{}\n\n[{name} was shortened here: {remaining} more bytes not shown]\n",
        kept.trim_end()
    )
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn only_plain_ids_may_name_a_profile_file() {
        for ok in ["telegram_42", "cli_bob", "A-z_09"] {
            assert!(is_file_safe(ok), "{ok}");
        }
        for bad in ["", "../etc", "a/b", "a.b", "ü", "a b", &"x".repeat(129)] {
            assert!(!is_file_safe(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_long_memory_is_cut_at_a_paragraph_and_says_how_much_is_missing() {
        let text = "# Memory\n\nfirst paragraph\n\nsecond paragraph\nstill second\n\nthird";
        let limit = text.find("still").unwrap() + 3;
        let out = shorten("MEMORY.md", &text.as_bytes()[..limit], text.len() as u64);
        let cut = text.find("\n\nsecond").unwrap();
        assert!(out.starts_with("# Memory\n\nfirst paragraph\n\n["), "{out}");
        assert!(
            out.contains(&format!("{} more bytes not shown", text.len() - cut)),
            "{out}"
        );
    }

    #[test]
    fn without_a_late_paragraph_break_the_cut_falls_on_a_line() {
        let text = "a\n\nbbbbbbbbbbbbbbbbbbbb\ncccccccccccccccccccc\ndddd";
        let limit = text.find("dd").unwrap() + 2;
        let out = shorten("MEMORY.md", &text.as_bytes()[..limit], text.len() as u64);
        assert!(out.starts_with(
            "a\n\nbbbbbbbbbbbbbbbbbbbb\ncccccccccccccccccccc\n\n[MEMORY.md was shortened"
        ));
        assert!(out.contains("5 more bytes"), "{out}");
    }

    #[test]
    fn one_long_line_is_cut_on_a_character_boundary() {
        let text = "ääääää";
        let out = shorten("MEMORY.md", &text.as_bytes()[..5], 12);
        assert!(out.starts_with("ää\n\n["), "{out}");
        assert!(out.contains("8 more bytes"), "{out}");
    }

    #[tokio::test]
    async fn templates_fill_gaps_but_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let files = MarkdownFiles::new(dir.path().join("ws"));
        std::fs::create_dir_all(dir.path().join("ws")).unwrap();
        std::fs::write(dir.path().join("ws/SOUL.md"), "my own soul").unwrap();

        let written = files.ensure_templates().await.unwrap();
        assert_eq!(written, vec!["AGENTS.md", "USER.md", "MEMORY.md"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ws/SOUL.md")).unwrap(),
            "my own soul"
        );
        assert!(files.ensure_templates().await.unwrap().is_empty());
    }

    #[test]
    fn a_first_profile_is_the_default_one_retitled_for_its_user() {
        let out = profile_from_template("ada", USER_TEMPLATE);
        assert!(
            out.starts_with("# USER_ada.md — profile of ada\n\n- Name: (unknown)"),
            "{out}"
        );
        assert!(!out.contains("default profile"), "{out}");
        assert!(!out.contains("of their own"), "{out}");
        assert!(out.ends_with("(none recorded)\n"), "{out}");
    }

    #[tokio::test]
    async fn a_profile_is_created_once_and_an_existing_one_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("USER.md"), "# Default\n\n- Team: ops\n").unwrap();
        std::fs::write(dir.path().join("USER_bob.md"), "mine").unwrap();
        let files = MarkdownFiles::new(dir.path());

        assert!(files.ensure_profile("ada").await.unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("USER_ada.md")).unwrap(),
            "# USER_ada.md — profile of ada\n\n- Team: ops\n"
        );
        assert!(!files.ensure_profile("ada").await.unwrap());
        assert!(!files.ensure_profile("bob").await.unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("USER_bob.md")).unwrap(),
            "mine"
        );
        assert!(!files.ensure_profile("../x").await.unwrap());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[tokio::test]
    async fn a_memory_exactly_at_the_limit_is_given_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("MEMORY.md"), "0123456789").unwrap();
        let files = MarkdownFiles::new(dir.path());
        assert_eq!(files.read("u", 10).await.unwrap().memory_md, "0123456789");
        assert!(
            files
                .read("u", 9)
                .await
                .unwrap()
                .memory_md
                .contains("1 more bytes")
        );
    }
}
