//! The serial bridge: sensors on serial lines speaking firmware-proto frames.
//!
//! Each `[[serial]]` entry has a watcher that re-reads its path or glob every `rescan`
//! and opens what it finds; each open port has its own task that feeds frames to a
//! device [`Link`](crate::devices::link::Link). Line noise (garbage, CRC errors, partial
//! frames, a wrong baud rate) is counted per port and skipped: the decoder resynchronises
//! at the next delimiter. A port that disappears (adapter unplugged) ends its task; the
//! watcher reopens it when the path returns, with backoff while opening fails.

mod port;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::SerialPortConfig;
use crate::devices::Gateway;
use crate::front::lock;

/// Longest wait between attempts to open a port that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Counters of one serial port.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames decoded.
    pub frames: AtomicU64,
    /// Frames with a bad CRC.
    pub crc_errors: AtomicU64,
    /// Frames with bad COBS encoding.
    pub cobs_errors: AtomicU64,
    /// Frames too short to hold a CRC.
    pub too_short: AtomicU64,
    /// Frames longer than the largest message.
    pub oversized: AtomicU64,
    /// Bytes read.
    pub bytes_in: AtomicU64,
    /// Times the port was opened.
    pub opens: AtomicU64,
}

/// Counters of one serial port at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PortStats {
    /// Frames decoded.
    pub frames: u64,
    /// Frames with a bad CRC.
    pub crc_errors: u64,
    /// Frames with bad COBS encoding.
    pub cobs_errors: u64,
    /// Frames too short to hold a CRC.
    pub too_short: u64,
    /// Frames longer than the largest message.
    pub oversized: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Times the port was opened.
    pub opens: u64,
}

impl PortCounters {
    /// A snapshot.
    pub fn snapshot(&self) -> PortStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PortStats {
            frames: l(&self.frames),
            crc_errors: l(&self.crc_errors),
            cobs_errors: l(&self.cobs_errors),
            too_short: l(&self.too_short),
            oversized: l(&self.oversized),
            bytes_in: l(&self.bytes_in),
            opens: l(&self.opens),
        }
    }
}

/// Every port's counters, by path.
pub fn snapshot(gateway: &Gateway) -> BTreeMap<String, PortStats> {
    crate::front::lock(&gateway.serial_ports)
        .iter()
        .map(|(path, c)| (path.clone(), c.snapshot()))
        .collect()
}

/// Opens and serves the configured ports until shutdown, then waits for every port
/// task to publish its device offline.
pub async fn run(ports: Vec<SerialPortConfig>, gateway: Arc<Gateway>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    // Paths open now, over all entries, so two globs matching one port open it once.
    let open: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
    for entry in ports {
        tracker.spawn(watch(
            entry,
            gateway.clone(),
            open.clone(),
            tracker.clone(),
            shutdown.clone(),
        ));
    }
    shutdown.cancelled().await;
    tracker.close();
    tracker.wait().await;
}

/// Failed opening attempts of one path: when to try again, and how many in a row.
struct Retry {
    next: Instant,
    backoff: Duration,
    failures: u32,
    /// Where the path led when it failed.
    target: Option<PathBuf>,
}

async fn watch(
    entry: SerialPortConfig,
    gateway: Arc<Gateway>,
    open: Arc<Mutex<HashSet<PathBuf>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let entry = Arc::new(entry);
    let mut retries: HashMap<PathBuf, Retry> = HashMap::new();
    let mut warned_empty = false;
    let mut tick = tokio::time::interval(entry.rescan);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let paths = matches(&entry);
        if paths.is_empty() && !warned_empty {
            tracing::info!(path = %entry.path, "no serial port matches yet; watching for it");
            warned_empty = true;
        }
        // A path that vanished and came back, or now leads elsewhere (a by-id link to a
        // new ttyUSB), is a new adapter: no backoff from the old one.
        retries.retain(|p, r| paths.contains(p) && std::fs::canonicalize(p).ok() == r.target);
        let now = Instant::now();
        for path in paths {
            if lock(&open).contains(&path) {
                continue;
            }
            if retries.get(&path).is_some_and(|r| r.next > now) {
                continue;
            }
            match port::open(&path, entry.baud.get()) {
                Ok(stream) => {
                    retries.remove(&path);
                    warned_empty = false;
                    lock(&open).insert(path.clone());
                    let running = gateway.tasks.token();
                    let task = port::serve(
                        stream,
                        path.clone(),
                        entry.clone(),
                        gateway.clone(),
                        shutdown.clone(),
                    );
                    let open = open.clone();
                    let span = tracing::info_span!("serial", port = %path.display());
                    tracker.spawn(
                        async move {
                            task.await;
                            lock(&open).remove(&path);
                            drop(running);
                        }
                        .instrument(span),
                    );
                }
                Err(error) => {
                    let retry = retries.entry(path.clone()).or_insert(Retry {
                        next: now,
                        backoff: entry.rescan / 2,
                        failures: 0,
                        target: std::fs::canonicalize(&path).ok(),
                    });
                    retry.backoff = (retry.backoff * 2).min(MAX_BACKOFF).max(entry.rescan);
                    retry.next = now + retry.backoff;
                    retry.failures += 1;
                    // Once per streak, then every tenth attempt: a port that stays broken
                    // must not flood the journal.
                    if retry.failures % 10 == 1 {
                        tracing::warn!(
                            port = %path.display(),
                            %error,
                            failures = retry.failures,
                            retry_in = ?retry.backoff,
                            "cannot open serial port; check that it exists and that the user edgehub runs as may open it (group dialout)"
                        );
                    }
                }
            }
        }
    }
}

/// The paths an entry names now: the glob's matches, or the path if it exists.
fn matches(entry: &SerialPortConfig) -> Vec<PathBuf> {
    if !entry.is_glob() {
        let path = PathBuf::from(&entry.path);
        return if path.exists() {
            vec![path]
        } else {
            Vec::new()
        };
    }
    match glob::glob(&entry.path) {
        Ok(paths) => paths.filter_map(Result::ok).collect(),
        Err(error) => {
            // check-config refuses bad patterns; this is for safety only.
            tracing::warn!(path = %entry.path, %error, "invalid serial path pattern");
            Vec::new()
        }
    }
}

/// The counters of `path`, created on first use.
fn counters(gateway: &Gateway, path: &str) -> Arc<PortCounters> {
    lock(&gateway.serial_ports)
        .entry(path.to_owned())
        .or_default()
        .clone()
}
