//! The load shapes and faults of a `devices` run: connections spread over a ramp,
//! churn (clean closes), abrupt drops, one reconnect storm, malformed messages and
//! devices that stop reading. When each device does what is pure arithmetic on the
//! run's window, kept here without I/O so it is tested deterministically.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// What the flags asked for; everything off by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Devices connect spread evenly over this; the window starts after it.
    pub ramp_up: Duration,
    /// Clean closes and reconnects per second over the fleet.
    pub churn: f64,
    /// Into the measured window: every device drops its connection and reconnects.
    pub storm_at: Option<Duration>,
    /// Fraction of telemetry messages replaced by bytes that are not CBOR.
    pub malformed: f64,
    /// Devices (the first ones) that stop reading after their Welcome.
    pub stall: usize,
    /// Fraction of the devices dropped abruptly per second.
    pub abrupt: f64,
}

impl Faults {
    /// Whether devices keep unacknowledged telemetry and resend it (Hello `resends`):
    /// any fault that costs connections or refuses messages needs it for a loss of 0.
    pub fn resends(&self) -> bool {
        self.churn > 0.0 || self.abrupt > 0.0 || self.storm_at.is_some() || self.malformed > 0.0
    }

    /// How long device `i` of `n` waits before its first connection.
    pub fn ramp_delay(&self, i: usize, n: usize) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        self.ramp_up.mul_f64(i as f64 / n as f64)
    }

    /// Whether device `i` stops reading after its Welcome.
    pub fn stalls(&self, i: usize) -> bool {
        i < self.stall
    }

    /// Device `i` of `n`'s planned disconnections within a window sending from
    /// `start_at` to `end_at` whose measured part begins at `measure_at`.
    pub fn schedule(
        &self,
        i: usize,
        n: usize,
        start_at: Instant,
        measure_at: Instant,
        end_at: Instant,
    ) -> Schedule {
        let n = n.max(1) as f64;
        // Churn: RATE devices a second over the fleet, each device every n/RATE s,
        // device i offset by i/RATE so that the closes are spread evenly.
        let churn = (self.churn > 0.0).then(|| Ticker {
            next: start_at + Duration::from_secs_f64(i as f64 / self.churn),
            every: Duration::from_secs_f64(n / self.churn),
        });
        // Abrupt: a fraction f of the devices a second, each device every 1/f s.
        let abrupt = (self.abrupt > 0.0).then(|| Ticker {
            next: start_at + Duration::from_secs_f64(i as f64 / (self.abrupt * n)),
            every: Duration::from_secs_f64(1.0 / self.abrupt),
        });
        Schedule {
            churn,
            abrupt,
            storm: self.storm_at.map(|at| measure_at + at),
            end_at,
        }
    }
}

/// A planned disconnection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Close cleanly (close frame 1000), reconnect with the same session.
    Churn,
    /// Drop the connection without a close frame, reconnect.
    Abrupt,
    /// The reconnect storm: drop without a close frame, reconnect at once.
    Storm,
}

#[derive(Debug, Clone, Copy)]
struct Ticker {
    next: Instant,
    every: Duration,
}

impl Ticker {
    /// Moves past `now`, giving up the ticks missed while reconnecting.
    fn pass(&mut self, now: Instant) {
        while self.next <= now {
            self.next += self.every;
        }
    }
}

/// One device's planned disconnections.
#[derive(Debug, Clone)]
pub struct Schedule {
    churn: Option<Ticker>,
    abrupt: Option<Ticker>,
    storm: Option<Instant>,
    end_at: Instant,
}

impl Schedule {
    /// The next planned disconnection before the window ends, and what it is.
    pub fn next(&self) -> Option<(Instant, Cut)> {
        [
            self.storm.map(|t| (t, Cut::Storm)),
            self.churn.map(|t| (t.next, Cut::Churn)),
            self.abrupt.map(|t| (t.next, Cut::Abrupt)),
        ]
        .into_iter()
        .flatten()
        .filter(|(t, _)| *t < self.end_at)
        .min_by_key(|(t, _)| *t)
    }

    /// `what` happened (or was due) at `now`: plans the next ones after `now`.
    pub fn done(&mut self, what: Cut, now: Instant) {
        match what {
            Cut::Storm => self.storm = None,
            Cut::Churn | Cut::Abrupt => {}
        }
        for ticker in [&mut self.churn, &mut self.abrupt].into_iter().flatten() {
            ticker.pass(now);
        }
    }
}

/// Which telemetry messages are replaced by malformed bytes: message k when
/// `k * fraction + phase` passes a whole number, so exactly that share (computed from
/// k, not summed, so rounding does not drift).
#[derive(Debug, Clone)]
pub struct Malformer {
    fraction: f64,
    phase: f64,
    messages: u64,
}

impl Malformer {
    /// Replaces `fraction` (0 to 1) of the messages; `phase` (0 to 1) staggers devices.
    pub fn new(fraction: f64, phase: f64) -> Malformer {
        Malformer {
            fraction,
            phase,
            messages: 0,
        }
    }

    /// Whether the next message is replaced.
    pub fn next(&mut self) -> bool {
        if self.fraction <= 0.0 {
            return false;
        }
        let at = |k: u64| (k as f64 * self.fraction + self.phase).floor();
        let before = at(self.messages);
        self.messages += 1;
        at(self.messages) > before
    }
}

/// Bytes that are not one CBOR item: 0xff is a "break" outside any indefinite-length
/// item, which no decoder accepts.
pub const MALFORMED: &[u8] = &[0xff, 0x00, 0xff];

/// What the faults did, over all devices.
#[derive(Default)]
pub struct FaultStats {
    /// Connections made again after the first, for any reason.
    pub reconnects: AtomicU64,
    /// Clean closes made for --churn.
    pub churned: AtomicU64,
    /// Connections dropped for --abrupt.
    pub dropped: AtomicU64,
    /// Connections dropped by the storm.
    pub storm_dropped: AtomicU64,
    /// Malformed messages sent.
    pub malformed_sent: AtomicU64,
    /// Telemetry messages sent again (after a reconnect or an Ack asking for it).
    pub resent: AtomicU64,
    /// Devices that stopped reading.
    pub stalled: AtomicU64,
}

impl FaultStats {
    /// Counts one planned drop.
    pub fn dropped(&self, what: Cut) {
        let counter = match what {
            Cut::Churn => &self.churned,
            Cut::Abrupt => &self.dropped,
            Cut::Storm => &self.storm_dropped,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// The summary.
    pub fn summary(&self, faults: &Faults) -> FaultSummary {
        FaultSummary {
            ramp_up_s: faults.ramp_up.as_secs_f64(),
            resends: faults.resends(),
            reconnects: self.reconnects.load(Relaxed),
            churn_closes: self.churned.load(Relaxed),
            abrupt_drops: self.dropped.load(Relaxed),
            storm_drops: self.storm_dropped.load(Relaxed),
            malformed_sent: self.malformed_sent.load(Relaxed),
            resent: self.resent.load(Relaxed),
            stalled_devices: self.stalled.load(Relaxed),
        }
    }
}

/// What the load shape and faults did (the Errors the hub answered are in `hub_errors`).
#[derive(Debug, Clone, Serialize)]
pub struct FaultSummary {
    /// Seconds over which the devices connected.
    pub ramp_up_s: f64,
    /// Whether the devices kept and resent unacknowledged telemetry.
    pub resends: bool,
    /// Device connections made again after the first (planned or not).
    pub reconnects: u64,
    /// Clean closes for --churn.
    pub churn_closes: u64,
    /// Connections dropped without a close frame for --abrupt.
    pub abrupt_drops: u64,
    /// Connections dropped by the --storm-at reconnect storm.
    pub storm_drops: u64,
    /// Malformed messages sent (not counted as sent telemetry).
    pub malformed_sent: u64,
    /// Telemetry messages sent again.
    pub resent: u64,
    /// Devices that stopped reading after their Welcome.
    pub stalled_devices: u64,
}

impl FaultSummary {
    /// The table rows, only when something happened.
    pub fn rows(&self, t: &mut String) {
        use crate::report::row;
        if self.ramp_up_s > 0.0 {
            row(t, "ramp-up", format!("{} s", self.ramp_up_s));
        }
        if self.reconnects > 0 || self.churn_closes + self.abrupt_drops + self.storm_drops > 0 {
            row(
                t,
                "reconnects",
                format!(
                    "{} ({} churn closes, {} abrupt drops, {} in the storm; {} messages resent)",
                    self.reconnects,
                    self.churn_closes,
                    self.abrupt_drops,
                    self.storm_drops,
                    self.resent
                ),
            );
        }
        if self.malformed_sent > 0 {
            row(t, "malformed sent", self.malformed_sent.to_string());
        }
        if self.stalled_devices > 0 {
            row(t, "stalled devices", self.stalled_devices.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn churn_spreads_the_rate_over_the_fleet() {
        let faults = Faults {
            churn: 2.0,
            ..Faults::default()
        };
        let t0 = Instant::now();
        let end = t0 + 10 * S;
        // 4 devices, 2 a second: each device every 2 s, offset by 0.5 s.
        let mut s = faults.schedule(3, 4, t0, t0, end);
        assert_eq!(s.next(), Some((t0 + S.mul_f64(1.5), Cut::Churn)));
        s.done(Cut::Churn, t0 + S.mul_f64(1.5));
        assert_eq!(s.next(), Some((t0 + S.mul_f64(3.5), Cut::Churn)));
        // A slow reconnect gives up the ticks it missed.
        s.done(Cut::Churn, t0 + 8 * S);
        assert_eq!(s.next(), Some((t0 + S.mul_f64(9.5), Cut::Churn)));
        s.done(Cut::Churn, t0 + S.mul_f64(9.5));
        assert_eq!(s.next(), None, "nothing after the window");
    }

    #[test]
    fn the_storm_comes_once_at_its_time_into_the_measured_window() {
        let faults = Faults {
            storm_at: Some(S),
            abrupt: 0.1,
            ..Faults::default()
        };
        let t0 = Instant::now();
        let mut s = faults.schedule(0, 1, t0, t0 + 2 * S, t0 + 20 * S);
        assert_eq!(s.next(), Some((t0, Cut::Abrupt)));
        s.done(Cut::Abrupt, t0);
        assert_eq!(s.next(), Some((t0 + 3 * S, Cut::Storm)));
        s.done(Cut::Storm, t0 + 3 * S);
        assert_eq!(s.next(), Some((t0 + 10 * S, Cut::Abrupt)));
    }

    #[test]
    fn nothing_is_planned_by_default() {
        let t0 = Instant::now();
        let s = Faults::default().schedule(0, 1, t0, t0, t0 + S);
        assert_eq!(s.next(), None);
        assert!(!Faults::default().resends());
    }

    #[test]
    fn the_malformer_replaces_exactly_its_fraction() {
        let mut m = Malformer::new(0.1, 0.0);
        let replaced = (0..1000).filter(|_| m.next()).count();
        assert_eq!(replaced, 100);
        let mut none = Malformer::new(0.0, 0.5);
        assert!((0..100).all(|_| !none.next()));
    }

    #[test]
    fn the_ramp_spreads_first_connections_evenly() {
        let faults = Faults {
            ramp_up: 4 * S,
            ..Faults::default()
        };
        assert_eq!(faults.ramp_delay(0, 4), Duration::ZERO);
        assert_eq!(faults.ramp_delay(2, 4), 2 * S);
    }
}
