//! glibc's allocator, tuned for services that idle between bursts of work.
//!
//! Memory a burst freed stays in glibc's heaps: it only gives back the free space at
//! the top of the main heap, and the rest counts as resident until something reuses
//! it. After a load the bench measured that as growth (memory-svc about +5 MiB over
//! 20,000 turns, half of it free memory that `malloc_trim` returned). So every
//! service hands its free pages back once a spell of work has ended, and at its
//! first idle moment the code pages only its start-up ran ([`crate::code_pages`]).

use std::time::Duration;

/// How often the trimmer looks at the CPU the process used.
const TICK: Duration = Duration::from_millis(500);
/// Less CPU than this in a tick is idle (a service waiting on NATS uses none).
const IDLE_CPU: Duration = Duration::from_millis(2);
/// At least this much CPU since the last trim is a spell of work worth a trim.
const WORK_CPU: Duration = Duration::from_millis(50);

/// Starts a thread that calls `malloc_trim` once the process goes idle after work
/// (no other time: a trim walks every heap, locking each in turn), and releases the
/// start-up's code pages at the first idle tick. glibc only.
pub fn trim_when_idle() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        // It allocates nothing; the smallest stack the platform allows will do.
        .stack_size(64 * 1024)
        .spawn(|| {
            let mut trimmer = Trimmer::default();
            let mut last = cpu_time();
            loop {
                std::thread::sleep(TICK);
                let now = cpu_time();
                let tick = trimmer.after_tick(now.saturating_sub(last));
                if tick.release_code {
                    let released = crate::code_pages::release();
                    tracing::debug!(kib = released / 1024, "start-up over: code pages released");
                }
                if tick.trim {
                    trim();
                    // The trim's own CPU is not work.
                    last = cpu_time();
                } else {
                    last = now;
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "memory is not trimmed when idle: no thread for it");
    }
}

/// Decides, tick by tick, when to trim: at the first idle tick after enough work.
#[derive(Debug, Default)]
struct Trimmer {
    worked: Duration,
    started: bool,
}

/// What to do after a tick.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tick {
    trim: bool,
    /// The first idle tick: start-up is over.
    release_code: bool,
}

impl Trimmer {
    /// `used`: the CPU the process used during the tick that just ended.
    fn after_tick(&mut self, used: Duration) -> Tick {
        if used >= IDLE_CPU {
            self.worked += used;
            return Tick::default();
        }
        let release_code = !std::mem::replace(&mut self.started, true);
        if self.worked < WORK_CPU {
            return Tick {
                trim: false,
                release_code,
            };
        }
        self.worked = Duration::ZERO;
        Tick {
            trim: true,
            release_code,
        }
    }
}

/// CPU time of the whole process, every thread.
#[allow(unsafe_code)]
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim is thread-safe; it only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Limits glibc to two malloc arenas (unless `MALLOC_ARENA_MAX` is set). glibc gives
/// every thread that allocates an arena of its own, up to eight per core, and freed
/// memory stays in each. Call it before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: runs before any other thread exists; mallopt only sets a limit
        // that glibc reads when it next creates an arena.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn it_trims_at_the_first_idle_tick_after_enough_work_and_only_then() {
        let mut t = Trimmer::default();
        let nothing = Tick::default();
        let trim = Tick {
            trim: true,
            release_code: false,
        };
        assert!(
            !t.after_tick(Duration::ZERO).trim,
            "idle from the start: nothing to give back"
        );
        assert_eq!(t.after_tick(30 * MS), nothing);
        assert_eq!(t.after_tick(30 * MS), nothing, "still working");
        assert_eq!(
            t.after_tick(Duration::ZERO),
            trim,
            "idle after 60 ms of work"
        );
        assert_eq!(
            t.after_tick(Duration::ZERO),
            nothing,
            "one trim per spell of work"
        );
        assert_eq!(t.after_tick(10 * MS), nothing);
        assert_eq!(
            t.after_tick(MS),
            nothing,
            "10 ms of work is not worth a trim"
        );
    }

    #[test]
    fn start_up_code_is_released_at_the_first_idle_tick_only() {
        let mut t = Trimmer::default();
        assert_eq!(t.after_tick(80 * MS), Tick::default(), "still starting");
        assert_eq!(
            t.after_tick(MS),
            Tick {
                trim: true,
                release_code: true
            }
        );
        assert_eq!(t.after_tick(80 * MS), Tick::default());
        assert!(
            !t.after_tick(Duration::ZERO).release_code,
            "once per process"
        );
    }

    #[test]
    fn the_cpu_clock_counts_this_process_working() {
        let before = cpu_time();
        let mut x = 0u64;
        while cpu_time() < before + 20 * MS {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time() >= before + 20 * MS && x > 0);
    }

    /// The premise: free memory in the middle of a heap stays resident until trimmed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_gives_back_memory_freed_below_live_memory() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        // 64 MiB in 4 KiB blocks, written so they are resident; the last one stays
        // live, so none of it is at the top of the heap where free() trims by itself.
        let mut blocks: Vec<Vec<u8>> = (0..16 * 1024).map(|_| vec![1u8; 4096]).collect();
        let keep = blocks.pop();
        let full = rss_kib();
        drop(blocks);
        let freed = rss_kib();
        trim();
        let trimmed = rss_kib();
        drop(keep);
        assert!(
            freed > trimmed + 32 * 1024,
            "RSS {full} KiB full, {freed} KiB freed, {trimmed} KiB trimmed"
        );
    }
}
