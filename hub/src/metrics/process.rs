//! The process's own resources, read from `/proc/self` and `getrusage` at scrape time.
//! Each value is `None` where the system does not tell (not Linux, `/proc` not mounted).

/// Resources of this process now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    /// Resident memory (VmRSS), in bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory (VmSize), in bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// User and system CPU time used, in seconds.
    pub cpu_seconds: Option<f64>,
}

impl Process {
    /// Reads them. Costs a read of `/proc/self/status` and a listing of `/proc/self/fd`
    /// (about a millisecond with 20,000 connections open).
    pub fn sample() -> Process {
        use nix::sys::resource::{getrlimit, getrusage, Resource, UsageWho};
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let kib = |key| status.as_deref().and_then(|s| status_kib(s, key));
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        Process {
            resident_bytes: kib("VmRSS:").map(|k| k * 1024),
            virtual_bytes: kib("VmSize:").map(|k| k * 1024),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
            max_fds: getrlimit(Resource::RLIMIT_NOFILE)
                .ok()
                .map(|(soft, _)| soft),
            cpu_seconds: getrusage(UsageWho::RUSAGE_SELF)
                .ok()
                .map(|u| seconds(u.user_time()) + seconds(u.system_time())),
        }
    }
}

/// The value of a `Key:   1234 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_in_kib() {
        let status = "Name:\tedgehub\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(status_kib(status, "VmSize:"), Some(123456));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_has_memory_and_open_files() {
        let p = Process::sample();
        assert!(p.resident_bytes.is_some_and(|b| b > 0), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n > 0), "{p:?}");
        assert!(p.max_fds.is_some_and(|n| n > 0), "{p:?}");
        assert!(p.cpu_seconds.is_some_and(|s| s >= 0.0), "{p:?}");
    }
}
