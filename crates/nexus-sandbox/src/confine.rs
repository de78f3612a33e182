//! What confines the command beyond its namespaces: no capabilities, rlimits,
//! landlock (a second wall around the files) and seccomp (no system call a command
//! never needs: mounts, namespaces, tracing, the kernel keyring, bpf, modules, …).

use std::collections::BTreeMap;

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    path_beneath_rules,
};
use nix::sys::resource::{Resource, setrlimit};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::{Context, Options, Result, fs::WORKSPACE, sys};

const MIB: u64 = 1024 * 1024;
/// Open files per process.
const MAX_OPEN_FILES: u64 = 1024;

/// No capability can come back, whatever the command executes.
pub fn drop_capabilities() -> Result<()> {
    sys::drop_capability_sets()?;
    nix::sys::prctl::set_no_new_privs().ctx("set no_new_privs")
}

pub fn rlimits(o: &Options) -> Result<()> {
    let limits = [
        (Resource::RLIMIT_AS, o.memory_mb * MIB, "memory"),
        // The soft limit sends SIGXCPU, the hard one SIGKILL a second later.
        (Resource::RLIMIT_CPU, o.cpu_secs, "CPU time"),
        (Resource::RLIMIT_NPROC, o.max_processes, "processes"),
        (Resource::RLIMIT_NOFILE, MAX_OPEN_FILES, "open files"),
        (Resource::RLIMIT_FSIZE, o.max_file_mb * MIB, "file size"),
        (Resource::RLIMIT_CORE, 0, "core dumps"),
    ];
    for (resource, value, what) in limits {
        let hard = if resource == Resource::RLIMIT_CPU {
            value + 1
        } else {
            value
        };
        setrlimit(resource, value, hard).ctx(&format!("limit {what}"))?;
    }
    Ok(())
}

/// Reads only below the system directories, reads and writes only in the
/// workspace, /tmp and /dev/shm, and no signals or abstract sockets out of the
/// sandbox. Returns what the kernel enforced, for the probe's report.
pub fn landlock() -> Result<String> {
    let abi = ABI::V6;
    let read_only = [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/dev",
    ];
    let writable = [
        WORKSPACE,
        "/tmp",
        "/dev/shm",
        "/dev/null",
        "/dev/zero",
        "/dev/full",
    ];
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(read_only, AccessFs::from_read(abi))))
        .and_then(|r| r.add_rules(path_beneath_rules(writable, AccessFs::from_all(abi))))
        // Listing `/` shows only what this sandbox put there.
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], AccessFs::ReadDir)))
        .and_then(|r| r.restrict_self())
        .ctx("landlock")?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "landlock".to_owned(),
        RulesetStatus::PartiallyEnforced => "landlock (partly: an older kernel)".to_owned(),
        RulesetStatus::NotEnforced => "no landlock (the kernel does not offer it)".to_owned(),
    })
}

/// System calls refused with EPERM.
fn denied() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_vhangup,
        libc::SYS_fanotify_init,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_uselib]);
    calls
}

fn filter(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram> {
    let arch = std::env::consts::ARCH
        .try_into()
        .ctx("seccomp architecture")?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .ctx("seccomp filter")?;
    filter.try_into().ctx("seccomp program")
}

/// Installs the filters (after no_new_privs). Another architecture's system
/// calls (32-bit int 0x80) kill the process.
pub fn seccomp() -> Result<()> {
    let masked = |flag: libc::c_int| -> Result<SeccompRule> {
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag as u64),
            flag as u64,
        )
        .ctx("seccomp condition")?;
        SeccompRule::new(vec![cond]).ctx("seccomp rule")
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        denied().into_iter().map(|nr| (nr, Vec::new())).collect();
    // clone may make threads and processes, never namespaces.
    let namespaces = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ];
    rules.insert(
        libc::SYS_clone,
        namespaces.into_iter().map(masked).collect::<Result<_>>()?,
    );
    // No faking input on a terminal. (The request's type differs between architectures.)
    #[allow(clippy::unnecessary_cast)]
    let tiocsti = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::TIOCSTI as u64,
    )
    .ctx("seccomp condition")?;
    rules.insert(
        libc::SYS_ioctl,
        vec![SeccompRule::new(vec![tiocsti]).ctx("seccomp rule")?],
    );
    let deny = filter(rules, libc::EPERM)?;
    // clone3's flags sit behind a pointer a filter cannot read: ENOSYS makes the C
    // library fall back to clone, whose flags it can.
    let clone3 = filter(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        libc::ENOSYS,
    )?;
    seccompiler::apply_filter(&deny).ctx("install seccomp")?;
    seccompiler::apply_filter(&clone3).ctx("install seccomp")
}
