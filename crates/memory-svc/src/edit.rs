//! Read-modify-write of a Markdown file that several memory-svc replicas (and
//! tasks of one replica) may edit at once.
//!
//! Writers take an exclusive `flock` on `.nexus/locks/<name>.lock` (not on the
//! file itself, which the rename replaces), re-read the file under it, write
//! the new text to a temp file in the same directory, fsync it, rename it over
//! the old one and fsync the directory. Readers never see half a file, and no
//! writer works from a stale copy.
//!
//! It must never write without holding the lock, and never leave a temp file
//! behind on failure. People editing by hand do not take the lock: their save
//! wins over an append made while their editor was open.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Where the lock files live, relative to the workspace (tool-runner refuses `.nexus/`).
pub const LOCK_DIR: &str = ".nexus/locks";
/// A file larger than this is not rewritten: whoever keeps it that large edits it by hand.
pub const MAX_EDIT_BYTES: u64 = 16 * 1024 * 1024;
/// How often a waiting writer tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(10);

/// Why an edit did not happen. Messages name only the file, never a host path.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{name} is being written by another writer for longer than {waited:?}; try again")]
    Busy { name: String, waited: Duration },
    #[error("{name} is larger than {MAX_EDIT_BYTES} bytes; it is not rewritten automatically")]
    TooLarge { name: String },
    #[error("{name} is not UTF-8 text; it is not rewritten automatically")]
    NotText { name: String },
    #[error("{name} is not a plain file name")]
    BadName { name: String },
    #[error("cannot {action} {name}: {error}")]
    Io {
        name: String,
        action: &'static str,
        error: io::Error,
    },
}

impl EditError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, EditError::Busy { .. })
    }
}

/// What an edit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edited {
    Written,
    /// `edit` returned `None`: the file was left exactly as it was.
    Unchanged,
}

/// Runs `edit` on the current text of `root/name` (`None` when the file does
/// not exist) while holding the file's lock, and writes what it returns
/// atomically. Waits at most `wait` for the lock. Blocking: call it from
/// `spawn_blocking`.
pub fn edit_locked(
    root: &Path,
    name: &str,
    wait: Duration,
    edit: impl FnOnce(Option<String>) -> Option<String>,
) -> Result<Edited, EditError> {
    edit_locked_in(root, None, name, wait, edit)
}

/// [`edit_locked`] for `root/dir/name` (the directory is created if missing),
/// locked as `<dir>__<name>`; `dir` is one plain directory name, like `memories`.
pub fn edit_locked_in(
    root: &Path,
    dir: Option<&str>,
    name: &str,
    wait: Duration,
    edit: impl FnOnce(Option<String>) -> Option<String>,
) -> Result<Edited, EditError> {
    let plain = |n: &str| !(n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.'));
    if !plain(name) || !dir.is_none_or(plain) {
        return Err(EditError::BadName { name: name.into() });
    }
    let locks = root.join(LOCK_DIR);
    let (root, lock_name) = match dir {
        Some(dir) => (root.join(dir), format!("{dir}__{name}")),
        None => (root.to_owned(), name.to_owned()),
    };
    let root = root.as_path();
    let io = |action: &'static str| {
        move |error: io::Error| EditError::Io {
            name: name.into(),
            action,
            error,
        }
    };
    fs::create_dir_all(&locks).map_err(io("create the lock directory for"))?;
    if dir.is_some() {
        fs::create_dir_all(root).map_err(io("create the directory of"))?;
    }
    let lock = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(locks.join(format!("{lock_name}.lock")))
        .map_err(io("open the lock of"))?;
    let started = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if started.elapsed() < wait => {
                std::thread::sleep(LOCK_POLL)
            }
            Err(TryLockError::WouldBlock) => {
                return Err(EditError::Busy {
                    name: name.into(),
                    waited: wait,
                });
            }
            Err(TryLockError::Error(error)) => return Err(io("lock")(error)),
        }
    }
    // The lock is released when `lock` is closed, on every path out of here.
    let path = root.join(name);
    let (current, mode) = match fs::metadata(&path) {
        Ok(meta) if meta.len() > MAX_EDIT_BYTES => {
            return Err(EditError::TooLarge { name: name.into() });
        }
        Ok(meta) => {
            let bytes = fs::read(&path).map_err(io("read"))?;
            let text =
                String::from_utf8(bytes).map_err(|_| EditError::NotText { name: name.into() })?;
            (Some(text), Some(meta.permissions().mode() & 0o7777))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
        Err(e) => return Err(io("inspect")(e)),
    };
    let Some(new) = edit(current) else {
        return Ok(Edited::Unchanged);
    };
    write_atomic(root, name, new.as_bytes(), mode).map_err(io("write"))?;
    drop(lock);
    Ok(Edited::Written)
}

/// Temp file, fsync, rename over `root/name`, fsync the directory.
fn write_atomic(root: &Path, name: &str, contents: &[u8], mode: Option<u32>) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = root.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    if let Some(mode) = mode {
        options.mode(mode);
    }
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, root.join(name))
    });
    if let Err(error) = written {
        let _ = fs::remove_file(&tmp);
        return Err(error);
    }
    // The rename itself is durable only once the directory is.
    File::open(root)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn concurrent_appenders_each_see_the_others_writes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let root = root.clone();
                std::thread::spawn(move || {
                    for j in 0..10 {
                        let edited =
                            edit_locked(&root, "MEMORY.md", Duration::from_secs(30), |text| {
                                // Widen the window between read and write.
                                std::thread::sleep(Duration::from_micros(200));
                                Some(format!("{}line {i}-{j}\n", text.unwrap_or_default()))
                            })
                            .unwrap();
                        assert_eq!(edited, Edited::Written);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let text = fs::read_to_string(root.join("MEMORY.md")).unwrap();
        assert_eq!(text.lines().count(), 80, "{text}");
        for i in 0..8 {
            for j in 0..10 {
                assert!(
                    text.contains(&format!("line {i}-{j}\n")),
                    "line {i}-{j} lost"
                );
            }
        }
        let leftovers: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_writer_gives_up_when_the_lock_stays_taken_and_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("MEMORY.md"), "before\n").unwrap();
        fs::create_dir_all(dir.path().join(LOCK_DIR)).unwrap();
        let held = File::create(dir.path().join(LOCK_DIR).join("MEMORY.md.lock")).unwrap();
        held.lock().unwrap();

        let err = edit_locked(dir.path(), "MEMORY.md", Duration::from_millis(50), |_| {
            Some("after\n".into())
        })
        .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join("MEMORY.md")).unwrap(),
            "before\n"
        );
        held.unlock().unwrap();
        edit_locked(dir.path(), "MEMORY.md", Duration::from_millis(50), |_| {
            Some("after\n".into())
        })
        .unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("MEMORY.md")).unwrap(),
            "after\n"
        );
    }

    #[test]
    fn the_file_keeps_its_permissions_and_unchanged_means_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("USER_a.md");
        fs::write(&path, "x\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let before = fs::metadata(&path).unwrap().modified().unwrap();

        let edited =
            edit_locked(dir.path(), "USER_a.md", Duration::from_secs(1), |_| None).unwrap();
        assert_eq!(edited, Edited::Unchanged);
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);

        edit_locked(dir.path(), "USER_a.md", Duration::from_secs(1), |t| {
            Some(format!("{}y\n", t.unwrap()))
        })
        .unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), "x\ny\n");
    }

    #[test]
    fn names_with_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["../x.md", "a/b.md", "", ".hidden"] {
            let err = edit_locked(dir.path(), name, Duration::from_secs(1), |_| {
                Some("x".into())
            })
            .unwrap_err();
            assert!(matches!(err, EditError::BadName { .. }), "{name}: {err}");
        }
    }
}
