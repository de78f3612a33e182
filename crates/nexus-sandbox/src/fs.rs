//! The command's filesystem, built on a tmpfs and made its root with pivot_root:
//!
//! - `/usr` and the `/bin`, `/lib*` links or directories of the host, read-only;
//! - `/etc` with a short allow-list of the host's files (no shadow, no ssh keys,
//!   no credentials) and its own passwd, group, hostname and hosts;
//! - `/workspace`, the only writable place that outlives the command, with
//!   `.nexus/` covered by an empty read-only tmpfs;
//! - a private `/tmp` and `/dev/shm`, a minimal `/dev`, and a fresh `/proc` of the
//!   command's own PID namespace.
//!
//! Nothing else of the host is there: no home directories, no /run, no /sys.

use std::{
    os::{fd::AsRawFd, fd::OwnedFd, unix::fs::symlink},
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    unistd::{chdir, pivot_root},
};

use crate::{
    Context, Options, Result,
    sys::{self, Attr},
};

/// Where the new root is put together (a tmpfs over it, in our mount namespace only).
const NEW_ROOT: &str = "/tmp";
/// The workspace inside.
pub const WORKSPACE: &str = "/workspace";
/// Nexus's own state in the workspace; the command must never see it.
const INTERNAL_DIR: &str = ".nexus";
/// Host top-level entries that programs need, as links or read-only directories.
const SYSTEM_DIRS: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Entries of the host's /etc a command may read; everything else stays out.
const ETC_ALLOWED: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "magic",
    "magic.mime",
    "mime.types",
    "networks",
    "nsswitch.conf",
    "os-release",
    "perl",
    "protocols",
    "services",
    "shells",
    "ssl/certs",
    "ssl/openssl.cnf",
    "terminfo",
    "timezone",
];
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// Makes sure `<workspace>/.nexus` is a real directory, so it can be covered.
pub fn ensure_internal_dir(ws: &Path) -> Result<()> {
    let dir = ws.join(INTERNAL_DIR);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "{} is not a directory; refusing to run with it visible",
            dir.display()
        )),
        // Another sandbox (a second replica's probe) may create it first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ensure_internal_dir(ws),
            r => r.ctx("create the workspace's .nexus"),
        },
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

fn tmpfs(target: &Path, options: &str, extra: MsFlags) -> Result<()> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra,
        Some(options),
    )
    .ctx(&format!("mount a tmpfs on {}", target.display()))
}

fn remount_read_only(target: &Path, extra: MsFlags) -> Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra,
        None::<&str>,
    )
    .ctx(&format!("make {} read-only", target.display()))
}

fn bind(source: &Path, target: &Path) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(&format!("bind {}", source.display()))
}

/// Binds `source` (a file or a directory tree) read-only at `target`, creating it.
fn bind_read_only(source: &Path, target: &Path) -> Result<()> {
    let meta = std::fs::metadata(source).ctx(&source.display().to_string())?;
    if meta.is_dir() {
        std::fs::create_dir_all(target).ctx(&format!("create {}", target.display()))?;
    } else {
        std::fs::write(target, "").ctx(&format!("create {}", target.display()))?;
    }
    bind(source, target)?;
    sys::set_attr(target, Attr::ReadOnly)
}

/// Recreates a host symlink, or binds what is there read-only; skips what is missing.
fn mirror(host: &Path, target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(host) {
        Ok(m) if m.file_type().is_symlink() => {
            let to = std::fs::read_link(host).ctx(&host.display().to_string())?;
            symlink(to, target).ctx(&format!("link {}", target.display()))
        }
        Ok(_) => bind_read_only(host, target),
        Err(_) => Ok(()),
    }
}

/// Builds the command's root and pivots into it; the working directory is then
/// the workspace. `idmap` (run as root) maps the workspace's owner for the command.
pub fn build(o: &Options, ws_path: &Path, idmap: Option<&OwnedFd>) -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .ctx("make the mounts private")?;
    // Opened in this mount namespace, before the new root's tmpfs can hide the
    // workspace (it may live under /tmp).
    let workspace = sys::open_path(ws_path).ctx("open the workspace")?;
    let tree = idmap
        .map(|userns| sys::idmapped_clone(&workspace, userns))
        .transpose()?;
    let ws_source = PathBuf::from(format!("/proc/self/fd/{}", workspace.as_raw_fd()));

    let root = Path::new(NEW_ROOT);
    tmpfs(root, "size=1m,nr_inodes=1024,mode=0755", MsFlags::empty())?;
    for dir in ["usr", "etc", "tmp", "dev", "proc", "workspace"] {
        std::fs::create_dir(root.join(dir)).ctx(&format!("create /{dir}"))?;
    }
    for name in SYSTEM_DIRS {
        mirror(&Path::new("/").join(name), &root.join(name))?;
    }
    bind(Path::new("/usr"), &root.join("usr"))?;
    sys::set_attr(&root.join("usr"), Attr::ReadOnly)?;
    etc(&root.join("etc"), o.network)?;
    tmpfs(
        &root.join("tmp"),
        &format!("size={}m,nr_inodes=65536,mode=1777", o.max_file_mb.max(64)),
        MsFlags::empty(),
    )?;
    dev(&root.join("dev"))?;

    let ws = root.join("workspace");
    match tree {
        Some(tree) => sys::move_mount(&tree, &ws)?,
        None => {
            bind(&ws_source, &ws)?;
            sys::set_attr(&ws, Attr::NoSuidDev)?;
        }
    }
    // Mounted through a descriptor opened without following links, so a link
    // planted as .nexus could not redirect the cover.
    let internal = sys::open_path(&ws.join(INTERNAL_DIR))
        .ctx("the workspace's .nexus is not a plain directory")?;
    tmpfs(
        Path::new(&format!("/proc/self/fd/{}", internal.as_raw_fd())),
        "size=4k,nr_inodes=16,mode=0500",
        MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC,
    )?;
    drop(internal);

    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .ctx("mount /proc")?;
    remount_read_only(root, MsFlags::empty())?;

    chdir(root).ctx("enter the new root")?;
    pivot_root(".", ".").ctx("pivot_root")?;
    // The old root now sits on top of the new one; detaching it leaves only ours.
    umount2(".", MntFlags::MNT_DETACH).ctx("detach the host's root")?;
    chdir(WORKSPACE).ctx("enter the workspace")
}

fn etc(dir: &Path, network: bool) -> Result<()> {
    tmpfs(dir, "size=1m,nr_inodes=4096,mode=0755", MsFlags::MS_NOEXEC)?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).ctx(&format!("write /etc/{name}"))
    };
    write(
        "passwd",
        "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/tmp:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    write("group", "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n")?;
    write("hostname", "sandbox\n")?;
    write("hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n")?;
    std::fs::create_dir(dir.join("ssl")).ctx("create /etc/ssl")?;
    let host = Path::new("/etc");
    let pythons = std::fs::read_dir(host)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("python3"));
    for name in ETC_ALLOWED.iter().map(|n| (*n).to_owned()).chain(pythons) {
        mirror(&host.join(&name), &dir.join(&name))?;
    }
    if network {
        // Often a link into /run, which is not there: bind the file it names.
        if let Ok(resolv) = std::fs::canonicalize(host.join("resolv.conf")) {
            bind_read_only(&resolv, &dir.join("resolv.conf"))?;
        }
    }
    remount_read_only(dir, MsFlags::MS_NOEXEC)
}

fn dev(dir: &Path) -> Result<()> {
    tmpfs(dir, "size=64k,nr_inodes=64,mode=0755", MsFlags::MS_NOEXEC)?;
    for name in DEVICES {
        let target = dir.join(name);
        std::fs::write(&target, "").ctx(&format!("create /dev/{name}"))?;
        mount(
            Some(&Path::new("/dev").join(name)),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(&format!("bind /dev/{name}"))?;
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dir.join(name)).ctx(&format!("link /dev/{name}"))?;
    }
    let shm = dir.join("shm");
    std::fs::create_dir(&shm).ctx("create /dev/shm")?;
    tmpfs(&shm, "size=64m,mode=1777", MsFlags::MS_NOEXEC)?;
    remount_read_only(dir, MsFlags::MS_NOEXEC)
}
