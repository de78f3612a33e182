//! The system calls that need `unsafe`: fork, signal dispositions, capabilities,
//! an interface flag, and the new mount API (open_tree, mount_setattr,
//! move_mount), which nix does not wrap. Each call says why it is sound.

use std::{
    ffi::CString,
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    },
    path::Path,
};

use nix::{
    fcntl::OFlag,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sched::{CloneFlags, unshare},
    sys::{
        signal::{SigHandler, Signal, signal},
        wait::waitpid,
    },
    unistd::{ForkResult, Pid, pipe2},
};

use crate::{Context, Result};

/// Forks; `None` in the child. The helper is single-threaded, so the child may
/// allocate and run Rust code as usual.
pub fn fork() -> Result<Option<Pid>> {
    // SAFETY: this program never starts a thread, so no lock can be held by a
    // thread that does not exist in the child.
    match unsafe { nix::unistd::fork() }.ctx("fork")? {
        ForkResult::Child => Ok(None),
        ForkResult::Parent { child } => Ok(Some(child)),
    }
}

/// Ends the process at once, without unwinding or flushing.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// `O_PATH` handle of a directory, so it can be mounted after other mounts hide its path.
pub fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    Ok(file.into())
}

/// Whether the other end of a pipe is closed (its holder died).
pub fn closed(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// A new user namespace with the given maps, written by this (root) process; the
/// namespace lives as long as the returned descriptor.
pub fn userns_with_maps(uid_map: &str, gid_map: &str) -> Result<OwnedFd> {
    let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC).ctx("pipe")?;
    let (hold_r, hold_w) = pipe2(OFlag::O_CLOEXEC).ctx("pipe")?;
    let Some(child) = fork()? else {
        drop((ready_r, hold_w));
        let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
        let _ = File::from(ready_w).write_all(&[ok as u8]);
        // Wait until the parent has what it needs (it closes its end).
        let _ = File::from(hold_r).read(&mut [0u8]);
        exit_now(0);
    };
    drop((ready_w, hold_r));
    let mut ok = [0u8];
    let made = File::from(ready_r)
        .read(&mut ok)
        .map(|n| n == 1 && ok[0] == 1);
    let result = (|| {
        if !made.unwrap_or(false) {
            return Err("cannot create a user namespace (user.max_user_namespaces?)".to_owned());
        }
        let proc = format!("/proc/{child}");
        std::fs::write(format!("{proc}/uid_map"), uid_map).ctx("write uid_map")?;
        std::fs::write(format!("{proc}/gid_map"), gid_map).ctx("write gid_map")?;
        let ns = File::open(format!("{proc}/ns/user")).ctx("open the user namespace")?;
        Ok(OwnedFd::from(ns))
    })();
    drop(hold_w);
    let _ = waitpid(child, None);
    result
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Flags a bind mount gets.
#[derive(Clone, Copy)]
pub enum Attr {
    /// Read-only, no setuid, no devices.
    ReadOnly,
    /// No setuid, no devices.
    NoSuidDev,
}

impl Attr {
    fn bits(self) -> u64 {
        match self {
            Self::ReadOnly => MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            Self::NoSuidDev => MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        }
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} has a NUL byte", path.display()))
}

fn check(ret: libc::c_long, what: &str) -> Result<libc::c_long> {
    if ret < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

/// Sets `attr` on the mount at `path` and every mount below it.
pub fn set_attr(path: &Path, attr: Attr) -> Result<()> {
    let p = c_path(path)?;
    let a = MountAttr {
        attr_set: attr.bits(),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `p` is a valid C string and `a` a valid mount_attr of the size given;
    // both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            AT_RECURSIVE,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(
        ret,
        &format!(
            "make {} {}",
            path.display(),
            match attr {
                Attr::ReadOnly => "read-only",
                Attr::NoSuidDev => "nosuid",
            }
        ),
    )
    .map(drop)
}

/// A detached copy of the mount at `dir` in which files owned by the host's root
/// appear owned by the root of `userns` (the command's user), so a command that
/// runs as an unprivileged host user can write a workspace that root owns.
pub fn idmapped_clone(dir: &OwnedFd, userns: &OwnedFd) -> Result<OwnedFd> {
    let empty = c"";
    // SAFETY: `dir` is an open descriptor and `empty` a valid C string.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            empty.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    let tree = check(tree, "clone the workspace mount")?;
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    let a = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | Attr::NoSuidDev.bits(),
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: valid descriptor, C string and mount_attr of the size given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(
        ret,
        "map the workspace's owner for the command (an idmapped mount: Linux 5.12+ and a \
         filesystem that supports it; or run tool-runner as a non-root user)",
    )?;
    Ok(tree)
}

/// Attaches a detached mount at `target`.
pub fn move_mount(tree: &OwnedFd, target: &Path) -> Result<()> {
    let t = c_path(target)?;
    // SAFETY: valid descriptor and C strings that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(ret, "mount the workspace").map(drop)
}

/// `struct ifreq` with the flags member, as SIOCGIFFLAGS/SIOCSIFFLAGS use it.
#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Brings up `lo` in the command's own network namespace, so programs can talk
/// to themselves over 127.0.0.1 (nothing outside is reachable).
pub fn loopback_up() -> Result<()> {
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd as libc::c_long, "open a socket")?;
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: `req` is a properly sized ifreq that outlives both calls.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    check(ret as libc::c_long, "read the loopback flags")?;
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: as above.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    check(ret as libc::c_long, "bring up the loopback interface").map(drop)
}

/// Drops every capability from the bounding set and the ambient set, so nothing
/// the command executes can gain one.
pub fn drop_capability_sets() -> Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(format!("drop capability {cap}: {e}"));
        }
    }
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(ret as libc::c_long, "clear ambient capabilities").map(drop)
}

/// What a program expects at exec: default SIGPIPE (Rust ignores it, and ignored
/// signals survive exec), and no descriptors beyond 0, 1 and 2.
pub fn prepare_exec() {
    // SAFETY: restoring a default disposition installs no handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    // SAFETY: close_range with integer arguments; every descriptor above 2 is ours
    // and none is used after this point.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}
