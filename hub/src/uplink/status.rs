//! What an uplink shows operators: written by its task, read by the stats publisher and
//! by the admin endpoint's metrics. Lag comes from the journal at snapshot time, so
//! it is right even while the uplink is down and its task is asleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::journal::Journal;

/// One uplink's state, shared between its task and whoever reports it.
#[derive(Debug)]
pub struct UplinkStatus {
    name: String,
    broker: String,
    consumer: String,
    state: Mutex<State>,
    /// PUBLISH packets written upstream (resends too), and their payload bytes: counted
    /// per record, so kept out of the mutex.
    published: AtomicU64,
    published_bytes: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    connected_since: Option<u64>,
    connects: u64,
    forwarded: u64,
    resent: u64,
    refused: u64,
    skipped: u64,
    in_flight: usize,
    last_error: Option<(u64, String)>,
    /// (when, forwarded) at the previous snapshot, for the rate.
    previous: Option<(Instant, u64)>,
}

/// An uplink at one moment, as published in `edgehub/{hub_id}/stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UplinkSnapshot {
    /// The upstream broker's URL (without credentials; they are never in it).
    pub broker: String,
    /// Whether a connection is up (CONNACK received).
    pub connected: bool,
    /// Since when (Unix ms), if connected.
    pub connected_since: Option<u64>,
    /// Successful connections since start.
    pub connects: u64,
    /// Records the uplink has not forwarded yet (after its journal cursor).
    pub lag_records: u64,
    /// Age of the oldest record not forwarded yet, in seconds (0 when none).
    pub lag_seconds: f64,
    /// Records acknowledged upstream since start.
    pub forwarded: u64,
    /// Records acknowledged per second since the previous snapshot.
    pub rate: f64,
    /// Records published and awaiting a PUBACK now.
    pub in_flight: usize,
    /// Records published again after a reconnect, since start.
    pub resent: u64,
    /// Records the upstream refused with an MQTT 5 reason code (not resent), since start.
    pub refused: u64,
    /// Records passed over: not selected by `forward`, or dropped by retention first.
    pub skipped: u64,
    /// The last connection failure, if any: when (Unix ms) and why.
    pub last_error: Option<LastError>,
}

/// The last connection failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// Unix ms.
    pub at: u64,
    /// What went wrong.
    pub error: String,
}

impl UplinkStatus {
    /// A disconnected uplink named `name` forwarding to `broker` as journal `consumer`.
    pub fn new(name: &str, broker: &str, consumer: &str) -> UplinkStatus {
        UplinkStatus {
            name: name.to_owned(),
            broker: broker.to_owned(),
            consumer: consumer.to_owned(),
            state: Mutex::new(State::default()),
            published: AtomicU64::new(0),
            published_bytes: AtomicU64::new(0),
        }
    }

    /// The uplink's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn connected(&self, now_ms: u64) {
        let mut s = self.lock();
        s.connected_since = Some(now_ms);
        s.connects += 1;
    }

    pub(crate) fn disconnected(&self, now_ms: u64, error: Option<&str>) {
        let mut s = self.lock();
        s.connected_since = None;
        s.in_flight = 0;
        if let Some(error) = error {
            s.last_error = Some((now_ms, error.to_owned()));
        }
    }

    pub(crate) fn forwarded(&self, records: u64) {
        if records > 0 {
            self.lock().forwarded += records;
        }
    }

    pub(crate) fn published(&self, payload_bytes: usize) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.published_bytes
            .fetch_add(payload_bytes as u64, Ordering::Relaxed);
    }

    /// PUBLISH packets written upstream since start (resends too) and their payload
    /// bytes.
    pub fn published_totals(&self) -> (u64, u64) {
        (
            self.published.load(Ordering::Relaxed),
            self.published_bytes.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn resent(&self) {
        self.lock().resent += 1;
    }

    pub(crate) fn in_flight(&self, in_flight: usize) {
        self.lock().in_flight = in_flight;
    }

    pub(crate) fn refused(&self) {
        self.lock().refused += 1;
    }

    pub(crate) fn skipped(&self) {
        self.lock().skipped += 1;
    }

    /// The uplink now, with the forwarding rate since the previous snapshot (which this
    /// one becomes). Reads the journal for the lag; `now_ms` is wall-clock Unix ms.
    pub fn snapshot(&self, journal: &Journal, now: Instant, now_ms: u64) -> UplinkSnapshot {
        let (lag_records, oldest_ms) = journal.lag(&self.consumer);
        let mut s = self.lock();
        let rate = match s.previous {
            Some((at, forwarded)) if now > at => {
                s.forwarded.saturating_sub(forwarded) as f64 / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        s.previous = Some((now, s.forwarded));
        self.build(&s, lag_records, oldest_ms, now_ms, rate)
    }

    /// The uplink now, for a reader other than the stats topic: the rate is left at 0
    /// and the stats topic's own rate is not disturbed (Prometheus computes rates itself).
    pub fn current(&self, journal: &Journal, now_ms: u64) -> UplinkSnapshot {
        let (lag_records, oldest_ms) = journal.lag(&self.consumer);
        let s = self.lock();
        self.build(&s, lag_records, oldest_ms, now_ms, 0.0)
    }

    fn build(
        &self,
        s: &State,
        lag_records: u64,
        oldest_ms: Option<u64>,
        now_ms: u64,
        rate: f64,
    ) -> UplinkSnapshot {
        UplinkSnapshot {
            broker: self.broker.clone(),
            connected: s.connected_since.is_some(),
            connected_since: s.connected_since,
            connects: s.connects,
            lag_records,
            lag_seconds: oldest_ms.map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0),
            forwarded: s.forwarded,
            rate: (rate * 10.0).round() / 10.0,
            in_flight: s.in_flight,
            resent: s.resent,
            refused: s.refused,
            skipped: s.skipped,
            last_error: s.last_error.as_ref().map(|(at, error)| LastError {
                at: *at,
                error: error.clone(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
