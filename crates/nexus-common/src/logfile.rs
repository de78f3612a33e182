//! `redacted.log`: one file that every service of a deployment appends to, rotated
//! by size with a bounded number of old files.
//!
//! Several processes share it without a coordinator:
//! - each line (one log event) is one `write(2)` on a file opened with `O_APPEND`,
//!   so lines never interleave (the kernel serialises appends to a regular file);
//! - rotation happens under an exclusive `flock` on `<file>.lock`. Whoever finds the
//!   file full takes the lock and, if the file at the path is still the one it is
//!   writing to, renames `.N` → `.N+1` (dropping the oldest) and the file to `.1`.
//!   A process still writing to the renamed file sees that its file is full, takes
//!   the lock, finds a new file at the path and just reopens it.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// An appender to a size-rotated file shared by processes.
pub struct SharedLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Mutex<File>,
}

impl SharedLog {
    /// Opens (creating it and its directory) the log at `path`, rotated when it
    /// reaches `max_bytes`, keeping `keep` old files (`path.1` … `path.<keep>`).
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self {
            path: path.to_owned(),
            max_bytes: max_bytes.max(1),
            keep,
            file: Mutex::new(open_append(path)?),
        })
    }

    /// Appends `line` (one or more whole lines) with a single write.
    pub fn append(&self, line: &[u8]) -> io::Result<()> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| io::Error::other("log file lock poisoned"))?;
        if file.metadata()?.len() >= self.max_bytes {
            *file = self.rotate(&file)?;
        }
        // `write` on an O_APPEND regular file takes the whole buffer or fails;
        // write_all only loops on the (local-disk) impossible short write.
        file.write_all(line)
    }

    /// Under the lock file: rotates if `current` is still the file at the path,
    /// then returns the file now at the path.
    fn rotate(&self, current: &File) -> io::Result<File> {
        let lock = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.suffixed("lock"))?;
        lock.lock()?;
        let ours = current.metadata()?;
        let still_ours = std::fs::metadata(&self.path)
            .is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev());
        if still_ours {
            if self.keep == 0 {
                std::fs::remove_file(&self.path)?;
            } else {
                for n in (1..self.keep).rev() {
                    let from = self.suffixed(&n.to_string());
                    if from.exists() {
                        std::fs::rename(&from, self.suffixed(&(n + 1).to_string()))?;
                    }
                }
                std::fs::rename(&self.path, self.suffixed("1"))?;
            }
        }
        let file = open_append(&self.path);
        let _ = lock.unlock();
        file
    }

    fn suffixed(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".");
        name.push(suffix);
        PathBuf::from(name)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_is_rotated_and_only_keep_old_files_remain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/redacted.log");
        let log = SharedLog::open(&path, 100, 2).unwrap();
        for i in 0..40 {
            log.append(format!("line {i:03} of the test log\n").as_bytes())
                .unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "redacted.log",
                "redacted.log.1",
                "redacted.log.2",
                "redacted.log.lock"
            ]
        );
        // Newest last: .2 holds older lines than .1, which holds older than the file.
        let read = |n: &str| std::fs::read_to_string(path.with_file_name(n)).unwrap();
        assert!(read("redacted.log").ends_with("line 039 of the test log\n"));
        assert!(read("redacted.log.1") < read("redacted.log"));
        assert!(read("redacted.log.2") < read("redacted.log.1"));
        for n in ["redacted.log", "redacted.log.1", "redacted.log.2"] {
            // Rotated once full: at most one line over the size.
            assert!(read(n).len() < 100 + 26, "{n}: {}", read(n).len());
        }
    }
}
