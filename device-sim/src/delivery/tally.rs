//! From the subscribers' trackers and the sources' counters to the figures of a run.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::subscriber::latency_histogram;
use super::{Shared, SubscriberResult};
use crate::cpu::CpuUse;
use crate::report::{Delivery, Latency, StreamTotals};

/// What the tally needs besides the counters.
pub(super) struct Window {
    pub subscribers: usize,
    pub measure_from_ns: u64,
    pub duration: Duration,
    pub warmup: Duration,
}

/// Totals per source and over the run; timeline and CPU figures are left empty for the
/// caller.
pub(super) fn tally(
    shared: &Shared,
    results: &[SubscriberResult],
    w: &Window,
    cpu: CpuUse,
) -> (Delivery, Vec<StreamTotals>) {
    let mut streams: Vec<StreamTotals> = shared
        .sources
        .iter()
        .map(|p| StreamTotals {
            sent: p.measured.load(Relaxed),
            ..StreamTotals::default()
        })
        .collect();
    let mut latency = latency_histogram();
    let mut foreign = 0;
    let mut last_ns = 0;
    for r in results {
        let _ = latency.add(&r.latency);
        foreign += r.foreign;
        last_ns = last_ns.max(r.last_measured_ns);
        for ((p, s), c) in streams
            .iter_mut()
            .zip(r.tracker.streams())
            .zip(&shared.sources)
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
    let subscribers = w.subscribers as u64;
    for p in &mut streams {
        p.lost = (p.sent * subscribers).saturating_sub(p.received);
    }
    let sum = |f: fn(&StreamTotals) -> u64| streams.iter().map(f).sum::<u64>();
    let sent = sum(|p| p.sent);
    let expected = sent * subscribers;
    let received = sum(|p| p.received);
    let lost = sum(|p| p.lost);
    let duration = w.duration.as_secs_f64();
    let receive_window = ((last_ns.saturating_sub(w.measure_from_ns)) as f64 / 1e9).max(duration);
    let delivery = Delivery {
        duration_s: duration,
        warmup_s: w.warmup.as_secs_f64(),
        sent,
        expected,
        received,
        lost,
        lost_at_end: sum(|p| p.lost_at_end),
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
        disconnects: shared.disconnects.load(Relaxed),
        errors: shared.errors.counts(),
        timeline: Vec::new(),
        cpu,
        hub: None,
        publishing_cpu: None,
    };
    (delivery, streams)
}
