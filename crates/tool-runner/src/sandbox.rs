//! The workspace sandbox: the only code in tool-runner that touches the
//! filesystem. Tools name files with a [`WorkspacePath`], which only
//! [`Workspace::resolve`] and [`Workspace::walk`] can make, so holding one proves
//! the path was checked to lie inside the workspace ("parse, don't validate").
//!
//! This module must never read, write, list or move anything outside the
//! canonical workspace root, nor inside its `.nexus/` directory on the agent's
//! behalf. It refuses absolute paths that lead out, `..` that leaves the root,
//! `~`, NUL bytes, symlinks whose target is outside, and files with more than
//! one hard link. Every refusal says why, in words the model can act on, and
//! names paths relative to the workspace only.
//!
//! The check happens before the operation, so a racing process could still swap
//! a directory for a symlink in between. Two guards narrow that window: final
//! components are opened with `O_NOFOLLOW`, and every opened file is checked
//! again through `/proc/self/fd` before a byte is read or written.

use std::{
    ffi::OsString,
    fs::{self, File, Metadata, OpenOptions},
    io::{self, Write},
    ops::ControlFlow,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// Directory under the root where Nexus keeps its own state (database, trash).
pub const INTERNAL_DIR: &str = ".nexus";
/// Where deleted files go, under [`INTERNAL_DIR`].
const TRASH_DIR: &str = "trash";
/// Directory depth a recursive walk descends at most (a guard, not a feature).
const MAX_WALK_DEPTH: usize = 64;

/// Why the sandbox refused or failed. Messages are safe to show the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The path leads out of the workspace or into `.nexus/`.
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    /// The path is well-formed but names the wrong kind of thing.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
}

/// The agent's workspace: a canonical root directory.
#[derive(Debug)]
pub struct Workspace {
    /// Canonical: no symlinks, no `..`.
    root: PathBuf,
    /// The root as configured (absolute, not canonical), so absolute paths
    /// spelled that way are recognised.
    given: PathBuf,
    /// `<root>/.nexus`.
    internal: PathBuf,
}

/// A path checked to be inside the workspace when it was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspacePath {
    /// Relative to the root, normalised, as the model named it: used in messages.
    rel: PathBuf,
    /// Canonical host path of the deepest part that existed; inside the root.
    base: PathBuf,
    /// Components below `base` that did not exist yet.
    tail: Vec<OsString>,
    /// The last component was a symlink (to a target inside) and was followed.
    via_symlink: bool,
}

impl WorkspacePath {
    /// The path relative to the workspace root.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// The path as shown to the model: relative, `.` for the root.
    pub fn shown(&self) -> String {
        shown(&self.rel)
    }

    /// Whether the path existed when it was resolved.
    pub fn exists(&self) -> bool {
        self.tail.is_empty()
    }

    /// Whether this is the workspace root itself.
    pub fn is_root(&self) -> bool {
        self.rel.as_os_str().is_empty()
    }

    fn host(&self) -> PathBuf {
        let mut p = self.base.clone();
        p.extend(&self.tail);
        p
    }
}

/// What a directory entry is. Symlinks are reported, never followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    Other,
}

/// One entry found by [`Workspace::walk`].
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: EntryKind,
    path: WorkspacePath,
}

impl Entry {
    /// Relative to the workspace root.
    pub fn rel(&self) -> &Path {
        &self.path.rel
    }

    /// The entry as a path tools may open, unless it is a symlink (whose target
    /// was not checked) or something other than a file or directory.
    pub fn path(&self) -> Option<&WorkspacePath> {
        matches!(self.kind, EntryKind::File | EntryKind::Dir).then_some(&self.path)
    }
}

/// A regular file opened for reading, after every check passed.
#[derive(Debug)]
pub struct OpenedFile {
    pub file: File,
    pub len: u64,
}

impl Workspace {
    /// Opens the workspace at `dir`, creating it if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let root = fs::canonicalize(dir)?;
        let given = normalize_absolute(&std::path::absolute(dir)?);
        let internal = root.join(INTERNAL_DIR);
        Ok(Self {
            root,
            given,
            internal,
        })
    }

    /// The canonical root, for logs of the service itself (never for the model).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks a path the model gave and returns it as a [`WorkspacePath`].
    pub fn resolve(&self, raw: &str) -> Result<WorkspacePath, SandboxError> {
        let rel = self.lexical(raw)?;
        if rel
            .first()
            .is_some_and(|c| c.eq_ignore_ascii_case(INTERNAL_DIR))
        {
            return Err(internal_refusal(&shown(&rel.iter().collect::<PathBuf>())));
        }

        // Walk down from the root one component at a time, so a symlink anywhere
        // along the way is seen and its target checked.
        let mut cur = self.root.clone();
        let mut existing = 0;
        let mut via_symlink = false;
        for (i, comp) in rel.iter().enumerate() {
            let next = cur.join(comp);
            let prefix = shown(&rel[..=i].iter().collect::<PathBuf>());
            match fs::symlink_metadata(&next) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = match fs::canonicalize(&next) {
                        Ok(t) => t,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            return Err(SandboxError::Denied(format!(
                                "'{prefix}' is a symbolic link whose target does not exist; \
                                 links are followed only when their target can be checked \
                                 to be inside the workspace"
                            )));
                        }
                        Err(e) => return Err(io_error(&prefix, "follow the link", e)),
                    };
                    if !target.starts_with(&self.root) {
                        return Err(SandboxError::Denied(format!(
                            "'{prefix}' is a symbolic link that points outside the workspace; \
                             the path escapes the workspace via a symlink, so it is refused"
                        )));
                    }
                    if target.starts_with(&self.internal) {
                        return Err(internal_refusal(&prefix));
                    }
                    cur = target;
                    via_symlink = true;
                }
                Ok(_) => {
                    cur = next;
                    via_symlink = false;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(io_error(&prefix, "inspect", e)),
            }
            existing = i + 1;
        }
        Ok(WorkspacePath {
            rel: rel.iter().collect(),
            base: cur,
            tail: rel[existing..].to_vec(),
            via_symlink: via_symlink && existing == rel.len(),
        })
    }

    /// Turns the raw string into normal components relative to the root, without
    /// touching the filesystem (except to recognise absolute paths to the root).
    fn lexical(&self, raw: &str) -> Result<Vec<OsString>, SandboxError> {
        if raw.contains('\0') {
            return Err(SandboxError::Denied(
                "the path contains a NUL byte, which no file name may hold".into(),
            ));
        }
        if raw.is_empty() {
            return Err(SandboxError::Invalid(
                "the path is empty; give a path relative to the workspace, e.g. \"notes.md\""
                    .into(),
            ));
        }
        if raw.starts_with('~') {
            return Err(SandboxError::Denied(
                "paths starting with '~' name a home directory, which is outside the workspace; \
                 use a path relative to the workspace"
                    .into(),
            ));
        }
        let path = Path::new(raw);
        let relative;
        let path = if path.is_absolute() {
            relative = self.relative_of_absolute(path).ok_or_else(|| {
                SandboxError::Denied(
                    "absolute paths outside the workspace are refused; \
                     use a path relative to the workspace"
                        .into(),
                )
            })?;
            relative.as_path()
        } else {
            path
        };
        let mut out: Vec<OsString> = Vec::new();
        for c in path.components() {
            match c {
                Component::CurDir => {}
                Component::Normal(s) => out.push(s.to_owned()),
                // Resolved here, lexically, so `..` never reaches the OS (where it
                // would step out of a symlinked directory rather than back).
                Component::ParentDir => {
                    if out.pop().is_none() {
                        return Err(SandboxError::Denied(format!(
                            "'{raw}' uses '..' to leave the workspace; \
                             only paths inside the workspace are allowed"
                        )));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(SandboxError::Denied(
                        "absolute paths outside the workspace are refused; \
                         use a path relative to the workspace"
                            .into(),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The part of an absolute path below the root, if it is inside.
    fn relative_of_absolute(&self, path: &Path) -> Option<PathBuf> {
        let norm = normalize_absolute(path);
        for base in [&self.root, &self.given] {
            if let Ok(rel) = norm.strip_prefix(base) {
                return Some(rel.to_owned());
            }
        }
        // Another spelling of the root (a symlinked /tmp, say): canonicalize the
        // deepest ancestor that exists. Only metadata is read on the way.
        let mut tail = Vec::new();
        let mut cur = norm.as_path();
        loop {
            if let Ok(canonical) = fs::canonicalize(cur) {
                let mut rel = canonical.strip_prefix(&self.root).ok()?.to_owned();
                rel.extend(tail.iter().rev());
                return Some(rel);
            }
            tail.push(cur.file_name()?.to_owned());
            cur = cur.parent()?;
        }
    }

    /// Opens an existing regular file for reading.
    pub fn open_file(&self, path: &WorkspacePath) -> Result<OpenedFile, SandboxError> {
        let shown = path.shown();
        if !path.exists() {
            return Err(SandboxError::NotFound(format!("'{shown}' does not exist")));
        }
        // O_NONBLOCK: a FIFO must not hang the call; it is refused below anyway.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path.host())
            .map_err(|e| io_error(&shown, "open", e))?;
        let meta = file
            .metadata()
            .map_err(|e| io_error(&shown, "inspect", e))?;
        check_regular_file(&meta, &shown)?;
        self.verify_open(&file, &shown)?;
        Ok(OpenedFile {
            file,
            len: meta.len(),
        })
    }

    /// What an existing path is (not following a final symlink).
    pub fn kind(&self, path: &WorkspacePath) -> Result<EntryKind, SandboxError> {
        let shown = path.shown();
        if !path.exists() {
            return Err(SandboxError::NotFound(format!("'{shown}' does not exist")));
        }
        let meta = fs::symlink_metadata(path.host()).map_err(|e| io_error(&shown, "inspect", e))?;
        Ok(kind_of(&meta.file_type()))
    }

    /// Replaces or creates a file with `contents`, atomically (temp file and
    /// rename), creating missing parent directories. Returns whether the file is new.
    pub fn write_atomic(
        &self,
        path: &WorkspacePath,
        contents: &[u8],
    ) -> Result<bool, SandboxError> {
        let shown = path.shown();
        if path.is_root() {
            return Err(SandboxError::Invalid(
                "'.' is the workspace directory itself, not a file".into(),
            ));
        }
        let target = path.host();
        let mut mode = None;
        if path.exists() {
            let meta = fs::symlink_metadata(&target).map_err(|e| io_error(&shown, "inspect", e))?;
            check_regular_file(&meta, &shown)?;
            mode = Some(meta.permissions().mode() & 0o7777);
        } else {
            self.create_parents(path)?;
        }

        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(SandboxError::Invalid(format!(
                "'{shown}' does not name a file"
            )));
        };
        let tmp = parent.join(temp_name(&name.to_string_lossy()));
        let mut options = OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut file = options
            .open(&tmp)
            .map_err(|e| io_error(&shown, "create", e))?;
        let written = self.verify_open(&file, &shown).and_then(|()| {
            file.write_all(contents)
                .and_then(|()| file.sync_all())
                // rename(2) replaces the name itself and never follows a link there.
                .and_then(|()| fs::rename(&tmp, &target))
                .map_err(|e| io_error(&shown, "write", e))
        });
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map(|()| !path.exists())
    }

    /// Creates the missing directories of a new path one by one, checking that
    /// each is a real directory (not a symlink slipped in meanwhile).
    fn create_parents(&self, path: &WorkspacePath) -> Result<(), SandboxError> {
        let Some((_, dirs)) = path.tail.split_last() else {
            return Ok(());
        };
        let mut dir = path.base.clone();
        let mut rel = path.rel.clone();
        for _ in &path.tail {
            rel.pop();
        }
        for comp in dirs {
            dir.push(comp);
            rel.push(comp);
            let shown = shown(&rel);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(&shown, "create the directory", e)),
            }
            let meta = fs::symlink_metadata(&dir).map_err(|e| io_error(&shown, "inspect", e))?;
            if meta.file_type().is_symlink() {
                return Err(SandboxError::Denied(format!(
                    "'{shown}' turned into a symbolic link while directories were being created; \
                     refusing to write through it"
                )));
            }
            if !meta.is_dir() {
                return Err(SandboxError::Invalid(format!(
                    "'{shown}' is a file, not a directory"
                )));
            }
        }
        Ok(())
    }

    /// Moves a regular file into `.nexus/trash/<timestamp>-<name>`, so a deletion
    /// can be undone. Returns the new path relative to the root.
    pub fn trash(&self, path: &WorkspacePath) -> Result<PathBuf, SandboxError> {
        let shown = path.shown();
        if !path.exists() {
            return Err(SandboxError::NotFound(format!("'{shown}' does not exist")));
        }
        if path.is_root() {
            return Err(SandboxError::Invalid(
                "'.' is the workspace directory itself; directories are never deleted".into(),
            ));
        }
        if path.via_symlink {
            return Err(SandboxError::Invalid(format!(
                "'{shown}' is a symbolic link; only regular files can be deleted"
            )));
        }
        let source = path.host();
        let meta = fs::symlink_metadata(&source).map_err(|e| io_error(&shown, "inspect", e))?;
        if meta.is_dir() {
            return Err(SandboxError::Invalid(format!(
                "'{shown}' is a directory; only regular files can be deleted, never directories"
            )));
        }
        check_regular_file(&meta, &shown)?;

        let trash = self.trash_dir()?;
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .map_err(|e| SandboxError::Io(format!("cannot format the time: {e}")))?;
        let name: String = source
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(200).collect())
            .unwrap_or_default();
        let mut candidate = format!("{stamp}-{name}");
        let mut n = 1;
        while fs::symlink_metadata(trash.join(&candidate)).is_ok() {
            n += 1;
            candidate = format!("{stamp}-{n}-{name}");
        }
        fs::rename(&source, trash.join(&candidate))
            .map_err(|e| io_error(&shown, "move to the trash", e))?;
        Ok(Path::new(INTERNAL_DIR).join(TRASH_DIR).join(candidate))
    }

    /// `<root>/.nexus/trash`, created if missing, each level a real directory.
    fn trash_dir(&self) -> Result<PathBuf, SandboxError> {
        let mut dir = self.root.clone();
        for comp in [INTERNAL_DIR, TRASH_DIR] {
            dir.push(comp);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(SandboxError::Io(format!("cannot create the trash: {e}"))),
            }
            let meta = fs::symlink_metadata(&dir)
                .map_err(|e| SandboxError::Io(format!("cannot inspect the trash: {e}")))?;
            if !meta.is_dir() {
                return Err(SandboxError::Io(
                    "the trash (.nexus/trash) is not a plain directory; ask an operator to fix it"
                        .into(),
                ));
            }
        }
        Ok(dir)
    }

    /// Visits the entries under a directory in name order, depth first when
    /// `recursive`. Symlinks are reported but never followed; `.nexus/` is skipped.
    pub fn walk(
        &self,
        start: &WorkspacePath,
        recursive: bool,
        visit: &mut dyn FnMut(Entry) -> ControlFlow<()>,
    ) -> Result<(), SandboxError> {
        let shown = start.shown();
        if self.kind(start)? != EntryKind::Dir {
            return Err(SandboxError::Invalid(format!(
                "'{shown}' is not a directory"
            )));
        }
        let entries = self
            .read_dir_sorted(&start.host())
            .map_err(|e| io_error(&shown, "list", e))?;
        let _ = self.walk_entries(entries, start, recursive, 0, visit);
        Ok(())
    }

    fn walk_entries(
        &self,
        entries: Vec<(OsString, EntryKind)>,
        dir: &WorkspacePath,
        recursive: bool,
        depth: usize,
        visit: &mut dyn FnMut(Entry) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let host = dir.host();
        for (name, kind) in entries {
            let child_host = host.join(&name);
            if child_host == self.internal {
                continue;
            }
            // A plain entry of a checked directory is inside too: no symlink is crossed.
            let child = WorkspacePath {
                rel: dir.rel.join(&name),
                base: child_host,
                tail: Vec::new(),
                via_symlink: false,
            };
            visit(Entry {
                kind,
                path: child.clone(),
            })?;
            if recursive && kind == EntryKind::Dir && depth < MAX_WALK_DEPTH {
                // An unreadable subdirectory is skipped, not fatal.
                if let Ok(sub) = self.read_dir_sorted(&child.base) {
                    self.walk_entries(sub, &child, recursive, depth + 1, visit)?;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn read_dir_sorted(&self, dir: &Path) -> io::Result<Vec<(OsString, EntryKind)>> {
        let mut entries: Vec<(OsString, EntryKind)> = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name(), kind_of(&e.file_type().ok()?))))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// Checks where an opened file really is. Closes most of the window between
    /// the path check and the open (a directory swapped for a symlink meanwhile).
    fn verify_open(&self, file: &File, shown: &str) -> Result<(), SandboxError> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            if let Ok(real) = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                && (!real.starts_with(&self.root) || real.starts_with(&self.internal))
            {
                return Err(SandboxError::Denied(format!(
                    "'{shown}' led outside the workspace while it was being opened \
                     (a directory was replaced by a symlink); refused"
                )));
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (file, shown);
        Ok(())
    }
}

/// Refuses anything but a plain file with a single name.
fn check_regular_file(meta: &Metadata, shown: &str) -> Result<(), SandboxError> {
    if meta.is_dir() {
        return Err(SandboxError::Invalid(format!(
            "'{shown}' is a directory, not a file; use list_dir to see what it holds"
        )));
    }
    if meta.file_type().is_symlink() {
        return Err(SandboxError::Denied(format!(
            "'{shown}' turned into a symbolic link after it was checked; refused"
        )));
    }
    if !meta.is_file() {
        return Err(SandboxError::Invalid(format!(
            "'{shown}' is not a regular file (it is a device, socket or pipe)"
        )));
    }
    if meta.nlink() > 1 {
        return Err(SandboxError::Denied(format!(
            "'{shown}' has {} hard links: another name of the same file may be outside the \
             workspace, so tools refuse to read, write or delete it",
            meta.nlink()
        )));
    }
    Ok(())
}

fn kind_of(t: &fs::FileType) -> EntryKind {
    if t.is_symlink() {
        EntryKind::Symlink
    } else if t.is_dir() {
        EntryKind::Dir
    } else if t.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    }
}

fn internal_refusal(shown: &str) -> SandboxError {
    SandboxError::Denied(format!(
        "'{shown}' is inside {INTERNAL_DIR}/, where Nexus keeps its own database and trash; \
         tools may not touch it"
    ))
}

fn shown(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        rel.display().to_string()
    }
}

/// Maps an I/O error to a refusal the model can read. `io::Error`'s text never
/// holds the path, and `shown` is relative, so no host path leaks.
fn io_error(shown: &str, action: &str, e: io::Error) -> SandboxError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return SandboxError::Denied(format!(
            "'{shown}' is a symbolic link that appeared after the path was checked; \
             refusing to follow it"
        ));
    }
    match e.kind() {
        io::ErrorKind::NotFound => SandboxError::NotFound(format!("'{shown}' does not exist")),
        io::ErrorKind::PermissionDenied => SandboxError::Denied(format!(
            "the operating system does not allow tool-runner to {action} '{shown}'"
        )),
        io::ErrorKind::NotADirectory => {
            SandboxError::Invalid(format!("a part of '{shown}' is a file, not a directory"))
        }
        io::ErrorKind::IsADirectory => {
            SandboxError::Invalid(format!("'{shown}' is a directory, not a file"))
        }
        // ENAMETOOLONG: the model's path, not a fault of tool-runner.
        io::ErrorKind::InvalidFilename => SandboxError::Invalid(format!(
            "'{shown}' has a name longer than the file system allows (255 bytes per name)"
        )),
        _ => SandboxError::Io(format!("cannot {action} '{shown}': {e}")),
    }
}

/// `/a/./b/../c` → `/a/c`, without touching the filesystem.
fn normalize_absolute(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// A hidden, unique name next to the target for the atomic write.
fn temp_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let short: String = name.chars().take(100).collect();
    format!(".{short}.nexus-tmp-{}-{n}", std::process::id())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    pub(crate) const SECRET: &str = "the outside secret 7f3a";

    /// A workspace and, beside it, an outside directory holding `secret.txt`.
    pub(crate) struct World {
        pub ws: Workspace,
        pub dir: tempfile::TempDir,
        pub outside: tempfile::TempDir,
    }

    impl World {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let outside = tempfile::tempdir().unwrap();
            fs::write(outside.path().join("secret.txt"), SECRET).unwrap();
            let ws = Workspace::open(dir.path()).unwrap();
            Self { ws, dir, outside }
        }
        pub fn write(&self, rel: &str, text: &str) {
            let p = self.dir.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        pub fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.dir.path().join(rel)).unwrap()
        }
        pub fn secret(&self) -> PathBuf {
            self.outside.path().join("secret.txt")
        }
        /// Links planted in the workspace that lead to the outside secret.
        pub fn plant_escapes(&self) {
            symlink(self.secret(), self.dir.path().join("link-file")).unwrap();
            symlink(self.outside.path(), self.dir.path().join("link-dir")).unwrap();
            fs::hard_link(self.secret(), self.dir.path().join("hard")).unwrap();
        }
        pub fn assert_secret_untouched(&self) {
            assert_eq!(fs::read_to_string(self.secret()).unwrap(), SECRET);
            let names: Vec<_> = fs::read_dir(self.outside.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![OsString::from("secret.txt")]);
        }
    }

    fn denied(r: Result<WorkspacePath, SandboxError>) -> String {
        match r {
            Err(SandboxError::Denied(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_absolute_path_outside_is_refused() {
        let w = World::new();
        let m = denied(w.ws.resolve(w.secret().to_str().unwrap()));
        assert!(m.contains("absolute"), "{m}");
        assert!(!m.contains(w.outside.path().to_str().unwrap()), "{m}");
        denied(w.ws.resolve("/etc/passwd"));
    }

    #[test]
    fn an_absolute_path_inside_is_accepted_as_relative() {
        let w = World::new();
        w.write("a/b.txt", "x");
        let raw = w.dir.path().join("a/./b.txt");
        let p = w.ws.resolve(raw.to_str().unwrap()).unwrap();
        assert_eq!(p.rel(), Path::new("a/b.txt"));
        assert!(p.exists());
        // Spelled through `..` that stays inside.
        let raw = format!("{}/a/../a/b.txt", w.dir.path().display());
        assert_eq!(w.ws.resolve(&raw).unwrap().rel(), Path::new("a/b.txt"));
    }

    #[test]
    fn dot_dot_that_leaves_the_root_is_refused() {
        let w = World::new();
        let name = w.outside.path().file_name().unwrap().to_str().unwrap();
        let m = denied(w.ws.resolve(&format!("../{name}/secret.txt")));
        assert!(m.contains("'..'"), "{m}");
        denied(w.ws.resolve("a/../../x"));
        denied(w.ws.resolve(".."));
    }

    #[test]
    fn dot_dot_that_stays_inside_is_resolved_lexically() {
        let w = World::new();
        w.write("a/b.txt", "x");
        let p = w.ws.resolve("a/c/../b.txt").unwrap();
        assert_eq!(p.rel(), Path::new("a/b.txt"));
        assert!(p.exists());
        assert!(w.ws.resolve(".").unwrap().is_root());
    }

    #[test]
    fn a_tilde_prefix_is_refused() {
        let w = World::new();
        for raw in ["~", "~/.ssh/id_rsa", "~root/.bashrc"] {
            let m = denied(w.ws.resolve(raw));
            assert!(m.contains("home directory"), "{m}");
        }
    }

    #[test]
    fn a_nul_byte_is_refused() {
        let w = World::new();
        let m = denied(w.ws.resolve("a\0b"));
        assert!(m.contains("NUL"), "{m}");
    }

    #[test]
    fn a_symlink_to_a_file_outside_is_refused() {
        let w = World::new();
        w.plant_escapes();
        let m = denied(w.ws.resolve("link-file"));
        assert!(m.contains("escapes the workspace via a symlink"), "{m}");
        assert!(!m.contains(w.outside.path().to_str().unwrap()), "{m}");
    }

    #[test]
    fn a_symlink_to_a_directory_outside_is_refused() {
        let w = World::new();
        w.plant_escapes();
        let m = denied(w.ws.resolve("link-dir/secret.txt"));
        assert!(m.contains("'link-dir'"), "{m}");
        // Also for files that do not exist yet: a write must not land outside.
        denied(w.ws.resolve("link-dir/new/file.txt"));
        w.assert_secret_untouched();
    }

    #[test]
    fn a_hard_link_to_a_file_outside_is_refused() {
        let w = World::new();
        w.plant_escapes();
        let p = w.ws.resolve("hard").unwrap();
        let m = match w.ws.open_file(&p) {
            Err(SandboxError::Denied(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(m.contains("hard links"), "{m}");
        assert!(matches!(
            w.ws.write_atomic(&p, b"overwritten"),
            Err(SandboxError::Denied(_))
        ));
        assert!(matches!(w.ws.trash(&p), Err(SandboxError::Denied(_))));
        w.assert_secret_untouched();
    }

    #[test]
    fn a_symlink_inside_to_inside_is_followed() {
        let w = World::new();
        w.write("real/doc.md", "hello");
        symlink(w.dir.path().join("real"), w.dir.path().join("alias")).unwrap();
        symlink("real/doc.md", w.dir.path().join("doc-link")).unwrap();
        let p = w.ws.resolve("alias/doc.md").unwrap();
        assert_eq!(p.rel(), Path::new("alias/doc.md"));
        assert_eq!(w.ws.open_file(&p).unwrap().len, 5);
        let p = w.ws.resolve("doc-link").unwrap();
        assert_eq!(w.ws.open_file(&p).unwrap().len, 5);
        // Writing through the link updates its target and keeps the link.
        w.ws.write_atomic(&p, b"changed").unwrap();
        assert_eq!(w.read("real/doc.md"), "changed");
        assert!(
            fs::symlink_metadata(w.dir.path().join("doc-link"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn the_internal_nexus_directory_is_refused() {
        let w = World::new();
        w.write(".nexus/nexus.db", "db");
        for raw in [
            ".nexus",
            ".nexus/nexus.db",
            "./.nexus/x",
            "a/../.nexus",
            ".NEXUS/x",
        ] {
            let m = denied(w.ws.resolve(raw));
            assert!(m.contains(".nexus/"), "{raw}: {m}");
        }
        // Nor through a symlink that points into it.
        symlink(w.dir.path().join(".nexus"), w.dir.path().join("sneaky")).unwrap();
        denied(w.ws.resolve("sneaky/nexus.db"));
    }

    #[test]
    fn a_dangling_symlink_is_refused() {
        let w = World::new();
        symlink(
            w.outside.path().join("missing"),
            w.dir.path().join("dangling"),
        )
        .unwrap();
        let m = denied(w.ws.resolve("dangling"));
        assert!(m.contains("does not exist"), "{m}");
    }

    #[test]
    fn a_new_file_gets_its_parent_directories_inside() {
        let w = World::new();
        let p = w.ws.resolve("x/y/z.txt").unwrap();
        assert!(!p.exists());
        assert!(w.ws.write_atomic(&p, b"new").unwrap());
        assert_eq!(w.read("x/y/z.txt"), "new");
        let p = w.ws.resolve("x/y/z.txt").unwrap();
        assert!(!w.ws.write_atomic(&p, b"again").unwrap());
        assert_eq!(w.read("x/y/z.txt"), "again");
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(w.dir.path().join("x/y")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn writing_keeps_the_mode_of_an_existing_file() {
        let w = World::new();
        w.write("run.sh", "#!/bin/sh");
        let host = w.dir.path().join("run.sh");
        fs::set_permissions(&host, fs::Permissions::from_mode(0o750)).unwrap();
        let p = w.ws.resolve("run.sh").unwrap();
        w.ws.write_atomic(&p, b"#!/bin/sh\necho hi").unwrap();
        assert_eq!(
            fs::metadata(&host).unwrap().permissions().mode() & 0o777,
            0o750
        );
    }

    #[test]
    fn a_walk_lists_symlinks_without_following_them_and_skips_nexus() {
        let w = World::new();
        w.plant_escapes();
        w.write("b/inner.txt", "i");
        w.write("a.txt", "a");
        w.write(".nexus/nexus.db", "db");
        let mut seen = Vec::new();
        w.ws.walk(&w.ws.resolve(".").unwrap(), true, &mut |e| {
            seen.push((e.rel().display().to_string(), e.kind));
            ControlFlow::Continue(())
        })
        .unwrap();
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["a.txt", "b", "b/inner.txt", "hard", "link-dir", "link-file"]
        );
        assert!(seen.contains(&("link-dir".into(), EntryKind::Symlink)));
    }

    #[test]
    fn trash_moves_a_file_into_nexus_and_refuses_directories() {
        let w = World::new();
        w.write("notes/old.md", "old");
        let p = w.ws.resolve("notes/old.md").unwrap();
        let moved = w.ws.trash(&p).unwrap();
        assert!(moved.starts_with(".nexus/trash"), "{moved:?}");
        assert!(moved.to_string_lossy().ends_with("-old.md"));
        assert_eq!(w.read(moved.to_str().unwrap()), "old");
        assert!(!w.dir.path().join("notes/old.md").exists());
        let dir = w.ws.resolve("notes").unwrap();
        assert!(matches!(w.ws.trash(&dir), Err(SandboxError::Invalid(_))));
    }
}
