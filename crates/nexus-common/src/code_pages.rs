//! The executable's read-only pages, handed back once start-up is over.
//!
//! The kernel maps 64 KiB of an executable around each page fault, and start-up
//! (configuration, connecting, creating streams, migrations, TLS roots) runs code
//! that never runs again: after it, about 10 MiB of each service's 12 MiB of mapped
//! code and constants stayed resident while it idled, most of its idle memory.
//! Dropping the mappings of the executable's read-only segments leaves the file in
//! the page cache; what runs afterwards faults its pages back in (minor faults, no
//! disk read), so the resident set becomes the code in use.

/// Unmaps the pages of the executable's segments that are never written (code,
/// constants, unwind tables); returns the size of the ranges released, resident
/// or not.
/// Writable segments (data, relocated tables) are left alone: their pages may hold
/// what the process wrote, which the file does not.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn release() -> usize {
    use std::ffi::{c_int, c_void};

    unsafe extern "C" fn each_object(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the
        // call, and `data` is the `&mut usize` given to `dl_iterate_phdr` below.
        let (info, released) = unsafe { (&*info, &mut *data.cast::<usize>()) };
        // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        let page = page_size();
        for h in headers {
            if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
                continue;
            }
            let start = info.dlpi_addr as usize + h.p_vaddr as usize;
            let end = start + h.p_memsz as usize;
            // Whole pages inside the segment only: an edge page may be shared with a
            // writable neighbour.
            let (start, end) = (start.next_multiple_of(page), end / page * page);
            if end <= start {
                continue;
            }
            // SAFETY: the range lies inside a read-only, file-backed PT_LOAD of this
            // process's executable, never written (Rust executables have no text
            // relocations): dropping its pages only makes the next access read them
            // from the file again, with the same contents.
            if unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED) } == 0
            {
                *released += end - start;
            }
        }
        // The executable is the first object, and the only one whose file the kernel
        // keeps from being written while it runs (ETXTBSY): the pages read back are the
        // ones dropped. A shared library can be rewritten in place (and is shared anyway).
        1
    }

    let mut released = 0usize;
    // SAFETY: the callback matches the expected signature and only reads the headers
    // the loader hands it; `released` outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(each_object), (&raw mut released).cast());
    }
    released
}

#[cfg(not(target_os = "linux"))]
pub fn release() -> usize {
    0
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// KiB of this test executable's read-only mappings that are resident.
    fn resident_code_kib() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_str().unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields
                .first()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                ours = fields.get(5) == Some(&exe) && !fields[1].contains('w');
            } else if ours && fields.first() == Some(&"Rss:") {
                kib += fields[1].parse::<u64>().unwrap();
            }
        }
        kib
    }

    #[test]
    fn released_code_leaves_memory_and_comes_back_when_it_runs() {
        let before = resident_code_kib();
        let released = release();
        let after = resident_code_kib();
        assert!(released > 0, "nothing read-only found to release");
        assert!(
            after < before,
            "resident read-only pages {before} KiB before, {after} KiB after release"
        );
        // The code this test runs next was just unmapped: it runs all the same.
        let sum: u64 = (1..=1000u64).map(|n| n * n).sum();
        assert_eq!(sum, 333_833_500);
        assert!(resident_code_kib() > 0);
    }
}
