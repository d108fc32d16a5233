//! Rate-limited logging for lines that peers can trigger at will.
//!
//! A failed TLS handshake, a refused upgrade or a bad CONNECT each deserve a line, but a
//! scanner or a flood makes thousands a second and would bury everything else (and fill
//! the disk through journald). [`LogLimiter`] lets the first few events of each kind
//! through per interval and counts the rest; once the interval is over it logs one
//! summary per kind ("TLS handshake failed: 5,231 more in the last 10 s"). It limits only
//! the lines: the metrics next to each call count every event.
//!
//! ```
//! use hub::logging::LogLimiter;
//! use tracing::Level;
//!
//! let log = LogLimiter::default();
//! if log.allow("TLS handshake failed", Level::INFO) {
//!     tracing::info!(reason = "protocol", "TLS handshake failed");
//! }
//! ```
//!
//! Summaries are written when the next event of the kind comes after its interval, and by
//! [`LogLimiter::run`], which a long-lived task runs so that the summary of a flood that
//! has stopped is written too (and the last ones at shutdown).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Level;

/// Logs an INFO event while `limiter` lets lines of `kind` through, and the same event at
/// DEBUG past that: routine lines a peer can repeat at will (a connection opened or
/// closed) stay in the log in normal operation, a flood of them is summarised, and
/// `RUST_LOG=hub=debug` still shows every one.
///
/// ```
/// let log = hub::logging::LogLimiter::default();
/// hub::info_limited!(log, "client connected", peer = "127.0.0.1:4000", "client connected");
/// ```
#[macro_export]
macro_rules! info_limited {
    ($limiter:expr, $kind:expr, $($event:tt)+) => {
        if $limiter.allow($kind, ::tracing::Level::INFO) {
            ::tracing::info!($($event)+);
        } else {
            ::tracing::debug!($($event)+);
        }
    };
}

/// Lines logged per kind and interval before the rest are only counted.
pub const DEFAULT_BURST: u32 = 5;
/// How long a kind's budget of lines lasts.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// How often [`LogLimiter::run`] looks for intervals that are over: often enough that a
/// summary follows its interval closely, and cheap (a lock and a walk over a few kinds).
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Lets a few lines of each kind through per interval and summarises the rest; shared by
/// every task that logs such lines.
#[derive(Debug)]
pub struct LogLimiter {
    windows: Mutex<Windows>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(DEFAULT_BURST, DEFAULT_INTERVAL)
    }
}

impl LogLimiter {
    /// A limiter that logs `burst` lines of each kind per `interval`.
    pub fn new(burst: u32, interval: Duration) -> LogLimiter {
        LogLimiter {
            windows: Mutex::new(Windows::new(burst, interval)),
        }
    }

    /// Counts an event of `kind` (a fixed phrase, usually the line's message) and says
    /// whether to log its line. `level` is the level of the summary of those not logged.
    pub fn allow(&self, kind: &'static str, level: Level) -> bool {
        let (allowed, summary) = self.lock().event(kind, level, Instant::now());
        if let Some(summary) = summary {
            summary.log();
        }
        allowed
    }

    /// Logs the summaries of intervals that are over.
    pub fn flush(&self) {
        let summaries = self.lock().due(Instant::now());
        for summary in summaries {
            summary.log();
        }
    }

    /// Flushes every second until `shutdown`, then logs what is left to summarise.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(FLUSH_EVERY) => self.flush(),
            }
        }
        let summaries = self.lock().drain(Instant::now());
        for summary in summaries {
            summary.log();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        // Plain counters: consistent even if a holder panicked.
        self.windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The events of one kind since its interval began.
#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
    level: Level,
}

/// Every kind's current interval; I/O-free, with time passed in.
#[derive(Debug)]
struct Windows {
    burst: u32,
    interval: Duration,
    kinds: HashMap<&'static str, Window>,
}

/// Events of one kind that were counted but not logged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    kind: &'static str,
    level: Level,
    suppressed: u64,
    over: Duration,
}

impl Windows {
    fn new(burst: u32, interval: Duration) -> Windows {
        Windows {
            burst,
            interval,
            kinds: HashMap::new(),
        }
    }

    /// Counts an event: whether to log it, and the summary of the kind's previous
    /// interval if this event ended it.
    fn event(&mut self, kind: &'static str, level: Level, now: Instant) -> (bool, Option<Summary>) {
        let interval = self.interval;
        let window = self.kinds.entry(kind).or_insert_with(|| Window {
            started: now,
            logged: 0,
            suppressed: 0,
            level,
        });
        let mut summary = None;
        if now.saturating_duration_since(window.started) >= interval {
            summary = window.summary(kind, now);
            *window = Window {
                started: now,
                logged: 0,
                suppressed: 0,
                level,
            };
        }
        if window.logged < self.burst {
            window.logged += 1;
            return (true, summary);
        }
        window.suppressed += 1;
        (false, summary)
    }

    /// Ends the intervals that are over, returning the summaries of those that suppressed
    /// something. Kinds are forgotten once their interval ends, so the table holds only
    /// the kinds seen in the last interval.
    fn due(&mut self, now: Instant) -> Vec<Summary> {
        let interval = self.interval;
        let mut summaries = Vec::new();
        self.kinds.retain(|kind, window| {
            if now.saturating_duration_since(window.started) < interval {
                return true;
            }
            summaries.extend(window.summary(kind, now));
            false
        });
        summaries
    }

    /// Ends every interval, over or not (the process is stopping).
    fn drain(&mut self, now: Instant) -> Vec<Summary> {
        self.kinds
            .drain()
            .filter_map(|(kind, window)| window.summary(kind, now))
            .collect()
    }
}

impl Window {
    fn summary(&self, kind: &'static str, now: Instant) -> Option<Summary> {
        (self.suppressed > 0).then(|| Summary {
            kind,
            level: self.level,
            suppressed: self.suppressed,
            over: now.saturating_duration_since(self.started),
        })
    }
}

impl Summary {
    /// The summary line's message.
    fn message(&self) -> String {
        format!(
            "{}: {} more in the last {} s (not logged; the metrics count every one)",
            self.kind,
            thousands(self.suppressed),
            // Rounded up: every one of them happened within this many seconds.
            self.over.as_millis().div_ceil(1000).max(1),
        )
    }

    /// Logs the summary at its kind's level. It belongs to no connection, so it is logged
    /// outside the span of the one whose event happened to end the interval.
    fn log(&self) {
        let message = self.message();
        let (kind, suppressed) = (self.kind, self.suppressed);
        match self.level {
            Level::ERROR => tracing::error!(parent: None, kind, suppressed, "{message}"),
            Level::WARN => tracing::warn!(parent: None, kind, suppressed, "{message}"),
            Level::INFO => tracing::info!(parent: None, kind, suppressed, "{message}"),
            Level::DEBUG => tracing::debug!(parent: None, kind, suppressed, "{message}"),
            _ => tracing::trace!(parent: None, kind, suppressed, "{message}"),
        }
    }
}

/// `n` with thousands separated by commas: 5,231.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: &str = "TLS handshake failed";
    const UPGRADE: &str = "WebSocket upgrade refused";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_first_events_of_a_kind_are_logged_and_the_rest_only_counted() {
        let t0 = Instant::now();
        let mut w = Windows::new(3, secs(10));
        let logged: Vec<bool> = (0..10).map(|_| w.event(TLS, Level::INFO, t0).0).collect();
        assert_eq!(
            logged,
            [true, true, true, false, false, false, false, false, false, false]
        );
        // Another kind has its own budget.
        assert_eq!(w.event(UPGRADE, Level::INFO, t0), (true, None));
    }

    #[test]
    fn an_interval_that_is_over_is_summarised_once_and_the_budget_starts_again() {
        let t0 = Instant::now();
        let mut w = Windows::new(2, secs(10));
        for _ in 0..7 {
            w.event(TLS, Level::INFO, t0 + secs(1));
        }
        assert_eq!(
            w.due(t0 + secs(10)),
            [],
            "not over yet: it began at t0 + 1 s"
        );
        assert_eq!(
            w.due(t0 + secs(11)),
            [Summary {
                kind: TLS,
                level: Level::INFO,
                suppressed: 5,
                over: secs(10),
            }]
        );
        assert_eq!(w.due(t0 + secs(30)), [], "summarised once");
        assert_eq!(w.event(TLS, Level::INFO, t0 + secs(30)), (true, None));
    }

    #[test]
    fn the_next_event_after_the_interval_brings_the_summary_when_nothing_flushed() {
        let t0 = Instant::now();
        let mut w = Windows::new(1, secs(10));
        w.event(TLS, Level::WARN, t0);
        w.event(TLS, Level::WARN, t0 + secs(2));
        w.event(TLS, Level::WARN, t0 + secs(3));
        let (logged, summary) = w.event(TLS, Level::WARN, t0 + secs(12));
        assert!(logged, "a new interval, a new budget");
        assert_eq!(
            summary,
            Some(Summary {
                kind: TLS,
                level: Level::WARN,
                suppressed: 2,
                over: secs(12),
            })
        );
    }

    #[test]
    fn an_interval_that_suppressed_nothing_ends_without_a_summary() {
        let t0 = Instant::now();
        let mut w = Windows::new(5, secs(10));
        w.event(TLS, Level::INFO, t0);
        assert_eq!(w.due(t0 + secs(20)), []);
        assert!(w.kinds.is_empty(), "the kind is forgotten");
    }

    #[test]
    fn draining_summarises_intervals_that_are_not_over() {
        let t0 = Instant::now();
        let mut w = Windows::new(1, secs(10));
        for _ in 0..4 {
            w.event(TLS, Level::INFO, t0);
        }
        w.event(UPGRADE, Level::INFO, t0);
        let drained = w.drain(t0 + secs(3));
        assert_eq!(
            drained,
            [Summary {
                kind: TLS,
                level: Level::INFO,
                suppressed: 3,
                over: secs(3),
            }]
        );
        assert!(w.kinds.is_empty());
    }

    #[test]
    fn a_summary_says_how_many_in_how_long() {
        let summary = Summary {
            kind: TLS,
            level: Level::INFO,
            suppressed: 5231,
            over: Duration::from_millis(9_400),
        };
        assert_eq!(
            summary.message(),
            "TLS handshake failed: 5,231 more in the last 10 s (not logged; the metrics count every one)"
        );
    }

    #[test]
    fn thousands_are_separated_by_commas() {
        for (n, text) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (123_456, "123,456"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), text);
        }
    }
}
