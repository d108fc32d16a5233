//! What every sending mode shares: subscribers that match each arriving message to its
//! sender ("source": an MQTT publisher, a WebSocket device, a serial port) and sequence
//! number, one clock for latency, the run's window, the drain, and the tally.
//!
//! A mode supplies its sources (see [`fleet::run`]) and a [`StampReader`] that finds the
//! source, sequence number and send time in a received payload; everything else here is
//! common, so every mode counts loss, duplicates, order and latency the same way.

pub(crate) mod fleet;
mod measure;
pub(crate) mod subscriber;
mod tally;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::bail;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::errlog::ErrorLog;

pub(crate) use subscriber::SubscriberResult;

/// Waits for connections and subscriptions longer than this are failures.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before a lost connection is reopened.
pub(crate) const RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// The drain ends when nothing arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// Latencies above this (µs) are recorded as this.
const LATENCY_CEILING_US: u64 = 3_600_000_000;

/// Who sent a received message, which of theirs it was, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Index of the source.
    pub source: u32,
    /// Position in that source's stream, from 0.
    pub seq: u64,
    /// Send time, in ns since [`Shared::base`].
    pub sent_ns: u64,
}

/// Finds the [`Stamp`] in a payload the subscribers received.
pub(crate) trait StampReader: Send + Sync + 'static {
    /// The stamp of a message this run sent, or `None` for anything else (foreign).
    fn read(&self, shared: &Shared, payload: &[u8]) -> Option<Stamp>;
}

/// Counters and logs every task shares.
pub(crate) struct Shared {
    /// The clock every send and receive time is measured on.
    pub base: std::time::Instant,
    /// Wall-clock time at `base`, µs since the Unix epoch: sources that stamp messages
    /// the way a device does (epoch time) stamp `base_epoch_us + now_ns() / 1000`.
    pub base_epoch_us: u64,
    /// Random per run: messages of another run (or process) are foreign.
    pub run: u32,
    /// Errors by message.
    pub errors: ErrorLog,
    /// Connections lost during the run.
    pub disconnects: AtomicU64,
    /// Per source, by index.
    pub sources: Vec<SourceCounters>,
    /// Per subscriber, by index.
    pub subscribers: Vec<SubscriberCounters>,
}

impl Shared {
    /// Counters for `sources` sources and `subscribers` subscribers.
    pub fn new(sources: usize, subscribers: usize) -> Shared {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Shared {
            base: std::time::Instant::now(),
            base_epoch_us: epoch.as_micros() as u64,
            run: rand_u32(),
            errors: ErrorLog::default(),
            disconnects: AtomicU64::new(0),
            sources: (0..sources).map(|_| SourceCounters::default()).collect(),
            subscribers: (0..subscribers)
                .map(|_| SubscriberCounters::default())
                .collect(),
        }
    }

    /// Nanoseconds since `base`.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// `t` in nanoseconds since `base`.
    pub fn ns_at(&self, t: Instant) -> u64 {
        t.into_std().saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Microseconds since the Unix epoch at `ns` since `base`, on the monotonic clock
    /// (so that latencies stay exact if the wall clock is stepped during a run).
    pub fn epoch_us(&self, ns: u64) -> u64 {
        self.base_epoch_us + ns / 1000
    }

    /// Nanoseconds since `base` of an epoch time stamped by [`Shared::epoch_us`];
    /// `None` if it lies before this run began.
    pub fn ns_of_epoch_us(&self, us: u64) -> Option<u64> {
        us.checked_sub(self.base_epoch_us).map(|d| d * 1000)
    }
}

/// Per-source counters, one cache line each so sources on different cores do not slow
/// each other down.
#[repr(align(64))]
#[derive(Default)]
pub(crate) struct SourceCounters {
    /// Messages sent (warm-up included); sequence numbers run 0..sent.
    pub sent: AtomicU64,
    /// Messages sent inside the measured window.
    pub measured: AtomicU64,
    /// Messages the broker or hub acknowledged.
    pub acked: AtomicU64,
    /// Messages the broker or hub refused.
    pub rejected: AtomicU64,
}

/// Per-subscriber counters.
#[repr(align(64))]
#[derive(Default)]
pub(crate) struct SubscriberCounters {
    /// Every message received, foreign ones included.
    pub received: AtomicU64,
    /// Distinct measured messages received.
    pub measured_unique: AtomicU64,
}

/// Waits for every `ready` report until `timeout`; fails naming the first that failed.
pub(crate) async fn await_ready(
    what: &str,
    ready: Vec<oneshot::Receiver<Result<(), String>>>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let total = ready.len();
    let deadline = Instant::now() + timeout;
    let mut failures = Vec::new();
    for (i, rx) in ready.into_iter().enumerate() {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => failures.push(format!("{what} {i}: {e}")),
            Ok(Err(_)) => failures.push(format!("{what} {i}: its task ended")),
            Err(_) => failures.push(format!(
                "{what} {i}: not ready within {}s",
                timeout.as_secs()
            )),
        }
    }
    if let Some(first) = failures.first() {
        bail!(
            "{} of {total} {what}s could not start; first: {first}",
            failures.len()
        );
    }
    Ok(())
}

/// A run id that differs between processes (and runs), without a RNG dependency.
pub(crate) fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_stamps_convert_back_to_the_run_clock() {
        let shared = Shared::new(1, 1);
        let ns = 1_234_567_000;
        assert_eq!(shared.ns_of_epoch_us(shared.epoch_us(ns)), Some(ns));
        assert_eq!(shared.ns_of_epoch_us(shared.base_epoch_us - 1), None);
    }
}
