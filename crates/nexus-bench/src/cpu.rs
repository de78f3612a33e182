//! Where a turn's CPU goes: each process's user + system time from `/proc`,
//! read before and after a load, divided by the turns it served.

use std::collections::BTreeMap;

/// `/proc/<pid>/stat` counts in USER_HZ, which Linux fixes at 100 for user space.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds used so far, by process name: `nexus up` and its children, every
/// `nats-server` on the machine (the bench's NATS is one of them; run it on a quiet
/// machine), and the bench itself (the load driver).
pub fn sample(up_pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut add = |name: String, pid: u32| {
        if let Some(secs) = cpu_secs(pid) {
            *out.entry(name).or_insert(0.0) += secs;
        }
    };
    add("nexus up".into(), up_pid);
    add("nexus-bench (the load)".into(), std::process::id());
    for c in super::children(up_pid) {
        add(c.name, c.pid);
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "nats-server" {
                add("nats-server".into(), pid);
            }
        }
    }
    out
}

/// CPU milliseconds per turn by process between two samples, largest first.
pub fn per_turn(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    turns: usize,
) -> Vec<(String, f64)> {
    let mut out: Vec<_> = after
        .iter()
        .map(|(name, secs)| {
            let used = secs - before.get(name).copied().unwrap_or(0.0);
            (name.clone(), used * 1000.0 / turns.max(1) as f64)
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name is in parentheses and may hold spaces: fields count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_per_turn_divides_the_difference() {
        let mut spent = 0u64;
        for i in 0..20_000_000u64 {
            spent = spent.wrapping_add(i.rotate_left(3));
        }
        assert_ne!(spent, 1);
        assert!(cpu_secs(std::process::id()).unwrap() > 0.0);
        let before = BTreeMap::from([("a".to_owned(), 1.0)]);
        let after = BTreeMap::from([("a".to_owned(), 3.0), ("b".to_owned(), 0.5)]);
        assert_eq!(
            per_turn(&before, &after, 1000),
            vec![("a".to_owned(), 2.0), ("b".to_owned(), 0.5)]
        );
    }
}
