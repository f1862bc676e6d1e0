//! What `/proc` says about a process: CPU time (clock ticks from `stat`,
//! nanoseconds from every thread's `schedstat`) and resident memory.

use std::fs;
use std::process::Command;

/// `getconf CLK_TCK` (the unit of `/proc/<pid>/stat` CPU times), 100 if unknown.
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// A process's CPU time so far, read two ways.
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    /// `utime + stime` from `/proc/<pid>/stat`, in clock ticks.
    ticks: u64,
    /// The sum of the run time of all its threads (`/proc/<pid>/task/*/schedstat`), in ns.
    ns: u64,
}

impl CpuTime {
    /// Reads the CPU time of process `pid`.
    pub fn of(pid: u32) -> Result<Self, String> {
        Ok(Self {
            ticks: cpu_ticks(pid)?,
            ns: cpu_ns(pid),
        })
    }

    /// CPU µs per request from `before` to `self` over `requests` requests: from
    /// `/proc/<pid>/stat` (with `ticks_per_second`) and from schedstat.
    pub fn us_per_request_since(
        &self,
        before: &Self,
        ticks_per_second: u64,
        requests: f64,
    ) -> (f64, f64) {
        let ticks = self.ticks.saturating_sub(before.ticks);
        let ns = self.ns.saturating_sub(before.ns);
        (
            ticks as f64 * 1e6 / ticks_per_second as f64 / requests,
            ns as f64 / 1e3 / requests,
        )
    }
}

/// `utime + stime` of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("bad /proc/pid/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("bad /proc/{pid}/stat field {i}"))
    };
    // After `(comm)`: utime is field 14 and stime 15 of the whole line.
    Ok(field(11)? + field(12)?)
}

/// Sum of the run time (ns) of all threads of the process.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// VmRSS of the process in KiB (0 if unknown).
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}
