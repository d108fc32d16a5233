//! Measuring a run: the progress line, the drain, and CPU use.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Shared, DRAIN_QUIET};
use crate::cpu::CpuTimes;
use crate::report::{HubUse, PublishingCpu, Tick};

/// Waits until `expected` measured messages arrived, nothing arrived for
/// [`DRAIN_QUIET`], or `limit` passed; says which.
pub(super) async fn drain(shared: &Shared, expected: u64, limit: Duration) -> &'static str {
    let start = Instant::now();
    let mut last_count = u64::MAX;
    let mut last_change = start;
    loop {
        let got: u64 = shared
            .subscribers
            .iter()
            .map(|s| s.measured_unique.load(Relaxed))
            .sum();
        let now = Instant::now();
        if got >= expected {
            return "everything arrived";
        }
        if now >= start + limit {
            return "--drain limit reached";
        }
        if got != last_count {
            last_count = got;
            last_change = now;
        } else if now - last_change >= DRAIN_QUIET {
            return "nothing arrived for 1 s";
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// CPU use from the start of sending: the machine's, this process's and (given its
/// pid) the hub's, so a run shows which side was the limit and whether something else
/// on the machine took CPU.
pub(super) struct Meter {
    start_at: Instant,
    host: Option<f64>,
    own: CpuTimes,
    hub: Option<(u32, f64)>,
}

impl Meter {
    pub(super) fn start(hub_pid: Option<u32>, start_at: Instant) -> anyhow::Result<Meter> {
        Ok(Meter {
            start_at,
            host: crate::procfs::host_busy_seconds(),
            own: CpuTimes::now(),
            hub: match hub_pid {
                Some(pid) => Some((pid, crate::procfs::cpu_seconds(pid)?)),
                None => None,
            },
        })
    }

    pub(super) fn finish(self) -> anyhow::Result<(Option<HubUse>, Option<PublishingCpu>)> {
        let wall = Instant::now().saturating_duration_since(self.start_at);
        let own = CpuTimes::now().since(self.own, wall);
        let host_after = crate::procfs::host_busy_seconds();
        let wall_s = wall.as_secs_f64().max(1e-9);
        let hub = match self.hub {
            Some((pid, before)) => {
                let cpu_s = crate::procfs::cpu_seconds(pid)? - before;
                Some(HubUse {
                    pid,
                    cpu_s,
                    wall_s,
                    cores: cpu_s / wall_s,
                    rss_bytes: crate::procfs::vm_rss(pid)?,
                    peak_rss_bytes: crate::procfs::vm_hwm(pid)?,
                })
            }
            None => None,
        };
        let publishing = match (self.host, host_after) {
            (Some(before), Some(after)) => {
                let machine_cores = (after - before) / wall_s;
                let hub_cores = hub.as_ref().map(|h| h.cores);
                Some(PublishingCpu {
                    wall_s,
                    machine_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                    machine_cores,
                    simulator_cores: own.cores,
                    hub_cores,
                    other_cores: (machine_cores - own.cores - hub_cores.unwrap_or(0.0)).max(0.0),
                })
            }
            _ => None,
        };
        Ok((hub, publishing))
    }
}

/// Prints sent/s and received/s once a second until stopped; returns the per-second
/// figures.
pub(super) async fn progress(
    shared: Arc<Shared>,
    start_at: Instant,
    measure_from: Instant,
    end_at: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<Tick> {
    let totals = |s: &Shared| {
        let sent: u64 = s.sources.iter().map(|p| p.sent.load(Relaxed)).sum();
        let received: u64 = s.subscribers.iter().map(|p| p.received.load(Relaxed)).sum();
        (sent, received)
    };
    let mut ticks = Vec::new();
    tokio::time::sleep_until(start_at).await;
    let mut last = (Instant::now(), totals(&shared));
    let mut interval =
        tokio::time::interval_at(start_at + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        // The part-second in progress when the run stops is recorded too (not printed):
        // without it the timeline would miss the end of sending and the drain.
        let stopping = tokio::select! {
            _ = interval.tick() => false,
            _ = stop.changed() => true,
        };
        let now = Instant::now();
        let (sent, received) = totals(&shared);
        let secs = (now - last.0).as_secs_f64().max(1e-6);
        let d_sent = sent - last.1 .0;
        let d_recv = received - last.1 .1;
        // Name the second by its middle: the tick lands on the boundaries.
        let mid = last.0 + (now - last.0) / 2;
        let phase = if mid < measure_from {
            "warm-up"
        } else if mid < end_at {
            "measure"
        } else {
            "drain"
        };
        if !stopping {
            eprintln!(
                "[{:>5.1}s {phase:<7}] sent {:>9.0}/s  received {:>9.0}/s  disconnects {}",
                (now - start_at).as_secs_f64(),
                d_sent as f64 / secs,
                d_recv as f64 / secs,
                shared.disconnects.load(Relaxed)
            );
        }
        ticks.push(Tick {
            t_s: (now - start_at).as_secs_f64(),
            sent: d_sent,
            received: d_recv,
        });
        last = (now, (sent, received));
        if stopping {
            break;
        }
    }
    ticks
}
