//! `nexus-sandbox`: runs one shell command in a sandbox and exits with its status.
//! tool-runner's `exec` starts it; nothing else should.
//!
//! ```text
//! nexus-sandbox [--probe] --workspace DIR [--network] --memory-mb N --cpu-secs N
//!               --max-processes N --max-file-mb N --wall-secs N [--uid U --gid G] -- COMMAND
//! ```
//!
//! The command runs as `/bin/sh -c COMMAND` in `/workspace` with fresh user, mount,
//! PID, IPC, UTS and (unless `--network`) network namespaces; a root filesystem of
//! its own in which the workspace is the only writable place that outlives it
//! (`fs.rs`); landlock, seccomp, rlimits and no capabilities (`confine.rs`); and an
//! environment built from scratch. Run as root, it runs the command as the host
//! user `--uid`/`--gid` (default nobody), with the workspace mounted idmapped so the
//! command can still write it.
//!
//! Exit status: the command's, 128 + the signal when it was killed, and
//! [`SETUP_FAILED`] with a line `nexus-sandbox: …` on stderr when the sandbox could
//! not be set up. `--probe` also prints what was enforced, one line on stdout.
//!
//! It is a program of its own because a process with threads (tool-runner's tokio
//! runtime) cannot enter a new user namespace, and because namespaces and mounts
//! need raw system calls (`unsafe`, kept in `sys.rs`, out of the services). It must
//! stay single-threaded, and must never run the command when any step of the setup
//! failed.

#![allow(unsafe_code)] // fork, signal dispositions and the mount API nix lacks: sys.rs

mod confine;
mod fs;
mod sys;

use std::{
    ffi::CString,
    fmt::Display,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    sched::{CloneFlags, setns, unshare},
    sys::{
        signal::Signal,
        wait::{WaitStatus, waitpid},
    },
    unistd::{Gid, Pid, Uid, alarm, execve, pipe2, setgroups, sethostname, setresgid, setresuid},
};

/// Exit status when the sandbox could not be set up (as `docker run` uses it).
pub const SETUP_FAILED: i32 = 125;
/// Who the command is inside its user namespace.
const INSIDE_UID: u32 = 1000;
const INSIDE_GID: u32 = 1000;
/// The backstop alarm fires this long after `--wall-secs` (tool-runner kills first).
const ALARM_GRACE_SECS: u64 = 5;

/// What tool-runner asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    probe: bool,
    workspace: PathBuf,
    network: bool,
    memory_mb: u64,
    cpu_secs: u64,
    max_processes: u64,
    max_file_mb: u64,
    wall_secs: u64,
    /// Host ids of the command when this runs as root.
    uid: u32,
    gid: u32,
    command: String,
}

type Result<T> = std::result::Result<T, String>;

/// `.ctx("what was tried")` turns any error into the one line the helper reports.
trait Context<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

fn main() {
    let code = match parse(std::env::args().skip(1)).and_then(|o| run(&o)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nexus-sandbox: {e}");
            SETUP_FAILED
        }
    };
    std::process::exit(code);
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options> {
    let mut o = Options {
        probe: false,
        workspace: PathBuf::new(),
        network: false,
        memory_mb: 1024,
        cpu_secs: 60,
        max_processes: 128,
        max_file_mb: 256,
        wall_secs: 60,
        uid: 65534,
        gid: 65534,
        command: String::new(),
    };
    let mut args = args.peekable();
    let mut command = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| -> Result<u64> {
            v.parse()
                .map_err(|_| format!("{name} {v:?} is not a number"))
        };
        match arg.as_str() {
            "--probe" => o.probe = true,
            "--network" => o.network = true,
            "--workspace" => o.workspace = value(&arg)?.into(),
            "--memory-mb" => o.memory_mb = number(&arg, value(&arg)?)?,
            "--cpu-secs" => o.cpu_secs = number(&arg, value(&arg)?)?,
            "--max-processes" => o.max_processes = number(&arg, value(&arg)?)?,
            "--max-file-mb" => o.max_file_mb = number(&arg, value(&arg)?)?,
            "--wall-secs" => o.wall_secs = number(&arg, value(&arg)?)?,
            "--uid" => o.uid = number(&arg, value(&arg)?)? as u32,
            "--gid" => o.gid = number(&arg, value(&arg)?)? as u32,
            "--" => {
                command = args.next();
                if args.next().is_some() {
                    return Err("give the command as one argument after --".into());
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    o.command = command.ok_or("no command given after --")?;
    if o.workspace.as_os_str().is_empty() {
        return Err("--workspace is required".into());
    }
    Ok(o)
}

/// How the command gets its user namespace.
enum Ids {
    /// Not root: the helper enters a new user namespace itself, mapping its own ids.
    User,
    /// Root: namespaces prepared as root; the command then enters `own` (its ids
    /// mapped to `--uid`), and `idmap` maps the workspace's root-owned files to them.
    Root { idmap: OwnedFd, own: OwnedFd },
}

fn run(o: &Options) -> Result<i32> {
    let ws = std::fs::canonicalize(&o.workspace).ctx("the workspace")?;
    fs::ensure_internal_dir(&ws)?;
    alarm::set((o.wall_secs + ALARM_GRACE_SECS).min(u32::MAX as u64) as u32);
    // Closed when this process dies, so the command's init knows (see `init`).
    let (alive_r, alive_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx("pipe")?;

    let mut others = CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if !o.network {
        others |= CloneFlags::CLONE_NEWNET;
    }
    let ids = if Uid::effective().is_root() {
        let idmap = sys::userns_with_maps(&format!("0 {} 1", o.uid), &format!("0 {} 1", o.gid))?;
        let own = sys::userns_with_maps(
            &format!("{INSIDE_UID} {} 1", o.uid),
            &format!("{INSIDE_GID} {} 1", o.gid),
        )?;
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)
            .ctx("create mount and PID namespaces")?;
        Ids::Root { idmap, own }
    } else {
        let (uid, gid) = (Uid::effective(), Gid::effective());
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | others)
            .ctx("create namespaces (are unprivileged user namespaces allowed? see kernel.unprivileged_userns_clone, user.max_user_namespaces and AppArmor's restrict_unprivileged_userns)")?;
        std::fs::write("/proc/self/setgroups", "deny").ctx("write setgroups")?;
        std::fs::write("/proc/self/uid_map", format!("{INSIDE_UID} {uid} 1"))
            .ctx("write uid_map")?;
        std::fs::write("/proc/self/gid_map", format!("{INSIDE_GID} {gid} 1"))
            .ctx("write gid_map")?;
        Ids::User
    };

    // The first child is PID 1 of the new PID namespace: when it exits, the kernel
    // kills every process the command left behind.
    match sys::fork()? {
        None => {
            drop(alive_w);
            let code = init(o, &ws, &ids, others, &alive_r).unwrap_or_else(|e| {
                eprintln!("nexus-sandbox: {e}");
                SETUP_FAILED
            });
            std::process::exit(code)
        }
        Some(child) => {
            drop(alive_r);
            let status = wait_for(child);
            drop(alive_w);
            status
        }
    }
}

/// PID 1 of the sandbox: builds its world, confines itself, runs the command and
/// waits for it (reaping orphans meanwhile).
fn init(o: &Options, ws: &Path, ids: &Ids, others: CloneFlags, alive: &OwnedFd) -> Result<i32> {
    let idmap = match ids {
        Ids::Root { idmap, .. } => Some(idmap),
        Ids::User => None,
    };
    fs::build(o, ws, idmap)?;
    if let Ids::Root { own, .. } = ids {
        setns(own.as_fd(), CloneFlags::CLONE_NEWUSER).ctx("enter the command's user namespace")?;
        unshare(others).ctx("create IPC, UTS and network namespaces")?;
    }
    sethostname("sandbox").ctx("set the host name")?;
    if !o.network {
        sys::loopback_up()?;
    }
    if let Ids::Root { .. } = ids {
        setgroups(&[]).ctx("drop supplementary groups")?;
        let gid = Gid::from_raw(INSIDE_GID);
        setresgid(gid, gid, gid).ctx("set the group")?;
        let uid = Uid::from_raw(INSIDE_UID);
        setresuid(uid, uid, uid).ctx("set the user")?;
    }
    confine::drop_capabilities()?;
    // Set after the last change of ids, which clears it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx("set the parent-death signal")?;
    if sys::closed(alive) {
        return Err("the helper died during set-up".into());
    }
    confine::rlimits(o)?;
    let landlock = confine::landlock()?;
    confine::seccomp()?;
    if o.probe {
        println!(
            "namespaces (user, mount, pid, ipc, uts{}), private root, {landlock}, seccomp, rlimits",
            if o.network { "" } else { ", net" }
        );
    }

    let command = sys::fork()?;
    let Some(command) = command else {
        exec_shell(&o.command);
    };
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => return Ok(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                return Ok(128 + signal as i32);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("wait for the command: {e}")),
        }
    }
}

/// Replaces this process with `/bin/sh -c command` in an environment of our making.
fn exec_shell(command: &str) -> ! {
    sys::prepare_exec();
    let c = |s: &str| CString::new(s).unwrap_or_default();
    let argv = [c("sh"), c("-c"), CString::new(command).unwrap_or_default()];
    let env = [
        "PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        "HOME=/tmp",
        "TMPDIR=/tmp",
        "PWD=/workspace",
        "USER=sandbox",
        "LOGNAME=sandbox",
        "SHELL=/bin/sh",
        "LANG=C.UTF-8",
        "TERM=dumb",
    ]
    .map(c);
    let e = execve(&c("/bin/sh"), &argv, &env).err();
    eprintln!("nexus-sandbox: cannot run /bin/sh: {e:?}");
    sys::exit_now(127)
}

/// The child's exit status, 128 + signal when killed.
fn wait_for(child: Pid) -> Result<i32> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("wait for the sandbox: {e}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> impl Iterator<Item = String> {
        s.iter()
            .map(|a| (*a).to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_command_line_is_parsed_and_the_command_is_one_argument() {
        let o = parse(args(&[
            "--workspace",
            "/w",
            "--network",
            "--memory-mb",
            "64",
            "--wall-secs",
            "3",
            "--",
            "echo hi; ls",
        ]))
        .unwrap();
        assert_eq!(o.workspace, PathBuf::from("/w"));
        assert!(o.network && !o.probe);
        assert_eq!((o.memory_mb, o.wall_secs), (64, 3));
        assert_eq!(o.command, "echo hi; ls");
        for bad in [
            &["--workspace", "/w"][..],
            &["--", "true"],
            &["--workspace", "/w", "--memory-mb", "lots", "--", "true"],
            &["--workspace", "/w", "--", "echo", "two"],
            &["--bogus"],
        ] {
            assert!(parse(args(bad)).is_err(), "{bad:?}");
        }
    }
}
