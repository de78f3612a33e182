//! Signals to child processes (the `nexus up` supervisor and test harnesses).

/// Asks a process to stop (SIGTERM). Returns false when it no longer exists.
pub fn terminate(pid: u32) -> bool {
    send(pid, libc::SIGTERM)
}

/// Kills a process at once (SIGKILL), as a crash would. Returns false when it no longer exists.
pub fn kill(pid: u32) -> bool {
    send(pid, libc::SIGKILL)
}

#[allow(unsafe_code)]
fn send(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) == 0 }
}
