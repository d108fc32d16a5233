//! The simulator's own CPU use, from getrusage(2), so a run shows whether the simulator
//! rather than the broker was the limit.

use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};
use serde::Serialize;

/// CPU time this process has used so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    user: Duration,
    system: Duration,
}

impl CpuTimes {
    /// User and system time of every thread of this process so far (zero if the
    /// kernel will not say).
    pub fn now() -> CpuTimes {
        match getrusage(UsageWho::RUSAGE_SELF) {
            Ok(usage) => {
                let d = |t: nix::sys::time::TimeVal| {
                    Duration::from_secs(t.tv_sec().max(0) as u64)
                        + Duration::from_micros(t.tv_usec().max(0) as u64)
                };
                CpuTimes {
                    user: d(usage.user_time()),
                    system: d(usage.system_time()),
                }
            }
            Err(_) => CpuTimes::default(),
        }
    }

    /// What was used between `earlier` and `self`, over `wall` of elapsed time.
    pub fn since(self, earlier: CpuTimes, wall: Duration) -> CpuUse {
        let user = self.user.saturating_sub(earlier.user).as_secs_f64();
        let system = self.system.saturating_sub(earlier.system).as_secs_f64();
        let wall = wall.as_secs_f64();
        CpuUse {
            user_s: user,
            system_s: system,
            total_s: user + system,
            wall_s: wall,
            cores: if wall > 0.0 {
                (user + system) / wall
            } else {
                0.0
            },
        }
    }
}

/// CPU seconds used over a stretch of wall time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    /// User-mode seconds.
    pub user_s: f64,
    /// Kernel-mode seconds.
    pub system_s: f64,
    /// Both.
    pub total_s: f64,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// Average cores busy: total / wall.
    pub cores: f64,
}
