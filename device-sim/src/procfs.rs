//! What Linux says about another process (the hub under test): resident memory and
//! CPU time, from /proc/PID/status and /proc/PID/stat.

use anyhow::Context;

/// VmRSS of process `pid`, in bytes.
pub fn vm_rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// VmHWM of process `pid` (its peak resident memory since it started), in bytes.
pub fn vm_hwm(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM")
}

fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .with_context(|| format!("--hub-pid {pid}: cannot read {path}; is the hub running?"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("--hub-pid {pid}: no {field} line in {path}"))
}

/// User + system CPU seconds process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .with_context(|| format!("--hub-pid {pid}: cannot read {path}; is the hub running?"))?;
    parse_stat_cpu(&stat, clock_ticks())
        .with_context(|| format!("--hub-pid {pid}: cannot parse {path}"))
}

/// CPU seconds the whole machine has spent busy (every state but idle and iowait,
/// summed over CPUs), from /proc/stat; `None` where there is no such file.
pub fn host_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_host_busy(&stat, clock_ticks())
}

fn parse_host_busy(stat: &str, ticks_per_s: f64) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, inside user]
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(busy as f64 / ticks_per_s)
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        // Linux has used 100 on every architecture we build for.
        _ => 100.0,
    }
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line, in seconds.
fn parse_stat_cpu(stat: &str, ticks_per_s: f64) -> Option<f64> {
    // The command name (field 2) is in parentheses and may contain spaces.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // After the name come state (3), ppid (4), ... utime is field 14: the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_fields_are_found_after_a_command_name_with_spaces() {
        let stat = "1234 (edge hub) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu(stat, 100.0), Some(3.0));
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 1 20 5000 7 3 4 5 0 0\ncpu0 50 0 10 2500 3 1 2 2 0 0\n";
        assert_eq!(parse_host_busy(stat, 100.0), Some(1.33));
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id();
        let rss = vm_rss(pid).expect("own VmRSS");
        assert!(rss > 0);
        assert!(
            vm_hwm(pid).expect("own VmHWM") >= rss,
            "the peak is at least now"
        );
        assert!(cpu_seconds(pid).expect("own CPU time") >= 0.0);
    }
}
