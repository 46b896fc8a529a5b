//! What the harness reads of the machine and of a process: cores and memory, a process's CPU time and memory,
//! and the open-files limit. Linux only (`/proc`); every reading is `None` where it cannot be made.

use serde::Serialize;

/// What the harness reports about the machine with every result.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
}

impl Machine {
    pub fn here() -> Machine {
        let memory_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| kib_field(&m, "MemTotal"));
        Machine {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: memory_kib.unwrap_or(0) as f64 / 1024.0 / 1024.0,
        }
    }
}

/// A `Name:   1234 kB` line of a /proc file, in KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// A field of `/proc/{pid}/status` in KiB (`VmRSS`: resident now, `VmHWM`: the peak).
fn status_kib(pid: u32, name: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, name)
}

/// Resident memory of a process now, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// CPU time (user + system, seconds) and peak resident memory (KiB) of a process.
pub fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is 14th, stime 15th overall, in clock ticks
    // of 1/100 s.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((ticks / 100.0, status_kib(pid, "VmHWM")?))
}

/// Raises this process's open-files limit (the soft one, which children inherit) toward `wanted`, as far as the
/// hard limit allows, and returns the limit now in force.
pub fn raise_open_files(wanted: u64) -> u64 {
    let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else { return 0 };
    let target = wanted.min(hard);
    if target > soft && rlimit::setrlimit(rlimit::Resource::NOFILE, target, hard).is_ok() {
        return target;
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_read() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
        let (cpu, peak) = process_usage(me).expect("stat and status");
        assert!(cpu >= 0.0 && peak >= rss_kib(me).unwrap() / 2);
        assert!(Machine::here().memory_gib > 0.0);
        assert!(raise_open_files(64) >= 64);
        assert_eq!(kib_field("VmRSS:\t  1234 kB\nVmHWM: 9 kB", "VmHWM"), Some(9));
    }
}
