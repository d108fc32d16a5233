//! Measuring a run: the progress line, the drain, CPU use, and the summary.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Plan, Shared, SubscriberResult, DRAIN_QUIET, LATENCY_CEILING_US};
use crate::cpu::{CpuTimes, CpuUse};
use crate::report::{HubUse, Latency, MqttSummary, PublisherTotals, PublishingCpu, Tick};

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

/// CPU use from the start of publishing: the machine's, this process's and (given its
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
        let sent: u64 = s.publishers.iter().map(|p| p.sent.load(Relaxed)).sum();
        let received: u64 = s.subscribers.iter().map(|p| p.received.load(Relaxed)).sum();
        (sent, received)
    };
    let mut ticks = Vec::new();
    tokio::time::sleep_until(start_at).await;
    let mut last = (Instant::now(), totals(&shared));
    let mut interval =
        tokio::time::interval_at(start_at + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => break,
        }
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
        eprintln!(
            "[{:>5.1}s {phase:<7}] sent {:>9.0}/s  received {:>9.0}/s  disconnects {}",
            (now - start_at).as_secs_f64(),
            d_sent as f64 / secs,
            d_recv as f64 / secs,
            shared.disconnects.load(Relaxed)
        );
        ticks.push(Tick {
            t_s: (now - start_at).as_secs_f64(),
            sent: d_sent,
            received: d_recv,
        });
        last = (now, (sent, received));
    }
    ticks
}

pub(super) fn summarize(
    plan: &Plan,
    shared: &Shared,
    results: Vec<SubscriberResult>,
    measure_from_ns: u64,
    timeline: Vec<Tick>,
    cpu: CpuUse,
) -> MqttSummary {
    let mut per_publisher: Vec<PublisherTotals> = shared
        .publishers
        .iter()
        .map(|p| PublisherTotals {
            sent: p.measured.load(Relaxed),
            ..PublisherTotals::default()
        })
        .collect();
    let mut latency = Histogram::<u64>::new_with_bounds(1, LATENCY_CEILING_US, 3)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
    let mut foreign = 0;
    let mut last_ns = 0;
    for r in &results {
        let _ = latency.add(&r.latency);
        foreign += r.foreign;
        last_ns = last_ns.max(r.last_measured_ns);
        for ((p, s), c) in per_publisher
            .iter_mut()
            .zip(r.tracker.streams())
            .zip(&shared.publishers)
        {
            p.received += s.unique;
            p.duplicated += s.duplicates;
            p.out_of_order += s.out_of_order;
            // Sequence numbers run 0..sent; what lies above the highest one received
            // had not arrived when the drain ended.
            let total = c.sent.load(Relaxed);
            let after_highest = match s.highest() {
                Some(h) => total.saturating_sub(h + 1),
                None => total,
            };
            p.lost_at_end += after_highest.min(p.sent);
        }
    }
    let subscribers = plan.subscribers as u64;
    for p in &mut per_publisher {
        p.lost = (p.sent * subscribers).saturating_sub(p.received);
    }
    let sum = |f: fn(&PublisherTotals) -> u64| per_publisher.iter().map(f).sum::<u64>();
    let sent = sum(|p| p.sent);
    let expected = sent * subscribers;
    let received = sum(|p| p.received);
    let lost = sum(|p| p.lost);
    let lost_at_end = sum(|p| p.lost_at_end);
    let duration = plan.duration.as_secs_f64();
    let receive_window = ((last_ns.saturating_sub(measure_from_ns)) as f64 / 1e9).max(duration);
    MqttSummary {
        url: plan.publisher_spec.endpoint.to_string(),
        mqtt_version: match plan.publisher_spec.version {
            crate::client::Version::V4 => 4,
            crate::client::Version::V5 => 5,
        },
        qos: plan.qos.level(),
        publishers: plan.publishers,
        subscribers: plan.subscribers,
        payload_bytes: plan.payload,
        target_rate: plan.rate,
        duration_s: duration,
        warmup_s: plan.warmup.as_secs_f64(),
        sent,
        expected,
        received,
        lost,
        lost_at_end,
        loss_pct: if expected > 0 {
            lost as f64 * 100.0 / expected as f64
        } else {
            0.0
        },
        duplicated: sum(|p| p.duplicated),
        out_of_order: sum(|p| p.out_of_order),
        foreign,
        sent_per_s: if duration > 0.0 {
            sent as f64 / duration
        } else {
            0.0
        },
        received_per_s: if receive_window > 0.0 {
            received as f64 / receive_window
        } else {
            0.0
        },
        latency: Latency::of(&latency),
        acked: shared
            .publishers
            .iter()
            .map(|p| p.acked.load(Relaxed))
            .sum(),
        rejected: shared
            .publishers
            .iter()
            .map(|p| p.rejected.load(Relaxed))
            .sum(),
        disconnects: shared.disconnects.load(Relaxed),
        errors: shared.errors.counts(),
        timeline,
        per_publisher,
        cpu,
        hub: None,
        publishing_cpu: None,
    }
}
